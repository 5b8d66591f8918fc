"""SerialEM ``.mdoc`` files as SerialEM writes them, for synthetic tilt series.

The layout (SerialEM 4, one movie per tilt saved as frames)::

    PixelSpacing = 2.7
    Voltage = 300
    Version = SerialEM Version 4.1.0
    ImageFile = TS_01.mrc
    ImageSize = 1024 1024
    DataMode = 1

    [T = SerialEM: emlive synthetic Krios                       03-Dec-26  14:20:01    ]

    [T =     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]

    [ZValue = 0]
    TiltAngle = 0.000999877
    ...
    SubFramePath = D:\\Data\\session\\frames\\TS_01_000_0.0.tif
    NumSubFrames = 8
    DateTime = 03-Dec-26  14:22:05

    [ZValue = 1]
    ...

Sections are numbered 0, 1, ... in acquisition order. The values are the MdocTilt/MdocHeader
fields of :mod:`emlive.tomo.mdoc` (the reader returns what the writer was given).
``RotationAngle`` is written as the tilt axis angle + 90°, as SerialEM does.

A growing mdoc: :func:`write_mdoc` writes the whole file atomically (SerialEM rewrites it as each
image is saved; pass the tilts acquired so far); :func:`append_section` appends one section in
place, so a reader can also meet the file half written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from emlive.io.atomic import atomic_write_text
from emlive.tomo.mdoc import MdocHeader, MdocTilt

__all__ = [
    "append_section",
    "format_datetime",
    "header_text",
    "mdoc_text",
    "section_text",
    "serialem_header",
    "serialem_tilts",
    "write_mdoc",
]


def format_datetime(when: datetime) -> str:
    """SerialEM's ``DateTime``: ``03-Dec-26  14:22:05`` (two spaces)."""
    return when.strftime("%d-%b-%y  %H:%M:%S")


def _g(value: float) -> str:
    return f"{value:.6g}"


def header_text(header: MdocHeader, *, created: datetime | None = None, microscope: str = "emlive synthetic Krios") -> str:
    """The global values and the two title lines, ending before the first section."""
    lines: list[str] = []
    if header.pixel_spacing_a is not None:
        lines.append(f"PixelSpacing = {_g(header.pixel_spacing_a)}")
    if header.voltage_kv is not None:
        lines.append(f"Voltage = {_g(header.voltage_kv)}")
    lines.append(f"Version = {header.version or 'SerialEM Version 4.1.0'}")
    if header.image_file:
        lines.append(f"ImageFile = {header.image_file}")
    if header.image_size is not None:
        lines.append(f"ImageSize = {header.image_size[0]} {header.image_size[1]}")
    if header.data_mode is not None:
        lines.append(f"DataMode = {header.data_mode}")
    for key, value in header.values.items():
        if key not in {"PixelSpacing", "Voltage", "Version", "ImageFile", "ImageSize", "DataMode"}:
            lines.append(f"{key} = {value}")
    when = format_datetime(created or datetime(2026, 12, 3, 14, 20, 1))
    lines += ["", f"[T = SerialEM: {microscope:<44} {when}    ]"]
    if header.tilt_axis_deg is not None:
        binning = header.binning if header.binning is not None else 1
        lines += ["", f"[T =     Tilt axis angle = {header.tilt_axis_deg:.1f}, binning = {binning:g}  spot = 8  camera = 0]"]
    return "\n".join(lines) + "\n"


def section_text(tilt: MdocTilt, *, tilt_axis_deg: float | None = None) -> str:
    """One ``[ZValue = n]`` section, with the blank line SerialEM puts before it."""
    rotation = tilt.rotation_angle_deg
    if rotation is None and tilt_axis_deg is not None:
        rotation = tilt_axis_deg + 90.0
    ordered: list[tuple[str, str | None]] = [
        ("TiltAngle", None if tilt.tilt_angle_deg is None else _g(tilt.tilt_angle_deg)),
        ("StagePosition", tilt.values.get("StagePosition", "20.7936 155.287")),
        ("StageZ", tilt.values.get("StageZ", "163.803")),
        ("Magnification", None if tilt.magnification is None else _g(tilt.magnification)),
        ("Intensity", tilt.values.get("Intensity", "0.0900259")),
        ("ExposureDose", None if tilt.exposure_dose_e_per_a2 is None else _g(tilt.exposure_dose_e_per_a2)),
        ("PixelSpacing", None if tilt.pixel_spacing_a is None else _g(tilt.pixel_spacing_a)),
        ("SpotSize", tilt.values.get("SpotSize", "8")),
        ("Defocus", None if tilt.defocus_um is None else _g(tilt.defocus_um)),
        ("ImageShift", tilt.values.get("ImageShift", "0 0")),
        ("RotationAngle", None if rotation is None else _g(rotation)),
        ("ExposureTime", None if tilt.exposure_time_s is None else _g(tilt.exposure_time_s)),
        ("Binning", tilt.values.get("Binning", "1")),
        ("CameraIndex", tilt.values.get("CameraIndex", "0")),
        ("DividedBy2", tilt.values.get("DividedBy2", "0")),
        ("OperatingMode", tilt.values.get("OperatingMode", "1")),
        ("UsingCDS", tilt.values.get("UsingCDS", "0")),
        ("MagIndex", tilt.values.get("MagIndex", "31")),
        ("LowDoseConSet", tilt.values.get("LowDoseConSet", "4")),
        ("CountsPerElectron", tilt.values.get("CountsPerElectron", "1")),
        ("MinMaxMean", None if tilt.min_max_mean is None else " ".join(_g(v) for v in tilt.min_max_mean)),
        ("TargetDefocus", None if tilt.target_defocus_um is None else _g(tilt.target_defocus_um)),
        ("SubFramePath", tilt.sub_frame_path),
        ("NumSubFrames", None if tilt.num_subframes is None else str(tilt.num_subframes)),
    ]
    if tilt.num_subframes and tilt.exposure_dose_e_per_a2 is not None:
        ordered.append(("FrameDosesAndNumber", f"{_g(tilt.exposure_dose_e_per_a2 / tilt.num_subframes)} {tilt.num_subframes}"))
    written = {k for k, _ in ordered} | {"DateTime", "FrameDosesAndNumber"}
    ordered += [(k, v) for k, v in tilt.values.items() if k not in written]
    if tilt.acquired_at is not None:
        ordered.append(("DateTime", format_datetime(tilt.acquired_at)))
    body = "\n".join(f"{k} = {v}" for k, v in ordered if v is not None)
    return f"\n[ZValue = {tilt.z_value}]\n{body}\n"


