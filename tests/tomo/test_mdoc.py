"""SerialEM mdoc reading (emlive.tomo.mdoc) and writing (emlive.synth.mdoc).

The samples in tests/data/mdoc are written from the format SerialEM documents (File Formats:
"Image Metadata Files") and real files seen in public repositories; see tests/data/README.md.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from emlive.synth.mdoc import (
    append_section,
    format_datetime,
    header_text,
    mdoc_text,
    serialem_header,
    serialem_tilts,
    write_mdoc,
)
from emlive.tomo.mdoc import (
    MdocError,
    MdocTilt,
    acquisition_order,
    movie_name_from_path,
    parse_datetime,
    parse_mdoc,
    pre_exposure_e_per_a2,
    read_mdoc,
)

DATA = Path(__file__).parents[1] / "data" / "mdoc"
SERIALEM_38 = DATA / "serialem-3.8_tilt_series.mdoc"
LAMELLA = DATA / "serialem-4.1_lamella.mdoc"
GROWING = DATA / "serialem-4.1_lamella_growing.mdoc"


def test_serialem_38_header_and_tilts() -> None:
    mdoc = read_mdoc(SERIALEM_38)
    assert mdoc.path == SERIALEM_38 and mdoc.problems == () and mdoc.pending_z_value is None
    h = mdoc.header
    assert (h.pixel_spacing_a, h.tilt_axis_deg, h.image_size, h.data_mode, h.image_file) == (
        2.7, 85.3, (4092, 5760), 1, "TS_07.mrc"
    )
    assert h.voltage_kv is None  # SerialEM 3.8 wrote no Voltage
    assert h.binning == 1.0 and len(h.titles) == 2
    assert [t.z_value for t in mdoc.tilts] == list(range(7))
    np.testing.assert_allclose([t.tilt_angle_deg for t in mdoc.tilts], [0, 3, -3, -6, 6, 9, -9], atol=0.01)
    first = mdoc.tilts[0]
    assert first.sub_frame_path == r"D:\DATA\emlive\TS_07\frames\TS_07_000_0.0.tif"
    assert first.movie_name == "TS_07_000_0.0.tif"
    assert first.acquired_at == datetime(2026, 12, 3, 14, 22, 5)
    assert (first.exposure_dose_e_per_a2, first.pixel_spacing_a, first.num_subframes) == (3.05, 2.7, 8)
    assert first.min_max_mean == (12.0, 1511.0, 630.212)
    assert (first.defocus_um, first.target_defocus_um, first.rotation_angle_deg) == (-3.91, -4.0, 175.3)
    assert first.line == 10 and first.values["MagIndex"] == "31"


def test_lamella_41_voltage_and_tilt_axis_from_rotation_angle() -> None:
    """No "Tilt axis angle" title: the axis is RotationAngle − 90 (SerialEM's rotation of the axis from +x)."""
    mdoc = read_mdoc(LAMELLA)
    assert mdoc.problems == ()
    assert mdoc.header.voltage_kv == 300.0 and mdoc.header.version == "SerialEM Version 4.1.0 beta"
    assert mdoc.header.tilt_axis_deg == pytest.approx(88.414)
    assert [t.movie_name for t in mdoc.tilts][:2] == [
        "lamella3_ts_002_000_-20.0_Dec03_09.05.58.eer",
        "lamella3_ts_002_001_-22.0_Dec03_09.06.07.eer",
    ]
    assert mdoc.tilts[-1].values["ChannelName"] == "Camera 1"


def test_growing_mdoc_keeps_complete_sections_and_names_the_pending_one() -> None:
    mdoc = read_mdoc(GROWING)
    assert [t.z_value for t in mdoc.tilts] == [0, 1, 2]
    assert mdoc.pending_z_value == 3 and mdoc.problems == ()
    full = read_mdoc(LAMELLA)
    assert mdoc.tilts == full.tilts[:3]
    # once the writer is known to be done, the cut section is taken, with its cut line as a problem
    final = read_mdoc(GROWING, final=True)
    assert [t.z_value for t in final.tilts] == [0, 1, 2, 3] and final.pending_z_value is None
    assert final.tilts[3].tilt_angle_deg == pytest.approx(-23.9863)
    assert any("'MagInd'" in p and "not a 'key = value' line" in p for p in final.tilts[3].problems)


@pytest.mark.parametrize("sample", [SERIALEM_38, LAMELLA], ids=lambda p: p.stem)
def test_every_cut_of_a_file_parses_a_prefix_of_its_tilts_without_problems(sample: Path) -> None:
    """The file read at any moment of SerialEM writing it: only whole tilts, equal to the final ones."""
    text = sample.read_bytes().decode()
    full = parse_mdoc(text).tilts
    for cut in range(len(text) + 1):
        part = parse_mdoc(text[:cut])
        assert part.problems == (), cut
        assert part.tilts == full[: len(part.tilts)], cut
    assert len(parse_mdoc(text[: text.rindex("[ZValue")]).tilts) == len(full) - 1


def test_malformed_lines_become_problems_of_their_tilt_naming_the_line() -> None:
    lines = SERIALEM_38.read_text().splitlines()
    z1 = lines.index("[ZValue = 1]")
    lines[z1 + 1] = "TiltAngle = 3.0o113"
    lines[z1 + 3] = "StageZ 163.803"
    z4 = next(i for i, line in enumerate(lines) if line.startswith("DateTime") and i > lines.index("[ZValue = 4]"))
    lines[z4] = "DateTime = 31-Foo-26  25:61:00"
    mdoc = parse_mdoc("\n".join(lines) + "\n")
    tilts = {t.z_value: t for t in mdoc.tilts}
    assert len(tilts) == 7
    assert tilts[1].tilt_angle_deg is None
    assert tilts[1].problems == (
        f"ZValue 1: line {z1 + 4}: 'StageZ 163.803': not a 'key = value' line",
        f"ZValue 1: line {z1 + 2}: TiltAngle = '3.0o113': not a number",
    )
    assert tilts[4].acquired_at is None and f"line {z4 + 1}: DateTime" in tilts[4].problems[0]
    assert all(not tilts[z].problems for z in (0, 2, 3, 5, 6))
    assert set(mdoc.problems) == set(tilts[1].problems) | set(tilts[4].problems)


def test_bad_section_headers_duplicates_and_other_section_types() -> None:
    text = (
        "PixelSpacing = 2\nImageSize = 10 x\n\n[ZValue = 0]\nTiltAngle = 1\n\n[ZValue = zero\nTiltAngle = 2\n\n"
        "[FrameSet = 0]\nTiltAngle = 5\n\n[ZValue = 0]\nTiltAngle = 3\n\n[ZValue = -2]\nTiltAngle = 4\n\n[ZValue = 1]\nExposureDose = 2\n\n"
    )
    mdoc = parse_mdoc(text)
    assert [(t.z_value, t.tilt_angle_deg) for t in mdoc.tilts] == [(0, 1.0), (1, None)]
    assert mdoc.header.image_size is None
    joined = "\n".join(mdoc.problems)
    for expected in (
        "line 7: '[ZValue = zero': not a section header",
        "line 13: [ZValue = 0] appears again; the first one is kept",
        "line 16: [ZValue = -2]: the ZValue is not a whole number",
        "ZValue 1: line 19: this section has no TiltAngle",
        "header: ImageSize = '10 x'",
    ):
        assert expected in joined


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "9" * 5000, "١٢"])
def test_non_finite_or_absurd_numbers_are_problems(value: str) -> None:
    mdoc = parse_mdoc(f"[ZValue = 0]\nTiltAngle = {value}\n\n")
    assert mdoc.tilts[0].tilt_angle_deg is None and "not a number" in mdoc.problems[0]


