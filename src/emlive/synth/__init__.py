"""Synthetic cryo-EM data with known ground truth (drift, defocus, astigmatism) for tests and the demo."""

from emlive.synth.movies import movie_frames, shifted_images, specimen_image, trajectory

__all__ = ["movie_frames", "shifted_images", "specimen_image", "trajectory"]
