"""Which tilts are excluded, and the reasons given."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.tomo.quality import exclusions
from tests.tomo.kernel_series import series


def test_the_dark_tilts_of_a_synthetic_series_are_found_with_their_reason():
    stack, truth = series()
    means = stack.mean(axis=(1, 2))
    reasons = exclusions(means)
    assert tuple(i for i, r in enumerate(reasons) if r) == truth.dark
    median = np.median(means)
    for i in truth.dark:
        assert reasons[i].startswith(f"dark: mean {means[i]:.3g} counts, {100 * means[i] / median:.0f}% of the series median")
    # the ±60° tilts are dimmer (a thicker path through the ice) but not dark
    assert means[0] < 0.95 * median and reasons[0] is None


def test_failed_ctf_and_excessive_drift_are_reasons_and_reasons_combine():
    reasons = exclusions(
        [100.0, 98.0, 5.0, 0.0, 101.0],
        ctf_failed=[False, True, True, False, False],
        drift_a=[10.0, 12.0, np.nan, 3.0, 80.0],
        max_drift_a=50.0,
    )
    assert reasons[0] is None
    assert reasons[1] == "CTF fit failed"
    assert reasons[2].startswith("dark: mean 5 counts, 5% of the series median") and reasons[2].endswith("; CTF fit failed")
    assert reasons[3] == "blank: no counts"
    assert reasons[4] == "drift 80.0 Å over the 50 Å allowed"


def test_without_a_drift_limit_drift_is_not_a_reason():
    assert exclusions([10.0, 10.0], drift_a=[1e4, 0.0]) == (None, None)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="one value per tilt"):
        exclusions([1.0, 2.0], ctf_failed=[False])
