"""Synthetic cryo-EM data with known ground truth (drift, defocus, astigmatism) for tests and the demo."""

from emlive.synth.eer import encode_eer_frame, movie_events, split_into_raw_frames, write_eer
from emlive.synth.movies import movie_frames, shifted_images, specimen_image, trajectory

__all__ = [
    "encode_eer_frame",
    "movie_events",
    "movie_frames",
    "shifted_images",
    "specimen_image",
    "split_into_raw_frames",
    "trajectory",
    "write_eer",
]
