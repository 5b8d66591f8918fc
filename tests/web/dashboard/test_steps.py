"""What the dashboard reads of the steps' declarations (pure: no database)."""

from __future__ import annotations

from emlive.web.dashboard.steps import format_metric, metric_column, metric_columns


def test_metric_values_read_as_numbers_people_write():
    assert [format_metric(v) for v in (120, 0.0, 0.125, 1.5, 4.0, 1234.56, None)] == [
        "120", "0", "0.125", "1.50", "4.00", "1235", ""
    ]


def test_the_columns_come_from_the_declarations_and_raw_names_for_a_step_not_installed():
    columns = metric_columns(["blob", "ctf", "motion", "pick", "thumbnail"], {"blob": ["score"]})
    assert [(c.key, c.heading, c.title, c.installed) for c in columns] == [
        ("blob.score", "blob.score", "blob.score", False),
        ("pick.n_particles", "Particles", "Particles (pick)", True),
        ("pick.masked_fraction", "Masked fraction", "Masked fraction (pick)", True),
    ]
    assert metric_column("ctf.fit_resolution_a").heading == "Fit resolution (Å)"
    assert metric_column("pick.nothing").installed is False
