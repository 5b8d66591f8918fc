"""A fake Leginon: inserts a session, presets, calibrations and images into a ``leginondb``
the way Leginon does, and writes each image's frames where Leginon's frame transfer puts them
(``<frame path>/<filename>.frames.{mrc,tif,eer}``), from emlive's synthetic movies (known drift
and defocus). Also the viewer's and Appion's marks: hidden/trashed images, rejected ones."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import mrcfile
import numpy as np
import pymysql

from emlive.synth.session import MovieTruth, SessionTruth, write_movie

_FRAME_SUFFIX = {"mrc": ".frames.mrc", "tiff": ".frames.tif", "eer": ".frames.eer"}


def insert(conn: pymysql.connections.Connection, table: str, values: dict[str, object]) -> int:
    columns = ", ".join(f"`{name}`" for name in values)
    marks = ", ".join(["%s"] * len(values))
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO `{table}` ({columns}) VALUES ({marks})", list(values.values()))
        return int(cursor.lastrowid)


def count(conn: pymysql.connections.Connection, table: str, where: str = "1", args: tuple = ()) -> int:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM `{table}` WHERE {where}", args)
        return int(cursor.fetchone()[0])


def rows(conn: pymysql.connections.Connection, sql: str, args: tuple = ()) -> list[dict]:
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


@dataclass
class FakeLeginon:
    leginon: pymysql.connections.Connection
    project: pymysql.connections.Connection
    appion: pymysql.connections.Connection
    root: Path
    project_id: int
    tem_id: int = 0
    camera_id: int = 0
    truths: dict[int, MovieTruth] = field(default_factory=dict)  # by image id
    clock: datetime = field(default_factory=lambda: datetime(2026, 1, 2, 8, 0, 0))

    def tick(self) -> datetime:
        """Leginon's rows carry increasing timestamps (the calibration lookup depends on them)."""
        self.clock += timedelta(seconds=2)
        return self.clock

    def instruments(self, *, cs_mm: float = 2.7) -> None:
        self.tem_id = insert(self.leginon, "InstrumentData", {"name": "Krios", "hostname": "scope", "cs": cs_mm * 1e-3})
        self.camera_id = insert(self.leginon, "InstrumentData", {"name": "Falcon4EC", "hostname": "camera"})

    def session(self, name: str) -> int:
        image_path = self.root / "leginon" / name / "rawdata"
        frame_path = self.root / "frames" / name / "rawdata"
        image_path.mkdir(parents=True), frame_path.mkdir(parents=True)
        session_id = insert(self.leginon, "SessionData", {
            "DEF_timestamp": self.tick(), "name": name, "image path": str(image_path), "frame path": str(frame_path),
        })
        insert(self.project, "projectexperiments", {"REF|projects|project": self.project_id,
                                                    "REF|leginondata|SessionData|session": session_id})
        return session_id

    def calibrate(self, session_id: int, *, magnification: int, pixel_size_a: float, binning: int = 1) -> None:
        """A pixel size calibration (metres per unbinned pixel) made now."""
        insert(self.leginon, "PixelSizeCalibrationData", {
            "DEF_timestamp": self.tick(), "REF|SessionData|session": session_id, "REF|InstrumentData|tem": self.tem_id,
            "REF|InstrumentData|ccdcamera": self.camera_id, "magnification": magnification,
            "pixelsize": pixel_size_a / binning * 1e-10,
        })

    def preset(self, session_id: int, name: str, *, magnification: int, total_dose_e_a2: float, shape: tuple[int, int],
               binning: int = 1) -> int:
        return insert(self.leginon, "PresetData", {
            "DEF_timestamp": self.tick(), "REF|SessionData|session": session_id, "name": name, "number": 1,
            "REF|InstrumentData|tem": self.tem_id, "REF|InstrumentData|ccdcamera": self.camera_id,
            "magnification": magnification, "defocus": -2e-6, "dose": total_dose_e_a2 * 1e20, "exposure time": 2000.0,
            "SUBD|dimension|x": shape[1], "SUBD|dimension|y": shape[0], "SUBD|binning|x": binning,
            "SUBD|binning|y": binning, "SUBD|offset|x": 0, "SUBD|offset|y": 0, "save frames": 1, "align frames": 0,
        })

    def image(
        self,
        session_id: int,
        preset_id: int,
        filename: str,
        truth: SessionTruth,
        movie: MovieTruth,
        *,
        magnification: int,
        tilt_deg: float = 0.0,
        binning: int = 1,
        write_frames: bool = True,
        norm_id: int | None = None,
        frame_rotate: int = 0,
        frame_flip: int = 0,
        gain: np.ndarray | None = None,
    ) -> int:
        """Insert one image (scope, camera, image rows) and write its frames and its MRC. The
        scope's (nominal) defocus is the movie's mean defocus to the nearest 0.1 µm, as set.
        ``gain``: the detector's gain in the frames' orientation (see :func:`write_movie`)."""
        taken = self.tick()
        session = rows(self.leginon, "SELECT * FROM SessionData WHERE DEF_id = %s", (session_id,))[0]
        ny, nx = truth.shape
        n_frames = movie.n_raw_frames if movie.format == "eer" else movie.n_frames
        if write_frames:
            named = movie.model_copy(update={"name": f"{filename}{_FRAME_SUFFIX[movie.format]}"})
            write_movie(session["frame path"], truth, named, gain=gain, workers=1)
        mrcfile.write(Path(session["image path"]) / f"{filename}.mrc", np.zeros((ny // 8, nx // 8), np.float32),
                      overwrite=True)
        scope = insert(self.leginon, "ScopeEMData", {
            "DEF_timestamp": taken, "REF|SessionData|session": session_id, "REF|InstrumentData|tem": self.tem_id,
            "magnification": magnification, "high tension": int(truth.voltage_kv * 1000),
            "SUBD|stage position|a": math.radians(tilt_deg), "system time": taken.timestamp(),
            "defocus": -round((movie.defocus_u_a + movie.defocus_v_a) / 2, -3) * 1e-10,
        })
        camera = insert(self.leginon, "CameraEMData", {
            "DEF_timestamp": taken, "REF|SessionData|session": session_id, "REF|InstrumentData|ccdcamera": self.camera_id,
            "SUBD|dimension|x": nx, "SUBD|dimension|y": ny, "SUBD|binning|x": binning, "SUBD|binning|y": binning,
            "SUBD|offset|x": 0, "SUBD|offset|y": 0, "exposure time": 2000.0, "nframes": n_frames, "save frames": 1,
            "align frames": 0, "tiff frames": int(movie.format == "tiff"), "eer frames": int(movie.format == "eer"),
            "frames name": f"{filename}{_FRAME_SUFFIX[movie.format]}", "system time": taken.timestamp(),
            "frame rotate": frame_rotate, "frame flip": frame_flip,
        })
        image_id = insert(self.leginon, "AcquisitionImageData", {
            "DEF_timestamp": taken, "REF|SessionData|session": session_id, "MRC|image": f"{filename}.mrc",
            "filename": filename, "label": "Exposure", "REF|ScopeEMData|scope": scope, "REF|CameraEMData|camera": camera,
            "REF|PresetData|preset": preset_id, "REF|NormImageData|norm": norm_id,
        })
        self.truths[image_id] = movie
        return image_id

    def norm_image(self, session_id: int, gain: np.ndarray, filename: str = "norm") -> int:
        """A gain reference as Leginon keeps it: an MRC in the session's image path and a NormImageData row."""
        (session,) = rows(self.leginon, "SELECT * FROM SessionData WHERE DEF_id = %s", (session_id,))
        mrcfile.write(Path(session["image path"]) / f"{filename}.mrc", gain.astype(np.float32), overwrite=True)
        return insert(self.leginon, "NormImageData", {"REF|SessionData|session": session_id,
                                                      "MRC|image": f"{filename}.mrc", "filename": filename})

    def viewer_status(self, session_id: int, image_id: int, status: str) -> None:
        """What the viewer stores when a user hides, trashes or restores (``None``-like: 'normal') an image."""
        insert(self.leginon, "ViewerImageStatus", {"REF|SessionData|session": session_id,
                                                   "REF|AcquisitionImageData|image": image_id, "status": status})

    def assess(self, session_id: int, image_id: int, *, keep: bool) -> None:
        run = insert(self.appion, "ApAssessmentRunData", {"REF|leginondata|SessionData|session": session_id,
                                                          "name": "run1"})
        insert(self.appion, "ApAssessmentData", {"REF|ApAssessmentRunData|assessmentrun": run,
                                                 "REF|leginondata|AcquisitionImageData|image": image_id,
                                                 "selectionkeep": int(keep)})
