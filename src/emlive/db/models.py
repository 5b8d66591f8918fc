"""Tables of the data plane. Units are in the field names (Å, e/Å², kV, mm, px, rad, °).

An exposure moves ``found → submitted → processed`` (or ``→ failed``); every step's result
lives in a :class:`StepResult` row, and the motion and CTF results also in one
:class:`MotionCorrection` and one :class:`CtfEstimate` row. Paths of outputs are stored
absolute; the exposure's own ``path`` is relative to its session's ``raw_dir``. Only the
controller writes these tables, through :mod:`emlive.db.store`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import models

from emlive.acquisition import Acquisition
from emlive.curation import Curation

if not apps.apps_ready:  # imported before Django was configured
    raise RuntimeError(
        "emlive.db.models (and emlive.db.store/queries/export) need Django configured first: "
        "call emlive.db.setup.setup_database(url) before importing them"
    )

PATH_MAX_CHARS = 1024
"""Longest path stored in a column that identifies a row (raw_dir, exposure path)."""

OUTPUT_PATH_MAX_CHARS = 4096


def canonical_dir(path: str | os.PathLike[str]) -> str:
    """The form in which a session folder is stored and looked up: absolute, symlinks resolved."""
    return str(Path(path).resolve())


def path_digest(path: str) -> str:
    """SHA-256 (hex) of a stored path's UTF-8 text: the value of its :class:`DigestField`."""
    return hashlib.sha256(path.encode()).hexdigest()


class PathField(models.CharField):
    """A path that identifies a row. On MySQL/MariaDB its column compares and sorts byte-exact
    (``utf8mb4_bin``) as on SQLite and PostgreSQL, whatever the database's default collation:
    ``a.tif`` and ``A.tif`` are two movies. Elsewhere it is a plain CharField."""

    def db_parameters(self, connection):  # type: ignore[no-untyped-def]
        params = super().db_parameters(connection)
        if connection.vendor == "mysql" and self.db_collation is None:
            params["collation"] = "utf8mb4_bin"
        return params


class DigestField(models.CharField):
    """The SHA-256 of the path field ``of``, set whenever the row is saved or bulk-created
    (not by ``QuerySet.update``/``bulk_update`` of the path: save the rows instead).

    It carries the path's uniqueness and index: a path of up to :data:`PATH_MAX_CHARS`
    characters is too long for a MySQL/MariaDB index (3072 bytes, 4 bytes a character in
    utf8mb4), its 64-character digest is not. Look rows up by it (:func:`path_digest`)."""

    def __init__(self, *args, of: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.of = of
        kwargs.setdefault("max_length", 64)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self):  # type: ignore[no-untyped-def]
        name, path, args, kwargs = super().deconstruct()
        kwargs["of"] = self.of
        kwargs.pop("editable", None)
        if kwargs.get("max_length") == 64:
            del kwargs["max_length"]
        return name, path, args, kwargs

    def pre_save(self, model_instance: models.Model, add: bool) -> str:
        value = path_digest(getattr(model_instance, self.of))
        setattr(model_instance, self.attname, value)
        return value


