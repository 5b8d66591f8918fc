"""Metrics: the scalar fields of a step's result that people plot, tabulate and curate on.

A result model declares one by annotating the field::

    n_particles: Annotated[int, Metric(unit="", better="high", label="particles")]

The database stores every declared metric queryable, the dashboard offers it in its tables
and plots, and a curation threshold may use it. Nothing else names the metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    """How to read a scalar result field: its unit ("" when it has none), whether higher or
    lower values are better, and a short label for tables and axes (default: the field name)."""

    unit: str = ""
    better: Literal["high", "low"] | None = None
    label: str = ""
