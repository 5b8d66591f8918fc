"""Tilt series as live groups of exposures (DESIGN §6): the controller's side.

The source of the groups is SerialEM's ``.mdoc`` files beside (in raw/'s parent folder) or
under raw/. Each is read again (``emlive.tomo.mdoc.read_mdoc``) whenever its size or mtime
changes, since it grows while SerialEM collects; its tilts are recorded
(``store.record_tilt_series``), and each tilt's movie — the movie under raw/ (any sub-folder)
whose file name is the basename of the tilt's ``SubFramePath`` — becomes an exposure of the
series, processed by the session's per-exposure steps except picking, with the acquisition
values the mdoc gives (pixel size, voltage, dose per frame = ``ExposureDose / NumSubFrames``,
pre-exposure accumulated in acquisition order) unless ``[tomo] mdoc_acquisition = false``.
Movies no mdoc names stay single-particle exposures.

As each tilt's motion correction is stored its aligned sum is binned on a worker
(``emlive.tomo.series.prepare_tilt``), so that the group step reads small images. A series is
*complete* (:func:`series_due`) when every tilt named is processed or failed and either the
expected number of tilts (``[tomo] tilts_per_series``) is reached or no new tilt came for
``settle_s``; a tilt whose movie never came is given up ``missing_timeout_s`` after the series'
last new tilt, and the series is processed without it (``partial``). The group step
(``emlive.tomo.series.run_series``) then runs as a Dask task; its result is stored by the
controller and the session's exports (RELION 5 ``tomograms.star`` and ``tilt_series/``) are
rewritten. A series that grows after it was processed is processed again. Series already
done are never recomputed after a restart (their state is in the database, their sidecar on
disk).

Tomo5/EPU tomography sessions are grouped only when they come with an mdoc per tilt series.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from distributed import Client, Future

from emlive.config import TomoSettings
from emlive.pipeline.exposure import PipelineParams
from emlive.pipeline.registry import registry
from emlive.tomo.mdoc import Mdoc, MdocError, MdocTilt, acquisition_order, pre_exposure_e_per_a2, read_mdoc
from emlive.tomo.series import SeriesResult, SeriesSpec, SeriesTilt, prepare_tilt, run_series

if TYPE_CHECKING:
    from emlive.db.models import Session, TiltSeries

log = logging.getLogger(__name__)

MDOC_SUFFIX = ".mdoc"
_SCAN_S = 5.0  # how often raw/ is walked for new mdocs when nothing asks sooner
_FORCED_SCAN_S = 1.0  # the least time between two walks asked for by new movies
_CHEAP_WALK_S = 0.02  # a session without mdocs walks early for new movies only while a walk costs less
_LOOK_S = 0.5  # how often series are looked at for completeness (a few queries each)
_STACK_SUFFIXES = (".mrc", ".st", ".tif", ".tiff", ".mrcs")


Due = Literal["wait", "complete", "partial"]


def series_due(
    *,
    n_named: int,
    n_missing: int,
    n_unfinished: int,
    expected: int | None,
    since_last_s: float,
    settle_s: float,
    missing_timeout_s: float,
    final: bool,
) -> Due:
    """Whether a series is ready for its group step (pure).

    ``n_named``: tilts the mdoc names; ``n_missing``: of them, those whose movie has not come;
    ``n_unfinished``: those whose movie came and is not processed or failed yet;
    ``since_last_s``: seconds since the series last gained a tilt or a movie; ``final``: a
    one-shot run with nothing more to come or to be processed (a tilt still unfinished then
    counts as missing).
    """
    if n_named == 0 or (n_unfinished > 0 and not final):
        return "wait"
    n_missing += n_unfinished  # (final: nothing more will be processed)
    if n_missing == 0:
        if final or (expected is not None and n_named >= expected) or since_last_s >= settle_s:
            return "complete"
        return "wait"
    if final or since_last_s >= missing_timeout_s:
        return "partial"
    return "wait"


def series_name(mdoc_path: Path) -> str:
    """``TS_01.mrc.mdoc`` → ``TS_01``: the mdoc's name without ``.mdoc`` and a stack suffix."""
    name = mdoc_path.name[: -len(MDOC_SUFFIX)] if mdoc_path.name.lower().endswith(MDOC_SUFFIX) else mdoc_path.stem
    for suffix in _STACK_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def tilt_acquisition_values(
    mdoc: Mdoc, tilt: MdocTilt, *, pre_exposure_e_a2: float, movie_suffix: str
) -> dict[str, float]:
    """The acquisition values a tilt's movie takes from the mdoc (pure): pixel size, voltage,
    dose per frame (``ExposureDose / NumSubFrames``; EER: the total dose, fractions as
    configured) and the exposure before it. Values the mdoc lacks (or gives as 0) are left out."""
    values: dict[str, float] = {"pre_exposure_e_a2": max(0.0, pre_exposure_e_a2)}
    pixel = tilt.pixel_spacing_a or mdoc.header.pixel_spacing_a
    if pixel and pixel > 0:
        values["pixel_size_a"] = pixel
    voltage = tilt.voltage_kv or mdoc.header.voltage_kv
    if voltage and 60.0 <= voltage <= 400.0:
        values["voltage_kv"] = voltage
    dose = tilt.exposure_dose_e_per_a2
    if dose and dose > 0:
        if movie_suffix.lower() == ".eer":
            values["eer_total_dose_e_a2"] = dose
        elif tilt.num_subframes and tilt.num_subframes > 0:
            values["dose_per_frame_e_a2"] = dose / tilt.num_subframes
    return values