def test_unreadable_files_raise_mdoc_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(MdocError, match="missing.mdoc: no such mdoc file"):
        read_mdoc(tmp_path / "missing.mdoc")
    with pytest.raises(MdocError, match="is a folder"):
        read_mdoc(tmp_path)
    binary = tmp_path / "movie.mdoc"
    binary.write_bytes(b"MRC\x00\x00\x01" * 10)
    with pytest.raises(MdocError, match="movie.mdoc: not an mdoc"):
        read_mdoc(binary)
    empty = tmp_path / "empty.mdoc"
    empty.write_bytes(b"")
    assert read_mdoc(empty).tilts == ()  # SerialEM has just created it


def test_cp1252_text_and_text_input() -> None:
    raw = "PixelSpacing = 2\n[T = SerialEM: Krios Gr\xfcnwald  ]\n\n[ZValue = 0]\nTiltAngle = 0\n\n".encode("cp1252")
    assert parse_mdoc(raw.decode("cp1252")).header.titles == ("SerialEM: Krios Grünwald",)
    assert read_mdoc("[ZValue = 0]\nTiltAngle = 0\n\n").tilts[0].tilt_angle_deg == 0.0


def test_movie_name_from_windows_and_posix_paths() -> None:
    assert movie_name_from_path(r"D:\Data\x\TS_01_003_-3.0.tif") == "TS_01_003_-3.0.tif"
    assert movie_name_from_path("/data/x/TS_01_003_-3.0.tif") == "TS_01_003_-3.0.tif"
    assert movie_name_from_path("TS_01.eer") == "TS_01.eer"
    assert movie_name_from_path(None) is None and movie_name_from_path("D:\\") is None


