"""SerialEM ``.mdoc`` files: a tilt series' per-tilt metadata, read while SerialEM still writes it.

An mdoc is an IMOD autodoc: ``key = value`` lines, first the global ones (the header:
``PixelSpacing``, ``Voltage``, ``ImageFile``, ``ImageSize``, ``DataMode``), then title lines
``[T = ...]`` (one says ``Tilt axis angle = 85.3, binning = 1 ...``), then one section per
image, ``[ZValue = n]``, numbered from 0 in acquisition order, with ``TiltAngle``,
``ExposureDose`` (e/Å² on the specimen for this tilt), ``PixelSpacing`` (Å), ``SubFramePath``
(the movie, as a path on the acquisition PC, ``D:\\Data\\x\\TS_01_003_-3.0.tif``),
``NumSubFrames``, ``DateTime`` (``03-Dec-26  14:22:05``), ``MinMaxMean``, ``Defocus`` (µm, as
the microscope reports it), ``RotationAngle`` ... Other section types (``[FrameSet = n]``,
``[MontSection = n]``) are kept out of the tilts.

**Tilt axis.** ``tilt_axis_deg`` is the angle in the image plane from the +y axis (rows) to the
tilt axis, counter-clockwise positive: SerialEM's ``Tilt axis angle`` as IMOD and RELION
(``rlnTomoNominalTiltAxisAngle``) use it. It comes from the ``[T = Tilt axis angle = ...]``
title; without one, from the first tilt's ``RotationAngle`` minus 90° (SerialEM writes the
rotation of the tilt axis from +x there: 175.3 beside ``Tilt axis angle = 85.3``), wrapped
into (-180, 180].

**A growing mdoc.** SerialEM rewrites the file as each image is saved, so a reader may meet it
cut anywhere. A section counts only once it is complete: another section header follows it,
or a blank line does, or its ``DateTime`` line is complete (SerialEM writes it after the
values a tilt needs; a last line without its line break is still being written and is not
read). The one section that is not yet complete is left out of
``tilts`` and its ZValue given in ``Mdoc.pending_z_value``; ``final=True`` takes it too (the
file is known to be finished).

**Malformed lines** (a value that is not a number where one is expected, a line that is not
``key = value``, a duplicated ZValue) become entries of ``problems`` that name the line number
and the line; the tilt they belong to carries them too (``MdocTilt.problems``), so a caller
can mark that tilt failed with the reason while the others go on. Only a file that cannot be
read at all (missing, a folder, binary, huge) raises :class:`MdocError`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = [
    "MAX_MDOC_BYTES",
    "Mdoc",
    "MdocError",
    "MdocHeader",
    "MdocTilt",
    "acquisition_order",
    "movie_name_from_path",
    "parse_datetime",
    "parse_mdoc",
    "pre_exposure_e_per_a2",
    "read_mdoc",
]

MAX_MDOC_BYTES = 16 * 2**20
"""A 1000-tilt mdoc is about 1 MB; anything over this is not an mdoc."""


class MdocError(ValueError):
    """An mdoc file cannot be read at all (missing, not text, far too large)."""


@dataclass(frozen=True)
class MdocHeader:
    """The global values of an mdoc (before the first section) and its titles.

    ``image_size`` is ``(nx, ny)`` as SerialEM writes it; ``voltage_kv`` and
    ``pixel_spacing_a`` fall back to the first tilt's values where the header has none
    (newer SerialEM writes ``Voltage`` per section).
    """

    pixel_spacing_a: float | None = None
    voltage_kv: float | None = None
    tilt_axis_deg: float | None = None
    image_size: tuple[int, int] | None = None
    data_mode: int | None = None
    image_file: str | None = None
    version: str | None = None
    binning: float | None = None
    titles: tuple[str, ...] = ()
    values: Mapping[str, str] = field(default_factory=dict)
    """Every global ``key = value``, as written."""


@dataclass(frozen=True)
class MdocTilt:
    """One ``[ZValue = n]`` section. Values missing or malformed in the file are None."""

    z_value: int
    tilt_angle_deg: float | None = None
    sub_frame_path: str | None = None
    """The movie's path as SerialEM wrote it (usually a Windows path on the acquisition PC)."""
    exposure_dose_e_per_a2: float | None = None
    acquired_at: datetime | None = None
    pixel_spacing_a: float | None = None
    num_subframes: int | None = None
    min_max_mean: tuple[float, float, float] | None = None
    defocus_um: float | None = None
    """``Defocus``: the microscope's defocus reading in µm (negative = underfocus), as written."""
    target_defocus_um: float | None = None
    rotation_angle_deg: float | None = None
    exposure_time_s: float | None = None
    magnification: float | None = None
    voltage_kv: float | None = None
    line: int = 0
    """Line number (1-based) of the section header."""
    problems: tuple[str, ...] = ()
    values: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Every ``key = value`` of the section, as written (not compared: SerialEM writes a few
    more keys after ``DateTime``, which a reader of a growing file may not have seen yet)."""

    @property
    def movie_name(self) -> str | None:
        """The basename of ``sub_frame_path`` (``\\`` and ``/`` both separate folders)."""
        return movie_name_from_path(self.sub_frame_path)


@dataclass(frozen=True)
class Mdoc:
    path: Path | None
    header: MdocHeader
    tilts: tuple[MdocTilt, ...]
    """Complete ``[ZValue]`` sections in file order (ZValue order = acquisition order)."""
    problems: tuple[str, ...] = ()
    pending_z_value: int | None = None
    """The ZValue of a last section not yet complete (left out of ``tilts``), else None."""


def movie_name_from_path(sub_frame_path: str | None) -> str | None:
    """``D:\\Data\\x\\TS_01_003_-3.0.tif`` → ``TS_01_003_-3.0.tif``; also POSIX paths."""
    if not sub_frame_path:
        return None
    name = re.split(r"[\\/]", sub_frame_path.strip())[-1]
    return name or None


_DATETIME_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%b-%d %H:%M:%S")


def parse_datetime(text: str) -> datetime | None:
    """SerialEM's ``DateTime`` (``03-Dec-26  14:22:05``, two spaces) as a naive local datetime.

    Returns None when the text is in none of the known forms.
    """
    compact = " ".join(text.split())
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(compact, fmt)
        except ValueError:
            continue
    return None


_SECTION = re.compile(r"^\[\s*([A-Za-z]+)\s*=\s*(.*?)\s*\]\s*$")
_TILT_AXIS = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)
_BINNING = re.compile(r"binning\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)


def _number(text: str) -> float:
    """A finite float, or ValueError (nan/inf and absurd lengths are refused)."""
    token = text.strip()
    if len(token) > 40 or not token.isascii():
        raise ValueError("not a number")
    value = float(token)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _integer(text: str) -> int:
    value = _number(text)
    if value != int(value):
        raise ValueError("not an integer")
    return int(value)


def _numbers(text: str, count: int) -> tuple[float, ...]:
    parts = text.split()
    if len(parts) != count:
        raise ValueError(f"{count} numbers expected")
    return tuple(_number(p) for p in parts)


_FLOAT_KEYS = {
    "TiltAngle": "tilt_angle_deg",
    "ExposureDose": "exposure_dose_e_per_a2",
    "PixelSpacing": "pixel_spacing_a",
    "Defocus": "defocus_um",
    "TargetDefocus": "target_defocus_um",
    "RotationAngle": "rotation_angle_deg",
    "ExposureTime": "exposure_time_s",
    "Magnification": "magnification",
    "Voltage": "voltage_kv",
}


def _section_fields(values: dict[str, tuple[int, str]], at: int) -> tuple[dict[str, object], list[str]]:
    """Typed fields of a ZValue section from its raw ``key -> (line, value)``; problems."""
    fields: dict[str, object] = {}
    problems: list[str] = []

    def bad(key: str, why: str) -> None:
        line, raw = values[key]
        problems.append(f"line {line}: {key} = {raw[:60]!r}: {why}")

    for key, name in _FLOAT_KEYS.items():
        if key in values:
            try:
                fields[name] = _number(values[key][1])
            except ValueError:
                bad(key, "not a number")
    if "NumSubFrames" in values:
        try:
            fields["num_subframes"] = _integer(values["NumSubFrames"][1])
        except ValueError:
            bad("NumSubFrames", "not an integer")
    if "MinMaxMean" in values:
        try:
            mmm = _numbers(values["MinMaxMean"][1], 3)
            fields["min_max_mean"] = (mmm[0], mmm[1], mmm[2])
        except ValueError:
            bad("MinMaxMean", "three numbers expected")
    if "SubFramePath" in values:
        path = values["SubFramePath"][1].strip()
        if path:
            fields["sub_frame_path"] = path
        else:
            bad("SubFramePath", "empty path")
    if "DateTime" in values:
        when = parse_datetime(values["DateTime"][1])
        if when is None:
            bad("DateTime", "not a date like 03-Dec-26  14:22:05")
        else:
            fields["acquired_at"] = when
    if "TiltAngle" not in values:
        problems.append(f"line {at}: this section has no TiltAngle")
    return fields, problems


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data:
        raise MdocError(f"{name}: not an mdoc (binary data, NUL bytes); point emlive at SerialEM's .mdoc text file")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def read_mdoc(source: str | os.PathLike[str], *, final: bool = False) -> Mdoc:
    """Read an mdoc from a file (a path) or from its text (a ``str`` with a line break, ``=`` or ``[``).

    Raises :class:`MdocError` only when a file cannot be read at all; everything else the
    file gets wrong is in ``problems``. ``final``: the file is finished, so a last section
    without a closing line is taken as complete.
    """
    if isinstance(source, str) and (not source or any(c in source for c in "\n=[")):
        return parse_mdoc(source, final=final)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_MDOC_BYTES:
            raise MdocError(
                f"{path}: {size} bytes is far larger than an mdoc ({MAX_MDOC_BYTES} bytes at most); "
                "check that this is SerialEM's .mdoc file"
            )
        data = path.read_bytes()[: MAX_MDOC_BYTES + 1]
    except MdocError:
        raise
    except FileNotFoundError as exc:
        raise MdocError(f"{path}: no such mdoc file (moved or deleted while being read?)") from exc
    except IsADirectoryError as exc:
        raise MdocError(f"{path}: is a folder, not an mdoc file") from exc
    except OSError as exc:
        raise MdocError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from exc
    return parse_mdoc(_decode(data, str(path)), path=path, final=final)


@dataclass
class _Section:
    kind: str
    name: str
    line: int
    values: dict[str, tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    closed: bool = False


def _split_sections(lines: list[str]) -> tuple[dict[str, str], list[str], list[_Section], list[str]]:
    """Header values, titles, sections (with their raw values and problems), header problems."""
    header: dict[str, str] = {}
    titles: list[str] = []
    sections: list[_Section] = []
    problems: list[str] = []
    current: _Section | None = None
    skipping = False  # after a section header that cannot be read, until the next good one
    for number, raw in enumerate(lines, start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            if current is not None:
                current.closed = True
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if match is not None and match.group(1) == "T":
                titles.append(match.group(2))
                continue
            if current is not None:
                current.closed = True
            if match is None:
                problems.append(f"line {number}: {line[:80]!r}: not a section header like [ZValue = 3]")
                current, skipping = None, True
                continue
            current, skipping = _Section(match.group(1), match.group(2), number), False
            sections.append(current)
            continue
        if skipping:
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or any(c.isspace() for c in key):
            problem = f"line {number}: {line[:80]!r}: not a 'key = value' line"
            (current.problems if current is not None else problems).append(problem)
            continue
        if current is None:
            header[key] = value.strip()
        elif key in current.values:
            current.problems.append(f"line {number}: {key} appears twice in this section; the first is kept")
        else:
            current.values[key] = (number, value.strip())
    return header, titles, sections, problems


def parse_mdoc(text: str, *, path: Path | None = None, final: bool = False) -> Mdoc:
    """Parse an mdoc's text (pure). See the module doc for what counts as complete."""
    where = path or "mdoc text"
    if "\x00" in text:
        raise MdocError(f"{where}: not an mdoc (binary data, NUL bytes)")
    if len(text) > MAX_MDOC_BYTES:
        raise MdocError(f"{where}: {len(text)} characters is far larger than an mdoc")
    lines = text.splitlines()
    if lines and not text.endswith(("\n", "\r")) and not final:
        lines = lines[:-1]  # the line being written
    header_values, titles, sections, problems = _split_sections(lines)
    if sections and not sections[-1].closed:
        last = sections[-1]
        if final or "DateTime" in last.values:
            last.closed = True

    tilts: list[MdocTilt] = []
    seen: set[int] = set()
    pending: int | None = None
    for section in sections:
        if section.kind != "ZValue":
            continue
        try:
            z_value = _integer(section.name)
            if z_value < 0:
                raise ValueError
        except ValueError:
            problems.append(f"line {section.line}: [ZValue = {section.name[:40]}]: the ZValue is not a whole number >= 0")
            continue
        if not section.closed:
            pending = z_value
            continue
        if z_value in seen:
            problems.append(f"line {section.line}: [ZValue = {z_value}] appears again; the first one is kept")
            continue
        seen.add(z_value)
        fields, value_problems = _section_fields(section.values, section.line)
        tilt_problems = tuple(f"ZValue {z_value}: {p}" for p in [*section.problems, *value_problems])
        problems.extend(tilt_problems)
        tilts.append(
            MdocTilt(
                z_value=z_value,
                line=section.line,
                problems=tilt_problems,
                values={k: v for k, (_, v) in section.values.items()},
                **fields,  # type: ignore[arg-type]
            )
        )
    header = _header(header_values, titles, tilts, problems)
    return Mdoc(path=path, header=header, tilts=tuple(tilts), problems=tuple(problems), pending_z_value=pending)


def _header(values: dict[str, str], titles: list[str], tilts: list[MdocTilt], problems: list[str]) -> MdocHeader:
    def number(key: str) -> float | None:
        if key not in values:
            return None
        try:
            return _number(values[key])
        except ValueError:
            problems.append(f"header: {key} = {values[key][:40]!r}: not a number")
            return None

    pixel = number("PixelSpacing")
    voltage = number("Voltage")
    mode = number("DataMode")
    size: tuple[int, int] | None = None
    if "ImageSize" in values:
        try:
            nx, ny = _numbers(values["ImageSize"], 2)
            if nx != int(nx) or ny != int(ny) or nx <= 0 or ny <= 0:
                raise ValueError
            size = (int(nx), int(ny))
        except ValueError:
            problems.append(f"header: ImageSize = {values['ImageSize'][:40]!r}: two positive whole numbers expected")
    axis: float | None = None
    binning: float | None = None
    for title in titles:
        found = _TILT_AXIS.search(title)
        if found and axis is None:
            try:
                axis = _number(found.group(1))
            except ValueError:
                problems.append(f"title [T = {title[:60]}]: the tilt axis angle is not a number")
            b = _BINNING.search(title)
            if b:
                try:
                    binning = _number(b.group(1))
                except ValueError:
                    binning = None
    if axis is None:
        rotation = next((t.rotation_angle_deg for t in tilts if t.rotation_angle_deg is not None), None)
        if rotation is not None:
            axis = _wrap_deg(rotation - 90.0)
    if pixel is None:
        pixel = next((t.pixel_spacing_a for t in tilts if t.pixel_spacing_a is not None), None)
    if voltage is None:
        voltage = next((t.voltage_kv for t in tilts if t.voltage_kv is not None), None)
    version = values.get("Version")
    return MdocHeader(
        pixel_spacing_a=pixel,
        voltage_kv=voltage,
        tilt_axis_deg=axis,
        image_size=size,
        data_mode=int(mode) if mode is not None and mode == int(mode) else None,
        image_file=values.get("ImageFile") or None,
        version=version or None,
        binning=binning,
        titles=tuple(titles),
        values=dict(values),
    )


def _wrap_deg(angle: float) -> float:
    """An angle into (-180, 180]."""
    wrapped = math.fmod(angle, 360.0)
    if wrapped <= -180.0:
        wrapped += 360.0
    elif wrapped > 180.0:
        wrapped -= 360.0
    return wrapped


def acquisition_order(tilts: Iterable[MdocTilt]) -> list[MdocTilt]:
    """The tilts in the order they were acquired: by ``DateTime`` when every tilt has one
    (ties by ZValue), else by ZValue (SerialEM numbers sections in acquisition order)."""
    listed = list(tilts)
    if listed and all(t.acquired_at is not None for t in listed):
        return sorted(listed, key=lambda t: (t.acquired_at, t.z_value))
    return sorted(listed, key=lambda t: t.z_value)


def pre_exposure_e_per_a2(
    tilts: Iterable[MdocTilt], *, dose_per_tilt_e_per_a2: float | None = None
) -> dict[int, float]:
    """Accumulated dose (e/Å²) each tilt's specimen had received before it, by ZValue.

    Summed in acquisition order (:func:`acquisition_order`: DateTime, else ZValue), not tilt
    angle order: in a dose-symmetric scheme ±3° come right after 0°. Each tilt contributes its
    ``ExposureDose``; where that is missing or 0 (SerialEM writes 0 when it has no dose
    calibration) ``dose_per_tilt_e_per_a2`` is used if given, else 0.
    """
    total = 0.0
    result: dict[int, float] = {}
    for tilt in acquisition_order(tilts):
        result[tilt.z_value] = total
        dose = tilt.exposure_dose_e_per_a2
        if (dose is None or dose <= 0.0) and dose_per_tilt_e_per_a2 is not None:
            dose = dose_per_tilt_e_per_a2
        total += max(dose or 0.0, 0.0)
    return result