class Project(models.Model):
    """A group of sessions (a facility project, or ``default`` on a laptop)."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Session(models.Model):
    """One microscope session: a folder of movies, its acquisition parameters and outputs."""

    class State(models.TextChoices):
        IDLE = "idle", "idle"
        PROCESSING = "processing", "processing"
        STOPPED = "stopped", "stopped"
        COMPLETE = "complete", "complete"
        FAILED = "failed", "failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="sessions")
    name = models.CharField(max_length=200)
    raw_dir = PathField(max_length=PATH_MAX_CHARS, help_text="Absolute path of the movies' folder")
    raw_dir_sha256 = DigestField(of="raw_dir", unique=True, help_text="SHA-256 of raw_dir: unique")
    out_dir = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, help_text="Absolute path of the outputs' folder")

    pixel_size_a = models.FloatField(help_text="Movie pixel size, Å")
    voltage_kv = models.FloatField(help_text="Accelerating voltage, kV")
    cs_mm = models.FloatField(help_text="Spherical aberration, mm")
    amplitude_contrast = models.FloatField(help_text="Amplitude contrast fraction")
    dose_per_frame_e_a2 = models.FloatField(help_text="Exposure per movie frame (EER: per fraction), e/Å²")
    pre_exposure_e_a2 = models.FloatField(default=0.0, help_text="Exposure before the first frame, e/Å²")
    gain_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, blank=True, default="", help_text="Gain reference; empty if none")
    eer_fractions = models.PositiveIntegerField(default=40, help_text="EER raw frames are summed into this many fractions")
    acquisition_json = models.JSONField(
        default=dict,
        help_text="Every acquisition parameter as given (Acquisition.model_dump); the columns above "
        "repeat the common ones for queries",
    )

    owner = models.CharField(
        max_length=150, blank=True, default="",
        help_text="The facility user folder the session lives in (<root>/<project>/sessions/<owner>/<name>); "
        "empty for sessions started from the command line",
    )
    params_json = models.JSONField(
        default=dict,
        help_text="Processing parameters of this session that differ from the service's configuration, "
        "by step: {'motion': {...}, 'ctf': {...}} (e.g. bin_factor 2 for super-resolution movies)",
    )
    curation_json = models.JSONField(default=dict, help_text="Curation thresholds (Curation.model_dump)")
    cycle_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When processing was last started or resumed"
    )

    state = models.CharField(max_length=16, choices=State.choices, default=State.IDLE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.name}"

    @property
    def acquisition(self) -> Acquisition:
        """The acquisition parameters as the engines take them."""
        return Acquisition.model_validate(self.acquisition_json)

    @property
    def curation(self) -> Curation:
        """The thresholds that decide which processed exposures are exported."""
        return Curation.model_validate(self.curation_json)


class Exposure(models.Model):
    """One movie of a session and where it is in the pipeline."""

    class State(models.TextChoices):
        FOUND = "found", "found"
        SUBMITTED = "submitted", "submitted"
        PROCESSED = "processed", "processed"
        FAILED = "failed", "failed"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="exposures")
    path = PathField(max_length=PATH_MAX_CHARS, help_text="Movie path relative to the session's raw_dir (POSIX separators)")
    path_sha256 = DigestField(of="path", help_text="SHA-256 of path: unique in the session")
    size_bytes = models.BigIntegerField(help_text="File size when found, bytes")
    mtime_ns = models.BigIntegerField(help_text="File modification time when found, ns since the epoch")

    state = models.CharField(max_length=16, choices=State.choices, default=State.FOUND)
    fail_count = models.PositiveIntegerField(default=0)
    fail_reason = models.TextField(blank=True, default="")

    found_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    motion_done_at = models.DateTimeField(null=True, blank=True)
    ctf_done_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["found_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["session", "path_sha256"], name="emlive_exposure_unique_path_sha256"),
        ]
        indexes = [
            models.Index(fields=["session", "state"], name="emlive_exposure_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.path} ({self.state})"

    @property
    def movie_path(self) -> Path:
        """Absolute path of the movie."""
        return Path(self.session.raw_dir) / self.path


class MotionCorrection(models.Model):
    """Result of motion correction of one exposure (shifts in unbinned movie pixels)."""

    exposure = models.OneToOneField(Exposure, on_delete=models.CASCADE, related_name="motion")
    engine = models.CharField(max_length=64)
    engine_version = models.CharField(max_length=64)
    shifts_px = models.JSONField(help_text="Per-frame [x, y] correction, px (RELION rlnMicrographShiftX/Y)")
    total_drift_a = models.FloatField(help_text="Accumulated motion over all frames, Å")
    early_drift_a = models.FloatField(help_text="Accumulated motion in the first 4 e/Å², Å")
    late_drift_a = models.FloatField(help_text="Accumulated motion after the first 4 e/Å², Å")
    n_frames = models.PositiveIntegerField()
    pixel_size_a = models.FloatField(help_text="Pixel size of the written micrographs, Å")
    micrograph_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, help_text="Aligned sum (no dose weighting)")
    dose_weighted_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS)
    star_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, help_text="RELION 3.1 motion STAR file")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"motion of exposure {self.exposure_id}: {self.total_drift_a:.2f} Å"


class CtfEstimate(models.Model):
    """Result of CTF estimation of one exposure (ctffind's seven numbers plus outputs)."""

    exposure = models.OneToOneField(Exposure, on_delete=models.CASCADE, related_name="ctf")
    engine = models.CharField(max_length=64)
    engine_version = models.CharField(max_length=64)
    defocus_u_a = models.FloatField(help_text="Defocus along the azimuth, Å, positive = underfocus")
    defocus_v_a = models.FloatField(help_text="Defocus perpendicular to the azimuth, Å")
    azimuth_deg = models.FloatField(help_text="Angle of the defocus-U axis from +x, counter-clockwise, °")
    phase_shift_rad = models.FloatField(default=0.0, help_text="Phase-plate phase shift, rad")
    cross_correlation = models.FloatField(help_text="Score of the fit over the fitting band")
    fit_resolution_a = models.FloatField(help_text="Resolution to which Thon rings are fitted, Å")
    fit_ok = models.BooleanField(
        default=True,
        help_text="False when no Thon rings were found: the defocus is a guess; reject the micrograph",
    )
    ice_ring_ratio = models.FloatField(
        null=True,
        blank=True,
        help_text="Power in the 3.9–3.6 Å ice band over the bands beside it (~1 vitreous, higher crystalline); "
        "null when beyond Nyquist or not measured",
    )
    output_txt_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, help_text="ctffind 4.1 format result")
    avrot_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, help_text="ctffind-format rotational average")
    diagnostic_png_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"CTF of exposure {self.exposure_id}: {self.defocus_u_a:.0f}/{self.defocus_v_a:.0f} Å"

    @property
    def astigmatism_a(self) -> float:
        """|defocus U − defocus V|, Å (RELION's rlnCtfAstigmatism)."""
        return abs(self.defocus_u_a - self.defocus_v_a)


