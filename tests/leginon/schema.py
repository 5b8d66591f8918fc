"""The subset of Leginon's, the project database's and Appion's tables that emlive reads and
writes, as a compact table spec turned into ``CREATE TABLE`` statements.

Source: the column names and types are those of the published definitions — Appion's tables
from ``nysbc/sinedon``'s ``sinedon/rawschema.yml`` (the raw MySQL column types), Leginon's and
projectdb's from the Django models in ``nysbc/sinedon``'s ``sinedon/models/{leginon,projects}``
(their ``db_column`` names: sinedon names a reference ``REF|<Table>|<field>``, a reference into
another database ``REF|<dbalias>|<Table>|<field>``, a nested field ``SUBD|<field>|<sub>``, a
sequence ``SEQ|<field>``, a stored image ``MRC|image``, and every table has ``DEF_id`` and
``DEF_timestamp``). Django field types map to the MySQL types sinedon creates: IntegerField →
int, FloatField → double, TextField → text, BooleanField → tinyint(1). Only the columns emlive
or the tests touch are listed; the tables are MyISAM, as at many facilities (no transactions).
"""

from __future__ import annotations

I, D, T, B = "int DEFAULT NULL", "double DEFAULT NULL", "text", "tinyint(1) DEFAULT NULL"

LEGINON: dict[str, dict[str, str]] = {
    "InstrumentData": {"name": T, "hostname": T, "description": T, "cs": D, "hidden": B},
    "SessionData": {"name": T, "image path": T, "frame path": T, "comment": T, "hidden": B},
    "PresetData": {
        "REF|SessionData|session": I, "number": I, "name": T, "removed": B, "REF|InstrumentData|tem": I,
        "REF|InstrumentData|ccdcamera": I, "magnification": I, "defocus": D, "dose": D, "exposure time": D,
        "SUBD|dimension|x": I, "SUBD|dimension|y": I, "SUBD|binning|x": I, "SUBD|binning|y": I,
        "SUBD|offset|x": I, "SUBD|offset|y": I, "save frames": B, "align frames": B, "frame time": D,
    },
    "ScopeEMData": {
        "REF|SessionData|session": I, "system time": D, "REF|InstrumentData|tem": I, "magnification": I,
        "defocus": D, "high tension": I, "SUBD|stage position|a": D, "SUBD|stage position|b": D,
        "SUBD|stage position|x": D, "SUBD|stage position|y": D, "SUBD|stage position|z": D,
    },
    "CameraEMData": {
        "REF|SessionData|session": I, "system time": D, "REF|InstrumentData|ccdcamera": I,
        "SUBD|dimension|x": I, "SUBD|dimension|y": I, "SUBD|binning|x": I, "SUBD|binning|y": I,
        "SUBD|offset|x": I, "SUBD|offset|y": I, "exposure time": D, "nframes": I, "save frames": B,
        "align frames": B, "tiff frames": B, "eer frames": B, "frames name": T, "SEQ|use frames": T,
        "frame time": D, "frame flip": I, "frame rotate": I,
    },
    "PixelSizeCalibrationData": {
        "REF|SessionData|session": I, "REF|InstrumentData|tem": I, "REF|InstrumentData|ccdcamera": I,
        "magnification": I, "pixelsize": D, "comment": T,
    },
    "AcquisitionImageData": {
        "REF|SessionData|session": I, "MRC|image": T, "label": T, "filename": T, "REF|ScopeEMData|scope": I,
        "REF|CameraEMData|camera": I, "REF|PresetData|preset": I, "REF|NormImageData|norm": I,
        "REF|DarkImageData|dark": I, "REF|AcquisitionImageTargetData|target": I, "REF|TiltSeriesData|tilt series": I,
        "version": I, "tiltnumber": I, "SEQ|use frames": T,
    },
    "NormImageData": {"REF|SessionData|session": I, "MRC|image": T, "filename": T, "REF|CameraEMData|camera": I},
    "ViewerImageStatus": {"status": T, "REF|AcquisitionImageData|image": I, "REF|SessionData|session": I},
}

PROJECT: dict[str, dict[str, str]] = {
    "projects": {"name": "varchar(255) DEFAULT NULL", "short_description": T, "leginondb": "varchar(50) DEFAULT NULL",
                 "hidden": B},
    "processingdb": {"REF|projects|project": I, "appiondb": "varchar(50) DEFAULT NULL"},
    "projectexperiments": {"REF|projects|project": I, "REF|leginondata|SessionData|session": I},
}

