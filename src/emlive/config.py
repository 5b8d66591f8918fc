"""emlive's configuration: one pydantic-settings model.

Sources, highest priority first:

1. explicit arguments (CLI flags, or ``load_settings(**overrides)``);
2. ``EMLIVE_*`` environment variables; nested keys use ``__`` (``EMLIVE_WATCH__SETTLE_S=10``);
3. a TOML file: ``--config PATH``, else ``$EMLIVE_CONFIG``, else ``~/.config/emlive/emlive.toml``
   when it exists;
4. the defaults below.

Parameters are split by kind, never mixed: the watcher, the scheduler and the cluster
(infrastructure), the steps that run (``[pipeline] steps``) and each step's parameters
(``[steps.NAME]``; ``[motion]`` and ``[ctf]`` are kept for the first two), and
the external programs engines may run (``[tools]``). Instrument and acquisition
values (pixel size, dose, kV …) belong to a session and come from the command line or the API.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from emlive.ctf.types import CtfParams
from emlive.motion.types import MotionParams
from emlive.tomo.series import SeriesParams
from emlive.tools.spec import ToolsSettings

DEFAULT_CONFIG_PATH = Path("~/.config/emlive/emlive.toml")

_toml_path: ContextVar[Path | None] = ContextVar("emlive_toml_path", default=None)


class ConfigError(ValueError):
    """A configuration value is missing or not allowed; the message names the key and source."""


class WatchSettings(BaseModel):
    """How new movies are discovered under ``raw/``."""

    model_config = ConfigDict(extra="forbid")

    settle_s: float = Field(5.0, ge=0.0, description="A file must keep its size and mtime this long")
    poll_interval_s: PositiveFloat = Field(1.0, description="Seconds between scans of raw/")
    incomplete_timeout_s: float = Field(
        120.0, ge=0.0,
        description="With --watch: a settled file that still fails its integrity check this long "
        "is marked failed (it is retried if it changes later)",
    )


class SchedulerSettings(BaseModel):
    """What the controller submits, in which order, and how often it gives up."""

    model_config = ConfigDict(extra="forbid")

    order: Literal["oldest", "newest", "alternate"] = Field(
        "oldest", description="Which of a session's waiting exposures goes first"
    )
    retry_backoff_s: float = Field(10.0, ge=0.0, description="Wait before retry n: this × 2^(n-1)")

    max_in_flight: PositiveInt | None = Field(
        None,
        description="Exposures submitted at once. Default: follows how long exposures take — twice the "
        "worker threads for long ones, up to eight per thread (queued in chunks) for short ones",
    )
    max_attempts: PositiveInt = Field(3, description="Tries per exposure for transient failures")
    export_interval_s: float = Field(5.0, ge=0.0, description="Least time between export rewrites")


ClusterKind = Literal["local", "slurm", "pbs", "sge", "lsf", "htcondor", "address"]


class ClusterSettings(BaseModel):
    """Where the work runs: a local Dask cluster, a batch system via dask-jobqueue, or an
    existing Dask scheduler. Batch-system workers are asked for as the backlog needs them."""

    model_config = ConfigDict(extra="forbid")

    kind: ClusterKind = Field("local", description="local | slurm | pbs | sge | lsf | htcondor | address")
    n_workers: PositiveInt | None = Field(
        None, description="local: worker processes (default: CPU count); batch systems: most workers"
    )
    min_workers: int = Field(0, ge=0, description="Batch systems: workers kept even when idle")
    threads_per_worker: PositiveInt = 1
    gpu_ids: list[int] = Field(
        default_factory=list,
        description="local: GPUs for GPU engines (MotionCor2/3, Gctf); each worker declares resources "
        "GPU=1 and uses gpu_ids[i % len] (default worker count: one per id)",
    )
    memory_limit: str = Field("auto", description="local: per worker, as Dask reads it ('4GiB', 'auto')")
    address: str | None = Field(None, description="kind = address: the scheduler, e.g. tcp://host:8786")
    scale_down_after_s: float = Field(
        60.0, ge=0.0, description="Batch systems: demand must stay lower this long before workers are released"
    )
    # batch systems (dask-jobqueue); one job = one worker process
    queue: str | None = Field(None, description="Partition / queue")
    account: str | None = Field(None, description="Account / project charged")
    memory: str = Field("8GiB", description="Memory per job")
    walltime: str = Field("02:00:00", description="Walltime per job, HH:MM:SS")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job (Slurm: --gres=gpu:N)")
    job_extra_directives: list[str] = Field(default_factory=list, description="Extra #SBATCH/#PBS lines")
    worker_lifetime_s: float | None = Field(
        None, gt=0,
        description="Workers retire gracefully (work moves elsewhere) after this long, staggered by "
        "10 %; default: the walltime minus 10 minutes, so walltime never kills a task",
    )
    python: str | None = Field(None, description="Python that runs the workers (default: this one)")
    log_directory: str | None = Field(None, description="Where job stdout/stderr go")
    interface: str | None = Field(None, description="Network interface workers and scheduler use")
    scheduler_host: str | None = Field(None, description="Address the scheduler listens on (default: Dask's)")


class MetricsSettings(BaseModel):
    """Prometheus metrics of the sessions being processed (arrival and processing rates, backlog,
    lag, failures)."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(None, ge=0, le=65535, description="Serve /metrics on this port (0: any free one)")
    address: str = Field("127.0.0.1", description="Address the metrics server listens on")
    window_s: float = Field(600.0, gt=0, description="Rates and lag are over this last stretch of time")


