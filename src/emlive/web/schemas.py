"""Request and response bodies of the REST API (``/api/v1`` and the compatible routes).

Units are in the field names, as in the database (Å, e/Å², kV, mm, px, rad, °). Every schema
here is what the OpenAPI document at ``/api/v1/openapi.json`` describes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from emlive.acquisition import Acquisition
from emlive.curation import Curation
from emlive.pipeline.registry import plan, registry
from emlive.pipeline.step import check_storable
from emlive.web.access import valid_name
from emlive.web.control import CompatState

NAME_HINT = "use letters, digits, '.', '_' or '-' (no '..', no '/', at most 200 characters)"

NAME_SHAPE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
"""``access.NAME_PATTERN`` without its look-ahead (no ``..``), which pydantic's and JSON
Schema's regular expressions lack; :func:`check_name` applies the whole pattern."""


def check_name(value: str) -> str:
    """``value`` if it is a safe project/user/session name, else ValueError saying what is allowed."""
    if not valid_name(value):
        raise ValueError(NAME_HINT)
    return value


Name = Annotated[str, Field(pattern=NAME_SHAPE, max_length=200, description=NAME_HINT), AfterValidator(check_name)]

SessionState = Literal["idle", "processing", "stopped", "complete", "failed"]
ExposureState = Literal["found", "submitted", "processed", "failed"]
ExportName = Literal["micrographs_ctf.star", "corrected_micrographs.star"]


class Error(Schema):
    """Every error: what went wrong and what to do about it."""

    detail: str = Field(description="What went wrong and what to do")


class CompatStatusOut(Schema):
    """The status facility scripts parse: exactly these six fields."""

    state: CompatState
    raw_files: int = Field(description="Movies recorded (or, before the first start, found in raw/)")
    processed_files: int
    failed_jobs: int
    percent_done_total: float = Field(description="Processed or failed over all movies, %")
    percent_current_cycle: float = Field(description="The same since processing was last started or resumed, %")


class ExposureCounts(Schema):
    """Exposures of a session in each state."""

    found: int
    submitted: int
    processed: int
    failed: int
    total: int


class SessionSummary(Schema):
    """One session in a list."""

    id: int
    project: str
    name: str
    owner: str = Field(description="Facility user folder the session lives in; empty if started from the CLI")
    state: SessionState
    counts: ExposureCounts
    created_at: datetime
    updated_at: datetime
    cycle_started_at: datetime | None = Field(description="When processing was last started or resumed")


class SessionPage(Schema):
    """A page of sessions, newest first; ``count`` is the number matching the filters."""

    count: int
    limit: int
    offset: int
    items: list[SessionSummary]


class ProjectOut(Schema):
    """A project the caller can see."""

    name: str
    sessions: int = Field(description="Number of sessions recorded")


class ProcessingParams(Schema):
    """Per-session processing options that differ from the service's configuration, by step,
    and the steps to run (default: the service's, with picking when a diameter is given).

    Only the options given are stored; each step's options are validated against that step's
    parameters (``motion``: MotionParams, ``ctf``: CtfParams, ``pick``: PickParams).
    """

    model_config = ConfigDict(extra="forbid")

    steps: list[str] | None = Field(None, description="Steps to run, e.g. ['motion', 'ctf', 'pick'] (GET /api/v1/steps)")
    motion: dict[str, Any] = Field(default_factory=dict, description="e.g. {'bin_factor': 2, 'patches': [5, 5]}")
    ctf: dict[str, Any] = Field(default_factory=dict, description="e.g. {'min_res_a': 30, 'max_res_a': 4}")
    pick: dict[str, Any] = Field(default_factory=dict, description="e.g. {'diameter_a': 150}: turns picking on")

    @field_validator("motion", "ctf", "pick")
    @classmethod
    def _step_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        check_storable(f"params.{info.field_name}", value)
        registry().step(str(info.field_name)).params.model_validate(value)
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            check_storable("params.steps", value)
            plan(value)
        return value

    def stored(self) -> dict[str, Any]:
        """The form kept in ``Session.params_json``: steps without options left out."""
        options: dict[str, Any] = {"steps": self.steps} if self.steps is not None else {}
        return options | {step: given for step in ("motion", "ctf", "pick") if (given := getattr(self, step))}


class SessionDetail(SessionSummary):
    """One session: its state, progress, acquisition, processing parameters and curation."""

    raw_dir: str = Field(description="Folder of the movies")
    out_dir: str = Field(description="Folder of the outputs (exports in exports/)")
    status: CompatStatusOut = Field(description="The compatible status (the states facility scripts parse)")
    acquisition: dict[str, Any] = Field(description="Acquisition parameters as given (Acquisition)")
    params: dict[str, dict[str, Any]] = Field(description="Processing options of this session, by step")
    curation: Curation


