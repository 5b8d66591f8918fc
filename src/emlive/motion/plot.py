"""The drift plot of a motion-corrected movie: a PNG drawn with Pillow, written atomically.

Left: the global trajectory (the content's path, the opposite of the corrections RELION
writes), frame 0 at the origin, in Å, with a circle on the first frame and dots on every frame.
Right (when there is a local model): the field of view with each patch's total path (global +
local) drawn at its centre, exaggerated by a stated factor so that differences show.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emlive.io.atomic import atomic_path

__all__ = ["write_drift_plot"]

_PANEL_PX = 400
_MARGIN_PX = 40
_BLUE = (31, 90, 180)
_RED = (200, 40, 40)
_GREY = (150, 150, 150)


def _nice_step(span: float) -> float:
    """A 1/2/5 × 10^k step giving about 4 ticks over ``span``."""
    raw = max(span, 1e-9) / 4.0
    power = 10.0 ** np.floor(np.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power:
            return float(factor * power)
    return float(10.0 * power)


def _global_panel(draw: ImageDraw.ImageDraw, path_a: np.ndarray, font: ImageFont.ImageFont, left: int) -> None:
    lo = path_a.min(axis=0)
    hi = path_a.max(axis=0)
    span = float(max((hi - lo).max(), 1.0)) * 1.15
    centre = (lo + hi) / 2.0
    inner = _PANEL_PX - 2 * _MARGIN_PX

    def to_px(p: np.ndarray) -> tuple[float, float]:
        x = left + _MARGIN_PX + (p[0] - centre[0] + span / 2) / span * inner
        y = _MARGIN_PX + (p[1] - centre[1] + span / 2) / span * inner  # y down, as images are drawn
        return float(x), float(y)

    box = (left + _MARGIN_PX, _MARGIN_PX, left + _PANEL_PX - _MARGIN_PX, _PANEL_PX - _MARGIN_PX)
    draw.rectangle(box, outline=_GREY)
    step = _nice_step(span)
    for axis in (0, 1):
        first = np.ceil((centre[axis] - span / 2) / step) * step
        for value in np.arange(first, centre[axis] + span / 2, step):
            if axis == 0:
                x, _ = to_px(np.array([value, centre[1]]))
                draw.line([(x, box[3]), (x, box[3] + 4)], fill=_GREY)
                draw.text((x - 8, box[3] + 6), f"{value:g}", fill=(0, 0, 0), font=font)
            else:
                _, y = to_px(np.array([centre[0], value]))
                draw.line([(box[0] - 4, y), (box[0], y)], fill=_GREY)
                draw.text((left + 2, y - 5), f"{value:g}", fill=(0, 0, 0), font=font)
    points = [to_px(p) for p in path_a]
    if len(points) > 1:
        draw.line(points, fill=_BLUE, width=2)
    for x, y in points:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_BLUE)
    x0, y0 = points[0]
    draw.ellipse((x0 - 5, y0 - 5, x0 + 5, y0 + 5), outline=_RED, width=2)
    draw.text((left + _MARGIN_PX, 8), "global drift (x, y), Å; o = frame 1", fill=(0, 0, 0), font=font)


def _local_panel(
    draw: ImageDraw.ImageDraw,
    centres_px: np.ndarray,
    tracks_px: np.ndarray,
    shape: tuple[int, int],
    font: ImageFont.ImageFont,
    left: int,
) -> None:
    ny, nx = shape
    inner = _PANEL_PX - 2 * _MARGIN_PX
    scale = inner / max(nx, ny)
    box = (left + _MARGIN_PX, _MARGIN_PX, left + _MARGIN_PX + nx * scale, _MARGIN_PX + ny * scale)
    draw.rectangle(box, outline=_GREY)
    paths = -(tracks_px - tracks_px[:, :1])  # content paths from frame 0
    local = paths - paths.mean(axis=0, keepdims=True)
    reach = float(np.abs(local).max(initial=0.0))
    n_patches = max(len(centres_px), 1)
    spacing = inner / max(np.sqrt(n_patches), 1.0)
    exaggeration = 0.4 * spacing / reach if reach > 0 else 1.0
    for centre, path in zip(centres_px, local, strict=True):
        cx, cy = box[0] + centre[0] * scale, box[1] + centre[1] * scale
        pts = [(float(cx + p[0] * scale * exaggeration), float(cy + p[1] * scale * exaggeration)) for p in path]
        if len(pts) > 1:
            draw.line(pts, fill=_BLUE, width=1)
        draw.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=_RED)
    draw.text(
        (left + _MARGIN_PX, 8),
        f"local paths at the patches (minus the mean path), x{exaggeration:.3g}",
        fill=(0, 0, 0),
        font=font,
    )


def write_drift_plot(
    path: str | os.PathLike[str],
    shifts_px: np.ndarray,
    *,
    pixel_size_a: float,
    local: tuple[np.ndarray, np.ndarray] | None = None,
    shape: tuple[int, int] | None = None,
    title: str = "",
) -> None:
    """Write the drift plot PNG to ``path`` atomically.

    ``shifts_px`` (n, 2) are the global corrections (RELION convention, px of size
    ``pixel_size_a``); the plot shows the content's path ``-shifts``. ``local`` is (patch
    centres (P, 2) px, total corrections at them (P, n, 2) px) on frames of ``shape`` (default:
    a square around the centres).
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    panels = 1 if local is None else 2
    image = Image.new("RGB", (panels * _PANEL_PX, _PANEL_PX + 20), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _global_panel(draw, -(shifts - shifts[0]) * pixel_size_a, font, 0)
    if local is not None:
        centres, tracks = (np.asarray(a, dtype=np.float64) for a in local)
        if shape is None:
            extent = 2.0 * centres.max(axis=0) - centres.min(axis=0) + 1.0
            shape = (int(extent[1]), int(extent[0]))
        _local_panel(draw, centres, tracks, shape, font, _PANEL_PX)
    if title:
        draw.text((_MARGIN_PX, _PANEL_PX + 2), title, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
