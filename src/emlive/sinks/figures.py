"""Summary figures of a dataset: one histogram per metric, drawn with Pillow as PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["histogram_png"]

_SIZE_PX = (640, 400)
_MARGIN_PX = (60, 30, 20, 50)  # left, top, right, bottom
_BAR = (31, 90, 180)
_AXIS = (60, 60, 60)


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"


def histogram_png(values: np.ndarray, *, title: str, unit: str = "", bins: int = 20) -> bytes:
    """A histogram of the finite ``values`` as a PNG: bars, the count axis, the value range
    under the x axis, and ``title`` (with ``unit``) and the number of values above it."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    width, height = _SIZE_PX
    left, top, right, bottom = _MARGIN_PX
    picture = Image.new("RGB", _SIZE_PX, "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    heading = f"{title}{f' ({unit})' if unit else ''}: {len(data)} micrographs"
    draw.text((left, 8), heading, fill=_AXIS, font=font)
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.line([(x0, y1), (x1, y1)], fill=_AXIS)
    draw.line([(x0, y0), (x0, y1)], fill=_AXIS)
    if len(data):
        low, high = float(data.min()), float(data.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        counts, edges = np.histogram(data, bins=bins, range=(low, high))
        peak = max(int(counts.max()), 1)
        scale_x = (x1 - x0) / (high - low)
        for count, start, end in zip(counts, edges[:-1], edges[1:], strict=True):
            if count:
                bar_top = y1 - (y1 - y0) * count / peak
                draw.rectangle(
                    [x0 + (start - low) * scale_x + 1, bar_top, x0 + (end - low) * scale_x - 1, y1 - 1], fill=_BAR
                )
        draw.text((x0, y1 + 6), _label(low), fill=_AXIS, font=font)
        draw.text((x1 - 40, y1 + 6), _label(high), fill=_AXIS, font=font)
        draw.text((4, y0), str(peak), fill=_AXIS, font=font)
        draw.text((4, y1 - 12), "0", fill=_AXIS, font=font)
        median = float(np.median(data))
        if math.isfinite(median):
            mx = x0 + (median - low) * scale_x
            draw.line([(mx, y0), (mx, y1)], fill=(200, 40, 40))
            draw.text(((x0 + x1) / 2 - 60, y1 + 24), f"median {_label(median)}", fill=(200, 40, 40), font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
