"""Curation thresholds: which processed exposures a session keeps.

A session's thresholds are set in the dashboard or the API and stored with the session; an
exposure that fails any of them is *rejected*: it stays in the database (and on the dashboard,
marked) but is left out of the STAR exports. A threshold left at ``None`` is not applied, so
the defaults keep everything. Besides the built-in limits, any metric a step declares (see
:mod:`emlive.metric`) can be limited by its ``step.metric`` name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

METRIC_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


class Bounds(BaseModel):
    """Limits of one declared metric: kept when ``min <= value <= max`` (either may be left out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = Field(None, description="Reject when the value is smaller")
    max: float | None = Field(None, description="Reject when the value is larger")

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is larger than max ({self.max:g})")
        return self


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
    metrics: dict[str, Bounds] = Field(
        default_factory=dict,
        description="Limits of any step's declared metric, by 'step.metric' (e.g. {'pick.n_particles': "
        "{'min': 50}}); an exposure without a value for the metric (the step failed or did not run) is rejected",
    )

    @field_validator("metrics")
    @classmethod
    def _metric_keys(cls, value: dict[str, Bounds]) -> dict[str, Bounds]:
        for key in value:
            if not METRIC_KEY.match(key):
                raise ValueError(f"metric {key!r} must be named 'step.metric', e.g. 'pick.n_particles'")
        return value


def rejection_reasons(
    curation: Curation,
    *,
    fit_resolution_a: float,
    total_drift_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    fit_ok: bool,
    ice_ring_ratio: float | None,
    metrics: Mapping[str, float | None] | None = None,
) -> list[str]:
    """Each threshold of ``curation`` one processed exposure fails, as a sentence for people;
    empty when it is kept."""
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
    for key, bounds in c.metrics.items():
        value = (metrics or {}).get(key)
        if value is None:
            reasons.append(f"{key} has no value (the step failed or did not run)")
        elif bounds.min is not None and not value >= bounds.min:
            reasons.append(f"{key} {value:g} is less than {bounds.min:g}")
        elif bounds.max is not None and not value <= bounds.max:
            reasons.append(f"{key} {value:g} is more than {bounds.max:g}")
    return reasons


def accepts(
    curation: Curation,
    *,
    fit_resolution_a: float,
    total_drift_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    fit_ok: bool,
    ice_ring_ratio: float | None,
    metrics: Mapping[str, float | None] | None = None,
) -> bool:
    """Whether one processed exposure meets every threshold of ``curation`` (the reference the
    database's filter, ``emlive.db.queries.accepted_q``, is tested against)."""
    return not rejection_reasons(
        curation, fit_resolution_a=fit_resolution_a, total_drift_a=total_drift_a, defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a, fit_ok=fit_ok, ice_ring_ratio=ice_ring_ratio, metrics=metrics,
    )
