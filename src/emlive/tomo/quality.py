"""Per-tilt quality: which tilts to leave out of alignment and reconstruction, and why (pure).

A tilt is excluded when it is *dark* or *blank* (its mean counts far below the series': a grid
bar, a thick area or a closed valve), when its CTF fit failed, or when its movie drifted more
than allowed. Each reason is a sentence a person at the microscope can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["exclusions"]


def exclusions(
    mean_counts: Sequence[float] | np.ndarray,
    *,
    ctf_failed: Sequence[bool] | np.ndarray | None = None,
    drift_a: Sequence[float] | np.ndarray | None = None,
    max_drift_a: float | None = None,
    dark_fraction: float = 0.25,
) -> tuple[str | None, ...]:
    """A reason per tilt to exclude it, or ``None`` to keep it; in the order given.

    ``mean_counts`` (n,) each tilt's mean counts per pixel; a tilt below ``dark_fraction`` of the
    series median is dark ("dark: mean 12 counts, 8% of the series median"), one with no
    counts at all is blank. ``ctf_failed`` (n,) marks failed CTF fits; ``drift_a`` (n,) the
    movies' total drift in Å, excluded above ``max_drift_a`` (NaN = unknown, kept). Several
    reasons are joined with "; ".
    """
    counts = np.asarray(mean_counts, dtype=np.float64)
    n = counts.size
    if counts.ndim != 1:
        raise ValueError(f"mean_counts must be one value per tilt, got shape {counts.shape}")
    failed = np.zeros(n, dtype=bool) if ctf_failed is None else np.asarray(ctf_failed, dtype=bool)
    drift = np.full(n, np.nan) if drift_a is None else np.asarray(drift_a, dtype=np.float64)
    if failed.shape != (n,) or drift.shape != (n,):
        raise ValueError(f"ctf_failed and drift_a must have one value per tilt ({n})")
    if not 0.0 < dark_fraction < 1.0:
        raise ValueError(f"dark_fraction must be between 0 and 1, got {dark_fraction}")
    finite = counts[np.isfinite(counts)]
    median = float(np.median(finite)) if finite.size else np.nan
    reasons: list[str | None] = []
    for i in range(n):
        why: list[str] = []
        if not np.isfinite(counts[i]) or counts[i] <= 0.0:
            why.append("blank: no counts")
        elif median > 0 and counts[i] < dark_fraction * median:
            why.append(
                f"dark: mean {counts[i]:.3g} counts, {100.0 * counts[i] / median:.0f}% of the series median "
                f"({median:.3g}; below {100.0 * dark_fraction:.0f}%)"
            )
        if failed[i]:
            why.append("CTF fit failed")
        if max_drift_a is not None and np.isfinite(drift[i]) and drift[i] > max_drift_a:
            why.append(f"drift {drift[i]:.1f} Å over the {max_drift_a:g} Å allowed")
        reasons.append("; ".join(why) or None)
    return tuple(reasons)
