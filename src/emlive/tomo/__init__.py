"""Tilt series (cryo-ET): pure kernels, file formats and engines side by side."""
