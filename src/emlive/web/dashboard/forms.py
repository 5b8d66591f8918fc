"""The curation form: a session's thresholds as a person sets them, validated by :class:`Curation`.

Besides the built-in limits, a smallest and a largest value for each declared metric of the
session's other steps (:class:`~emlive.web.dashboard.steps.MetricColumn`), stored in
``Curation.metrics`` by ``step.metric``; form fields ``<step>-<metric>-min`` and ``-max``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django import forms
from pydantic import ValidationError

from emlive.curation import Curation
from emlive.web.dashboard.steps import MetricColumn, metric_column

_NUMBER = {"step": "any", "inputmode": "decimal"}
_METRIC_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)-([A-Za-z_][A-Za-z0-9_]*)-(min|max)$")


class CurationForm(forms.Form):
    """Each limit empty = not applied. Field names are :class:`Curation`'s."""

    max_fit_resolution_a = forms.FloatField(
        required=False, label="CTF fit resolution worse than (Å)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    max_total_drift_a = forms.FloatField(
        required=False, label="Total drift larger than (Å)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    min_defocus_a = forms.FloatField(
        required=False, label="Mean defocus smaller than (Å)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    max_defocus_a = forms.FloatField(
        required=False, label="Mean defocus larger than (Å)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    max_astigmatism_a = forms.FloatField(
        required=False, label="Astigmatism |U − V| larger than (Å)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    max_ice_ring_ratio = forms.FloatField(
        required=False, label="Ice-ring ratio higher than (~1 = vitreous)", widget=forms.NumberInput(attrs=_NUMBER)
    )
    reject_no_fit = forms.BooleanField(required=False, label="No Thon rings found (CTF fit failed)")

    def __init__(self, *args: Any, metrics: Sequence[MetricColumn] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metric_columns = list(metrics)
        for column in self.metric_columns:
            for bound, words in (("min", "smaller than"), ("max", "larger than")):
                self.fields[f"{column.slug}-{bound}"] = forms.FloatField(
                    required=False,
                    label=f"{column.title} {words}{f' ({column.unit})' if column.unit else ''}",
                    widget=forms.NumberInput(attrs={**_NUMBER, "data-metric": column.key, "data-bound": bound}),
                )

    @staticmethod
    def metric_fields_for(
        columns: Sequence[MetricColumn], curation: Curation, posted: Iterable[str] = ()
    ) -> list[MetricColumn]:
        """The metrics the form offers: ``columns`` (the session's steps' declared metrics),
        then any the stored thresholds limit (set through the API, or a step with no results
        yet) and any a posted form names, so no limit is dropped unseen."""
        found = {column.key: column for column in columns}
        keys = list(curation.metrics)
        keys += [f"{m.group(1)}.{m.group(2)}" for name in posted if (m := _METRIC_FIELD.match(name))]
        for key in keys:
            if key not in found:
                found[key] = metric_column(key)
        return list(found.values())

    @classmethod
    def from_curation(cls, curation: Curation, columns: Sequence[MetricColumn] = ()) -> CurationForm:
        initial: dict[str, Any] = curation.model_dump(exclude={"metrics"})
        for key, bounds in curation.metrics.items():
            step, _, field = key.partition(".")
            initial.update({f"{step}-{field}-min": bounds.min, f"{step}-{field}-max": bounds.max})
        return cls(initial=initial, metrics=cls.metric_fields_for(columns, curation))

    def _metric_bounds(self, cleaned: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        bounds: dict[str, dict[str, float]] = {}
        for column in self.metric_columns:
            low, high = cleaned.get(f"{column.slug}-min"), cleaned.get(f"{column.slug}-max")
            if low is not None and high is not None and low > high:
                self.add_error(f"{column.slug}-max", f"the largest value ({high:g}) is below the smallest ({low:g})")
            limits = {name: value for name, value in (("min", low), ("max", high)) if value is not None}
            if limits:
                bounds[column.key] = limits
        return bounds

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        metrics = self._metric_bounds(cleaned)
        if self.errors:
            return cleaned
        values = {name: value for name, value in cleaned.items() if value is not None and name in Curation.model_fields}
        try:
            self.curation = Curation.model_validate({**values, "metrics": metrics})
        except ValidationError as exc:
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else None
                self.add_error(field if field in self.fields else None, error["msg"])
            return cleaned
        low, high = self.curation.min_defocus_a, self.curation.max_defocus_a
        if low is not None and high is not None and low > high:
            self.add_error("max_defocus_a", f"the largest defocus ({high:g} Å) is below the smallest ({low:g} Å)")
        return cleaned