class WebSettings(BaseModel):
    """``emlive serve``: where the API and dashboard listen, and whom to tell when a session
    needs attention."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    secret_key: str | None = Field(
        None,
        description="Signs login cookies; default: a random key kept in <data_root>/.emlive/secret_key",
    )
    webhook_url: str | None = Field(
        None, description="POST a Slack-compatible JSON message here when a session stalls, fails or completes"
    )
    stall_after_s: float = Field(
        600.0, gt=0, description="A session with a backlog and no new result for this long has stalled"
    )
    failures_to_alert: int = Field(5, ge=1, description="Alert after this many exposures fail in a row")
    complete_after_s: float = Field(
        10800.0, gt=0,
        description="A processing session with nothing left and no new movie for this long is complete (a movie "
        "written later makes it processed again); best longer than the usual pauses in collection",
    )
    # Behind a reverse proxy that terminates HTTPS (defaults: plain HTTP on localhost).
    secure_cookies: bool = Field(
        False, description="Send the login and CSRF cookies over HTTPS only (set when served over HTTPS)"
    )
    csrf_trusted_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(
        default_factory=list,
        description="Origins allowed to POST dashboard forms besides the request's own host, e.g. "
        "['https://emlive.example.org'] when a proxy rewrites the Host header",
    )
    hsts_seconds: int = Field(
        0, ge=0, description="Strict-Transport-Security max-age sent on HTTPS responses (0: no header)"
    )
    hsts_include_subdomains: bool = Field(False, description="Add includeSubDomains to the HSTS header")
    proxy_ssl_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,100}$",
        description="A header the proxy sets to 'https' on HTTPS requests (e.g. X-Forwarded-Proto); only "
        "behind a proxy that always sets or strips it",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted (larger: 413)"
    )
    max_query_bytes: int = Field(
        8192, ge=256, le=65536, description="Longest query string accepted (longer: 414)"
    )
    login_attempts_per_minute: int = Field(
        5, ge=1, description="Failed dashboard logins per user name and client address before 429 for a minute"
    )


class PipelineSettings(BaseModel):
    """Which steps run on each exposure (``emlive steps`` lists the installed ones)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[str] | None = Field(
        None,
        description="Steps to run, e.g. ['motion', 'ctf', 'pick']; default: motion, ctf, thumbnail, and pick "
        "when [steps.pick] diameter_a (--particle-diameter) is set",
    )


