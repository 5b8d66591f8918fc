"""Every step's result in one table (StepResult); existing motion and CTF results are copied in."""

from django.db import migrations, models
import django.db.models.deletion

_MOTION_METRICS = ("total_drift_a", "early_drift_a", "late_drift_a")
_CTF_METRICS = ("defocus_u_a", "defocus_v_a", "fit_resolution_a", "cross_correlation", "ice_ring_ratio")
_MOTION_FIELDS = (
    "shifts_px", *_MOTION_METRICS, "n_frames", "pixel_size_a", "micrograph_path", "dose_weighted_path", "star_path",
)
_CTF_FIELDS = (
    *_CTF_METRICS, "azimuth_deg", "phase_shift_rad", "fit_ok", "output_txt_path", "avrot_path", "diagnostic_png_path",
)


def copy_results(apps, schema_editor):
    StepResult = apps.get_model("emlive", "StepResult")
    for model_name, step, fields, metrics in (
        ("MotionCorrection", "motion", _MOTION_FIELDS, _MOTION_METRICS),
        ("CtfEstimate", "ctf", _CTF_FIELDS, _CTF_METRICS),
    ):
        model = apps.get_model("emlive", model_name)
        rows = model.objects.select_related("exposure").order_by("pk").iterator(chunk_size=2000)
        batch = []
        for row in rows:
            result = {name: getattr(row, name) for name in fields}
            batch.append(StepResult(
                exposure_id=row.exposure_id, step=step, state="done", engine=row.engine,
                engine_version=row.engine_version, result=result,
                metrics={name: result[name] for name in metrics},
                finished_at=getattr(row.exposure, f"{step}_done_at") or row.updated_at,
            ))
            if len(batch) >= 2000:
                StepResult.objects.bulk_create(batch, ignore_conflicts=True)
                batch = []
        StepResult.objects.bulk_create(batch, ignore_conflicts=True)


class Migration(migrations.Migration):

    dependencies = [
        ("emlive", "0004_web_access"),
    ]

    operations = [
        migrations.CreateModel(
            name="StepResult",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("step", models.CharField(max_length=64)),
                ("state", models.CharField(choices=[("done", "done"), ("failed", "failed")], default="done", max_length=8)),
                ("engine", models.CharField(blank=True, default="", max_length=64)),
                ("engine_version", models.CharField(blank=True, default="", max_length=64)),
                ("result", models.JSONField(default=dict, help_text="The step's result model as JSON")),
                ("metrics", models.JSONField(default=dict, help_text="The result's declared metrics: {name: number or null}")),
                ("error", models.TextField(blank=True, default="", help_text="Why the step failed (state failed)")),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("exposure", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="step_results", to="emlive.exposure")),
            ],
            options={
                "indexes": [models.Index(fields=["step", "state"], name="emlive_step_result_step_idx")],
                "constraints": [models.UniqueConstraint(fields=("exposure", "step"), name="emlive_step_result_unique")],
            },
        ),
        migrations.RunPython(copy_results, migrations.RunPython.noop),
    ]
