"""The native CTF engine: a micrograph in, ctffind-4.1-format results and a diagnostic PNG out.

The only part of CTF estimation that touches files. It maps the micrograph (MRC) from the file,
averages its amplitude spectrum onto the Fourier grid of the spectrum box
(:mod:`emlive.ctf.spectrum`), fits the CTF (:mod:`emlive.ctf.search`) and writes, each
atomically:

- ``OUT/<stem>.txt``: ctffind 4.1's results file (five comment lines, then one line of seven
  numbers: micrograph number, defocus 1 and 2 (Å), azimuth (°), additional phase shift (rad),
  cross-correlation, resolution (Å) to which Thon rings were fitted). When no Thon rings were
  found (``fit_ok`` false) the row is still written — the best guess, a low score and the
  lowest fitted resolution — after a sixth comment line that says so;
- ``OUT/<stem>_avrot.txt``: ctffind 4.1's 1D profiles (five comment lines, then six lines:
  spatial frequency (1/Å), rotational average, astigmatism-corrected rotational average, CTF
  fit, windowed cross-correlation of spectrum and fit, 2σ of that correlation for noise);
- ``OUT/<stem>.png``: the background-subtracted spectrum (left half) beside the fitted
  model CTF² (right half), above the 1D profile of the spectrum with the fit (a palette PNG).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
from PIL import Image, ImageDraw, ImageFont

from emlive.acquisition import Optics
from emlive.ctf.search import FitProfile, Microscope, SpectrumFit, ctf_squared_image, fit_spectrum
from emlive.ctf.spectrum import average_amplitude_spectrum, ice_ring_ratio, radius_grid_px
from emlive.ctf.types import CtfParams, CtfResult
from emlive.io.atomic import atomic_path, atomic_write_text
from emlive.io.movie import open_movie
from emlive.io.png import to_uint8

__all__ = [
    "CTFFIND_FORMAT_VERSION",
    "ENGINE_VERSION",
    "NO_FIT_COMMENT",
    "diagnostic_image",
    "diagnostic_picture",
    "estimate_ctf",
    "format_avrot",
    "format_results",
    "profile_plot",
    "spectrum_geometry",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "3"
# The ctffind release whose output format the files follow.
CTFFIND_FORMAT_VERSION = "4.1.14"
# Smallest spectrum box that still resolves Thon rings usefully.
_MIN_TILE_PX = 64
# Smaller pixels are binned to this for fitting (as ctffind does): the box then spans more Å
# and samples the Thon rings of a high defocus finely enough. Never coarser than lets
# Nyquist lie 10 % beyond the highest resolution fitted.
FIT_PIXEL_SIZE_A = 1.4

# The comment line before the results row of a micrograph without a fit.
NO_FIT_COMMENT = (
    "# No Thon rings found (score not significant above noise): the values below are a guess, "
    "not a fit; reject this micrograph"
)
# Size of the 1D profile plot under the 2D picture in the PNG, px.
_PLOT_HEIGHT_PX = 200
_PICTURE_SIZE_PX = 512
# Colours of the 1D plot (RGB).
_WHITE = (255, 255, 255)
_BAND = (238, 242, 250)
_FRAME = (120, 120, 120)
_TICK = (80, 80, 80)
_LABEL = (60, 60, 60)
_SPECTRUM = (110, 110, 110)
_CORRELATION = (40, 90, 220)
_FIT = (220, 30, 30)
_RESOLUTION = (20, 150, 40)
_NO_FIT = (220, 0, 0)
# The PNG is a palette picture (a byte per pixel, a third of RGB's to compress): greys for the
# spectrum, then the plot's colours.
_GREYS = 240
_PALETTE = [
    *(round(i * 255 / (_GREYS - 1)) for i in range(_GREYS) for _ in range(3)),
    *(c for colour in (_WHITE, _BAND, _FRAME, _TICK, _LABEL, _SPECTRUM, _CORRELATION, _FIT, _RESOLUTION, _NO_FIT) for c in colour),
]

_TXT_COLUMNS = (
    "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
    "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
    "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
)
_AVROT_ROWS = (
    "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); "
    "#2 - 1D rotational average of spectrum (assuming no astigmatism); "
    "#3 - 1D rotational average of spectrum; #4 - CTF fit; "
    "#5 - cross-correlation between spectrum and CTF fit; "
    "#6 - 2sigma of expected cross correlation of noise"
)


def _header(
    micrograph: Path,
    optics: Optics,
    params: CtfParams,
    *,
    tile_px: int,
    run_at: datetime,
    avrot: bool,
) -> list[str]:
    """ctffind 4.1's comment lines. As ctffind does, the defocus range is written in Å under
    a "um" label: parsers of ctffind files expect exactly this text."""
    box = (
        f"# Box size: {tile_px} pixels ; min. res.: {params.min_res_a:.1f} Angstroms ; "
        f"max. res.: {params.max_res_a:.1f} Angstroms ; min. def.: {params.min_defocus_a:.1f} um; "
        f"max. def. {params.max_defocus_a:.1f} um"
    )
    if avrot:
        box += "; num. frames averaged: 1"
    return [
        f"# Output from CTFFind version {CTFFIND_FORMAT_VERSION} format by emlive native CTF "
        f"{ENGINE_VERSION}, run on {run_at:%Y-%m-%d %H:%M:%S}",
        f"# Input file: {micrograph} ; Number of micrographs: 1",
        f"# Pixel size: {optics.pixel_size_a:.3f} Angstroms ; acceleration voltage: {optics.voltage_kv:.1f} keV ; "
        f"spherical aberration: {optics.cs_mm:.2f} mm ; amplitude contrast: {optics.amplitude_contrast:.2f}",
        box,
        _AVROT_ROWS if avrot else _TXT_COLUMNS,
    ]


def format_results(header: Sequence[str], result: SpectrumFit) -> str:
    """The text of ctffind's ``<stem>.txt``: header lines, then the seven numbers of micrograph 1.

    Without a fit (``result.fit_ok`` false) :data:`NO_FIT_COMMENT` precedes the numbers.
    """
    fit = result.fit
    values = (
        1.0,
        fit.defocus_u_a,
        fit.defocus_v_a,
        fit.azimuth_deg,
        fit.phase_shift_rad,
        fit.cross_correlation,
        result.profile.fit_resolution_a,
    )
    comments = [*header] if result.fit_ok else [*header, NO_FIT_COMMENT]
    return "\n".join([*comments, " ".join(f"{v:.6f}" for v in values)]) + "\n"


def format_avrot(header: Sequence[str], profile: FitProfile) -> str:
    """The text of ctffind's ``<stem>_avrot.txt``: header lines, then six rows of numbers."""
    rows = (
        profile.frequency_a,
        profile.rotational_average,
        profile.astig_average,
        profile.ctf_fit,
        profile.fit_cc,
        profile.noise_cc_2sigma,
    )
    lines = [" ".join(f"{v:.6f}" for v in np.asarray(row, dtype=np.float64)) for row in rows]
    return "\n".join([*header, *lines]) + "\n"


