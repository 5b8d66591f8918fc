"""Tilt series as groups in the runtime: when a series is due, how it is named, which acquisition
values its tilts take from the mdoc (pure parts of emlive.runtime.groups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emlive.runtime.groups import series_due, series_name, tilt_acquisition_values
from emlive.tomo.mdoc import read_mdoc

BASE = dict(n_named=41, n_missing=0, n_unfinished=0, expected=None, since_last_s=0.0, settle_s=60.0,
            missing_timeout_s=300.0, final=False)


@pytest.mark.parametrize(
    ("change", "due"),
    [
        ({}, "wait"),  # all done, but a tilt may still come
        ({"since_last_s": 60.0}, "complete"),  # none came for the settle time
        ({"expected": 41}, "complete"),  # the expected count reached: no need to wait
        ({"expected": 42}, "wait"),
        ({"n_unfinished": 1, "expected": 41}, "wait"),  # a tilt still in motion/CTF
        ({"n_unfinished": 1, "final": True}, "partial"),  # one-shot and idle: it will not be processed
        ({"final": True}, "complete"),  # one-shot run: nothing more will come
        ({"n_missing": 1, "since_last_s": 299.0}, "wait"),  # a named movie may still come
        ({"n_missing": 1, "since_last_s": 300.0}, "partial"),  # ... given up
        ({"n_missing": 1, "final": True}, "partial"),
        ({"n_named": 0, "final": True}, "wait"),  # an mdoc with no tilt yet
    ],
)
def test_a_series_is_due_when_its_tilts_are_done_and_no_more_will_come(change, due):
    assert series_due(**(BASE | change)) == due


@pytest.mark.parametrize(
    ("file", "name"),
    [("TS_01.mrc.mdoc", "TS_01"), ("TS_01.st.mdoc", "TS_01"), ("lamella3_ts.mdoc", "lamella3_ts"),
     ("Position_5.tif.mdoc", "Position_5"), (".mrc.mdoc", ".mrc")],
)
def test_a_series_is_named_for_its_mdoc_without_the_stack_suffix(file, name):
    assert series_name(Path("/data") / file) == name


MDOC = """PixelSpacing = 1.55
Voltage = 300
ImageSize = 4096 4096

[T =     Tilt axis angle = 84.7, binning = 1  spot = 8  camera = 0]

[ZValue = 0]
TiltAngle = 0.001
ExposureDose = 3.2
PixelSpacing = 1.53
SubFramePath = D:\\Data\\frames\\TS_01_000_0.0.tif
NumSubFrames = 8
DateTime = 03-Dec-26  14:22:05

[ZValue = 1]
TiltAngle = 3.0
ExposureDose = 0
SubFramePath = D:\\Data\\frames\\TS_01_001_3.0.eer
NumSubFrames = 400
DateTime = 03-Dec-26  14:22:13

"""


def test_a_tilt_takes_pixel_size_voltage_and_dose_per_frame_from_the_mdoc():
    mdoc = read_mdoc(MDOC)
    first, second = mdoc.tilts
    values = tilt_acquisition_values(mdoc, first, pre_exposure_e_a2=0.0, movie_suffix=".tif")
    assert values == {"pre_exposure_e_a2": 0.0, "pixel_size_a": 1.53, "voltage_kv": 300.0,
                      "dose_per_frame_e_a2": pytest.approx(3.2 / 8)}
    # no dose calibration (ExposureDose 0): the session's dose stands; the header's pixel size
    values = tilt_acquisition_values(mdoc, second, pre_exposure_e_a2=3.2, movie_suffix=".eer")
    assert values == {"pre_exposure_e_a2": 3.2, "pixel_size_a": 1.55, "voltage_kv": 300.0}


def test_an_eer_tilt_takes_its_total_dose_not_a_dose_per_raw_frame():
    mdoc = read_mdoc(MDOC.replace("ExposureDose = 0", "ExposureDose = 3.0"))
    values = tilt_acquisition_values(mdoc, mdoc.tilts[1], pre_exposure_e_a2=3.2, movie_suffix=".eer")
    assert values["eer_total_dose_e_a2"] == 3.0 and "dose_per_frame_e_a2" not in values


def test_tilts_go_to_the_workers_in_chunks_of_their_own_params():
    """A chunk of exposures shares one params object: a tilt (its own acquisition values) never
    rides with single-particle exposures or with another tilt."""
    from emlive.runtime.controller import Submit
    from emlive.runtime.loop import _chunks_by_params

    session, tilt_a, tilt_b = object(), object(), object()
    own = {2: tilt_a, 5: tilt_b}
    batch = [Submit(i, 1) for i in range(1, 8)]
    chunks = _chunks_by_params(batch, 2, lambda s: own.get(s.exposure_id, session))
    assert [[s.exposure_id for s in c] for c in chunks] == [[1, 3], [4, 6], [7], [2], [5]]
