"""Tilt series (from SerialEM mdoc files) and their tilts, linked to the tilts' exposures."""

import django.db.models.deletion
import emlive.db.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('emlive', '0006_path_digests'),
    ]

    operations = [
        migrations.CreateModel(
            name='TiltSeries',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text="The mdoc's stem (TS_01 for TS_01.mrc.mdoc): unique in the session", max_length=255)),
                ('mdoc_path', emlive.db.models.PathField(help_text='Absolute path of the mdoc', max_length=1024)),
                ('mdoc_path_sha256', emlive.db.models.DigestField(help_text='SHA-256 of mdoc_path: unique in the session', of='mdoc_path')),
                ('state', models.CharField(choices=[('collecting', 'collecting'), ('complete', 'complete'), ('processing', 'processing'), ('done', 'done'), ('partial', 'partial'), ('failed', 'failed')], default='collecting', max_length=16)),
                ('tilt_min_deg', models.FloatField(blank=True, help_text='Lowest nominal tilt angle named, °', null=True)),
                ('tilt_max_deg', models.FloatField(blank=True, help_text='Highest nominal tilt angle named, °', null=True)),
                ('n_tilts_expected', models.PositiveIntegerField(blank=True, help_text='Tilts the series will have, when known (configuration); else null', null=True)),
                ('n_tilts_received', models.PositiveIntegerField(default=0, help_text='Tilts whose movies have come')),
                ('n_tilts_processed', models.PositiveIntegerField(default=0, help_text='Tilts whose motion and CTF are done')),
                ('excluded_json', models.JSONField(default=list, help_text='Tilts left out of the reconstruction: [{z_value, tilt_angle_deg, movie_name, reason}]')),
                ('problems_json', models.JSONField(default=list, help_text="The mdoc's malformed lines, as read_mdoc reports them")),
                ('tilt_axis_nominal_deg', models.FloatField(blank=True, help_text='Tilt axis angle from the mdoc, °', null=True)),
                ('tilt_axis_refined_deg', models.FloatField(blank=True, help_text='Tilt axis angle after alignment, °', null=True)),
                ('alignment_residual_px', models.FloatField(blank=True, help_text='RMS alignment residual, px of the aligned stack (pixel_size_a)', null=True)),
                ('pixel_size_a', models.FloatField(blank=True, help_text='Pixel size of the aligned stack and tomogram, Å', null=True)),
                ('tomogram_path', models.CharField(blank=True, default='', max_length=4096)),
                ('central_slice_png_path', models.CharField(blank=True, default='', max_length=4096)),
                ('montage_png_path', models.CharField(blank=True, default='', max_length=4096)),
                ('result_json', models.JSONField(default=dict, help_text="The group step's result (every output path, timings)")),
                ('input_hash', models.CharField(blank=True, default='', help_text="SHA-256 of the members' results and the parameters the stored result was made from", max_length=64)),
                ('error', models.TextField(blank=True, default='', help_text='Why the series failed, or what a partial one lacks')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('last_tilt_at', models.DateTimeField(blank=True, help_text='When the last new tilt was named or came', null=True)),
                ('completed_at', models.DateTimeField(blank=True, help_text='When the series was taken as complete', null=True)),
                ('processed_at', models.DateTimeField(blank=True, help_text='When its result was stored', null=True)),
                ('session', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tilt_series', to='emlive.session')),
            ],
            options={
                'verbose_name_plural': 'tilt series',
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='Tilt',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('z_value', models.PositiveIntegerField(help_text="The mdoc's [ZValue = n]: the section in the stack")),
                ('movie_name', models.CharField(help_text="Basename of the mdoc's SubFramePath", max_length=512)),
                ('tilt_angle_deg', models.FloatField(help_text='Nominal stage tilt angle, °')),
                ('acquisition_index', models.PositiveIntegerField(default=0, help_text='0 for the tilt acquired first (DateTime, else ZValue order)')),
                ('acquired_at', models.DateTimeField(blank=True, help_text="The mdoc's DateTime, when given", null=True)),
                ('dose_e_a2', models.FloatField(blank=True, help_text="The tilt's own exposure (ExposureDose), e/Å²", null=True)),
                ('pre_exposure_e_a2', models.FloatField(default=0.0, help_text='Exposure accumulated before this tilt, e/Å²')),
                ('excluded_reason', models.TextField(blank=True, default='', help_text='Why the tilt is left out of the reconstruction; empty if used')),
                ('exposure', models.OneToOneField(blank=True, help_text="The tilt's movie once found (one exposure belongs to at most one series)", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='tilt', to='emlive.exposure')),
                ('series', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tilts', to='emlive.tiltseries')),
            ],
            options={
                'ordering': ['series', 'tilt_angle_deg', 'z_value'],
            },
        ),
        migrations.AddConstraint(
            model_name='tiltseries',
            constraint=models.UniqueConstraint(fields=('session', 'name'), name='emlive_tilt_series_unique_name'),
        ),
        migrations.AddConstraint(
            model_name='tiltseries',
            constraint=models.UniqueConstraint(fields=('session', 'mdoc_path_sha256'), name='emlive_tilt_series_unique_mdoc'),
        ),
        migrations.AddConstraint(
            model_name='tilt',
            constraint=models.UniqueConstraint(fields=('series', 'z_value'), name='emlive_tilt_unique_z'),
        ),
    ]