def test_datetime_round_trip_and_forms() -> None:
    when = datetime(2026, 12, 3, 14, 22, 5)
    assert format_datetime(when) == "03-Dec-26  14:22:05"
    assert parse_datetime("03-Dec-26  14:22:05") == when
    assert parse_datetime("03-Dec-2026 14:22:05") == when
    assert parse_datetime("yesterday") is None


def _tilt(z: int, angle: float, dose: float | None, when: datetime | None) -> MdocTilt:
    return MdocTilt(z_value=z, tilt_angle_deg=angle, exposure_dose_e_per_a2=dose, acquired_at=when)


def test_pre_exposure_follows_acquisition_time_not_angle() -> None:
    t0 = datetime(2026, 12, 3, 14, 0, 0)
    # acquired 0°, +3°, -3°, -6°, +6° (dose-symmetric); the file lists them out of order
    tilts = [
        _tilt(3, -6.0, 2.0, t0 + timedelta(seconds=30)),
        _tilt(0, 0.0, 3.0, t0),
        _tilt(2, -3.0, 2.0, t0 + timedelta(seconds=20)),
        _tilt(4, 6.0, 2.0, t0 + timedelta(seconds=40)),
        _tilt(1, 3.0, 2.0, t0 + timedelta(seconds=10)),
    ]
    assert pre_exposure_e_per_a2(tilts) == {0: 0.0, 1: 3.0, 2: 5.0, 3: 7.0, 4: 9.0}
    # DateTime wins over ZValue when they disagree (a section renumbered by a tool)
    swapped = [dataclasses.replace(t, acquired_at=t0 + timedelta(seconds=10 * (4 - t.z_value))) for t in tilts]
    assert [t.z_value for t in acquisition_order(swapped)] == [4, 3, 2, 1, 0]
    assert pre_exposure_e_per_a2(swapped)[0] == pytest.approx(8.0)


def test_pre_exposure_falls_back_to_zvalue_and_to_a_nominal_dose() -> None:
    tilts = [_tilt(1, 3.0, 0.0, None), _tilt(0, 0.0, 0.0, datetime(2026, 1, 1)), _tilt(2, -3.0, None, None)]
    assert pre_exposure_e_per_a2(tilts) == {0: 0.0, 1: 0.0, 2: 0.0}
    assert pre_exposure_e_per_a2(tilts, dose_per_tilt_e_per_a2=2.5) == {0: 0.0, 1: 2.5, 2: 5.0}


