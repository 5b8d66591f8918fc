"""The pipeline from Python: :func:`run` and :func:`open_session` (``emlive.run``, ``emlive.open_session``).

:func:`run` is ``emlive process`` without the command line: the same session record
(:func:`prepare_session`, which the CLI calls too), the same controller loop
(:func:`emlive.runtime.loop.run_session`), the same checkpoints, database and exports. Calling
it again on the same movies and output folder reuses every checkpoint: nothing is recomputed.

One Python process serves one database (Django's settings are process-wide): with the default
database (SQLite in the output folder) a process runs and opens sessions of one output folder;
give every call the same ``database_url`` (PostgreSQL, MariaDB, or one SQLite file) to work
with several. Remote inputs (``s3://…``) are not read yet: give local paths.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel

from emlive.acquisition import Acquisition
from emlive.config import ClusterSettings, Settings, load_settings
from emlive.pipeline.exposure import PipelineParams

if TYPE_CHECKING:
    from emlive.db.models import Session

__all__ = ["SessionResults", "open_session", "prepare_session", "run"]

INPUTS_DIR = "inputs"
"""Under the output folder: links to the movies :func:`run` was given as a list (its raw folder)."""

PathLike = str | os.PathLike[str]


def _settings(config: PathLike | None, overrides: Mapping[str, Any] | None) -> Settings:
    from emlive.tools import configure_tools

    settings = load_settings(Path(config) if config is not None else None, **dict(overrides or {}))
    configure_tools(settings.tools)  # external tools' paths, containers, timeouts (as the CLI does)
    return settings


def _database(out_dir: Path, settings: Settings) -> None:
    from emlive.db.setup import setup_database, sqlite_url

    setup_database(settings.database_url or sqlite_url(out_dir / "emlive.sqlite3"))


def prepare_session(
    raw_dir: Path, out_dir: Path, params: PipelineParams, settings: Settings, *, name: str | None = None
) -> Session:
    """Open the session's database (``settings.database_url``, else SQLite in ``out_dir``) and
    the session of ``raw_dir`` in it, recorded if new (``emlive process`` starts the same way);
    ``name`` defaults to the folder's (see :func:`emlive.db.store.get_or_create_session`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _database(out_dir, settings)
    from emlive.db import store  # Django models need the database set up first

    return store.get_or_create_session(raw_dir.resolve(), out_dir.resolve(), params.acquisition, name=name)