class StartSession(Schema):
    """Start processing a session folder ``<data root>/<project>/sessions/<user>/<name>/raw/``."""

    model_config = ConfigDict(extra="forbid")

    project: Name
    user: Name = Field(description="The facility user folder (not necessarily the caller)")
    name: Name = Field(description="The session folder")
    acquisition: Acquisition
    params: ProcessingParams = Field(default_factory=ProcessingParams)

    @field_validator("acquisition")
    @classmethod
    def _acquisition(cls, value: Acquisition) -> Acquisition:
        check_storable("acquisition", value.model_dump(mode="json"))
        return value


class Parameters(Schema):
    """Every parameter of a session, split by kind (DESIGN.md §3)."""

    acquisition: dict[str, Any] = Field(description="Instrument and acquisition (Acquisition)")
    params: dict[str, dict[str, Any]] = Field(description="Processing options of this session, by step")
    curation: Curation


class TiltMembership(Schema):
    """The tilt series an exposure's movie belongs to, and which tilt it is (SerialEM's mdoc)."""

    series_id: int
    series_name: str = Field(description="The mdoc's stem (TS_01 for TS_01.mrc.mdoc)")
    z_value: int = Field(description="The mdoc's [ZValue = n]")
    tilt_angle_deg: float = Field(description="Nominal stage tilt angle, °")
    acquisition_index: int = Field(description="0 for the tilt acquired first")
    pre_exposure_e_a2: float = Field(description="Exposure accumulated before this tilt, e/Å²")
    excluded_reason: str | None = Field(description="Why the tilt is left out of the reconstruction; null if used")


class ExposureSummary(Schema):
    """One exposure in a page: where it is in the pipeline and its main results (null until
    processed)."""

    id: int
    path: str = Field(description="Movie path relative to the session's raw/")
    state: ExposureState
    found_at: datetime
    processed_at: datetime | None
    failed_at: datetime | None
    fail_count: int
    total_drift_a: float | None
    defocus_u_a: float | None = Field(description="Å, positive = underfocus")
    defocus_v_a: float | None
    astigmatism_a: float | None = Field(description="|defocus U − V|, Å")
    fit_resolution_a: float | None
    fit_ok: bool | None = Field(description="False when the CTF fit found no Thon rings")
    ice_ring_ratio: float | None
    accepted: bool | None = Field(description="Whether it meets the session's curation thresholds (null until processed)")
    metrics: dict[str, float | None] = Field(
        default_factory=dict,
        description="The declared metrics of the other steps that ran (motion's and CTF's are the fields above), "
        "by 'step.metric' (GET /api/v1/steps names them)",
    )
    tilt: TiltMembership | None = Field(
        None, description="The tilt series the movie belongs to and which tilt it is; null for a single-particle movie"
    )


class ExposurePage(Schema):
    """A page of a session's exposures; ``count`` is the number matching the filters."""

    count: int
    limit: int
    offset: int
    items: list[ExposureSummary]


class MotionOut(Schema):
    """Motion correction of one exposure."""

    engine: str
    engine_version: str
    shifts_px: list[tuple[float, float]] = Field(description="Per-frame (x, y) correction, unbinned px (RELION's convention)")
    total_drift_a: float
    early_drift_a: float = Field(description="Accumulated motion in the first 4 e/Å², Å")
    late_drift_a: float
    n_frames: int
    pixel_size_a: float = Field(description="Pixel size of the written micrographs, Å")


class CtfOut(Schema):
    """CTF estimation of one exposure."""

    engine: str
    engine_version: str
    defocus_u_a: float = Field(description="Å, positive = underfocus")
    defocus_v_a: float
    astigmatism_a: float = Field(description="|defocus U − V|, Å")
    azimuth_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_a: float
    fit_ok: bool
    ice_ring_ratio: float | None = Field(description="~1 vitreous, higher crystalline; null when not measured")


class StepOut(Schema):
    """One step's result for an exposure (DESIGN §6): its result model as JSON (``Path`` fields
    are its output files) and its declared metrics; a step that failed while the exposure went
    on has state ``failed`` and the reason."""

    step: str
    state: Literal["done", "failed"]
    engine: str
    engine_version: str
    finished_at: datetime | None
    error: str = Field(description="Why the step failed; empty when done")
    result: dict[str, Any]
    metrics: dict[str, float | None]


class ExposureDetail(Schema):
    """One exposure with all its results."""

    id: int
    session_id: int
    path: str
    state: ExposureState
    size_bytes: int
    found_at: datetime
    submitted_at: datetime | None
    motion_done_at: datetime | None
    ctf_done_at: datetime | None
    processed_at: datetime | None
    failed_at: datetime | None
    fail_count: int
    fail_reason: str
    accepted: bool | None
    motion: MotionOut | None
    ctf: CtfOut | None
    steps: list[StepOut] = Field(default_factory=list, description="Every step's result, built-in or a plugin's")
    tilt: TiltMembership | None = Field(
        None, description="The tilt series the movie belongs to and which tilt it is; null for a single-particle movie"
    )


class MetricInfo(Schema):
    """A metric a step declares: what the dashboard plots and curation may limit."""

    key: str = Field(description="'step.metric', as in ExposureSummary.metrics and Curation.metrics")
    label: str
    unit: str
    better: Literal["high", "low"] | None


