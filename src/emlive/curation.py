"""Curation thresholds: which processed exposures a session keeps.

A session's thresholds are set in the dashboard or the API and stored with the session; an
exposure that fails any of them is *rejected*: it stays in the database (and on the dashboard,
marked) but is left out of the STAR exports. A threshold left at ``None`` is not applied, so
the defaults keep everything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class Curation(BaseModel):
    """Limits an exposure must meet to be kept (all optional; units in the names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_fit_resolution_a: PositiveFloat | None = Field(
        None, description="Reject when the CTF fit reaches only a worse (larger) resolution than this, Å"
    )
    max_total_drift_a: PositiveFloat | None = Field(None, description="Reject when the total drift is larger, Å")
    min_defocus_a: float | None = Field(None, ge=0, description="Reject when the mean defocus is smaller, Å")
    max_defocus_a: PositiveFloat | None = Field(None, description="Reject when the mean defocus is larger, Å")
    max_astigmatism_a: float | None = Field(None, ge=0, description="Reject when |defocus U − V| is larger, Å")
    max_ice_ring_ratio: PositiveFloat | None = Field(
        None, description="Reject when the ice-ring ratio is higher (crystalline ice), ~1 = vitreous"
    )
    reject_no_fit: bool = Field(False, description="Reject micrographs whose CTF fit found no Thon rings")


def accepts(
    curation: Curation,
    *,
    fit_resolution_a: float,
    total_drift_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    fit_ok: bool,
    ice_ring_ratio: float | None,
) -> bool:
    """Whether one processed exposure meets every threshold of ``curation``."""
    mean_defocus_a = (defocus_u_a + defocus_v_a) / 2
    checks = [
        (curation.max_fit_resolution_a, lambda t: fit_resolution_a <= t),
        (curation.max_total_drift_a, lambda t: total_drift_a <= t),
        (curation.min_defocus_a, lambda t: mean_defocus_a >= t),
        (curation.max_defocus_a, lambda t: mean_defocus_a <= t),
        (curation.max_astigmatism_a, lambda t: abs(defocus_u_a - defocus_v_a) <= t),
        (curation.max_ice_ring_ratio, lambda t: ice_ring_ratio is None or ice_ring_ratio <= t),
    ]
    if curation.reject_no_fit and not fit_ok:
        return False
    return all(threshold is None or passes(threshold) for threshold, passes in checks)
