"""One real containerized run: RELION's motion correction in a Podman container, through emlive.

The image is built here from the host's own ``relion_run_motioncorr`` and the libraries it links
(no registry needed), imported into Podman, and run by the ``relion`` engine in container mode;
its shifts must equal those of the same engine in binary mode. Skipped, with the reason, where
Podman or RELION is missing or Podman cannot start containers (CI does not provide Podman).
Podman runs with a test configuration (vfs storage, cgroupfs, runc, no network), which is
what lets it start containers inside an unprivileged sandbox.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from emlive.acquisition import Acquisition
from emlive.motion import relion
from emlive.motion.types import MotionParams
from emlive.synth.session import write_session
from emlive.tools import ToolSpec

pytestmark = pytest.mark.slow

IMAGE = "localhost/emlive-test-relion:host"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
STORAGE_CONF = """\
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""
# RELION runs mkdir through the shell: the image needs sh and the file tools
TOOLS = ("relion_run_motioncorr", "dash", "mkdir", "rm", "mv", "cp", "ls")


def _libraries(binary: str) -> list[str]:
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [word for word in listing.split() if word.startswith("/")]


def _build_image(tmp_path: Path) -> None:
    files: set[str] = set()
    for name in TOOLS:
        path = shutil.which(name)
        assert path is not None
        files.add(path)
        files.update(_libraries(path))
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name in sorted(files):
            tar.add(Path(name).resolve(), arcname=name.lstrip("/"))
        tar.add(Path(shutil.which("dash") or "/bin/dash").resolve(), arcname="bin/sh")
    subprocess.run(["podman", "import", str(archive), IMAGE], capture_output=True, text=True, check=True, timeout=300)


@pytest.fixture
def podman(tmp_path, monkeypatch) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (apt-get install podman runc) — no container runtime to test")
    if shutil.which(relion.DEFAULT_EXECUTABLE) is None or shutil.which("ldd") is None:
        pytest.skip("relion_run_motioncorr (and ldd) are needed to build the test image")
    (tmp_path / "containers.conf").write_text(CONTAINERS_CONF)
    (tmp_path / "storage.conf").write_text(STORAGE_CONF)
    monkeypatch.setenv("CONTAINERS_CONF", str(tmp_path / "containers.conf"))
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(tmp_path / "storage.conf"))
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-200:]}")
    _build_image(tmp_path)


def test_relion_in_a_podman_container_gives_the_binarys_shifts(tmp_path, podman):
    truth = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=21, shape=(512, 512), n_frames=8)
    movie = tmp_path / "s" / "raw" / truth.movies[0].name
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    spec = ToolSpec(mode="container", runtime="podman", image=IMAGE, timeout_s=300)
    contained = relion.motion_correct(movie, tmp_path / "container", acq, MotionParams(), spec=spec)
    binary = relion.motion_correct(movie, tmp_path / "binary", acq, MotionParams(), spec=ToolSpec())
    np.testing.assert_allclose(contained.shifts_px, binary.shifts_px, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "container").iterdir()) == sorted(
        p.name for p in (tmp_path / "binary").iterdir()
    )
