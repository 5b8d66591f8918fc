"""Typed errors for movie and image I/O.

Both derive from ``ValueError`` (the input is wrong, not the program). Messages name the
file, say what is wrong with it, and what to do about it, so a facility user can act on them.
"""

from __future__ import annotations


class MovieFormatError(ValueError):
    """A movie (or image) file is empty, truncated, half-written or corrupt."""


class GainError(ValueError):
    """A gain reference cannot be read or does not fit the movie it is applied to."""


INCOMPLETE_ADVICE = (
    "the file is truncated or still being written; wait for the transfer to finish or remove it"
)
"""What to do about a file that ends too early (appended to MovieFormatError messages)."""


def human_bytes(n_bytes: int) -> str:
    """``1234567`` → ``'1.2 MB'`` (decimal units), for messages."""
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