class StepResult(models.Model):
    """One step's result for one exposure, for every step, built-in or a plugin's (DESIGN §6).

    ``result`` is the step's result model as JSON (its ``Path`` fields are its outputs);
    ``metrics`` holds the fields the model declares as metrics (numbers, or null), which
    curation thresholds and the dashboard query. A step that failed on bad input while the
    exposure went on (``state = failed``) keeps the reason in ``error``. Motion and CTF results
    are also in their typed tables (:class:`MotionCorrection`, :class:`CtfEstimate`), which the
    exports and the built-in thresholds query.
    """

    class State(models.TextChoices):
        DONE = "done", "done"
        FAILED = "failed", "failed"

    exposure = models.ForeignKey(Exposure, on_delete=models.CASCADE, related_name="step_results")
    step = models.CharField(max_length=64)
    state = models.CharField(max_length=8, choices=State.choices, default=State.DONE)
    engine = models.CharField(max_length=64, blank=True, default="")
    engine_version = models.CharField(max_length=64, blank=True, default="")
    result = models.JSONField(default=dict, help_text="The step's result model as JSON")
    metrics = models.JSONField(default=dict, help_text="The result's declared metrics: {name: number or null}")
    error = models.TextField(blank=True, default="", help_text="Why the step failed (state failed)")
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["exposure", "step"], name="emlive_step_result_unique")]
        indexes = [models.Index(fields=["step", "state"], name="emlive_step_result_step_idx")]

    def __str__(self) -> str:
        return f"{self.step} of exposure {self.exposure_id} ({self.state})"


