"""Leginon's database (``leginondb``) as a source of exposures, read-only.

A session is a ``SessionData`` row; its exposures are the ``AcquisitionImageData`` rows of a
preset, found by the preset's name across every ``PresetData`` row of that name in the session
(Leginon adds one whenever a preset is changed). For each image this reads what motion
correction and CTF need, in emlive's units:

- frames: Leginon's frame transfer (``rawtransfer``) moves them to the session's ``frame path``
  as ``<filename>.frames.mrc``, ``.frames.tif`` or ``.frames.eer``;
- pixel size: the newest ``PixelSizeCalibrationData`` made before the image for its
  magnification, microscope and camera (metres per unbinned pixel) times the camera binning, Å;
- voltage: ``ScopeEMData.high tension`` (V) → kV; Cs: the microscope's ``InstrumentData.cs``
  (m) → mm; total dose: ``PresetData.dose`` (e/m²) → e/Å²; frames: ``CameraEMData.nframes``;
  tilt: ``ScopeEMData.stage position.a`` (rad) → degrees; gain reference: the image's
  ``NormImageData`` MRC in its session's image path, turned by the camera's ``frame rotate``
  quarter turns and flipped by ``frame flip`` as classic Appion gives them to MotionCor2
  (``-RotGain``, ``-FlipGain``: 1 upside down, 2 left to right); nominal defocus: ``ScopeEMData.defocus``
  (m, negative underfocus) → Å, positive underfocus.

Images the viewer hides or trashed (their newest ``ViewerImageStatus``) are skipped, and so,
with ``no_rejects``, are those whose newest Appion assessment (``ApAssessmentData`` in the
project's Appion database) rejects them. New images are found by polling for ids above the
last one seen. Every query is parameterised; nothing here writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pymysql

FRAME_SUFFIXES = (".frames.mrc", ".frames.tif", ".frames.eer")
"""What Leginon's frame transfer appends to an image's file name, in the order looked for."""

SKIPPED_VIEWER_STATUSES = ("hidden", "trash")

DEFAULT_CS_MM = 2.7

GAIN_FLIPS = {1: "y", 2: "x"}
"""Leginon's ``frame flip`` (MotionCor2's ``-FlipGain``) as emlive's ``gain_flip``."""


class LeginonError(ValueError):
    """A session, preset or calibration that is not in the database (the message says which)."""


@dataclass(frozen=True)
class DatabaseServer:
    """A MySQL/MariaDB server as ``sinedon.cfg``'s ``[global]`` section names it."""

    host: str = "localhost"
    user: str = "root"
    password: str = ""
    port: int = 3306

    def connect(self, database: str) -> pymysql.connections.Connection:
        """A connection to ``database`` that commits each statement (MyISAM has no transactions)."""
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, database=database,
            charset="utf8mb4", autocommit=True, connect_timeout=10,
        )


@dataclass(frozen=True)
class LeginonSession:
    id: int
    name: str
    image_path: Path
    frame_path: Path | None


@dataclass(frozen=True)
class LeginonImage:
    """One acquired image and what processing its frames needs (units in the names)."""

    id: int
    filename: str
    session_id: int
    preset_id: int
    preset_name: str
    scope_id: int
    camera_id: int
    image_path: Path
    frames_path: Path | None
    pixel_size_a: float
    binning: int
    voltage_kv: float
    cs_mm: float
    total_dose_e_a2: float | None
    n_frames: int | None
    tilt_deg: float
    nominal_defocus_a: float
    timestamp: datetime
    gain_path: Path | None = None
    gain_rotation: int = 0
    gain_flip: str | None = None

    @property
    def frames_format(self) -> str | None:
        """``mrc``, ``tif`` or ``eer`` from the frames' suffix (None without frames)."""
        return None if self.frames_path is None else self.frames_path.suffix.lstrip(".")