def mdoc_text(header: MdocHeader, tilts: Sequence[MdocTilt], *, created: datetime | None = None) -> str:
    """A whole mdoc: header, titles and the sections in the order given (acquisition order)."""
    return header_text(header, created=created) + "".join(
        section_text(t, tilt_axis_deg=header.tilt_axis_deg) for t in tilts
    )


def write_mdoc(
    path: str | os.PathLike[str], header: MdocHeader, tilts: Sequence[MdocTilt], *, created: datetime | None = None
) -> Path:
    """Write the mdoc atomically (a reader sees the previous version or this one)."""
    atomic_write_text(path, mdoc_text(header, tilts, created=created))
    return Path(path)


def append_section(path: str | os.PathLike[str], tilt: MdocTilt, *, tilt_axis_deg: float | None = None) -> None:
    """Append one section to an existing mdoc in place (the file grows; not atomic)."""
    with open(path, "a", encoding="utf-8", newline="\n") as fh:
        fh.write(section_text(tilt, tilt_axis_deg=tilt_axis_deg))
        fh.flush()


def serialem_header(
    *,
    pixel_size_a: float,
    voltage_kv: float = 300.0,
    tilt_axis_deg: float,
    image_size: tuple[int, int],
    image_file: str = "TS_01.mrc",
) -> MdocHeader:
    """The header SerialEM writes for a tilt series saved with frames (``image_size``: (nx, ny))."""
    return MdocHeader(
        pixel_spacing_a=pixel_size_a,
        voltage_kv=voltage_kv,
        tilt_axis_deg=tilt_axis_deg,
        image_size=image_size,
        data_mode=1,
        image_file=image_file,
        binning=1.0,
    )


def serialem_tilts(
    tilt_angles_deg: Sequence[float] | np.ndarray,
    order: Sequence[int] | np.ndarray,
    movie_names: Sequence[str],
    *,
    pixel_size_a: float,
    dose_per_tilt_e_per_a2: float,
    tilt_axis_deg: float,
    start: datetime = datetime(2026, 12, 3, 14, 22, 5),
    seconds_per_tilt: float = 8.0,
    num_subframes: int = 8,
    frame_folder: str = r"D:\Data\emlive\frames",
    defocus_um: Sequence[float] | np.ndarray | None = None,
    target_defocus_um: float = -4.0,
    exposure_time_s: float = 1.0,
    min_max_mean: Sequence[tuple[float, float, float]] | None = None,
) -> tuple[MdocTilt, ...]:
    """The sections of a tilt series in acquisition order (ZValue 0 = first acquired).

    ``order[i]`` is the acquisition index of the tilt at ``tilt_angles_deg[i]`` (as
    :func:`emlive.synth.tomo.dose_symmetric_order` gives it), ``movie_names[i]`` its movie's
    file name, written as ``frame_folder\\name`` (a Windows path, as on the acquisition PC).
    Each tilt is acquired ``seconds_per_tilt`` after the previous one.
    """
    angles = np.asarray(tilt_angles_deg, dtype=float)
    acq = np.asarray(order, dtype=int)
    if angles.shape != acq.shape or len(movie_names) != angles.size:
        raise ValueError("tilt_angles_deg, order and movie_names must have one entry per tilt")
    if sorted(acq.tolist()) != list(range(angles.size)):
        raise ValueError("order must be a permutation of 0..n-1 (the acquisition index of each tilt)")
    tilts: list[MdocTilt] = []
    for i in np.argsort(acq, kind="stable"):
        z = int(acq[i])
        tilts.append(
            MdocTilt(
                z_value=z,
                tilt_angle_deg=float(angles[i]),
                sub_frame_path=f"{frame_folder.rstrip(chr(92))}\\{movie_names[i]}",
                exposure_dose_e_per_a2=dose_per_tilt_e_per_a2,
                acquired_at=start + timedelta(seconds=seconds_per_tilt * z),
                pixel_spacing_a=pixel_size_a,
                num_subframes=num_subframes,
                min_max_mean=None if min_max_mean is None else tuple(min_max_mean[i]),  # type: ignore[arg-type]
                defocus_um=None if defocus_um is None else float(defocus_um[i]),
                target_defocus_um=target_defocus_um,
                rotation_angle_deg=tilt_axis_deg + 90.0,
                exposure_time_s=exposure_time_s,
                magnification=105000.0,
            )
        )
    return tuple(tilts)
