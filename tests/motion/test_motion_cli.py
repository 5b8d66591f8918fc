"""`emlive motioncorr` with the detector, EER and local-motion flags."""

from __future__ import annotations

import mrcfile
import numpy as np
import starfile
from PIL import Image

from emlive.io.mrc import write_mrc_atomic
from tests.conftest import run_emlive


def test_motioncorr_flags_reach_the_engine(tmp_path, drifting_movie):
    movie = drifting_movie(21, shape=(512, 512), n_frames=8, path_length_px=5.0)
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, movie.frames.astype(np.uint16), pixel_size_a=1.0)
    gain = np.ones((512, 512), np.float32)
    gain[:, :256] = 2.0  # left half doubled; a quarter turn clockwise puts it on top
    write_mrc_atomic(tmp_path / "gain.mrc", gain, pixel_size_a=1.0)
    defects = tmp_path / "defects.txt"
    defects.write_text("7 0 1 512\n")
    proc = run_emlive(
        "motioncorr", path, "-o", tmp_path / "out", "--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300",
        "--gain", tmp_path / "gain.mrc", "--gain-rot", "1", "--defects", defects, "--patches", "1", "1",
        "--float16", "--bin", "2",
    )
    assert proc.returncode == 0, proc.stderr
    with mrcfile.open(tmp_path / "out" / "m.mrc") as mrc:
        assert mrc.data.dtype == np.float16 and mrc.data.shape == (256, 256)
        image = mrc.data.astype(np.float64)
    assert image[:128].mean() > 1.7 * image[128:].mean()  # the doubled half is now the top
    star = starfile.read(tmp_path / "out" / "m.star", always_dict=True)
    assert star["general"]["rlnMotionModelVersion"] == 0 and "local_motion_model" not in star
    with Image.open(tmp_path / "out" / "m_shifts.png") as png:
        assert png.format == "PNG" and png.size[0] >= 400

    bad = run_emlive(
        "motioncorr", path, "-o", tmp_path / "bad", "--apix", "1.0", "--dose-per-frame", "1.0",
        "--gain-flip", "z",
    )
    assert bad.returncode == 2 and "gain_flip" in bad.stderr
