"""Per-tilt dose weighting by accumulated exposure, and Fourier binning of tilt stacks (pure).

Dose weighting attenuates each tilt's spectrum by the radiation damage its specimen had
already received when it was recorded: ``exp(-N / 2 Ne(k))`` with ``N`` the tilt's
pre-exposure (e/Å², from the acquisition order, not the angle) and ``Ne(k)`` the critical
exposure of Grant & Grigorieff (2015) (:func:`emlive.optics.critical_exposure_e_a2`, with its
voltage scaling). The filter is 1 at zero frequency, so each tilt keeps its mean. The damage
within a tilt's own exposure is the business of its movie's dose-weighted sum.

Binning is Fourier cropping (as :mod:`emlive.motion.dose` does for micrographs): each image's
half-spectrum is cut to the binned size, which is rounded to even sides, and the binned pixel
holds the mean of the pixels it replaces. The stack is transformed one image at a time so a
41 × 4096² stack never needs a second copy in memory; call it per tilt as tilts arrive.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from emlive.motion.align import fourier_crop
from emlive.motion.dose import binned_shape
from emlive.optics import critical_exposure_e_a2, frequency_grid

__all__ = ["bin_to", "dose_filter", "dose_weight"]


def dose_filter(
    shape: tuple[int, int], pre_exposure_e_per_a2: float, *, pixel_size_a: float, voltage_kv: float
) -> np.ndarray:
    """``exp(-N / 2 Ne(k))`` on the rfft2 grid of an image of ``shape``, float32."""
    if pre_exposure_e_per_a2 < 0:
        raise ValueError(f"pre-exposure must be non-negative, got {pre_exposure_e_per_a2} e/Å²")
    ky, kx = frequency_grid(shape, pixel_size_a=pixel_size_a, half=True)
    critical = critical_exposure_e_a2(np.sqrt(kx * kx + ky * ky), voltage_kv=voltage_kv).astype(np.float64)
    weights = np.exp(-pre_exposure_e_per_a2 / (2.0 * critical))
    weights[0, 0] = 1.0
    return weights.astype(np.float32)


def dose_weight(
    stack: np.ndarray,
    pre_exposure_e_per_a2: np.ndarray,
    *,
    pixel_size_a: float,
    voltage_kv: float,
    workers: int | None = None,
) -> np.ndarray:
    """Each tilt of ``stack`` (n, ny, nx) filtered by its pre-exposure (n,) e/Å²; float32 copy."""
    stack = np.asarray(stack)
    exposure = np.asarray(pre_exposure_e_per_a2, dtype=np.float64)
    if stack.ndim != 3 or exposure.shape != (stack.shape[0],):
        raise ValueError(
            f"need a stack (n, ny, nx) and n pre-exposures; got {stack.shape} and {exposure.shape}"
        )
    if not np.all(np.isfinite(exposure)):
        raise ValueError("pre-exposure is not finite for some tilts: the acquisition order is incomplete")
    shape = stack.shape[1:]
    out = np.empty(stack.shape, dtype=np.float32)
    for i in range(stack.shape[0]):
        spectrum = scipy.fft.rfft2(stack[i].astype(np.float32), workers=workers)
        spectrum *= dose_filter(shape, float(exposure[i]), pixel_size_a=pixel_size_a, voltage_kv=voltage_kv)
        out[i] = scipy.fft.irfft2(spectrum, s=shape, workers=workers)
    return out


def bin_to(
    stack: np.ndarray, *, pixel_size_a: float, target_pixel_size_a: float, workers: int | None = None
) -> tuple[np.ndarray, float]:
    """Fourier-bin ``stack`` (n, ny, nx) (or one image) to about ``target_pixel_size_a``.

    Returns the binned float32 stack and its exact pixel size (the sides are rounded to even
    numbers, so the factor is ``nx / nx'``). A target at or below ``pixel_size_a`` returns the
    stack unchanged (as float32).
    """
    stack = np.asarray(stack)
    if pixel_size_a <= 0 or target_pixel_size_a <= 0:
        raise ValueError(f"pixel sizes must be positive, got {pixel_size_a} and {target_pixel_size_a} Å")
    single = stack.ndim == 2
    images = stack[None] if single else stack
    factor = target_pixel_size_a / pixel_size_a
    shape = images.shape[1:]
    if factor <= 1.0:
        return stack.astype(np.float32), float(pixel_size_a)
    out_shape = binned_shape(shape, factor)
    scale = (out_shape[0] * out_shape[1]) / (shape[0] * shape[1])
    out = np.empty((images.shape[0], *out_shape), dtype=np.float32)
    for i in range(images.shape[0]):
        spectrum = fourier_crop(scipy.fft.rfft2(images[i].astype(np.float32), workers=workers), out_shape)
        out[i] = scipy.fft.irfft2(spectrum, s=out_shape, workers=workers) * scale
    return (out[0] if single else out), float(pixel_size_a * shape[1] / out_shape[1])
