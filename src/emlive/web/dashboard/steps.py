"""What the dashboard shows of every step, read from the steps' declarations.

A step's declared metrics (:class:`emlive.metric.Metric` on its result model's fields) become
table columns, plots and curation thresholds; its result's ``Path`` fields that name a PNG
become pictures on the exposure's page. Nothing here names a step: a plugin's step shows up
like a built-in one. A step that has results in the database but is not installed here (a
plugin removed since) still shows, by the metric names stored with its results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from emlive.pipeline.registry import CORE_STEPS, registry
from emlive.pipeline.step import Step, path_fields

__all__ = [
    "MetricColumn",
    "StepPicture",
    "StepView",
    "declared_step",
    "format_metric",
    "metric_column",
    "metric_columns",
    "picture_path",
    "step_view",
]


@dataclass(frozen=True)
class MetricColumn:
    """One declared metric as the dashboard shows it: ``label`` and ``unit`` from its
    :class:`~emlive.metric.Metric` (the ``step.metric`` key as label when the step is not
    installed here)."""

    step: str
    field: str
    label: str
    unit: str = ""
    better: str | None = None
    installed: bool = True

    @property
    def key(self) -> str:
        """``step.metric``, the name curation and the API use."""
        return f"{self.step}.{self.field}"

    @property
    def slug(self) -> str:
        """``step-metric``: for element ids, form field names and figure keys (step and field
        names are identifiers, so the dash cannot be part of either)."""
        return f"{self.step}-{self.field}"

    @property
    def name(self) -> str:
        """The label as a heading starts (capitalised; a raw ``step.metric`` key as it is)."""
        return self.label[:1].upper() + self.label[1:] if self.installed else self.label

    @property
    def heading(self) -> str:
        """The name with its unit, for table headings and axes."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    @property
    def title(self) -> str:
        """The name with the step it belongs to, for plot titles and form labels."""
        return f"{self.name} ({self.step})" if self.installed else self.name


def declared_step(name: str) -> Step | None:
    """The installed step ``name``, or None (a step whose plugin is not installed here)."""
    return registry().steps.get(name)


def metric_column(key: str) -> MetricColumn:
    """The column of one ``step.metric`` key (a raw one when the step or metric is unknown)."""
    step_name, _, field = key.partition(".")
    step = declared_step(step_name)
    metric = step.metrics.get(field) if step is not None else None
    if metric is None:
        return MetricColumn(step_name, field, key, installed=False)
    return MetricColumn(step_name, field, metric.label or field, metric.unit, metric.better)


def metric_columns(steps: Iterable[str], stored_names: Mapping[str, Sequence[str]] | None = None) -> list[MetricColumn]:
    """The declared metrics of ``steps`` other than motion and CTF (which have their own
    columns, plots and thresholds), each step's in field order. A step not installed here
    gives one raw column per name in ``stored_names[step]``."""
    columns: list[MetricColumn] = []
    for name in steps:
        if name in CORE_STEPS:
            continue
        step = declared_step(name)
        if step is None:
            columns += [MetricColumn(name, field, f"{name}.{field}", installed=False)
                        for field in (stored_names or {}).get(name, ())]
        else:
            columns += [MetricColumn(name, field, m.label or field, m.unit, m.better) for field, m in step.metrics.items()]
    return columns


def format_metric(value: object) -> str:
    """A metric value for people: an integer as such, a number to about three significant
    digits (all digits before the point); empty when there is no value."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def picture_path(step_name: str, field: str, result: Mapping[str, Any] | None) -> Path | None:
    """The PNG file a stored result of ``step_name`` names in ``field``, or None: only a
    ``Path`` field of the installed step's declared result model, holding an absolute path to
    a ``.png`` file that exists. The path comes from the database, never from a request."""
    step = declared_step(step_name)
    if step is None or result is None or field not in path_fields(step.result):
        return None
    value = result.get(field)
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() and path.suffix.lower() == ".png" and path.is_file() else None


@dataclass(frozen=True)
class StepPicture:
    step: str
    field: str
    caption: str
    path: Path


@dataclass(frozen=True)
class MetricValue:
    key: str
    label: str
    unit: str
    text: str


@dataclass(frozen=True)
class StepView:
    """One stored step result as the exposure page shows it."""

    name: str
    state: str
    engine: str
    engine_version: str
    finished_at: datetime | None
    error: str
    installed: bool
    metrics: list[MetricValue]
    pictures: list[StepPicture]
    outputs: list[str]


def step_view(
    name: str, state: str, engine: str, engine_version: str, finished_at: datetime | None, error: str,
    result: Mapping[str, Any], metrics: Mapping[str, Any],
) -> StepView:
    """A stored result's metrics (declared order, labels and units; raw names for a step not
    installed or a metric no longer declared), its pictures (PNG outputs) and its other
    output files by name."""
    step = declared_step(name)
    values: list[MetricValue] = []
    pictures: list[StepPicture] = []
    outputs: list[str] = []
    declared = step.metrics if step is not None else {}
    for field, metric in declared.items():
        values.append(MetricValue(f"{name}.{field}", metric.label or field, metric.unit,
                                  format_metric(metrics.get(field)) or "—"))
    for field, value in metrics.items():
        if field not in declared:
            values.append(MetricValue(f"{name}.{field}", field, "", format_metric(value) or "—"))
    if step is not None:
        for field in path_fields(step.result):
            path = picture_path(name, field, result)
            if path is not None:
                description = step.result.model_fields[field].description or field
                pictures.append(StepPicture(name, field, description, path))
            elif isinstance(result.get(field), str) and result[field]:
                outputs.append(Path(result[field]).name)
    return StepView(name, state, engine, engine_version, finished_at, error, step is not None, values, pictures, outputs)
