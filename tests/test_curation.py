"""Curation thresholds (pure): which processed exposures are kept, and why others are not."""

from __future__ import annotations

import pytest

from emlive.curation import Curation, accepts, rejection_reasons

GOOD = dict(fit_resolution_a=3.5, total_drift_a=12.0, defocus_u_a=15000.0, defocus_v_a=14000.0, fit_ok=True, ice_ring_ratio=1.02)


def test_the_defaults_keep_everything():
    assert accepts(Curation(), **GOOD)
    assert accepts(Curation(), **GOOD | {"fit_ok": False, "fit_resolution_a": 30.0, "ice_ring_ratio": None})


@pytest.mark.parametrize(
    ("threshold", "kept", "rejected"),
    [
        ({"max_fit_resolution_a": 5.0}, {"fit_resolution_a": 5.0}, {"fit_resolution_a": 5.01}),
        ({"max_total_drift_a": 20.0}, {"total_drift_a": 20.0}, {"total_drift_a": 20.5}),
        ({"min_defocus_a": 14500.0}, {"defocus_u_a": 15000.0}, {"defocus_u_a": 14990.0}),  # mean of U and V
        ({"max_defocus_a": 14500.0}, {"defocus_u_a": 15000.0}, {"defocus_u_a": 15010.0}),
        ({"max_astigmatism_a": 1000.0}, {"defocus_v_a": 14000.0}, {"defocus_v_a": 13990.0}),
        ({"max_ice_ring_ratio": 1.1}, {"ice_ring_ratio": None}, {"ice_ring_ratio": 1.2}),  # not measured: kept
        ({"reject_no_fit": True}, {"fit_ok": True}, {"fit_ok": False}),
    ],
)
def test_a_value_at_its_limit_is_kept_and_beyond_it_rejected(threshold, kept, rejected):
    curation = Curation(**threshold)
    assert accepts(curation, **GOOD | kept) and not rejection_reasons(curation, **GOOD | kept)
    assert not accepts(curation, **GOOD | rejected) and len(rejection_reasons(curation, **GOOD | rejected)) == 1


def test_reasons_name_the_value_and_the_limit():
    reasons = rejection_reasons(
        Curation(max_fit_resolution_a=5.0, max_astigmatism_a=500.0, reject_no_fit=True),
        fit_resolution_a=7.25, total_drift_a=3.0, defocus_u_a=15000.0, defocus_v_a=14000.0, fit_ok=False, ice_ring_ratio=None,
    )
    assert reasons == [
        "no Thon rings were found (the CTF fit failed)",
        "fit resolution 7.25 Å is worse than 5 Å",
        "astigmatism 1000 Å is more than 500 Å",
    ]


def test_thresholds_are_checked_when_set():
    with pytest.raises(ValueError, match="max_fit_resolution_a"):
        Curation(max_fit_resolution_a=-1.0)
    with pytest.raises(ValueError, match="extra"):
        Curation(max_resolution=5.0)