APPION: dict[str, dict[str, str]] = {
    "ApPathData": {"path": T},
    "ApAppionJobData": {
        "REF|ApPathData|path": I, "name": T, "jobtype": T, "REF|ApPathData|dmfpath": I, "REF|ApPathData|clusterpath": I,
        "REF|leginondata|SessionData|session": I, "cluster": T, "clusterjobid": I, "status": "varchar(1) DEFAULT NULL",
        "user": T,
    },
    "ApAssessmentRunData": {"REF|leginondata|SessionData|session": I, "name": T},
    "ApAssessmentData": {"REF|ApAssessmentRunData|assessmentrun": I, "REF|leginondata|AcquisitionImageData|image": I,
                         "selectionkeep": I},
    "ApDDStackParamsData": {"preset": T, "align": "tinyint(1) DEFAULT '0'", "bin": I,
                            "REF|ApDDStackRunData|unaligned_ddstackrun": I, "REF|ApStackData|stack": I, "method": T,
                            "REF|ApDEAlignerParamsData|de_aligner": I},
    "ApDDStackRunData": {"runname": T, "REF|ApDDStackParamsData|params": I, "REF|leginondata|SessionData|session": I,
                         "REF|ApPathData|path": I},
    "ApDDAlignImagePairData": {"REF|leginondata|AcquisitionImageData|source": I,
                               "REF|leginondata|AcquisitionImageData|result": I, "REF|ApDDStackRunData|ddstackrun": I},
    "ApDDFrameTrajectoryData": {
        "REF|leginondata|AcquisitionImageData|image": I, "REF|ApStackParticleData|particle": I,
        "REF|ApDDStackRunData|ddstackrun": I, "SEQ|pos_x": T, "SEQ|pos_y": T, "last_x": D, "last_y": D,
        "number_of_positions": I, "reference_index": I,
    },
    "ApDDAlignStatsData": {
        "REF|leginondata|AcquisitionImageData|image": I, "REF|ApDDStackRunData|ddstackrun": I,
        "REF|ApDDFrameTrajectoryData|trajectory": I, "apix": D, "top_shift1_value": D, "top_shift2_value": D,
        "top_shift3_value": D, "top_shift1_index": I, "top_shift2_index": I, "top_shift3_index": I,
        "median_shift_value": D,
    },
    "ApCtfFind4ParamsData": {
        "bestdb": "tinyint(1) DEFAULT '0'", "ampcontrast": D, "fieldsize": I, "cs": D, "resmin": D, "defstep": D,
        "shift_phase": "tinyint(1) DEFAULT '0'", "min_phase_shift": D, "max_phase_shift": D, "phase_search_step": D,
        "local_refine": "tinyint(1) DEFAULT '0'",
    },
    "ApAceRunData": {
        "REF|ApAceParamsData|aceparams": I, "REF|ApCtfTiltParamsData|ctftilt_params": I,
        "REF|ApAce2ParamsData|ace2_params": I, "REF|leginondata|SessionData|session": I, "REF|ApPathData|path": I,
        "name": T, "hidden": "tinyint(1) DEFAULT '0'", "REF|ApXmippCtfParamsData|xmipp_ctf_params": I,
        "REF|ApCtfFind4ParamsData|ctffind4_params": I, "transferred": "tinyint(1) DEFAULT '0'",
    },
    "ApCtfData": {
        "REF|ApAceRunData|acerun": I, "REF|leginondata|AcquisitionImageData|image": I, "defocus1": D, "defocus2": D,
        "defocusinit": D, "amplitude_contrast": D, "angle_astigmatism": D, "tilt_angle": D, "tilt_axis_angle": D,
        "confidence": D, "confidence_d": D, "graph1": T, "graph2": T, "cross_correlation": D, "ctfvalues_file": T,
        "cs": D, "ctffind4_resolution": D, "confidence_30_10": D, "confidence_5_peak": D, "resolution_80_percent": D,
        "resolution_50_percent": D, "graph3": T, "graph4": T, "extra_phase_shift": D,
    },
}


def create_statements(tables: dict[str, dict[str, str]]) -> list[str]:
    """``CREATE TABLE`` statements: ``DEF_id``/``DEF_timestamp`` first, as sinedon creates them."""
    statements = []
    for table, columns in tables.items():
        lines = ["`DEF_id` int NOT NULL AUTO_INCREMENT",
                 "`DEF_timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"]
        lines += [f"`{name}` {kind}" for name, kind in columns.items()]
        lines += ["PRIMARY KEY (`DEF_id`)", "KEY `DEF_timestamp` (`DEF_timestamp`)"]
        statements.append(f"CREATE TABLE `{table}` (\n  " + ",\n  ".join(lines) + "\n) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4")
    return statements
