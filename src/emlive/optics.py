"""Electron optics shared by the kernels: wavelength, frequency grids, the CTF, dose filters.

Pure functions of numbers and arrays. Conventions used everywhere in emlive:

- Arrays are indexed ``[y, x]`` (rows, columns); a real-FFT half-spectrum has shape
  ``(ny, nx // 2 + 1)`` as returned by ``scipy.fft.rfft2``.
- Spatial frequencies are in 1/Å.
- Defocus is in Å, positive for underfocus (ctffind and RELION convention).
- The astigmatism azimuth is the angle in degrees of the defocus-U axis from the +x axis,
  counter-clockwise towards +y.
"""

from __future__ import annotations

import numpy as np

# Grant & Grigorieff (2015) critical exposure at 300 kV: Ne(k) = a * k**b + c, k in 1/Å.
_CRITICAL_EXPOSURE_A = 0.245
_CRITICAL_EXPOSURE_B = -1.665
_CRITICAL_EXPOSURE_C = 2.81


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2642598 / np.sqrt(volts * (1.0 + 0.978475852e-6 * volts))


def frequency_grid(
    shape: tuple[int, int], *, pixel_size_a: float, half: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (ky, kx) in 1/Å for an image of ``shape`` (ny, nx).

    With ``half`` the grid matches ``rfft2`` output, otherwise ``fft2`` output (unshifted).
    """
    ny, nx = shape
    ky = np.fft.fftfreq(ny, d=pixel_size_a).astype(np.float32)
    kx = (np.fft.rfftfreq if half else np.fft.fftfreq)(nx, d=pixel_size_a).astype(np.float32)
    return ky[:, None], kx[None, :]


def ctf_chi(
    k2_a2: np.ndarray,
    angle_rad: np.ndarray,
    *,
    voltage_kv: float,
    cs_mm: float,
    defocus_u_a: float,
    defocus_v_a: float,
    azimuth_deg: float,
    phase_shift_rad: float = 0.0,
    amplitude_contrast: float = 0.07,
) -> np.ndarray:
    """Total phase χ of the CTF (including amplitude contrast and any phase-plate shift).

    ``k2_a2`` is the squared spatial frequency in 1/Å², ``angle_rad`` its direction from +x.
    """
    wavelength_a = electron_wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7
    mean_a = 0.5 * (defocus_u_a + defocus_v_a)
    half_diff_a = 0.5 * (defocus_u_a - defocus_v_a)
    defocus_a = mean_a + half_diff_a * np.cos(2.0 * (angle_rad - np.deg2rad(azimuth_deg)))
    chi = np.pi * wavelength_a * k2_a2 * defocus_a - 0.5 * np.pi * cs_a * wavelength_a**3 * k2_a2**2
    return chi + phase_shift_rad + np.arcsin(amplitude_contrast)


def ctf_2d(
    shape: tuple[int, int],
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    defocus_u_a: float,
    defocus_v_a: float,
    azimuth_deg: float,
    amplitude_contrast: float = 0.07,
    phase_shift_rad: float = 0.0,
    half: bool = True,
) -> np.ndarray:
    """The CTF, ``-sin(χ)``, sampled on the FFT grid of an image of ``shape``."""
    ky, kx = frequency_grid(shape, pixel_size_a=pixel_size_a, half=half)
    k2 = kx * kx + ky * ky
    angle = np.arctan2(ky, kx)
    chi = ctf_chi(
        k2,
        angle,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        azimuth_deg=azimuth_deg,
        phase_shift_rad=phase_shift_rad,
        amplitude_contrast=amplitude_contrast,
    )
    return (-np.sin(chi)).astype(np.float32)


def critical_exposure_e_a2(k_a: np.ndarray, *, voltage_kv: float) -> np.ndarray:
    """Critical exposure (e/Å²) at spatial frequency ``k_a`` (1/Å), Grant & Grigorieff 2015.

    Measured at 300 kV; at 200 kV damage per electron is higher and the critical exposure is
    scaled by 0.8 (as MotionCor2 and RELION do). Other voltages scale linearly between.
    """
    voltage_factor = 1.0 if voltage_kv >= 300 else 0.8 + 0.2 * (voltage_kv - 200.0) / 100.0
    k = np.maximum(k_a, 1e-6)
    return voltage_factor * (_CRITICAL_EXPOSURE_A * k**_CRITICAL_EXPOSURE_B + _CRITICAL_EXPOSURE_C)


def dose_weights(
    n_frames: int,
    shape: tuple[int, int],
    *,
    pixel_size_a: float,
    dose_per_frame_e_a2: float,
    voltage_kv: float,
    pre_exposure_e_a2: float = 0.0,
) -> np.ndarray:
    """Per-frame Fourier weights (n, ny, nx//2+1) for a dose-weighted sum.

    Frame ``i`` is weighted by ``exp(-N_i / (2 Ne(k)))`` with ``N_i`` the exposure accumulated
    at the end of that frame; weights are normalised so that they sum to 1 over frames at
    every frequency (the sum keeps the scale of an unweighted average).
    """
    ky, kx = frequency_grid(shape, pixel_size_a=pixel_size_a, half=True)
    k = np.sqrt(kx * kx + ky * ky)
    critical = critical_exposure_e_a2(k, voltage_kv=voltage_kv).astype(np.float32)
    exposure = pre_exposure_e_a2 + dose_per_frame_e_a2 * np.arange(1, n_frames + 1, dtype=np.float32)
    weights = np.exp(-exposure[:, None, None] / (2.0 * critical[None]))
    return (n_frames * weights / weights.sum(axis=0, keepdims=True)).astype(np.float32)
