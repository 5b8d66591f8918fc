"""A small processed session (2 synthetic movies, motion, CTF, thumbnails and picking) made
once per module with ``emlive process``, for the dataset and cryoSPARC tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from emlive.synth.session import write_session

from ..conftest import run_emlive

SMALL = {"n_movies": 2, "shape": (512, 512), "n_frames": 8, "formats": ("mrc", "tiff"), "seed": 5}
PROCESS = ("--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300", "--particle-diameter", "100",
           "--settle-s", "0", "--workers", "1")


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a processed session (its movies in the sibling ``raw/``)."""
    root = tmp_path_factory.mktemp("session")
    write_session(root, workers=1, **SMALL)
    done = run_emlive("process", root / "raw", "-o", root / "out", *PROCESS)
    assert done.returncode == 0, done.stderr
    return root / "out"
