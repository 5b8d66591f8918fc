"""The curation form: a session's thresholds as a person sets them, validated by :class:`Curation`."""

from __future__ import annotations

from typing import Any

from django import forms
from pydantic import ValidationError

from emlive.curation import Curation

_NUMBER = {"step": "any", "inputmode": "decimal"}


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

    @classmethod
    def from_curation(cls, curation: Curation) -> CurationForm:
        return cls(initial=curation.model_dump())

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        values = {name: value for name, value in cleaned.items() if value is not None}
        try:
            self.curation = Curation.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else None
                self.add_error(field if field in self.fields else None, error["msg"])
            return cleaned
        low, high = self.curation.min_defocus_a, self.curation.max_defocus_a
        if low is not None and high is not None and low > high:
            self.add_error("max_defocus_a", f"the largest defocus ({high:g} Å) is below the smallest ({low:g} Å)")
        return cleaned