def _rows(conn: pymysql.connections.Connection, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def _in(values: Iterable[int]) -> tuple[str, list[int]]:
    """``%s, %s, …`` placeholders for an IN list and its values (never empty: NULL matches nothing)."""
    values = list(values)
    return (", ".join(["%s"] * len(values)) or "NULL"), values


def find_session(conn: pymysql.connections.Connection, name: str | None = None, *, session_id: int | None = None) -> LeginonSession:
    """The session called ``name`` (or with id ``session_id``); :class:`LeginonError` if none."""
    if session_id is not None:
        rows = _rows(conn, "SELECT * FROM SessionData WHERE DEF_id = %s", [session_id])
    else:
        rows = _rows(conn, "SELECT * FROM SessionData WHERE name = %s ORDER BY DEF_id DESC LIMIT 1", [name])
    if not rows:
        which = f"id {session_id}" if session_id is not None else f"named {name!r}"
        raise LeginonError(f"no Leginon session {which} in database {conn.db.decode()}: check --session/--expid "
                           "and [leginondata] db in sinedon.cfg")
    row = rows[0]
    if not row["image path"]:
        raise LeginonError(f"Leginon session {row['name']!r} has no image path in SessionData")
    frame_path = row["frame path"]
    return LeginonSession(id=row["DEF_id"], name=row["name"], image_path=Path(row["image path"]),
                          frame_path=Path(frame_path) if frame_path else None)


def preset_ids(conn: pymysql.connections.Connection, session: LeginonSession, preset: str) -> list[int]:
    """Every ``PresetData`` row called ``preset`` in the session (each change made a new one)."""
    rows = _rows(conn, "SELECT DEF_id FROM PresetData WHERE `REF|SessionData|session` = %s AND name = %s",
                 [session.id, preset])
    return [row["DEF_id"] for row in rows]


def hidden_image_ids(conn: pymysql.connections.Connection, session: LeginonSession) -> set[int]:
    """Images whose newest viewer status is hidden or trash."""
    rows = _rows(
        conn,
        "SELECT v.`REF|AcquisitionImageData|image` AS image, v.status FROM ViewerImageStatus v "
        "JOIN (SELECT `REF|AcquisitionImageData|image` AS image, MAX(DEF_id) AS newest FROM ViewerImageStatus "
        "      WHERE `REF|SessionData|session` = %s GROUP BY `REF|AcquisitionImageData|image`) n "
        "ON v.DEF_id = n.newest",
        [session.id],
    )
    return {row["image"] for row in rows if row["status"] in SKIPPED_VIEWER_STATUSES}


def rejected_image_ids(appion: pymysql.connections.Connection, image_ids: Iterable[int]) -> set[int]:
    """Of ``image_ids``, those whose newest assessment in the Appion database rejects them
    (``selectionkeep = 0``)."""
    marks, values = _in(image_ids)
    if not values:
        return set()
    rows = _rows(
        appion,
        "SELECT a.`REF|leginondata|AcquisitionImageData|image` AS image, a.selectionkeep FROM ApAssessmentData a "
        "JOIN (SELECT `REF|leginondata|AcquisitionImageData|image` AS image, MAX(DEF_id) AS newest "
        f"      FROM ApAssessmentData WHERE `REF|leginondata|AcquisitionImageData|image` IN ({marks}) "
        "      GROUP BY `REF|leginondata|AcquisitionImageData|image`) n ON a.DEF_id = n.newest",
        values,
    )
    return {row["image"] for row in rows if row["selectionkeep"] == 0}


def image_ids(
    conn: pymysql.connections.Connection,
    session: LeginonSession,
    preset: str | None,
    *,
    after_id: int = 0,
    appion: pymysql.connections.Connection | None = None,
    no_rejects: bool = False,
) -> list[int]:
    """Ids above ``after_id`` of the session's images of ``preset`` (every image when None),
    oldest first, without the hidden and trashed ones and (``no_rejects``, which needs
    ``appion``) the rejected ones."""
    if preset is None:
        rows = _rows(conn, "SELECT DEF_id FROM AcquisitionImageData WHERE `REF|SessionData|session` = %s "
                     "AND DEF_id > %s ORDER BY DEF_id", [session.id, after_id])
    else:
        marks, presets = _in(preset_ids(conn, session, preset))
        rows = _rows(conn, "SELECT DEF_id FROM AcquisitionImageData WHERE `REF|SessionData|session` = %s "
                     f"AND DEF_id > %s AND `REF|PresetData|preset` IN ({marks}) ORDER BY DEF_id",
                     [session.id, after_id, *presets])
    ids = [row["DEF_id"] for row in rows]
    skipped = hidden_image_ids(conn, session)
    if no_rejects:
        if appion is None:
            raise ValueError("no_rejects needs the project's Appion database")
        skipped |= rejected_image_ids(appion, ids)
    return [image_id for image_id in ids if image_id not in skipped]


TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")


def skipped_for_tilt(tilt_deg: float, choice: str) -> bool:
    """Whether classic Appion's ``--tiltangle choice`` leaves out an image tilted by ``tilt_deg``
    (its thresholds: notilt |a| ≤ 3°, hightilt |a| ≥ 30°, lowtilt |a| < 30°, minustilt a ≤ −2°,
    plustilt a ≥ 2°; an untilted stage reads 0 ± a little)."""
    if choice not in TILT_CHOICES:
        raise ValueError(f"--tiltangle {choice!r}: choose one of {', '.join(TILT_CHOICES)}")
    return {
        "all": False,
        "notilt": abs(tilt_deg) > 3.0,
        "hightilt": abs(tilt_deg) < 30.0,
        "lowtilt": abs(tilt_deg) >= 30.0,
        "minustilt": tilt_deg > -2.0,
        "plustilt": tilt_deg < 2.0,
    }[choice]


def newest_id(conn: pymysql.connections.Connection, session: LeginonSession) -> int:
    """The highest image id of the session so far (0 when it has none): a poll's mark."""
    rows = _rows(conn, "SELECT MAX(DEF_id) AS newest FROM AcquisitionImageData WHERE `REF|SessionData|session` = %s",
                 [session.id])
    return int(rows[0]["newest"] or 0)


def frames_path(session: LeginonSession, filename: str) -> Path | None:
    """The image's frames where frame transfer puts them, if they are there yet."""
    if session.frame_path is None:
        return None
    for suffix in FRAME_SUFFIXES:
        path = session.frame_path / f"{filename}{suffix}"
        if path.is_file():
            return path
    return None


def read_image(conn: pymysql.connections.Connection, session: LeginonSession, image_id: int) -> LeginonImage:
    """The image ``image_id`` with its acquisition values; :class:`LeginonError` names what is missing."""
    rows = _rows(
        conn,
        "SELECT i.DEF_id AS id, i.filename, i.DEF_timestamp AS taken, i.`REF|PresetData|preset` AS preset_id, "
        "  p.name AS preset_name, p.dose, i.`REF|ScopeEMData|scope` AS scope_id, s.magnification, s.defocus, "
        "  s.`high tension` AS high_tension, s.`SUBD|stage position|a` AS alpha, s.`REF|InstrumentData|tem` AS tem, "
        "  i.`REF|CameraEMData|camera` AS camera_id, c.`SUBD|binning|x` AS binning, c.nframes, "
        "  c.`REF|InstrumentData|ccdcamera` AS ccdcamera, c.`frame rotate` AS frame_rotate, c.`frame flip` AS frame_flip, "
        "  t.cs, n.`MRC|image` AS norm_image, ns.`image path` AS norm_folder "
        "FROM AcquisitionImageData i "
        "LEFT JOIN PresetData p ON p.DEF_id = i.`REF|PresetData|preset` "
        "LEFT JOIN ScopeEMData s ON s.DEF_id = i.`REF|ScopeEMData|scope` "
        "LEFT JOIN CameraEMData c ON c.DEF_id = i.`REF|CameraEMData|camera` "
        "LEFT JOIN InstrumentData t ON t.DEF_id = s.`REF|InstrumentData|tem` "
        "LEFT JOIN NormImageData n ON n.DEF_id = i.`REF|NormImageData|norm` "
        "LEFT JOIN SessionData ns ON ns.DEF_id = n.`REF|SessionData|session` "
        "WHERE i.DEF_id = %s AND i.`REF|SessionData|session` = %s",
        [image_id, session.id],
    )
    if not rows:
        raise LeginonError(f"no image {image_id} in Leginon session {session.name!r}")
    row = rows[0]
    name = f"image {image_id} ({row['filename']}) of session {session.name!r}"
    if row["scope_id"] is None or row["camera_id"] is None or row["magnification"] is None:
        raise LeginonError(f"{name} has no ScopeEMData/CameraEMData (magnification, camera) rows")
    calibration = _rows(
        conn,
        "SELECT pixelsize FROM PixelSizeCalibrationData WHERE magnification = %s AND `REF|InstrumentData|tem` <=> %s "
        "AND `REF|InstrumentData|ccdcamera` <=> %s AND DEF_timestamp <= %s ORDER BY DEF_timestamp DESC, DEF_id DESC LIMIT 1",
        [row["magnification"], row["tem"], row["ccdcamera"], row["taken"]],
    )
    if not calibration or not calibration[0]["pixelsize"]:
        raise LeginonError(f"{name}: no pixel size calibration for magnification {row['magnification']} "
                           f"(microscope {row['tem']}, camera {row['ccdcamera']}) made before {row['taken']}: "
                           "calibrate the pixel size in Leginon")
    if not row["high_tension"]:
        raise LeginonError(f"{name}: ScopeEMData has no high tension")
    binning = int(row["binning"] or 1)
    return LeginonImage(
        id=row["id"], filename=row["filename"], session_id=session.id, preset_id=row["preset_id"],
        preset_name=row["preset_name"] or "", scope_id=row["scope_id"], camera_id=row["camera_id"],
        image_path=session.image_path / f"{row['filename']}.mrc",
        frames_path=frames_path(session, row["filename"]),
        pixel_size_a=float(calibration[0]["pixelsize"]) * binning * 1e10,
        binning=binning,
        voltage_kv=float(row["high_tension"]) / 1000.0,
        cs_mm=float(row["cs"]) * 1000.0 if row["cs"] else DEFAULT_CS_MM,
        total_dose_e_a2=float(row["dose"]) / 1e20 if row["dose"] else None,
        n_frames=row["nframes"],
        tilt_deg=math.degrees(float(row["alpha"] or 0.0)),
        nominal_defocus_a=abs(float(row["defocus"] or 0.0)) * 1e10,
        gain_path=Path(row["norm_folder"]) / row["norm_image"] if row["norm_image"] and row["norm_folder"] else None,
        gain_rotation=int(row["frame_rotate"] or 0) % 4,
        gain_flip=GAIN_FLIPS.get(int(row["frame_flip"] or 0)),
        timestamp=row["taken"],
    )


def appion_database(project: pymysql.connections.Connection, project_id: int) -> str:
    """The project's Appion database name (projectdb's ``processingdb`` row)."""
    rows = _rows(project, "SELECT appiondb FROM processingdb WHERE `REF|projects|project` = %s "
                 "ORDER BY DEF_id DESC LIMIT 1", [project_id])
    if not rows or not rows[0]["appiondb"]:
        raise LeginonError(f"project {project_id} has no Appion database (no processingdb row in "
                           f"{project.db.decode()}): create it in the Appion web UI, or check --projectid")
    return str(rows[0]["appiondb"])


def project_of_session(project: pymysql.connections.Connection, session: LeginonSession) -> int | None:
    """The project a session belongs to (projectdb's ``projectexperiments``), if any."""
    rows = _rows(project, "SELECT `REF|projects|project` AS project FROM projectexperiments "
                 "WHERE `REF|leginondata|SessionData|session` = %s ORDER BY DEF_id DESC LIMIT 1", [session.id])
    return int(rows[0]["project"]) if rows else None
