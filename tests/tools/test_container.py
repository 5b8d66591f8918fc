"""Container wrapping: the exact argv of each runtime, pure, no runtime needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from emlive.tools import ToolSpec, container_argv, container_cleanup_argv

INNER = ["MotionCor2", "-InTiff", "/data/raw/a.tif", "-OutMrc", "/work/a.mrc", "-Gpu", "0"]
PATHS = [Path("/data/raw"), Path("/work")]


def spec(runtime: str, **extra) -> ToolSpec:
    return ToolSpec(
        mode="container",
        image="/images/motioncor2_1.6.4.sif" if runtime in ("apptainer", "singularity") else "emlive/motioncor2:1.6.4",
        runtime=runtime,
        binds=("/opt/licenses:/licenses:ro", "/scratch"),
        environment={"OMP_NUM_THREADS": "4"},
        **extra,
    )


def test_binary_mode_runs_the_command_as_it_is():
    assert container_argv(ToolSpec(), INNER, paths=PATHS, gpu=True, gpu_id=1) == INNER
    assert container_cleanup_argv(ToolSpec(), "x") is None


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_and_singularity_argv(runtime):
    argv = container_argv(spec(runtime), INNER, paths=PATHS, workdir=Path("/work"), gpu=True, gpu_id=2)
    assert argv == [
        runtime, "exec", "--nv",
        "--bind", "/data/raw:/data/raw",
        "--bind", "/work:/work",
        "--bind", "/opt/licenses:/licenses:ro",
        "--bind", "/scratch:/scratch",
        "--env", "OMP_NUM_THREADS=4",
        "--env", "CUDA_VISIBLE_DEVICES=2",
        "--pwd", "/work",
        "/images/motioncor2_1.6.4.sif",
        *INNER,
    ]
    assert container_cleanup_argv(spec(runtime), "emlive-1") is None  # the tool dies with its process group


def test_apptainer_without_gpu_has_no_nv_and_a_custom_runtime_path():
    argv = container_argv(spec("apptainer", runtime_executable="/usr/local/bin/apptainer"), ["ctffind"], paths=[Path("/w")])
    assert argv == [
        "/usr/local/bin/apptainer", "exec",
        "--bind", "/w:/w", "--bind", "/opt/licenses:/licenses:ro", "--bind", "/scratch:/scratch",
        "--env", "OMP_NUM_THREADS=4",
        "/images/motioncor2_1.6.4.sif", "ctffind",
    ]


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_docker_and_podman_argv(runtime):
    argv = container_argv(
        spec(runtime), INNER, paths=PATHS, workdir=Path("/work"), gpu=True, gpu_id=1, name="emlive-ab12", user="1000:1000"
    )
    assert argv == [
        runtime, "run", "--rm", "-i",
        "--name", "emlive-ab12",
        "--user", "1000:1000",
        "--gpus", "device=1",
        "--volume", "/data/raw:/data/raw",
        "--volume", "/work:/work",
        "--volume", "/opt/licenses:/licenses:ro",
        "--volume", "/scratch:/scratch",
        "--env", "OMP_NUM_THREADS=4",
        "--workdir", "/work",
        "emlive/motioncor2:1.6.4",
        *INNER,
    ]
    assert container_cleanup_argv(spec(runtime), "emlive-ab12") == [runtime, "rm", "--force", "emlive-ab12"]


def test_docker_with_every_gpu_and_without_a_gpu():
    with_all = container_argv(spec("docker"), ["Gctf"], gpu=True)
    assert with_all[with_all.index("--gpus") + 1] == "all"
    assert "--gpus" not in container_argv(spec("docker"), ["ctffind"], gpu=False)


def test_a_path_bound_twice_is_bound_once():
    argv = container_argv(spec("apptainer"), ["x"], paths=[Path("/scratch"), Path("/scratch")])
    assert argv.count("/scratch:/scratch") == 1


@pytest.mark.parametrize(
    "bad", [{"mode": "container"}, {"binds": ("/a:/b:rx",)}, {"binds": (":/b",)}, {"version": "latest"}]
)
def test_bad_tool_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        ToolSpec(**bad)