@dataclass
class _Series:
    pk: int
    name: str
    mdoc_path: Path
    state: str
    last_change_s: float
    mdoc: Mdoc | None = None
    pre_exposure: dict[int, float] = field(default_factory=dict)
    future: Future | None = None
    spec: SeriesSpec | None = None
    due: Due = "wait"
    grown: bool = False  # gained tilts while its group step ran
    quality: dict[int, dict[str, Any]] = field(default_factory=dict)  # z -> mean counts, drift, CTF failed
    judged: dict[int, str | None] = field(default_factory=dict)  # z -> the live exclusion stored
    n_named: int = 0
    failed_key: str = ""  # the inputs of a run that failed (not tried again until they change)


@dataclass
class SessionGroups:
    """The tilt series of one session being processed (see the module doc)."""

    session: Session
    params: PipelineParams
    settings: TomoSettings
    mdocs: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns) when read
    series: dict[int, _Series] = field(default_factory=dict)
    by_movie: dict[str, tuple[int, int]] = field(default_factory=dict)  # movie name -> (series pk, z)
    tilt_params: dict[str, PipelineParams] = field(default_factory=dict)  # movie name -> its params
    prepares: dict[Future, tuple[int, int, str]] = field(default_factory=dict)  # -> (series, z, movie)
    stacks: dict[Path, str] = field(default_factory=dict)  # SerialEM's own stacks beside mdocs -> series name
    next_scan_s: float = 0.0
    next_look_s: float = 0.0  # when the series are next looked at for completeness
    last_scan_s: float = float("-inf")
    walk_s: float = 0.0  # how long the last walk for mdocs took
    told_none: bool = False

    @property
    def raw_dir(self) -> Path:
        return Path(self.session.raw_dir)

    @property
    def tomo_dir(self) -> Path:
        return Path(self.session.out_dir) / "tomo"

    # --- discovery ---------------------------------------------------------------------------

    def load(self) -> None:
        """Take up the series an earlier run recorded: a series left ``processing`` (its task
        was lost with that run) is complete again; its sidecar makes the rerun cheap."""
        from emlive.db import queries, store

        for row in queries.tilt_series(self.session):
            state = row.state
            if state == "processing":
                state = store.set_tilt_series_state(row, "complete").state
            last = row.last_tilt_at.timestamp() if row.last_tilt_at else time.time()
            self.series[row.pk] = _Series(row.pk, row.name, Path(row.mdoc_path), state, last,
                                          n_named=row.tilts.count())

    def poll(self, now_s: float, *, movies: Sequence[str] = ()) -> None:
        """Read the mdocs that are new or changed since last read, and record their series.
        ``movies``: new movies the watcher found; one no mdoc names makes the walk for new
        mdocs come sooner (its mdoc may have just been written)."""
        unknown = any(PurePosixPath(m).name not in self.by_movie for m in movies)
        early = unknown and (self.mdocs or self.walk_s < _CHEAP_WALK_S)  # (a large single-particle folder: 5 s)
        due = now_s >= self.next_scan_s or (early and now_s - self.last_scan_s >= _FORCED_SCAN_S)
        if due:
            started_s = time.perf_counter()
            paths = self._walk()
            self.walk_s = time.perf_counter() - started_s
        else:
            paths = [Path(p) for p in self.mdocs]
        if due:
            self.last_scan_s, self.next_scan_s = now_s, now_s + _SCAN_S
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self.mdocs.get(str(path)) == (stat.st_size, stat.st_mtime_ns):
                continue
            self._read(path, (stat.st_size, stat.st_mtime_ns), now_s)
        if due and not self.mdocs and not self.told_none and movies:
            self.told_none = True
            log.info("%s: no .mdoc file beside or under %s: its movies are single-particle exposures (tilt series "
                     "need SerialEM's .mdoc files; Tomo5/EPU sessions: write an mdoc per tilt series, see docs/tomo.md)",
                     self.session, self.raw_dir)

    def _walk(self) -> list[Path]:
        found: list[Path] = []
        stack = [self.raw_dir]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.lower().endswith(MDOC_SUFFIX) and not entry.name.startswith("."):
                            found.append(Path(entry.path))
                        elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                            stack.append(Path(entry.path))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        try:  # beside raw/: its parent folder, not below it (processed/, workflow/ live there)
            with os.scandir(self.raw_dir.parent) as entries:
                found += [Path(e.path) for e in entries
                          if e.name.lower().endswith(MDOC_SUFFIX) and not e.name.startswith(".") and e.is_file()]
        except (FileNotFoundError, PermissionError):
            pass
        return found

    def _read(self, path: Path, stat: tuple[int, int], now_s: float) -> None:
        from emlive.db import store

        try:
            mdoc = read_mdoc(path)
        except MdocError as err:
            log.error("%s: %s", self.session, err)
            self.mdocs[str(path)] = stat
            return
        known = next((s for s in self.series.values() if s.mdoc_path == path), None)
        name = known.name if known else self._unique_name(path)
        previous = known.mdoc.problems if known and known.mdoc else ()
        for problem in mdoc.problems:
            if problem not in previous:
                log.warning("%s: %s: %s (the tilt it belongs to is left out; the others go on)", self.session, path,
                            problem)
        tilts = [t for t in mdoc.tilts if t.tilt_angle_deg is not None and t.movie_name]
        pre = pre_exposure_e_per_a2(tilts, dose_per_tilt_e_per_a2=self._session_dose_per_tilt(mdoc))
        order = {t.z_value: i for i, t in enumerate(acquisition_order(tilts))}
        rows = [
            store.TiltRow(
                z_value=t.z_value, movie_name=str(t.movie_name), tilt_angle_deg=float(t.tilt_angle_deg or 0.0),
                acquisition_index=order[t.z_value], acquired_at=_aware(t.acquired_at),
                dose_e_a2=t.exposure_dose_e_per_a2, pre_exposure_e_a2=pre[t.z_value],
            )
            for t in tilts
        ]
        row, new = store.record_tilt_series(
            self.session, name=name, mdoc_path=path, tilts=rows, tilt_axis_nominal_deg=mdoc.header.tilt_axis_deg,
            problems=mdoc.problems, n_tilts_expected=self.settings.tilts_per_series,
        )
        self.mdocs[str(path)] = stat
        self.stacks[path.with_name(path.name[: -len(MDOC_SUFFIX)])] = row.name
        if mdoc.header.image_file:
            self.stacks[path.parent / re.split(r"[\\/]", mdoc.header.image_file)[-1]] = row.name
        entry = self.series.get(row.pk) or _Series(row.pk, row.name, path, row.state, now_s)
        self.series[row.pk] = entry
        entry.mdoc, entry.pre_exposure, entry.state, entry.n_named = mdoc, pre, row.state, len(rows)
        if new:
            entry.last_change_s = now_s
            entry.grown = entry.future is not None
            log.info("%s: tilt series %s: %d tilts named (%d new)", self.session, row.name, len(rows), len(new))
        for tilt in tilts:
            self.by_movie[str(tilt.movie_name)] = (row.pk, tilt.z_value)
            self.tilt_params.pop(str(tilt.movie_name), None)
        if new:
            self._link_existing(row.pk, {t.z_value: str(t.movie_name) for t in tilts if t.z_value in new})

    def _unique_name(self, path: Path) -> str:
        name = series_name(path)
        taken = {s.name for s in self.series.values()}
        if name not in taken:
            return name
        rel = os.path.relpath(path.parent, self.raw_dir).replace(os.sep, "_").replace(".", "_").strip("_")
        candidate = f"{rel}_{name}" if rel else f"{name}_2"
        n = 2
        while candidate in taken:
            candidate, n = f"{rel or name}_{name}_{n}", n + 1
        return candidate

    def _session_dose_per_tilt(self, mdoc: Mdoc) -> float | None:
        """A tilt's dose when the mdoc gives none: the session's dose per frame × its frames."""
        frames = next((t.num_subframes for t in mdoc.tilts if t.num_subframes), None)
        return None if frames is None else self.params.acquisition.dose_per_frame_e_a2 * frames

    def _link_existing(self, series_pk: int, movies: dict[int, str]) -> None:
        """Tilts named after their movies were found: link the exposures already recorded."""
        from emlive.db import store
        from emlive.db.models import Exposure

        links: dict[int, int] = {}
        for z_value, movie in movies.items():
            match = (
                Exposure.objects.filter(session_id=self.session.pk, path__endswith=movie)
                .only("pk", "path").order_by("pk")
            )
            exposure = next((e for e in match if PurePosixPath(e.path).name == movie), None)
            if exposure is not None:
                links[z_value] = exposure.pk
        if links:
            store.link_tilts(series_pk, links)
            log.info("%s: %d movies found before their mdoc section were processed as single-particle exposures "
                     "and are now tilts of their series", self.session, len(links))

    def without_stacks(self, found: list[Any]) -> list[Any]:
        """The movies found, less SerialEM's own tilt-series stacks (``TS_01.mrc`` beside
        ``TS_01.mrc.mdoc``, or the mdoc's ``ImageFile``), which are not movies."""
        kept = []
        for item in found:
            name = self.stacks.get(self.raw_dir / item.rel_path)
            if name is None:
                kept.append(item)
            else:
                log.info("%s: %s is SerialEM's stack of tilt series %s, not a movie: left alone", self.session,
                         item.rel_path, name)
        return kept

    # --- per tilt ----------------------------------------------------------------------------

    def params_for(self, rel_path: str) -> PipelineParams | None:
        """A tilt movie's pipeline (the session's without picking, motion with
        ``[tomo] tilt_motion_patches``, the mdoc's acquisition values); None for a movie no mdoc
        names."""
        movie = PurePosixPath(rel_path).name
        if movie not in self.by_movie:
            return None
        if movie in self.tilt_params:
            return self.tilt_params[movie]
        series_pk, z_value = self.by_movie[movie]
        entry = self.series[series_pk]
        acquisition = self.params.acquisition
        if self.settings.mdoc_acquisition and entry.mdoc is not None:
            tilt = next(t for t in entry.mdoc.tilts if t.z_value == z_value)
            values = tilt_acquisition_values(entry.mdoc, tilt, pre_exposure_e_a2=entry.pre_exposure.get(z_value, 0.0),
                                             movie_suffix=PurePosixPath(movie).suffix)
            acquisition = type(acquisition).model_validate(acquisition.model_dump() | values)
        steps = registry().steps
        kept: dict[str, Any] = {}
        for name, step_params in self.params.steps.items():
            if name != "pick" and all(need in kept for need in steps[name].needs):
                kept[name] = step_params
        patches = self.settings.tilt_motion_patches
        if patches is not None and "motion" in kept and hasattr(kept["motion"], "patches"):
            kept["motion"] = kept["motion"].model_copy(update={"patches": tuple(patches)})
        params = PipelineParams(acquisition=acquisition, steps=kept)
        self.tilt_params[movie] = params
        return params

    def linked(self, exposures: Iterable[tuple[int, str]]) -> None:
        """Link newly recorded exposures ``(id, rel_path)`` to their tilts."""
        from emlive.db import store

        by_series: dict[int, dict[int, int]] = {}
        for exposure_id, rel_path in exposures:
            found = self.by_movie.get(PurePosixPath(rel_path).name)
            if found is not None:
                by_series.setdefault(found[0], {})[found[1]] = exposure_id
        now_s = time.time()
        for series_pk, links in by_series.items():
            if store.link_tilts(series_pk, links):
                self.series[series_pk].last_change_s = now_s

    def _tilts_of(self, exposure_ids: Sequence[int]) -> dict[int, Any]:
        from emlive.db.models import Tilt

        if not exposure_ids or not self.series:
            return {}
        return {t.exposure_id: t for t in Tilt.objects.filter(exposure_id__in=list(exposure_ids),
                                                               series__session_id=self.session.pk)}

    def counted(self, exposure_ids: Sequence[int]) -> set[int]:
        """Recount the series of these exposures (stored or failed); returns those series."""
        from emlive.db import store

        touched = {t.series_id for t in self._tilts_of(exposure_ids).values()}
        now_s = time.time()
        for series_pk in touched:
            store.update_tilt_series_counts(series_pk)
            self.series[series_pk].last_change_s = now_s
        return touched

    def stored(self, client: Client, results: Sequence[tuple[int, Any]]) -> None:
        """Tilts whose results were stored: their aligned sums are binned now, on a worker."""
        tilts = self._tilts_of([e for e, _ in results])
        for exposure_id, result in results:
            tilt = tilts.get(exposure_id)
            motion = getattr(result, "results", {}).get("motion") if tilt is not None else None
            if tilt is None or motion is None:
                continue
            ctf = result.results.get("ctf")
            self.series[tilt.series_id].quality[tilt.z_value] = {
                "mean": None, "drift": getattr(motion, "total_drift_a", None),
                "ctf_failed": ctf is not None and getattr(ctf, "fit_ok", True) is False,
            }
            target = self.tomo_dir / self.series[tilt.series_id].name / "tilts" / f"{Path(tilt.movie_name).stem}.mrc"
            future = client.submit(
                prepare_tilt, Path(motion.micrograph_path), target,
                target_pixel_size_a=self.settings.series.target_pixel_size_a,
                key=f"tomo-prepare-{self.session.pk}-{exposure_id}-{time.monotonic_ns()}", pure=False,
            )
            self.prepares[future] = (tilt.series_id, tilt.z_value, tilt.movie_name)
        if tilts:
            self.counted(list(tilts))

    def failed(self, failures: Sequence[tuple[int, str]]) -> None:
        """Tilts whose movies failed: left out of their series, with the reason."""
        from emlive.db import store

        tilts = self._tilts_of([e for e, _ in failures])
        for exposure_id, reason in failures:
            if (tilt := tilts.get(exposure_id)) is not None:
                log.warning("%s: tilt %d (%s) of series %s is left out: its movie failed: %s", self.session,
                            tilt.z_value, tilt.movie_name, self.series[tilt.series_id].name, reason)
                store.exclude_tilts(tilt.series_id, {tilt.z_value: f"its movie failed: {reason}"})
        if tilts:
            self.counted(list(tilts))

    # --- the group step ----------------------------------------------------------------------

    def turn(self, client: Client, now_s: float, *, final: bool, stopping: bool) -> bool:
        """Collect finished group tasks and store them; submit the series that are due. Returns
        whether a series' result was stored (the session's exports are then rewritten)."""
        judged: set[int] = set()
        for future in [f for f in self.prepares if f.done()]:
            series_pk, z_value, movie = self.prepares.pop(future)
            if future.status == "error":
                log.warning("%s: binning %s for its tilt series failed (the series step tries again): %s",
                            self.session, movie, future.exception())
            elif future.status == "finished" and (entry := self.series.get(series_pk)) is not None:
                entry.quality.setdefault(z_value, {"drift": None, "ctf_failed": False})["mean"] = future.result().mean_counts
                judged.add(series_pk)
        for series_pk in judged:
            self._judge(self.series[series_pk])
        stored = False
        for entry in self.series.values():
            if entry.future is not None and entry.future.done():
                stored |= self._finish(entry)
        if stopping or (now_s < self.next_look_s and not final):
            return stored
        self.next_look_s = now_s + _LOOK_S
        for entry in self.series.values():
            if entry.future is None and entry.state in ("collecting", "complete"):
                self._consider(client, entry, now_s, final=final)
        return stored

    def _judge(self, entry: _Series) -> None:
        """Live exclusions while the series is collected (emlive.tomo.quality over the tilts
        binned so far: dark or blank, failed CTF, excessive drift), stored as they change; the
        group step's own judgement replaces them."""
        from emlive.db import store
        from emlive.tomo.quality import exclusions

        known = sorted(z for z, q in entry.quality.items() if q.get("mean") is not None)
        if not known:
            return
        series = self.settings.series
        reasons = exclusions(
            [entry.quality[z]["mean"] for z in known],
            ctf_failed=[series.exclude_failed_ctf and bool(entry.quality[z]["ctf_failed"]) for z in known],
            drift_a=[float("nan") if entry.quality[z]["drift"] is None else entry.quality[z]["drift"] for z in known],
            max_drift_a=series.max_drift_a, dark_fraction=series.dark_fraction,
        )
        changed = {z: r for z, r in zip(known, reasons, strict=True) if entry.judged.get(z) != r}
        if changed:
            store.exclude_tilts(entry.pk, changed)
            entry.judged.update(changed)

    def _consider(self, client: Client, entry: _Series, now_s: float, *, final: bool) -> None:
        from emlive.db import queries, store

        tilts = list(queries.series_tilts(entry.pk))
        missing = [t for t in tilts if t.exposure is None]
        unfinished = [t for t in tilts if t.exposure is not None and t.exposure.state in ("found", "submitted")]
        due = series_due(
            n_named=len(tilts), n_missing=len(missing), n_unfinished=len(unfinished),
            expected=self.settings.tilts_per_series, since_last_s=now_s - entry.last_change_s,
            settle_s=self.settings.settle_s, missing_timeout_s=self.settings.missing_timeout_s, final=final,
        )
        if due == "wait":
            return
        row = store.set_tilt_series_state(entry.pk, "complete") if entry.state != "complete" else None
        spec = self._spec(entry, tilts, row)
        from emlive.tomo.series import series_key

        key = series_key(spec, self.settings.series)
        if key == entry.failed_key:
            return
        stored_key = queries.tilt_series(self.session).filter(pk=entry.pk).values_list("input_hash", flat=True).first()
        if key == stored_key:  # (a restart that found nothing new)
            entry.state = store.set_tilt_series_state(entry.pk, "partial" if missing else "done").state
            return
        store.set_tilt_series_state(entry.pk, "processing")
        entry.state, entry.spec, entry.due = "processing", spec, due
        log.info("%s: tilt series %s is complete (%d tilts%s); aligning and reconstructing", self.session, entry.name,
                 len(tilts), f", {len(missing)} movies never came" if missing else "")
        entry.future = client.submit(run_series, spec, self.settings.series, pure=False,
                                     key=f"tomo-series-{self.session.pk}-{entry.pk}-{time.monotonic_ns()}")

    def _spec(self, entry: _Series, tilts: Sequence[Any], row: TiltSeries | None) -> SeriesSpec:
        session = self.session
        mdoc = entry.mdoc
        voltage = (mdoc.header.voltage_kv if mdoc and self.settings.mdoc_acquisition else None) or session.voltage_kv
        axis = mdoc.header.tilt_axis_deg if mdoc else None
        if axis is None:
            from emlive.db.models import TiltSeries

            axis = TiltSeries.objects.filter(pk=entry.pk).values_list("tilt_axis_nominal_deg", flat=True).first()
        if axis is None:
            log.warning("%s: tilt series %s: the mdoc gives no tilt axis angle; starting from 0°", session, entry.name)
            axis = 0.0
        members = []
        for t in tilts:
            exposure = t.exposure
            reason, micrograph, drift, fit_ok, defocus = None, None, None, None, None
            if exposure is None:
                reason = (f"its movie {t.movie_name} never came (given up {self.settings.missing_timeout_s:.0f} s "
                          "after the series' last new tilt)")
            elif exposure.state == "failed":
                reason = f"its movie failed: {exposure.fail_reason}"
            elif exposure.state != "processed":
                reason = f"its movie {t.movie_name} was not processed (it is {exposure.state})"
            elif hasattr(exposure, "motion"):
                micrograph, drift = Path(exposure.motion.micrograph_path), exposure.motion.total_drift_a
                if hasattr(exposure, "ctf"):
                    fit_ok, defocus = exposure.ctf.fit_ok, exposure.ctf.defocus_u_a
            members.append(SeriesTilt(
                z_value=t.z_value, movie_name=t.movie_name, tilt_angle_deg=t.tilt_angle_deg,
                pre_exposure_e_a2=t.pre_exposure_e_a2, micrograph_path=micrograph, reason=reason,
                total_drift_a=drift, ctf_fit_ok=fit_ok, defocus_u_a=defocus,
            ))
        return SeriesSpec(
            name=entry.name, out_dir=self.tomo_dir / entry.name, tilts=tuple(members), tilt_axis_deg=float(axis),
            voltage_kv=float(voltage), cs_mm=session.cs_mm, amplitude_contrast=session.amplitude_contrast,
        )

    def _finish(self, entry: _Series) -> bool:
        from emlive.db import store
        from emlive.tomo.series import series_key

        future, spec = entry.future, entry.spec
        entry.future = None
        assert future is not None and spec is not None
        if future.status != "finished":
            error = future.exception() if future.status == "error" else None
            reason = f"{type(error).__name__}: {error}" if error is not None else f"task {future.status}"
            if isinstance(error, ValueError):
                reason = str(error)
            log.error("%s: tilt series %s failed: %s", self.session, entry.name, reason)
            entry.failed_key = series_key(spec, self.settings.series)
            entry.state = store.set_tilt_series_state(entry.pk, "failed", error=reason).state
            if entry.grown:
                entry.grown = False
                entry.state = store.set_tilt_series_state(entry.pk, "collecting").state
            return False
        result: SeriesResult = future.result()
        missing = [t for t in spec.tilts
                   if t.micrograph_path is None and t.reason and ("never came" in t.reason or "not processed" in t.reason)]
        state = "partial" if missing else "done"
        error = "; ".join(f"tilt {t.z_value}: {t.reason}" for t in missing)
        row = store.store_tilt_series_result(
            entry.pk, state=state, result=result.model_dump(mode="json"), input_hash=result.key,
            exclusions={t.z_value: result.exclusions.get(t.z_value) for t in spec.tilts},
            tilt_axis_refined_deg=result.tilt_axis_deg, alignment_residual_px=result.residual_px,
            pixel_size_a=result.pixel_size_a, tomogram_path=result.tomogram_path,
            central_slice_png_path=result.central_slice_png_path, montage_png_path=result.montage_png_path, error=error,
        )
        entry.state = row.state
        if entry.grown:
            entry.grown = False
            entry.state = store.set_tilt_series_state(entry.pk, "collecting").state
        log.info("%s: tilt series %s %s: %d of %d tilts used, residual %s px, tilt axis %.2f° → %s (%s)",
                 self.session, entry.name, state, len(result.used_z_values), len(spec.tilts),
                 "?" if result.residual_px is None else f"{result.residual_px:.2f}",
                 result.tilt_axis_deg, result.tomogram_path,
                 ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))
        return True

    @property
    def busy(self) -> bool:
        """A group task in flight."""
        return any(s.future is not None for s in self.series.values())

    def pending(self) -> bool:
        """A series still to be processed (one-shot runs wait for it)."""
        return self.busy or any(
            s.state in ("collecting", "complete", "processing") and s.n_named > 0 for s in self.series.values()
        )

    def cancel(self) -> None:
        for entry in self.series.values():
            if entry.future is not None:
                entry.future.cancel()
                entry.future = None
        for future in self.prepares:
            future.cancel()
        self.prepares.clear()


def _aware(when: datetime | None) -> datetime | None:
    """The mdoc's DateTime (the acquisition PC's local time, no zone) as an aware datetime."""
    if when is None:
        return None
    return when.astimezone(UTC) if when.tzinfo is None else when


def new_groups(session: Session, params: PipelineParams, settings: TomoSettings) -> SessionGroups | None:
    """The tilt series of a session (None when ``[tomo] enabled`` is false)."""
    if not settings.enabled:
        return None
    groups = SessionGroups(session, params, settings)
    groups.load()
    return groups
