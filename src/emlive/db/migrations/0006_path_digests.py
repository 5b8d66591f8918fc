"""The uniqueness of a session's folder and of an exposure's path moves to SHA-256 digest columns
(``Session.raw_dir_sha256``, ``Exposure.path_sha256``), filled here for existing rows.

MySQL/MariaDB cannot index a 1024-character utf8mb4 column (3072 bytes at most), a 64-character
digest it can; so every database carries the same constraints, looked up by the digest. The
path columns become :class:`~emlive.db.models.PathField` (byte-exact comparison on MySQL; no
change elsewhere). The old unique indexes on the paths are dropped (on MySQL they never existed).
"""

import hashlib

from django.db import migrations, models

import emlive.db.models
from emlive.db.migrations._vendor import NotOnMySQL

_BATCH = 2000


def _digest(path: str) -> str:  # emlive.db.models.path_digest as of this migration
    return hashlib.sha256(path.encode()).hexdigest()


def fill_digests(apps, schema_editor):
    for model_name, source, target in (("Session", "raw_dir", "raw_dir_sha256"), ("Exposure", "path", "path_sha256")):
        model = apps.get_model("emlive", model_name)
        batch = []
        for row in model.objects.only("pk", source).order_by("pk").iterator(chunk_size=_BATCH):
            setattr(row, target, _digest(getattr(row, source)))
            batch.append(row)
            if len(batch) >= _BATCH:
                model.objects.bulk_update(batch, [target])
                batch = []
        model.objects.bulk_update(batch, [target])


class Migration(migrations.Migration):

    dependencies = [
        ("emlive", "0005_step_results"),
    ]

    operations = [
        migrations.AddField(
            model_name="session",
            name="raw_dir_sha256",
            field=emlive.db.models.DigestField(default="", of="raw_dir"),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="exposure",
            name="path_sha256",
            field=emlive.db.models.DigestField(default="", of="path"),
            preserve_default=False,
        ),
        migrations.RunPython(fill_digests, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="session",
            name="raw_dir_sha256",
            field=emlive.db.models.DigestField(help_text="SHA-256 of raw_dir: unique", of="raw_dir", unique=True),
        ),
        migrations.AlterField(
            model_name="exposure",
            name="path_sha256",
            field=emlive.db.models.DigestField(help_text="SHA-256 of path: unique in the session", of="path"),
        ),
        migrations.AddConstraint(
            model_name="exposure",
            constraint=models.UniqueConstraint(fields=("session", "path_sha256"), name="emlive_exposure_unique_path_sha256"),
        ),
        NotOnMySQL(migrations.RemoveConstraint(model_name="exposure", name="emlive_exposure_unique_path")),
        NotOnMySQL(migrations.AlterField(
            model_name="session",
            name="raw_dir",
            field=models.CharField(help_text="Absolute path of the movies' folder", max_length=1024),
        )),
        migrations.AlterField(
            model_name="session",
            name="raw_dir",
            field=emlive.db.models.PathField(help_text="Absolute path of the movies' folder", max_length=1024),
        ),
        migrations.AlterField(
            model_name="exposure",
            name="path",
            field=emlive.db.models.PathField(
                help_text="Movie path relative to the session's raw_dir (POSIX separators)", max_length=1024
            ),
        ),
    ]
