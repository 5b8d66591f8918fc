"""The native engine: MRC in; ctffind-4.1-format .txt and _avrot.txt and a PNG out, atomically."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emlive.acquisition import Optics
from emlive.ctf.native import ENGINE_VERSION, NO_FIT_COMMENT, estimate_ctf, spectrum_geometry
from emlive.ctf.types import CtfParams
from emlive.io.mrc import write_mrc_atomic
from emlive.optics import ctf_2d

OPTICS = Optics(pixel_size_a=1.2, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
PARAMS = CtfParams()

# ctffind 4.1.14's header lines, with the run date as a pattern
TXT_HEADER = [
    r"# Output from CTFFind version 4\.1\.14 format by emlive native CTF \S+, run on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d",
    r"# Input file: .*/mic_0001\.mrc ; Number of micrographs: 1",
    r"# Pixel size: 1\.200 Angstroms ; acceleration voltage: 300\.0 keV ; spherical aberration: 2\.70 mm ; "
    r"amplitude contrast: 0\.07",
    r"# Box size: 512 pixels ; min\. res\.: 30\.0 Angstroms ; max\. res\.: 5\.0 Angstroms ; "
    r"min\. def\.: 5000\.0 um; max\. def\. 50000\.0 um",
    re.escape(
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
        "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
    ),
]
AVROT_HEADER = [
    *TXT_HEADER[:3],
    TXT_HEADER[3] + re.escape("; num. frames averaged: 1"),
    re.escape(
        "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); "
        "#2 - 1D rotational average of spectrum (assuming no astigmatism); "
        "#3 - 1D rotational average of spectrum; #4 - CTF fit; "
        "#5 - cross-correlation between spectrum and CTF fit; "
        "#6 - 2sigma of expected cross correlation of noise"
    ),
]


@pytest.fixture(scope="module")
def estimated(tmp_path_factory, micrograph):
    """One micrograph (U 16,300 Å, V 15,700 Å, azimuth 25°) run through the engine."""
    folder = tmp_path_factory.mktemp("ctf")
    image = micrograph(
        21, pixel_size_a=1.2, defocus_u_a=16300.0, defocus_v_a=15700.0, azimuth_deg=25.0
    )
    path = folder / "mic_0001.mrc"
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    result = estimate_ctf(path, folder / "out", OPTICS, PARAMS)
    return path, result


def test_the_result_matches_the_truth_and_names_the_outputs(estimated, azimuth_error):
    path, result = estimated
    assert (result.defocus_u_a + result.defocus_v_a) / 2 == pytest.approx(16000.0, rel=0.005)
    assert result.defocus_u_a - result.defocus_v_a == pytest.approx(600.0, abs=150.0)
    assert azimuth_error(result.azimuth_deg, 25.0) < 5.0
    assert result.phase_shift_rad == 0.0
    assert 0.1 < result.cross_correlation <= 1.0
    assert 2 * 1.2 <= result.fit_resolution_a < 8.0
    out = path.parent / "out"
    assert result.output_txt_path == out / "mic_0001.txt"
    assert result.avrot_path == out / "mic_0001_avrot.txt"
    assert result.diagnostic_png_path == out / "mic_0001.png"
    assert sorted(p.name for p in out.iterdir()) == ["mic_0001.png", "mic_0001.txt", "mic_0001_avrot.txt"]


def test_the_results_file_is_ctffind_41_and_parses_back(estimated):
    _, result = estimated
    lines = result.output_txt_path.read_text().splitlines()
    assert len(lines) == 6
    for line, pattern in zip(lines[:5], TXT_HEADER, strict=True):
        assert re.fullmatch(pattern, line), line
    values = [float(v) for v in lines[5].split()]
    assert len(values) == 7
    assert re.fullmatch(r"(-?\d+\.\d{6} ){6}-?\d+\.\d{6}", lines[5])
    expected = [
        1.0,
        result.defocus_u_a,
        result.defocus_v_a,
        result.azimuth_deg,
        result.phase_shift_rad,
        result.cross_correlation,
        result.fit_resolution_a,
    ]
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=1e-7)
    # what parsers of ctffind files do: skip comments, take the columns
    data = np.loadtxt(result.output_txt_path, comments="#")
    assert data.shape == (7,)


def test_the_avrot_file_is_ctffind_41_and_parses_back(estimated):
    _, result = estimated
    lines = result.avrot_path.read_text().splitlines()
    assert len(lines) == 11
    for line, pattern in zip(lines[:5], AVROT_HEADER, strict=True):
        assert re.fullmatch(pattern, line), line
    rows = np.loadtxt(result.avrot_path, comments="#")
    n_bins = int(np.ceil(512 / np.sqrt(2)))
    assert rows.shape == (6, n_bins)
    frequency, rotational, astig, fit, cc, sigma2 = rows
    # bins of 1 / (tile edge in Å): 1.2 Å pixels are fitted as ~1.4 Å ones, from larger tiles
    tile, box, _ = spectrum_geometry((1024, 1024), pixel_size_a=1.2, box_px=512, max_res_a=5.0)
    assert (tile, box) == (600, 512)
    np.testing.assert_allclose(frequency, np.arange(n_bins) / (tile * 1.2), atol=1e-6)
    # the CTF fit is |CTF| at the mean defocus: the amplitude contrast at the origin, ≤ 1
    assert fit[0] == pytest.approx(0.07, abs=1e-6)
    assert np.all((fit >= 0) & (fit <= 1))
    assert np.all(np.abs(cc) <= 1 + 1e-6)
    assert np.all(sigma2 > 0)
    # inside the fit resolution the corrected profile follows the fit, and better than without
    # the astigmatism correction
    band = (frequency > 1 / 20) & (frequency < 1 / result.fit_resolution_a)
    corrected = np.corrcoef(astig[band], fit[band])[0, 1]
    plain = np.corrcoef(rotational[band], fit[band])[0, 1]
    assert corrected > 0.6
    assert corrected > plain


def test_the_png_shows_spectrum_and_model_side_by_side_above_the_1d_fit(estimated):
    _, result = estimated
    with Image.open(result.diagnostic_png_path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (512, 512 + 200)
        rgb = np.asarray(picture.convert("RGB"), dtype=np.int64)
        pixels = np.asarray(picture.convert("L"), dtype=np.float64)[:512]
    # under the 2D picture, the 1D plot draws the fitted |CTF| in red and the fit resolution in green
    plot = rgb[512:]
    red = (plot[..., 0] > 180) & (plot[..., 1] < 80) & (plot[..., 2] < 80)
    green = (plot[..., 1] > 120) & (plot[..., 0] < 60) & (plot[..., 2] < 90)
    assert red.sum() > 500
    fit_column = 6 + (1 / result.fit_resolution_a - 1 / 60) / (1 / (2 * 600 * 1.2 / 512) - 1 / 60) * 500
    assert abs(np.median(np.nonzero(green)[1]) - fit_column) < 3
    # the fitted CTF², computed here from the reported numbers, on the 512² grid of 600 px tiles
    ctf = ctf_2d(
        (512, 512),
        pixel_size_a=600 * 1.2 / 512,
        voltage_kv=300.0,
        cs_mm=2.7,
        defocus_u_a=result.defocus_u_a,
        defocus_v_a=result.defocus_v_a,
        azimuth_deg=result.azimuth_deg,
        half=False,
    )
    model = np.fft.fftshift(ctf.astype(np.float64) ** 2)
    c = np.arange(512) - 256
    radius = np.hypot(c[:, None], c[None, :])
    fitted = (radius > 50) & (radius < 600 * 1.2 / result.fit_resolution_a)
    right = fitted.copy()
    right[:, :262] = False
    left = fitted.copy()
    left[:, 250:] = False
    # right half: the model itself; left half: the spectrum, whose rings follow the model
    assert np.corrcoef(pixels[right], model[right])[0, 1] > 0.95
    assert np.corrcoef(pixels[left], model[left])[0, 1] > 0.1


def test_the_stem_and_the_output_folder_are_as_given(tmp_path, micrograph):
    image = micrograph(22, shape=(512, 512), pixel_size_a=1.2, defocus_u_a=12000.0, defocus_v_a=12000.0, azimuth_deg=0)
    path = tmp_path / "in" / "movie_0007_sum.mrc"
    path.parent.mkdir()
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    out = tmp_path / "deep" / "ctf"
    result = estimate_ctf(path, out, OPTICS, PARAMS, stem="movie_0007")
    assert result.output_txt_path == out / "movie_0007.txt"
    assert sorted(p.name for p in out.iterdir()) == ["movie_0007.png", "movie_0007.txt", "movie_0007_avrot.txt"]


def test_a_micrograph_smaller_than_the_box_uses_a_smaller_box(tmp_path, micrograph):
    image = micrograph(23, shape=(384, 400), pixel_size_a=1.2, defocus_u_a=12000.0, defocus_v_a=12000.0, azimuth_deg=0)
    path = tmp_path / "small.mrc"
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    result = estimate_ctf(path, tmp_path, OPTICS, PARAMS)
    tile, box, _ = spectrum_geometry((384, 400), pixel_size_a=1.2, box_px=512, max_res_a=5.0)
    assert (tile, box) == (384, 328)
    assert f"# Box size: {box} pixels" in result.output_txt_path.read_text()
    assert (result.defocus_u_a + result.defocus_v_a) / 2 == pytest.approx(12000.0, rel=0.02)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.ones((3, 256, 256), np.float32), "2D"),
        (np.full((256, 256), 7.0, np.float32), "blank"),
        (np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32), "too small"),
    ],
    ids=["stack", "blank", "tiny"],
)
def test_unusable_input_is_a_clear_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.mrc"
    write_mrc_atomic(path, data, pixel_size_a=1.2)
    with pytest.raises(ValueError, match=message) as err:
        estimate_ctf(path, tmp_path / "out", OPTICS, PARAMS)
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_empty_micrograph_is_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.mrc"
    write_mrc_atomic(path, np.zeros((0, 0), np.float32), pixel_size_a=1.2)
    with pytest.raises(ValueError, match="empty") as err:
        estimate_ctf(path, tmp_path / "out", OPTICS, PARAMS)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not an MRC file at all"], ids=["zero-bytes", "garbage"])
def test_a_file_that_is_not_mrc_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.mrc"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        estimate_ctf(path, tmp_path / "out", OPTICS, PARAMS)


def test_a_fitting_band_beyond_nyquist_is_a_clear_error(tmp_path, micrograph):
    image = micrograph(24, shape=(256, 256), pixel_size_a=1.2, defocus_u_a=12000.0, defocus_v_a=12000.0, azimuth_deg=0)
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    coarse = Optics(pixel_size_a=20.0)
    with pytest.raises(ValueError, match="Nyquist") as err:
        estimate_ctf(path, tmp_path, coarse, PARAMS)
    assert str(path) in str(err.value)


def test_the_engine_has_a_version():
    assert isinstance(ENGINE_VERSION, str) and ENGINE_VERSION


def test_outputs_are_written_through_temporary_names(tmp_path, micrograph, monkeypatch):
    # a failure while writing leaves no partial results file behind
    image = micrograph(25, shape=(512, 512), pixel_size_a=1.2, defocus_u_a=12000.0, defocus_v_a=12000.0, azimuth_deg=0)
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    from emlive.ctf import native

    def broken_png(dest: Path, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(native, "_write_picture", broken_png)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        estimate_ctf(path, out, OPTICS, PARAMS)
    assert not (out / "m.txt").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("pixel_a", "max_res_a", "shape", "expected"),
    [
        (1.5, 5.0, (4096, 4096), (512, 512, 1.5)),  # coarse enough: tiles are the box
        (1.0, 5.0, (4096, 4096), (720, 512, 1.40625)),  # binned to ~1.4 Å from 720 px tiles
        (0.66, 5.0, (4096, 4096), (1088, 512, 1.4025)),
        (1.0, 2.5, (4096, 4096), (600, 512, 1.171875)),  # Nyquist kept 10 % beyond 2.5 Å
        (1.0, 5.0, (600, 640), (600, 428, 600 / 428)),  # shrunk to fit
    ],
)
def test_the_spectrum_geometry_bins_small_pixels_like_ctffind(pixel_a, max_res_a, shape, expected):
    tile, box, fit_pixel_a = spectrum_geometry(shape, pixel_size_a=pixel_a, box_px=512, max_res_a=max_res_a)
    assert (tile, box) == expected[:2]
    assert fit_pixel_a == pytest.approx(expected[2])
    assert fit_pixel_a == pytest.approx(tile * pixel_a / box)
    assert tile % 2 == 0 and box % 2 == 0


def test_a_micrograph_of_pure_noise_says_no_fit_in_every_output(tmp_path, micrograph):
    image = micrograph(26, contrast=0.0, pixel_size_a=1.2, defocus_u_a=15000.0, defocus_v_a=15000.0, azimuth_deg=0)
    path = tmp_path / "noise.mrc"
    write_mrc_atomic(path, image, pixel_size_a=1.2)
    result = estimate_ctf(path, tmp_path / "out", OPTICS, PARAMS)
    assert result.fit_ok is False
    assert result.fit_resolution_a == PARAMS.min_res_a
    assert result.cross_correlation < 0.1
    assert result.ice_ring_ratio == pytest.approx(1.0, abs=0.1)
    lines = result.output_txt_path.read_text().splitlines()
    # ctffind's five comment lines, one saying there is no fit, and still the row of seven numbers
    assert len(lines) == 7
    assert lines[5] == NO_FIT_COMMENT
    assert np.loadtxt(result.output_txt_path, comments="#").shape == (7,)
    with Image.open(result.diagnostic_png_path) as picture:
        plot = np.asarray(picture.convert("RGB"), dtype=np.int64)[512:]
    # the plot says NO FIT in large red letters across its middle
    red = (plot[..., 0] > 180) & (plot[..., 1] < 60) & (plot[..., 2] < 60)
    assert red[60:140, 150:360].sum() > 400


def test_a_fitted_micrograph_is_fit_ok_with_an_ice_measure(estimated):
    _, result = estimated
    assert result.fit_ok is True
    assert result.ice_ring_ratio == pytest.approx(1.0, abs=0.1)
    assert NO_FIT_COMMENT not in result.output_txt_path.read_text()


def test_the_astigmatism_restraint_is_a_parameter():
    assert CtfParams().expected_astigmatism_a is None
    assert CtfParams(expected_astigmatism_a=200.0).expected_astigmatism_a == 200.0
    with pytest.raises(ValueError, match="expected_astigmatism_a"):
        CtfParams(expected_astigmatism_a=-1.0)