class StepInfo(Schema):
    """An installed step and where it comes from."""

    name: str
    description: str
    needs: list[str]
    engines: dict[str, str] = Field(description="Engine name → version")
    origin: str = Field(description="The package that provides it, with its version")
    metrics: list[MetricInfo]


class MetricsOut(Schema):
    """Is processing keeping up? Rates over the last ``window_s``; lag = result − arrival, s."""

    arrivals_per_min: float
    processed_per_min: float
    backlog: int = Field(description="Exposures found or in flight")
    failed: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    window_s: float


class ExportFile(Schema):
    """A STAR export one can download."""

    name: ExportName
    url: str


def validation_message(exc: ValidationError, owner: str) -> str:
    """One line per problem of a pydantic ValidationError: ``owner.field: message``."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in (owner, *problem["loc"]) if p != "")
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


# --- Tilt series ---------------------------------------------------------------------------

TiltSeriesState = Literal["collecting", "complete", "processing", "done", "partial", "failed"]


class TiltSeriesCounts(Schema):
    """How far a tilt series has come."""

    expected: int | None = Field(description="Tilts the series will have, when known; else null")
    named: int = Field(description="Tilts the mdoc names so far")
    received: int = Field(description="Tilts whose movies have come")
    processed: int = Field(description="Tilts whose motion correction and CTF are done")
    excluded: int = Field(description="Tilts left out of the reconstruction")


class ExcludedTilt(Schema):
    """A tilt left out of the reconstruction, and why."""

    z_value: int
    tilt_angle_deg: float
    movie_name: str
    reason: str


class TiltSeriesSummary(Schema):
    """One tilt series of a session: state, tilt range, counts, excluded tilts, alignment and
    tomogram. ``montage_url`` and ``central_slice_url`` are null until the pictures exist."""

    id: int
    session_id: int
    name: str = Field(description="The mdoc's stem (TS_01 for TS_01.mrc.mdoc)")
    mdoc_path: str
    state: TiltSeriesState
    tilt_min_deg: float | None = Field(description="Lowest nominal tilt angle named, °")
    tilt_max_deg: float | None = Field(description="Highest nominal tilt angle named, °")
    counts: TiltSeriesCounts
    excluded: list[ExcludedTilt]
    tilt_axis_nominal_deg: float | None = Field(description="Tilt axis angle from the mdoc, ° (from +y, counter-clockwise)")
    tilt_axis_refined_deg: float | None = Field(description="Tilt axis angle after alignment, °")
    alignment_residual_px: float | None = Field(
        description="Alignment residual, px of the aligned stack (RMS; IMOD's engine: its mean); null until aligned "
        "or when the engine reports none"
    )
    pixel_size_a: float | None = Field(description="Pixel size of the aligned stack and tomogram, Å")
    tomogram_path: str | None = Field(description="The tomogram MRC; null until reconstructed")
    montage_url: str | None
    central_slice_url: str | None
    error: str = Field(description="Why the series failed, or what a partial one lacks; empty otherwise")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    processed_at: datetime | None


class TiltSeriesPage(Schema):
    """A page of a session's tilt series, oldest first; ``count`` is the number matching."""

    count: int
    limit: int
    offset: int
    items: list[TiltSeriesSummary]


class TiltOut(Schema):
    """One tilt of a series as the mdoc names it, with its movie's results (null until
    processed). ``exposure_id`` is null while the movie has not come."""

    z_value: int
    movie_name: str
    tilt_angle_deg: float = Field(description="Nominal stage tilt angle, °")
    acquisition_index: int = Field(description="0 for the tilt acquired first (DateTime, else ZValue order)")
    acquired_at: datetime | None
    dose_e_a2: float | None = Field(description="The tilt's own exposure, e/Å²")
    pre_exposure_e_a2: float = Field(description="Exposure accumulated before this tilt, e/Å²")
    exposure_id: int | None
    exposure_state: ExposureState | None
    defocus_u_a: float | None = Field(description="Å, positive = underfocus")
    defocus_v_a: float | None
    defocus_angle_deg: float | None = Field(description="Azimuth of defocus U from +x, counter-clockwise, °")
    fit_resolution_a: float | None = Field(description="CTF fit resolution, Å")
    fit_ok: bool | None
    total_drift_a: float | None
    excluded_reason: str | None = Field(description="Why the tilt is left out of the reconstruction; null if used")
    exposure_url: str | None = Field(description="The exposure in this API (all its results)")
    page_url: str | None = Field(description="The exposure's dashboard page (the dashboard's login)")
    thumbnail_url: str | None = Field(description="The micrograph's PNG, as the dashboard serves it (its login)")
    spectrum_url: str | None = Field(description="The CTF diagnostic PNG, as the dashboard serves it (its login)")


class TiltSeriesDetail(TiltSeriesSummary):
    """One tilt series with every tilt, in tilt-angle order, the mdoc's malformed lines and
    the group step's stored result (every output path)."""

    problems: list[str] = Field(description="The mdoc's malformed lines")
    result: dict[str, Any] = Field(description="The tilt-series step's result as JSON (outputs, timings)")
    tilts: list[TiltOut]
