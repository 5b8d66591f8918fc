"""How an external program is reached: its configuration, its version, and container wrapping.

Everything here is pure: a :class:`ToolSpec` (one per tool, from the ``[tools.<name>]`` section
of the settings) and an inner command line give the full argv that runs the program, either
directly (``mode = "binary"``) or inside a container (``mode = "container"``) under Apptainer,
Singularity, Docker or Podman. Running it is :func:`emlive.tools.call.call`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

__all__ = [
    "ContainerRuntime",
    "Version",
    "ToolSpec",
    "ToolsSettings",
    "TOOL_NAMES",
    "container_argv",
    "container_cleanup_argv",
    "find_version",
]

ContainerRuntime = Literal["apptainer", "singularity", "docker", "podman"]
TOOL_NAMES = ("relion", "motioncor2", "motioncor3", "ctffind4", "ctffind5", "gctf", "topaz", "aretomo2", "aretomo3", "imod")


class Version(NamedTuple):
    """A tool's release as numbers: ``Version(4, 1, 14)`` for ctffind 4.1.14."""

    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> Version:
        """``"1.6.4"`` → ``Version(1, 6, 4)``; ``"v1.06"`` → ``Version(1, 6, 0)``."""
        # possessive quantifiers: linear time on any text (a long run of digits backtracked for minutes)
        match = re.fullmatch(r"v?(\d++)(?:\.(\d++))?(?:\.(\d++))?\S*+", text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a version number like 1.6.4")
        return cls(*(int(part) if part else 0 for part in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def find_version(text: str, pattern: str) -> Version | None:
    """The version in ``text`` captured by group 1 of the regular expression ``pattern``."""
    match = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
    return Version.parse(match.group(1)) if match else None


class ToolSpec(BaseModel):
    """One external program: where it is, how it runs, how long it may take.

    ``mode = "binary"``: ``executable`` is a path or a name found on ``PATH``.
    ``mode = "container"``: ``image`` is run by ``runtime`` (an Apptainer/Singularity ``.sif``
    file, or a Docker/Podman image name) and ``executable`` is the command inside it.
    Paths an engine reads and writes are bound into the container at the same place; ``binds``
    adds more (``"/host/path"``, ``"/host:/inside"`` or ``"/host:/inside:ro"``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["binary", "container"] = "binary"
    executable: str | None = Field(None, description="Path or command name; default: the tool's usual name")
    image: str | None = Field(None, description="Container image (.sif path or registry name)")
    runtime: ContainerRuntime = Field("apptainer", description="Container runtime (mode = container)")
    runtime_executable: str | None = Field(None, description="Path of the runtime's CLI; default: its name")
    binds: tuple[str, ...] = Field((), description="Extra bind mounts: host[:inside[:ro]]")
    environment: dict[str, str] = Field(default_factory=dict, description="Variables set for the tool")
    gpu: bool | None = Field(None, description="Give the container GPUs (--nv / --gpus); default: if the engine needs one")
    timeout_s: PositiveFloat = Field(3600.0, description="A run taking longer is killed and fails, s")
    threads: PositiveInt = Field(1, description="CPU threads the tool may use (where it has an option)")
    version: str | None = Field(None, description="Skip version detection and assume this version")
    extra_args: tuple[str, ...] = Field((), description="Arguments appended to every command")

    @model_validator(mode="after")
    def _image_for_containers(self) -> ToolSpec:
        if self.mode == "container" and not self.image:
            raise ValueError("mode = 'container' needs an image")
        if self.version is not None:
            Version.parse(self.version)
        for bind in self.binds:
            _split_bind(bind)
        return self

    def command(self, default_executable: str) -> str:
        """The program to run (inside the container in container mode)."""
        return self.executable or default_executable


class ToolsSettings(BaseModel):
    """The ``[tools]`` section: one entry per external program (all optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    relion: ToolSpec = ToolSpec()
    motioncor2: ToolSpec = ToolSpec()
    motioncor3: ToolSpec = ToolSpec()
    ctffind4: ToolSpec = ToolSpec()
    ctffind5: ToolSpec = ToolSpec()
    gctf: ToolSpec = ToolSpec()
    topaz: ToolSpec = ToolSpec()
    aretomo2: ToolSpec = ToolSpec()
    aretomo3: ToolSpec = ToolSpec()
    imod: ToolSpec = ToolSpec()

    def spec(self, name: str) -> ToolSpec:
        if name not in TOOL_NAMES:
            raise ValueError(f"unknown tool {name!r}; known tools: {', '.join(TOOL_NAMES)}")
        spec: ToolSpec = getattr(self, name)
        return spec


def _split_bind(bind: str) -> tuple[str, str, bool]:
    parts = bind.split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"bind {bind!r} is not host[:inside[:ro|rw]]")
    inside = parts[1] if len(parts) > 1 and parts[1] else parts[0]
    return parts[0], inside, len(parts) == 3 and parts[2] == "ro"


def _binds(spec: ToolSpec, paths: Iterable[Path]) -> list[tuple[str, str, bool]]:
    binds: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for path in paths:
        host = str(Path(path))
        if host not in seen:
            seen.add(host)
            binds.append((host, host, False))
    for bind in spec.binds:
        host, inside, read_only = _split_bind(bind)
        if inside not in seen:
            seen.add(inside)
            binds.append((host, inside, read_only))
    return binds


def container_argv(
    spec: ToolSpec,
    inner: Sequence[str],
    *,
    paths: Iterable[Path] = (),
    workdir: Path | None = None,
    gpu: bool = False,
    gpu_id: int | None = None,
    name: str | None = None,
    user: str | None = None,
) -> list[str]:
    """The argv that runs ``inner`` (argv inside the container) as ``spec`` says.

    Binary mode returns ``inner`` unchanged. Container mode binds each of ``paths`` at the same
    place inside, then ``spec.binds``; sets ``spec.environment``; starts in ``workdir``; with
    ``gpu`` gives GPU access (Apptainer/Singularity ``--nv``, Docker/Podman ``--gpus``), limited
    to device ``gpu_id`` when given (``CUDA_VISIBLE_DEVICES`` for Apptainer/Singularity,
    ``--gpus device=N`` for Docker/Podman: inside, the tool then sees it as device 0). For
    Docker/Podman, ``name`` names the container (so a timeout can remove it) and ``user``
    (``"uid:gid"``) owns the files it writes; stdin stays open (``-i``) for tools reading answers.
    """
    inner = list(inner)
    if spec.mode == "binary":
        return inner
    assert spec.image is not None  # the model's validator guarantees it
    runtime = spec.runtime_executable or spec.runtime
    environment = dict(spec.environment)
    binds = _binds(spec, paths)
    if spec.runtime in ("apptainer", "singularity"):
        argv = [runtime, "exec"]
        if gpu:
            argv.append("--nv")
            if gpu_id is not None:
                environment["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
        for host, inside, read_only in binds:
            argv += ["--bind", f"{host}:{inside}" + (":ro" if read_only else "")]
        for key, value in environment.items():
            argv += ["--env", f"{key}={value}"]
        if workdir is not None:
            argv += ["--pwd", str(workdir)]
        return [*argv, spec.image, *inner]
    argv = [runtime, "run", "--rm", "-i"]
    if name is not None:
        argv += ["--name", name]
    if user is not None:
        argv += ["--user", user]
    if gpu:
        argv += ["--gpus", f"device={gpu_id}" if gpu_id is not None else "all"]
    for host, inside, read_only in binds:
        argv += ["--volume", f"{host}:{inside}" + (":ro" if read_only else "")]
    for key, value in environment.items():
        argv += ["--env", f"{key}={value}"]
    if workdir is not None:
        argv += ["--workdir", str(workdir)]
    return [*argv, spec.image, *inner]


def container_cleanup_argv(spec: ToolSpec, name: str | None) -> list[str] | None:
    """What removes a Docker/Podman container left running by a killed client, else None.

    Killing ``docker run`` does not stop its container; Apptainer/Singularity run the tool as a
    child process, which dies with the process group.
    """
    if spec.mode != "container" or spec.runtime not in ("docker", "podman") or name is None:
        return None
    return [spec.runtime_executable or spec.runtime, "rm", "--force", name]