def diagnostic_image(result: SpectrumFit, optics: Optics, fit_pixel_size_a: float) -> np.ndarray:
    """Left half: the background-subtracted spectrum; right half: the fitted CTF², centred.

    ``fit_pixel_size_a`` is the pixel size the spectrum was fitted at (see
    :func:`spectrum_geometry`).

    The spectrum is lightly smoothed (3×3 mean) so that rings read through the noise, and
    scaled to 0…1 between its 1st and 99th percentiles over the fitted region; the model is
    CTF² (0…1) out to the fit resolution and mid-grey beyond, so that the picture shows how
    far the rings were fitted.
    """
    spectrum = scipy.ndimage.uniform_filter(np.asarray(result.normalised, dtype=np.float32), size=3)
    tile = spectrum.shape[0]
    microscope = Microscope(optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast)
    model = ctf_squared_image(tile, result.fit, microscope, pixel_size_a=fit_pixel_size_a)
    fitted = np.asarray(result.normalised) != 0
    if fitted.any():
        lo, hi = np.percentile(spectrum[fitted], [1.0, 99.0])
        spectrum = np.clip((spectrum - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    spectrum = np.where(fitted, spectrum, 0.5)
    fit_radius_px = tile * fit_pixel_size_a / result.profile.fit_resolution_a
    model = np.where(fitted & (radius_grid_px(tile) <= fit_radius_px), model, 0.5)
    picture = spectrum
    picture[:, tile // 2 :] = model[:, tile // 2 :]
    return picture.astype(np.float32)


def _plot_y(values: np.ndarray, lo: float, hi: float, top: int, bottom: int) -> np.ndarray:
    return bottom - (np.clip(values, lo, hi) - lo) / (hi - lo) * (bottom - top)


def profile_plot(
    profile: FitProfile,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    fit_ok: bool,
    width_px: int = _PICTURE_SIZE_PX,
    height_px: int = _PLOT_HEIGHT_PX,
) -> Image.Image:
    """The 1D profile with the fit, as ctffind's diagnostic plots show it (RGB picture).

    Against spatial frequency (tick labels in Å) from half the lowest fitted frequency to
    Nyquist of ``pixel_size_a`` (the pixel the spectrum was fitted at): the astigmatism-corrected rotational average of the spectrum scaled onto |CTF|
    (grey), the fitted |CTF| (red), their windowed correlation (blue, 0…1 on the same axis),
    the fitting band (light background) and the fit resolution (green line). Without a fit a
    red "NO FIT" is written across it.
    """
    picture = Image.new("RGB", (width_px, height_px), _WHITE)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=12)
    left, right, top, bottom = 6, width_px - 6, 6, height_px - 18
    freq = np.asarray(profile.frequency_a, dtype=np.float64)
    k_lo, nyquist = 0.5 / min_res_a, 0.5 / pixel_size_a

    def x_of(k: np.ndarray | float) -> np.ndarray:
        return left + (np.asarray(k, dtype=np.float64) - k_lo) / max(nyquist - k_lo, 1e-12) * (right - left)

    band_lo, band_hi = float(x_of(1.0 / min_res_a)), float(x_of(min(1.0 / max_res_a, nyquist)))
    draw.rectangle([band_lo, top, band_hi, bottom], fill=_BAND)
    draw.rectangle([left, top, right, bottom], outline=_FRAME)
    for res_a in (20.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5):
        if k_lo < 1.0 / res_a <= nyquist:
            x = float(x_of(1.0 / res_a))
            draw.line([x, bottom, x, bottom + 3], fill=_TICK)
            draw.text((x, bottom + 4), f"{res_a:g}", fill=_LABEL, font=font, anchor="mt")
    shown = (freq >= k_lo) & (freq <= nyquist)
    xs = x_of(freq[shown])
    curves = [
        (np.asarray(profile.astig_average)[shown], _SPECTRUM),
        (np.asarray(profile.fit_cc)[shown], _CORRELATION),
        (np.asarray(profile.ctf_fit)[shown], _FIT),
    ]
    for values, colour in curves:
        ys = _plot_y(np.asarray(values, dtype=np.float64), -0.25, 1.25, top, bottom)
        if xs.size > 1:
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=1)
    if fit_ok and k_lo < 1.0 / profile.fit_resolution_a <= nyquist:
        x = float(x_of(1.0 / profile.fit_resolution_a))
        draw.line([x, top, x, bottom], fill=_RESOLUTION, width=2)
        draw.text((x - 3, top + 2), f"fit {profile.fit_resolution_a:.1f} Å", fill=_RESOLUTION, font=font, anchor="ra")
    if not fit_ok:
        big = ImageFont.load_default(size=40)
        draw.text((width_px // 2, (top + bottom) // 2), "NO FIT", fill=_NO_FIT, font=big, anchor="mm")
    return picture


def diagnostic_picture(
    result: SpectrumFit, optics: Optics, fit_pixel_size_a: float, *, min_res_a: float, max_res_a: float
) -> Image.Image:
    """The diagnostic PNG's picture: :func:`diagnostic_image` (512 px wide, box-averaged from a
    larger box) above :func:`profile_plot` of the same width, as a palette picture (mode "P")."""
    image = diagnostic_image(result, optics, fit_pixel_size_a)
    factor = max(1, int(np.ceil(image.shape[0] / _PICTURE_SIZE_PX)))
    size = max(1, round(image.shape[0] / factor))
    if size != image.shape[0]:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX))
    grey = to_uint8(image, low_percentile=0.0, high_percentile=100.0)
    plot = profile_plot(
        result.profile,
        pixel_size_a=fit_pixel_size_a,
        min_res_a=min_res_a,
        max_res_a=max_res_a,
        fit_ok=result.fit_ok,
        width_px=size,
    )
    palette = Image.new("P", (1, 1))
    palette.putpalette(_PALETTE)
    indices = np.empty((size + plot.height, size), dtype=np.uint8)
    indices[:size] = (grey.astype(np.uint16) * (_GREYS - 1) + 127) // 255
    indices[size:] = np.asarray(plot.quantize(palette=palette, dither=Image.Dither.NONE))
    picture = Image.frombytes("P", (size, indices.shape[0]), indices.tobytes())
    picture.putpalette(_PALETTE)
    return picture


def _write_picture(path: Path, picture: Image.Image) -> None:
    # the fastest zlib level: a noisy spectrum hardly compresses, and level 6 costs ~0.2 s
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", compress_level=1)


def spectrum_geometry(
    shape: tuple[int, int], *, pixel_size_a: float, box_px: int, max_res_a: float
) -> tuple[int, int, float]:
    """Tile size (px), spectrum box (px) and the pixel size (Å) the spectrum is fitted at.

    The spectrum is sampled as a tile's would be (:func:`emlive.ctf.spectrum.average_amplitude_spectrum`).
    Micrographs with pixels smaller than :data:`FIT_PIXEL_SIZE_A` (or than ``max_res_a / 2.2``,
    whichever is smaller) get proportionally larger tiles (rounded up to an even, FFT-friendly
    size), whose spectra are cropped to ``box_px``: the fitted spectrum then has bins of
    ``1 / (tile · pixel_size_a)``. Both shrink to fit a small micrograph.
    """
    target_a = max(pixel_size_a, min(FIT_PIXEL_SIZE_A, max_res_a / 2.2))
    limit = min(shape) // 2 * 2
    tile = int(np.ceil(box_px * target_a / pixel_size_a / 2.0)) * 2
    fast = scipy.fft.next_fast_len(tile, real=True)
    tile = fast if fast % 2 == 0 else tile
    if tile > limit:
        tile = limit
    box = min(box_px, int(tile * pixel_size_a / target_a) // 2 * 2)
    return tile, box, tile * pixel_size_a / box


def _load_micrograph(micrograph: Path, optics: Optics) -> np.ndarray:
    """The micrograph [y, x] as stored: an MRC's data mapped read-only from the file (no copy;
    the FFT's input is the one pass over it), other formats read. Raises ``ValueError`` naming
    the file for a damaged or empty file (:class:`MovieFormatError`) or a stack."""
    with open_movie(micrograph) as movie:
        header = movie.header
        if header.n_frames != 1:
            raise ValueError(
                f"{micrograph}: expected one 2D micrograph, got {header.n_frames} images of "
                f"{header.shape[0]}×{header.shape[1]} px; CTF estimation needs a single (motion-corrected) image"
            )
        mapped = movie.memmap()
        image = mapped[0] if mapped is not None else movie.frames()[0]
    header_pixel_a = header.pixel_size_a
    if header_pixel_a is not None and abs(header_pixel_a - optics.pixel_size_a) > 0.01 * optics.pixel_size_a:
        log.warning(
            "%s: header pixel size %.4f Å differs from the given %.4f Å; using the given one",
            micrograph,
            header_pixel_a,
            optics.pixel_size_a,
        )
    return image


def _check_spectrum(micrograph: Path, image: np.ndarray, spectrum: np.ndarray) -> None:
    """What a pass over the pixels would find, read from their spectrum (which saw them all):
    non-finite values spread to every frequency; a blank image has none but zero."""
    if not np.isfinite(spectrum).all():
        raise ValueError(f"{micrograph}: the micrograph contains NaN or infinite values")
    if not spectrum.any():
        raise ValueError(f"{micrograph}: the micrograph is blank (every pixel is {image.flat[0]}); nothing to fit")


def estimate_ctf(
    micrograph: Path,
    out_dir: Path,
    optics: Optics,
    params: CtfParams,
    *,
    stem: str | None = None,
    workers: int | None = None,
) -> CtfResult:
    """Estimate the CTF of ``micrograph`` (MRC) and write ctffind-format results to ``out_dir``.

    ``stem`` names the outputs (default: the micrograph's stem); ``workers`` is the number of
    FFT threads (``scipy.fft`` semantics; ``None`` = 1). The fitted spectrum is a box of
    ``params.tile_size_px``; pixels smaller than ~1.4 Å are binned to ~1.4 Å for fitting,
    as ctffind does (:func:`spectrum_geometry`), and a micrograph smaller than the tiles gets
    smaller ones. Raises ``ValueError`` naming the file for an unreadable, empty, blank or
    non-2D input, one too small to fit, or a fitting band beyond Nyquist.
    """
    micrograph = Path(micrograph)
    out_dir = Path(out_dir)
    stem = stem or micrograph.stem
    started = time.perf_counter()
    image = _load_micrograph(micrograph, optics)
    tile, box, fit_pixel_a = spectrum_geometry(
        (image.shape[0], image.shape[1]),
        pixel_size_a=optics.pixel_size_a,
        box_px=params.tile_size_px,
        max_res_a=params.max_res_a,
    )
    if box < _MIN_TILE_PX:
        raise ValueError(
            f"{micrograph}: the micrograph ({image.shape[0]}×{image.shape[1]} px) is too small for CTF "
            f"estimation (at least {_MIN_TILE_PX}×{_MIN_TILE_PX} px)"
        )
    if box != params.tile_size_px:
        log.info("%s: spectrum box reduced from %d to %d px to fit the micrograph", micrograph, params.tile_size_px, box)
    spectrum = average_amplitude_spectrum(image, tile_size_px=tile, out_size_px=box, workers=workers)
    _check_spectrum(micrograph, image, spectrum)
    try:
        result = fit_spectrum(
            spectrum,
            Microscope(optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast),
            pixel_size_a=fit_pixel_a,
            min_res_a=params.min_res_a,
            max_res_a=params.max_res_a,
            min_defocus_a=params.min_defocus_a,
            max_defocus_a=params.max_defocus_a,
            fit_phase_shift=params.fit_phase_shift,
            expected_astigmatism_a=params.expected_astigmatism_a,
        )
    except ValueError as err:
        raise ValueError(f"{micrograph}: {err}") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    txt_path = out_dir / f"{stem}.txt"
    avrot_path = out_dir / f"{stem}_avrot.txt"
    png_path = out_dir / f"{stem}.png"
    run_at = datetime.now()
    avrot_header = _header(micrograph, optics, params, tile_px=box, run_at=run_at, avrot=True)
    txt_header = _header(micrograph, optics, params, tile_px=box, run_at=run_at, avrot=False)
    atomic_write_text(avrot_path, format_avrot(avrot_header, result.profile))
    _write_picture(
        png_path,
        diagnostic_picture(result, optics, fit_pixel_a, min_res_a=params.min_res_a, max_res_a=params.max_res_a),
    )
    # the results file last: its presence means the other outputs are complete
    atomic_write_text(txt_path, format_results(txt_header, result))
    fit = result.fit
    ice = ice_ring_ratio(spectrum, pixel_size_a=fit_pixel_a)
    if not result.fit_ok:
        log.warning(
            "%s: no Thon rings found (CC %.3f, significance %.1f); the micrograph has no usable CTF fit",
            micrograph,
            fit.cross_correlation,
            result.significance,
        )
    log.info(
        "%s: defocus %.0f/%.0f Å, azimuth %.1f°, CC %.3f, fit to %.1f Å (%.2f s)",
        micrograph,
        fit.defocus_u_a,
        fit.defocus_v_a,
        fit.azimuth_deg,
        fit.cross_correlation,
        result.profile.fit_resolution_a,
        time.perf_counter() - started,
    )
    return CtfResult(
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        azimuth_deg=fit.azimuth_deg,
        phase_shift_rad=fit.phase_shift_rad,
        cross_correlation=fit.cross_correlation,
        fit_resolution_a=result.profile.fit_resolution_a,
        fit_ok=result.fit_ok,
        ice_ring_ratio=ice,
        output_txt_path=txt_path,
        avrot_path=avrot_path,
        diagnostic_png_path=png_path,
    )
