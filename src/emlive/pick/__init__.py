"""Particle picking: pure kernels, the native engine and external engines side by side."""
