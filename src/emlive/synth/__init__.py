"""Synthetic cryo-EM data with known ground truth (drift, defocus, particle positions) for tests and the demo."""

from emlive.synth.deform import LocalMode, LocalMotion, local_motion, warped_images
from emlive.synth.eer import RawFrame, encode_eer_frame, movie_events, split_into_raw_frames, write_eer
from emlive.synth.movies import movie_frames, poisson_counts, shifted_images, specimen_image, trajectory
from emlive.synth.particles import ParticleMicrograph, particle_micrograph, write_particle_micrograph
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
    "LocalMode",
    "LocalMotion",
    "MovieTruth",
    "ParticleMicrograph",
    "SessionTruth",
    "RawFrame",
    "encode_eer_frame",
    "gain_reference",
    "load_truth",
    "local_motion",
    "movie_events",
    "movie_frames",
    "particle_micrograph",
    "plan_session",
    "poisson_counts",
    "shifted_images",
    "specimen_image",
    "split_into_raw_frames",
    "trajectory",
    "warped_images",
    "write_eer",
    "write_movie",
    "write_particle_micrograph",
    "write_session",
]