def test_pre_exposure_of_the_golden_sample() -> None:
    pre = pre_exposure_e_per_a2(read_mdoc(SERIALEM_38).tilts)
    assert pre[0] == 0.0 and pre[2] == pytest.approx(6.1) and pre[6] == pytest.approx(18.3)


ANGLES = np.arange(-9.0, 9.1, 3.0)  # -9 .. 9
ORDER = np.array([5, 4, 1, 0, 2, 3, 6])  # acquisition index per angle: 0, +3, -3, -6, +6, +9... (as given)


def _synthetic() -> tuple[object, tuple[MdocTilt, ...]]:
    names = [f"TS_01_{i:03d}_{a:.1f}.tif" for i, a in zip(ORDER, ANGLES, strict=True)]
    header = serialem_header(pixel_size_a=2.7, tilt_axis_deg=-94.7, image_size=(1024, 1024))
    tilts = serialem_tilts(
        ANGLES, ORDER, names, pixel_size_a=2.7, dose_per_tilt_e_per_a2=3.0, tilt_axis_deg=-94.7,
        defocus_um=np.linspace(-3, -4.5, 7), min_max_mean=[(0.0, 50.0, 12.5)] * 7,
    )
    return header, tilts


def test_synthetic_mdoc_round_trip(tmp_path: Path) -> None:
    header, tilts = _synthetic()
    path = write_mdoc(tmp_path / "TS_01.mrc.mdoc", header, tilts)  # type: ignore[arg-type]
    mdoc = read_mdoc(path)
    assert mdoc.problems == () and mdoc.pending_z_value is None
    assert mdoc.header.tilt_axis_deg == pytest.approx(-94.7) and mdoc.header.image_size == (1024, 1024)
    assert mdoc.header.voltage_kv == 300.0 and mdoc.header.pixel_spacing_a == 2.7
    assert [t.z_value for t in mdoc.tilts] == list(range(7))
    by_z = {t.z_value: t for t in mdoc.tilts}
    for angle, z in zip(ANGLES, ORDER, strict=True):
        t = by_z[int(z)]
        assert t.tilt_angle_deg == angle and t.movie_name == f"TS_01_{z:03d}_{angle:.1f}.tif"
        assert t.sub_frame_path == rf"D:\Data\emlive\frames\{t.movie_name}"
        assert t.acquired_at == datetime(2026, 12, 3, 14, 22, 5) + timedelta(seconds=8 * int(z))
        assert t.rotation_angle_deg == pytest.approx(-4.7) and t.exposure_dose_e_per_a2 == 3.0
        assert t.values["FrameDosesAndNumber"] == "0.375 8"
    # the written values are the given ones
    assert mdoc.tilts == tuple(
        dataclasses.replace(w, line=r.line, rotation_angle_deg=r.rotation_angle_deg) for w, r in zip(tilts, mdoc.tilts, strict=True)
    )
    # a dose-symmetric order gives pre-exposure by acquisition index
    pre = pre_exposure_e_per_a2(mdoc.tilts)
    assert pre == {z: 3.0 * z for z in range(7)}


def test_mdoc_grows_one_section_at_a_time(tmp_path: Path) -> None:
    header, tilts = _synthetic()
    path = tmp_path / "TS_01.mrc.mdoc"
    path.write_text(header_text(header))  # type: ignore[arg-type]
    assert read_mdoc(path).tilts == ()
    for k, tilt in enumerate(tilts, start=1):
        append_section(path, tilt, tilt_axis_deg=-94.7)
        assert [t.z_value for t in read_mdoc(path).tilts] == list(range(k))
    assert path.read_text() == mdoc_text(header, tilts)  # type: ignore[arg-type]


def test_serialem_tilts_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="permutation"):
        serialem_tilts([0, 3], [0, 0], ["a", "b"], pixel_size_a=1, dose_per_tilt_e_per_a2=1, tilt_axis_deg=0)
    with pytest.raises(ValueError, match="one entry per tilt"):
        serialem_tilts([0, 3], [0, 1], ["a"], pixel_size_a=1, dose_per_tilt_e_per_a2=1, tilt_axis_deg=0)