class LeginonSettings(BaseModel):
    """The Leginon and project databases of classic Appion's commands (makeDDAlignMotionCor2_UCSF.py,
    ctffind4.py) when no ``sinedon.cfg`` is found; a project's Appion database is read from
    the project database, as Appion does."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(None, description="MySQL/MariaDB server (None: not configured here)")
    port: int = 3306
    user: str = "root"
    password: str = ""
    leginon_db: str = Field("leginondb", description="Leginon's database ([leginondata] db in sinedon.cfg)")
    project_db: str = Field("projectdb", description="The project database ([projectdata] db in sinedon.cfg)")


class TomoSettings(BaseModel):
    """Tilt series from SerialEM ``.mdoc`` files beside or under raw/ (see docs/tomo.md): when a
    series is complete, which acquisition values its movies take, and its processing
    (``[tomo.series]``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Look for .mdoc files and group their movies into tilt series")
    tilts_per_series: PositiveInt | None = Field(
        None,
        description="Tilts a series has when collection ends (e.g. 41 for -60..60 in 3° steps): a series is "
        "processed as soon as that many are done; otherwise once no new tilt came for settle_s",
    )
    settle_s: float = Field(60.0, ge=0.0, description="A series whose tilts are all done and that gained none "
                            "for this long is complete")
    missing_timeout_s: float = Field(
        300.0, ge=0.0,
        description="A tilt the mdoc names whose movie has not come this long after the series' last new tilt is "
        "given up: the series is processed without it (partial)",
    )
    mdoc_acquisition: bool = Field(
        True,
        description="Tilt movies take pixel size, voltage and dose (ExposureDose / NumSubFrames per frame) from the "
        "mdoc where it gives them; false: the session's values",
    )
    tilt_motion_patches: tuple[PositiveInt, PositiveInt] | None = Field(
        (1, 1),
        description="Motion-correction patches (x, y) of tilt movies: (1, 1) global alignment only, as RELION 5's "
        "tomography tutorial does (a tilt's few e/Å² leave local motion to noise); None: the session's [motion] patches",
    )
    series: SeriesParams = Field(SeriesParams(), description="The tilt-series step's parameters")


class RemoteSettings(BaseModel):
    """Movies or outputs at a URL (``s3://…``; docs/remote.md): where their local copies live."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: Path = Field(
        Path("~/.cache/emlive/remote"),
        description="Local working copies of remote output folders (results, database) and, under scratch/, the "
        "movies being processed (one per worker thread at most, deleted once processed)",
    )


class Settings(BaseSettings):
    """Everything configurable; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="EMLIVE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database_url: str | None = Field(
        None,
        description="Where results are stored: sqlite:///PATH or postgresql://user@host/db. "
        "Default: sqlite in the output folder (emlive process) ",
    )
    data_root: Path = Field(
        Path("~/emlive-data"),
        description="Facility root: <root>/<project>/sessions/<user>/<session>/raw/",
    )
    watch: WatchSettings = WatchSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    cluster: ClusterSettings = ClusterSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    pipeline: PipelineSettings = PipelineSettings()
    steps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Each step's parameters by step name ([steps.pick] diameter_a = 150); checked against the "
        "step's params model when the pipeline is planned",
    )
    motion: MotionParams = Field(MotionParams(), description="The motion step's parameters (also [steps.motion])")
    ctf: CtfParams = Field(CtfParams(), description="The CTF step's parameters (also [steps.ctf])")
    tools: ToolsSettings = ToolsSettings()
    leginon: LeginonSettings = LeginonSettings()
    tomo: TomoSettings = TomoSettings()
    remote: RemoteSettings = RemoteSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _toml_path.get()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if path is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
        return sources


def config_path(explicit: Path | None = None) -> Path | None:
    """The TOML file to read: ``explicit``, else ``$EMLIVE_CONFIG``, else the default if present."""
    if explicit is not None:
        path = explicit.expanduser()
    elif os.environ.get("EMLIVE_CONFIG"):
        path = Path(os.environ["EMLIVE_CONFIG"]).expanduser()
    else:
        default = DEFAULT_CONFIG_PATH.expanduser()
        return default if default.is_file() else None
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found (from --config or EMLIVE_CONFIG)")
    return path


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings from every source; raise ``ConfigError`` naming each bad key."""
    path = config_path(config)
    if path is not None:
        try:
            tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
    token = _toml_path.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from err
    finally:
        _toml_path.reset(token)


def _describe(err: ValidationError, path: Path | None) -> str:
    where = f"{path} or EMLIVE_* variables" if path else "EMLIVE_* variables or arguments"
    lines = [f"invalid configuration (from {where}):"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        env = "EMLIVE_" + "__".join(str(part).upper() for part in problem["loc"])
        got = problem.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key} [{env}]: {problem['msg']}{shown}")
    return "\n".join(lines)