class TiltSeries(models.Model):
    """A tilt series: the exposures a SerialEM ``.mdoc`` names (its :class:`Tilt` rows), and the
    series' own result (alignment, tomogram, pictures) once its group step ran.

    States::

        collecting ──(every tilt named is processed, and the expected count reached or no new
            │          tilt for the settle time)──▶ complete ──▶ processing ──▶ done | partial | failed
            └── a tilt arrives after the series was processed: back to collecting, processed again

    ``partial``: reconstructed without some tilts the mdoc names (their movies never came, or
    failed); ``error`` says which and why. Angles in degrees; the tilt axis as SerialEM's
    "Tilt axis angle" (in the image plane from +y, counter-clockwise positive).
    """

    class State(models.TextChoices):
        COLLECTING = "collecting", "collecting"
        COMPLETE = "complete", "complete"
        PROCESSING = "processing", "processing"
        DONE = "done", "done"
        PARTIAL = "partial", "partial"
        FAILED = "failed", "failed"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="tilt_series")
    name = models.CharField(max_length=255, help_text="The mdoc's stem (TS_01 for TS_01.mrc.mdoc): unique in the session")
    mdoc_path = PathField(max_length=PATH_MAX_CHARS, help_text="Absolute path of the mdoc")
    mdoc_path_sha256 = DigestField(of="mdoc_path", help_text="SHA-256 of mdoc_path: unique in the session")
    state = models.CharField(max_length=16, choices=State.choices, default=State.COLLECTING)

    tilt_min_deg = models.FloatField(null=True, blank=True, help_text="Lowest nominal tilt angle named, °")
    tilt_max_deg = models.FloatField(null=True, blank=True, help_text="Highest nominal tilt angle named, °")
    n_tilts_expected = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tilts the series will have, when known (configuration); else null"
    )
    n_tilts_received = models.PositiveIntegerField(default=0, help_text="Tilts whose movies have come")
    n_tilts_processed = models.PositiveIntegerField(default=0, help_text="Tilts whose motion and CTF are done")
    excluded_json = models.JSONField(
        default=list,
        help_text="Tilts left out of the reconstruction: [{z_value, tilt_angle_deg, movie_name, reason}]",
    )
    problems_json = models.JSONField(default=list, help_text="The mdoc's malformed lines, as read_mdoc reports them")

    tilt_axis_nominal_deg = models.FloatField(null=True, blank=True, help_text="Tilt axis angle from the mdoc, °")
    tilt_axis_refined_deg = models.FloatField(null=True, blank=True, help_text="Tilt axis angle after alignment, °")
    alignment_residual_px = models.FloatField(
        null=True, blank=True, help_text="RMS alignment residual, px of the aligned stack (pixel_size_a)"
    )
    pixel_size_a = models.FloatField(null=True, blank=True, help_text="Pixel size of the aligned stack and tomogram, Å")
    tomogram_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, blank=True, default="")
    central_slice_png_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, blank=True, default="")
    montage_png_path = models.CharField(max_length=OUTPUT_PATH_MAX_CHARS, blank=True, default="")
    result_json = models.JSONField(default=dict, help_text="The group step's result (every output path, timings)")
    input_hash = models.CharField(
        max_length=64, blank=True, default="",
        help_text="SHA-256 of the members' results and the parameters the stored result was made from",
    )
    error = models.TextField(blank=True, default="", help_text="Why the series failed, or what a partial one lacks")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_tilt_at = models.DateTimeField(null=True, blank=True, help_text="When the last new tilt was named or came")
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When the series was taken as complete")
    processed_at = models.DateTimeField(null=True, blank=True, help_text="When its result was stored")

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "tilt series"
        constraints = [
            models.UniqueConstraint(fields=["session", "name"], name="emlive_tilt_series_unique_name"),
            models.UniqueConstraint(fields=["session", "mdoc_path_sha256"], name="emlive_tilt_series_unique_mdoc"),
        ]

    def __str__(self) -> str:
        return f"tilt series {self.name} ({self.state})"


class Tilt(models.Model):
    """One tilt of a :class:`TiltSeries` as its mdoc names it, and the exposure of its movie
    (null until the movie has come). Doses in e/Å², angles in degrees."""

    series = models.ForeignKey(TiltSeries, on_delete=models.CASCADE, related_name="tilts")
    exposure = models.OneToOneField(
        Exposure, null=True, blank=True, on_delete=models.SET_NULL, related_name="tilt",
        help_text="The tilt's movie once found (one exposure belongs to at most one series)",
    )
    z_value = models.PositiveIntegerField(help_text="The mdoc's [ZValue = n]: the section in the stack")
    movie_name = models.CharField(max_length=512, help_text="Basename of the mdoc's SubFramePath")
    tilt_angle_deg = models.FloatField(help_text="Nominal stage tilt angle, °")
    acquisition_index = models.PositiveIntegerField(
        default=0, help_text="0 for the tilt acquired first (DateTime, else ZValue order)"
    )
    acquired_at = models.DateTimeField(null=True, blank=True, help_text="The mdoc's DateTime, when given")
    dose_e_a2 = models.FloatField(null=True, blank=True, help_text="The tilt's own exposure (ExposureDose), e/Å²")
    pre_exposure_e_a2 = models.FloatField(default=0.0, help_text="Exposure accumulated before this tilt, e/Å²")
    excluded_reason = models.TextField(
        blank=True, default="", help_text="Why the tilt is left out of the reconstruction; empty if used"
    )

    class Meta:
        ordering = ["series", "tilt_angle_deg", "z_value"]
        constraints = [models.UniqueConstraint(fields=["series", "z_value"], name="emlive_tilt_unique_z")]

    def __str__(self) -> str:
        return f"tilt {self.z_value} ({self.tilt_angle_deg:+.1f}°) of series {self.series_id}"


class ProjectMember(models.Model):
    """A user who may see and control a project's sessions (staff users see every project)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="emlive_projects")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="emlive_member_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}"


class ApiToken(models.Model):
    """A secret for scripts, shown once: ``emlive_<key_id>_<secret>``. Only the SHA-256 of the
    secret is stored; a request's token is found by ``key_id`` and its hash compared in
    constant time."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="emlive_tokens")
    key_id = models.CharField(max_length=16, unique=True)
    secret_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.key_id} of {self.user}"
