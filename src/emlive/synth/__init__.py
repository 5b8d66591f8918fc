"""Synthetic cryo-EM data with known ground truth (drift, defocus, astigmatism) for tests and the demo."""

from emlive.synth.eer import RawFrame, encode_eer_frame, movie_events, split_into_raw_frames, write_eer
from emlive.synth.movies import movie_frames, poisson_counts, shifted_images, specimen_image, trajectory
from emlive.synth.session import (
    MovieTruth,
    SessionTruth,
    gain_reference,
    load_truth,
    plan_session,
    write_movie,
    write_session,
)

__all__ = [
    "MovieTruth",
    "SessionTruth",
    "RawFrame",
    "encode_eer_frame",
    "gain_reference",
    "load_truth",
    "movie_events",
    "movie_frames",
    "plan_session",
    "poisson_counts",
    "shifted_images",
    "specimen_image",
    "split_into_raw_frames",
    "trajectory",
    "write_eer",
    "write_movie",
    "write_session",
]
