"""The native particle picker: a micrograph in, RELION coordinates and a picture out.

The only part of native picking that touches files. It reads the micrograph (MRC), picks it
with the template-free kernels of :mod:`emlive.pick.detect` and writes, each atomically:

- ``OUT/<stem>_picks.png``: the low-passed micrograph (at most 1024 px on its long side)
  with each pick circled at the particle diameter, excluded regions (carbon, contamination)
  tinted; written first;
- ``OUT/<stem>_autopick.star``: a RELION coordinate file as RELION's autopicking writes it
  (:func:`emlive.pick.outputs.write_autopick_star`, shared by every engine), one ``data_``
  block with a loop of rlnCoordinateX, rlnCoordinateY (pixels of the given
  micrograph: x = column, y = row as stored in the MRC array, row 0 first; the centre of
  pixel ``[j, i]`` is ``(i, j)``), rlnClassNumber (0: no template), rlnAutopickFigureOfMerit
  (the pick's score in noise σ, see :func:`emlive.pick.detect.score_map`) and rlnAnglePsi
  (-999: no angle, as RELION's LoG picker writes); written last, so its presence means the
  step finished.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emlive.acquisition import Optics
from emlive.ctf.types import CtfResult
from emlive.io.atomic import atomic_path
from emlive.io.mrc import read_mrc
from emlive.io.png import to_uint8
from emlive.pick.detect import CtfModel, PickError, Picks, pick_micrograph
from emlive.pick.outputs import PICK_COLOUR, write_autopick_star
from emlive.pick.types import PickParams, PickResult

__all__ = ["ENGINE_VERSION", "PICKS_PNG_MAX_PX", "PickError", "pick_particles", "picks_picture"]

log = logging.getLogger(__name__)

ENGINE_VERSION = "native-1"
# Longest side of the picture of the picks, px.
PICKS_PNG_MAX_PX = 1024
# FFT threads: the service runs one picking task per core pair.
_WORKERS = 2


def picks_picture(picks: Picks, *, diameter_a: float, max_size_px: int = PICKS_PNG_MAX_PX) -> Image.Image:
    """An RGB picture of the low-passed micrograph with the picks circled (pure: no file).

    The working image (already low-passed to about a sixteenth of the diameter) is shown at
    most ``max_size_px`` on its long side, contrast-stretched on the ice; excluded carbon and
    contamination are tinted orange; each pick is a green circle of the particle's diameter
    (the colour of :mod:`emlive.pick.outputs`' pictures).
    """
    working = picks.working
    image = working.image
    factor = max(1, math.ceil(max(image.shape) / max_size_px))
    if factor > 1:
        cy, cx = image.shape[0] // factor, image.shape[1] // factor
        image = image[: cy * factor, : cx * factor].reshape(cy, factor, cx, factor).mean(axis=(1, 3))
    excluded = (picks.mask.carbon | picks.mask.contamination)[::factor, ::factor][: image.shape[0], : image.shape[1]]
    # contrast from the ice: carbon and contamination are darker and would flatten it
    ice = image[~excluded] if (~excluded).sum() > 16 else image.ravel()
    lo, hi = np.percentile(ice, [0.5, 99.5])
    grey = to_uint8(np.clip(image, lo, hi)) if hi > lo else to_uint8(image)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if excluded.any():
        tint = np.array([255, 140, 0], dtype=np.float32)
        rgb[excluded] = (0.6 * rgb[excluded] + 0.4 * tint).astype(np.uint8)
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    # input px -> picture px (a picture pixel averages ``factor`` working pixels)
    sx = 1.0 / (working.scale_xy[0] * factor)
    sy = 1.0 / (working.scale_xy[1] * factor)
    shift = 0.5 * (factor - 1) / factor
    radius = 0.5 * diameter_a / (working.pixel_size_a * factor)
    width = max(1, round(radius / 8))
    for x, y in picks.xy_px:
        px = (x - working.offset_px) * sx - shift
        py = (y - working.offset_px) * sy - shift
        draw.ellipse((px - radius, py - radius, px + radius, py + radius), outline=PICK_COLOUR, width=width)
    return picture


def _ctf_model(optics: Optics | None, ctf: CtfResult | None) -> CtfModel | None:
    if ctf is None:
        return None
    optics = optics or Optics(pixel_size_a=1.0)  # only its voltage, Cs and amplitude contrast are used
    return CtfModel(
        defocus_u_a=ctf.defocus_u_a,
        defocus_v_a=ctf.defocus_v_a,
        azimuth_deg=ctf.azimuth_deg,
        voltage_kv=optics.voltage_kv,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        phase_shift_rad=ctf.phase_shift_rad,
    )


def pick_particles(
    micrograph: Path,
    out_dir: Path,
    params: PickParams,
    *,
    pixel_size_a: float,
    stem: str | None = None,
    optics: Optics | None = None,
    ctf: CtfResult | None = None,
) -> PickResult:
    """Pick the particles of one micrograph; write ``<stem>_picks.png`` then ``<stem>_autopick.star``.

    ``micrograph`` is an MRC image ``[y, x]`` of ``pixel_size_a`` Å per pixel (the argument
    wins over the header). ``params.diameter_a`` (Å) is required; ``params.min_distance_a``
    (default 0.75 diameters) and ``params.threshold`` (a z-score, the score's noise σ;
    default chosen per micrograph, see :func:`emlive.pick.detect.automatic_threshold`)
    override the engine's choices. ``optics`` gives the voltage, Cs and amplitude contrast
    (its pixel size is ignored; default 300 kV, 2.7 mm, 0.07) and ``ctf`` the defocus and
    phase shift for phase flipping; without ``ctf`` the micrograph is not flipped. ``stem``
    defaults to the micrograph's.

    Raises ValueError when the diameter is missing, :class:`emlive.io.errors.MovieFormatError`
    when the file cannot be read, :class:`PickError` when the micrograph cannot be picked
    (almost all carbon or contamination). Zero picks is a valid result.
    """
    if params.diameter_a is None:
        raise ValueError(
            f"{micrograph}: no particle diameter given; set the particle diameter in Å "
            "(--diameter, or diameter_a in [steps.pick]) to pick particles"
        )
    if not pixel_size_a > 0:
        raise ValueError(f"{micrograph}: pixel_size_a must be > 0 Å, got {pixel_size_a!r}")
    micrograph = Path(micrograph)
    out_dir = Path(out_dir)
    stem = stem or micrograph.stem
    started = time.perf_counter()
    data, _ = read_mrc(micrograph)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise PickError(
            f"{micrograph}: a micrograph must be a single 2D image, got shape {data.shape}; "
            "pick a summed micrograph, not a movie"
        )
    read_s = time.perf_counter() - started
    try:
        picks = pick_micrograph(
            data,
            pixel_size_a=pixel_size_a,
            diameter_a=params.diameter_a,
            min_distance_a=params.min_distance_a,
            threshold=params.threshold,
            ctf=_ctf_model(optics, ctf),
            workers=_WORKERS,
        )
    except PickError as err:
        raise PickError(f"{micrograph}: {err}; skip this micrograph (it will have no particles)") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    png_path = out_dir / f"{stem}_picks.png"
    star_path = out_dir / f"{stem}_autopick.star"
    picture = picks_picture(picks, diameter_a=params.diameter_a)
    with atomic_path(png_path) as tmp:
        picture.save(tmp, format="PNG", compress_level=1)  # fast: the picture is mostly noise
    write_autopick_star(star_path, picks.xy_px, picks.scores)
    log.debug(
        "%s: %d picks (threshold %.2f σ, %.0f %% excluded) in %.2f s (read %.2f s)",
        micrograph,
        len(picks.xy_px),
        picks.threshold,
        100 * picks.masked_fraction,
        time.perf_counter() - started,
        read_s,
    )
    return PickResult(
        coordinates_path=star_path,
        picks_png_path=png_path,
        n_particles=len(picks.xy_px),
        masked_fraction=picks.masked_fraction,
    )
