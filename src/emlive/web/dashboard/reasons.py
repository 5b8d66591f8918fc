"""Why the thresholds reject an exposure, in words for the exposure page (pure).

The same rules as :func:`emlive.curation.accepts` (tests check that an exposure has no reason
exactly when ``accepts`` keeps it), one sentence per threshold it fails.
"""

from __future__ import annotations

from emlive.curation import Curation


def rejection_reasons(
    curation: Curation,
    *,
    fit_resolution_a: float,
    total_drift_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    fit_ok: bool,
    ice_ring_ratio: float | None,
) -> list[str]:
    """Each threshold of ``curation`` the exposure fails, as a sentence; empty when accepted."""
    c = curation
    mean_a = (defocus_u_a + defocus_v_a) / 2
    astigmatism_a = abs(defocus_u_a - defocus_v_a)
    reasons = []
    if c.reject_no_fit and not fit_ok:
        reasons.append("no Thon rings were found (the CTF fit failed)")
    if c.max_fit_resolution_a is not None and not fit_resolution_a <= c.max_fit_resolution_a:
        reasons.append(f"fit resolution {fit_resolution_a:.2f} Å is worse than {c.max_fit_resolution_a:g} Å")
    if c.max_total_drift_a is not None and not total_drift_a <= c.max_total_drift_a:
        reasons.append(f"total drift {total_drift_a:.2f} Å is more than {c.max_total_drift_a:g} Å")
    if c.min_defocus_a is not None and not mean_a >= c.min_defocus_a:
        reasons.append(f"mean defocus {mean_a:.0f} Å is less than {c.min_defocus_a:g} Å")
    if c.max_defocus_a is not None and not mean_a <= c.max_defocus_a:
        reasons.append(f"mean defocus {mean_a:.0f} Å is more than {c.max_defocus_a:g} Å")
    if c.max_astigmatism_a is not None and not astigmatism_a <= c.max_astigmatism_a:
        reasons.append(f"astigmatism {astigmatism_a:.0f} Å is more than {c.max_astigmatism_a:g} Å")
    if c.max_ice_ring_ratio is not None and ice_ring_ratio is not None and not ice_ring_ratio <= c.max_ice_ring_ratio:
        reasons.append(f"ice-ring ratio {ice_ring_ratio:.2f} is above {c.max_ice_ring_ratio:g}")
    return reasons