def _raw_dir(inputs: PathLike | Sequence[PathLike], out_dir: Path) -> tuple[Path, list[str] | None]:
    """The folder to process and the movies asked for (None: all of the folder). A list of
    movies is linked into ``OUT/inputs/`` (by file name), which becomes the session's raw folder."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs] if Path(inputs).is_file() else inputs
    if isinstance(inputs, str | os.PathLike):
        folder = Path(inputs)
        if "://" in str(inputs):
            raise ValueError(f"{inputs}: remote inputs are not supported yet; give a local folder or files")
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder or movie; give the folder the movies are in, or a list of movies")
        return folder, None
    movies = [Path(movie) for movie in inputs]
    if not movies:
        raise ValueError("no inputs given: give a folder of movies or a list of movie files")
    names: dict[str, Path] = {}
    for movie in movies:
        if "://" in str(movie):
            raise ValueError(f"{movie}: remote inputs are not supported yet; give local files")
        if not movie.is_file():
            raise ValueError(f"{movie}: no such movie file")
        if (other := names.get(movie.name)) is not None and other.resolve() != movie.resolve():
            raise ValueError(f"{other} and {movie} have the same name; the session names exposures by file name")
        names[movie.name] = movie
    folder = out_dir / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, movie in names.items():
        link = folder / name
        target = movie.resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.exists() or link.is_symlink():
            raise ValueError(f"{link} already links to another movie; use another output folder")
        os.symlink(target, link)
    return folder, sorted(names)


def run(
    inputs: PathLike | Sequence[PathLike],
    *,
    out: PathLike,
    acquisition: Acquisition | Mapping[str, Any],
    steps: Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    cluster: ClusterSettings | Mapping[str, Any] | str | None = None,
    settings: Mapping[str, Any] | None = None,
    config: PathLike | None = None,
) -> pd.DataFrame:
    """Process movies as ``emlive process`` does and return the accepted micrographs' table.

    ``inputs``: a folder of movies (every movie in it, subfolders included), or a list of movie
    files (linked into ``out/inputs/``). ``out``: the output folder (results, checkpoints,
    database, ``exports/``). ``acquisition``: the instrument and acquisition values
    (:class:`~emlive.acquisition.Acquisition` or its fields: ``pixel_size_a``,
    ``dose_per_frame_e_a2``, ``voltage_kv``, …). ``steps``: the steps to run (default: as
    ``emlive process``: motion, ctf, thumbnail, and pick when ``params["pick"]["diameter_a"]`` is
    set). ``params``: per-step parameters by step name, e.g. ``{"motion": {"patches": [1, 1]}}``.
    ``cluster``: where the work runs: ``"local"``, ``"slurm"`` (or any batch system), a
    :class:`~emlive.config.ClusterSettings`, or its fields (default: the configuration's
    ``[cluster]``). ``settings``: other configuration values, as in the TOML file (e.g.
    ``{"watch": {"settle_s": 0}}``); ``config``: the TOML file (default: ``$EMLIVE_CONFIG``).

    Returns :func:`emlive.sinks.tables.micrograph_table` of the session, limited to ``inputs``
    when a list was given: one row per accepted micrograph. Failed exposures are in
    ``open_session(out).exposures``.
    """
    from emlive.pipeline.params import pipeline_params
    from emlive.runtime.loop import StopSignals, run_session

    out_dir = Path(out)
    overrides = dict(settings or {})
    if cluster is not None:
        if isinstance(cluster, str):
            cluster = {"kind": cluster}
        elif isinstance(cluster, BaseModel):
            cluster = cluster.model_dump()
        overrides["cluster"] = dict(overrides.get("cluster", {})) | dict(cluster)
    loaded = _settings(config, overrides)
    acq = acquisition if isinstance(acquisition, Acquisition) else Acquisition.model_validate(dict(acquisition))
    pipeline = pipeline_params(acq, loaded, params, steps=steps)
    raw_dir, names = _raw_dir(inputs, out_dir)
    session = prepare_session(raw_dir, out_dir, pipeline, loaded, name=None if names is None else out_dir.resolve().name)
    never = StopSignals(threading.Event(), threading.Event())
    run_session(session, pipeline, loaded, watch=False, signals=never)
    from emlive.sinks.tables import micrograph_table

    table = micrograph_table(session)
    if names is not None:
        table = table[table["exposure"].isin(names)].reset_index(drop=True)
    return table


@dataclass(frozen=True)
class SessionResults:
    """A session's results as DataFrames (see :mod:`emlive.sinks.tables`): ``micrographs``, the
    accepted micrographs with every step's results (the dataset manifest's rows);
    ``exposures``, every exposure with its state and why it failed; ``steps``, every step
    result. ``acquisition`` and the folders say what the session is."""

    name: str
    raw_dir: Path
    out_dir: Path
    acquisition: Acquisition
    micrographs: pd.DataFrame
    exposures: pd.DataFrame
    steps: pd.DataFrame


def find_session(out: PathLike, *, settings: Settings) -> Session:
    """The session processed into ``out``, from its database: ``settings.database_url``, else
    ``out/emlive.sqlite3`` (``emlive process``), else the service's
    ``<data_root>/.emlive/emlive.sqlite3`` (``emlive serve``); a clear error when there is none."""
    from emlive.db.setup import setup_database, sqlite_url

    out_dir = Path(out)
    service = settings.data_root.expanduser() / ".emlive" / "emlive.sqlite3"
    if settings.database_url is not None:
        setup_database(settings.database_url)
    elif (out_dir / "emlive.sqlite3").is_file():
        setup_database(sqlite_url(out_dir / "emlive.sqlite3"))
    elif service.is_file():
        setup_database(sqlite_url(service))
    else:
        raise ValueError(
            f"{out_dir}: no emlive database here (emlive.sqlite3) nor the service's ({service}); give the folder "
            "a session was processed into (emlive process -o), or its database_url"
        )
    from emlive.db.models import Session, canonical_dir

    session = Session.objects.select_related("project").filter(out_dir=canonical_dir(out_dir)).order_by("-id").first()
    if session is None:
        raise ValueError(f"{out_dir}: no session was processed into this folder (its database has none)")
    return session


def open_session(
    out: PathLike, *, settings: Mapping[str, Any] | None = None, config: PathLike | None = None
) -> SessionResults:
    """The results of the session processed into ``out`` (by ``emlive process -o OUT`` or
    :func:`run`), read from its database."""
    from emlive.sinks.tables import exposure_table, micrograph_table, step_table

    session = find_session(out, settings=_settings(config, settings))
    return SessionResults(
        name=session.name,
        raw_dir=Path(session.raw_dir),
        out_dir=Path(session.out_dir),
        acquisition=session.acquisition,
        micrographs=micrograph_table(session),
        exposures=exposure_table(session),
        steps=step_table(session),
    )
