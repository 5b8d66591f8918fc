"""Typed errors for movie and image I/O.

Both derive from ``ValueError`` (the input is wrong, not the program). Messages name the
file, say what is wrong with it, and what to do about it, so a facility user can act on them.
"""

from __future__ import annotations


class MovieFormatError(ValueError):
    """A movie (or image) file is empty, truncated, half-written or corrupt."""


class GainError(ValueError):
    """A gain reference cannot be read or does not fit the movie it is applied to."""
