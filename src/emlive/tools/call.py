"""Running an external program: the one call, its errors, version detection, per-process setup.

:func:`call` runs an argv list (never a shell string) in its own process group, feeds it
``stdin``, and either returns what it printed or raises :class:`ToolError` with the exit code,
the last lines of its stderr and the argv. On timeout the whole process group is killed (the
tool and anything it started), so a hanging tool can never hang a session.

:func:`run_tool` is what engines use: it wraps the inner command as the tool's
:class:`~emlive.tools.spec.ToolSpec` says (binary or container), adds the tool's environment and
GPU, and calls it. :func:`detect_version` asks a tool for its version once per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emlive.tools.spec import (
    ToolSpec,
    ToolsSettings,
    Version,
    container_argv,
    container_cleanup_argv,
)

__all__ = [
    "Completed",
    "ToolError",
    "ToolNotFoundError",
    "ToolOutputError",
    "ToolTimeoutError",
    "ToolVersionError",
    "assigned_gpu",
    "call",
    "check_version",
    "configure_tools",
    "detect_version",
    "run_tool",
    "tool_spec",
    "tail",
]

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
_KILL_GRACE_S = 5.0


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _rebuild(cls: type[ToolError], message: str, argv: tuple[str, ...], exit_code: int | None, stderr_tail: str) -> ToolError:
    return cls(message, argv=argv, exit_code=exit_code, stderr_tail=stderr_tail)


class ToolError(RuntimeError):
    """An external program failed: what happened, its exit code, its stderr tail and its argv."""

    def __init__(
        self, message: str, *, argv: Sequence[str], exit_code: int | None = None, stderr_tail: str = ""
    ) -> None:
        self.message = message
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        text += f"; command: {' '.join(self.argv)}"
        if self.stderr_tail:
            text += f"\n{self.stderr_tail}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:  # keep the fields across processes (Dask)
        return (_rebuild, (type(self), self.message, self.argv, self.exit_code, self.stderr_tail))


class ToolTimeoutError(ToolError):
    """The program ran past its ``timeout_s`` and was killed with its whole process group."""


class ToolNotFoundError(ToolError, ValueError):
    """The program (or its container runtime) is not there: fix the ``[tools]`` settings."""


class ToolVersionError(ToolError, ValueError):
    """The program's version is unknown or not one this engine can read the output of."""


class ToolOutputError(ToolError, ValueError):
    """The program ended well but its output is not what its version writes."""


@dataclass(frozen=True)
class Completed:
    """A finished run: argv, exit code, what it printed, how long it took."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """What a killed process printed; pipes held open by an escaped grandchild are closed."""
    try:
        return proc.communicate(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait(timeout=_KILL_GRACE_S)
        return "", ""


def call(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: str = "",
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cleanup: Sequence[str] | None = None,
) -> Completed:
    """Run ``argv`` to completion and return what it printed.

    ``env`` adds variables to this process's environment. ``stdin`` is written to the program
    and closed. Raises :class:`ToolNotFoundError` if the program cannot be started,
    :class:`ToolTimeoutError` after killing the process group when it runs past ``timeout_s``
    (then runs ``cleanup``, e.g. removing a Docker container), and :class:`ToolError` for a
    non-zero exit status unless ``check`` is false.
    """
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a list of arguments, never a shell string")
    args = [os.fspath(arg) for arg in argv]
    if not args:
        raise ValueError("empty command")
    environment = os.environ | dict(env or {})
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            cwd=cwd,
            env=environment,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise ToolNotFoundError(
            f"cannot run {args[0]}: {err.strerror or err}; install it or set its path in the [tools] settings",
            argv=args,
        ) from err
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = _drain(proc)
        message = f"{Path(args[0]).name} did not finish within {timeout_s:g} s and was killed"
        if cleanup:
            try:
                call(cleanup, timeout_s=60.0, check=False)
            except ToolError as err:
                message += f" (its cleanup failed too: {err.message})"
        raise ToolTimeoutError(message, argv=args, stderr_tail=tail(stderr or stdout)) from None
    except BaseException:
        _kill_group(proc)
        _drain(proc)
        raise
    duration_s = time.monotonic() - started
    if check and proc.returncode != 0:
        reason = (
            f"killed by signal {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0 and -proc.returncode in signal.Signals._value2member_map_
            else "failed"
        )
        raise ToolError(
            f"{Path(args[0]).name} {reason}",
            argv=args,
            exit_code=proc.returncode,
            stderr_tail=tail(stderr) or tail(stdout),
        )
    return Completed(tuple(args), proc.returncode, stdout, stderr, duration_s)


# --- what this process runs tools with: set by the CLI, and on Dask workers by a plugin ---

_tools = ToolsSettings()
_gpu_id: int | None = None


def configure_tools(tools: ToolsSettings, *, gpu_id: int | None = None) -> None:
    """Set the tool settings (and this worker's GPU) that :func:`run_tool` uses in this process."""
    global _tools, _gpu_id
    _tools, _gpu_id = tools, gpu_id


def tool_spec(name: str) -> ToolSpec:
    """The configured :class:`ToolSpec` of tool ``name`` (``relion``, ``motioncor2`` …)."""
    return _tools.spec(name)


def assigned_gpu() -> int | None:
    """The GPU this worker process was given (``--gpu-ids``), or None: the tool's default."""
    return _gpu_id


def run_tool(
    spec: ToolSpec,
    inner: Sequence[str | os.PathLike[str]],
    *,
    default_executable: str,
    stdin: str = "",
    cwd: Path | None = None,
    paths: Iterable[Path] = (),
    needs_gpu: bool = False,
    check: bool = True,
    timeout_s: float | None = None,
) -> Completed:
    """Run a tool's command (``inner[0]`` is replaced by the configured executable).

    Binary mode: the executable must exist (a clear :class:`ToolNotFoundError` otherwise), the
    tool's environment is added, and a GPU worker's device is passed as
    ``CUDA_VISIBLE_DEVICES``. Container mode: ``paths`` and ``cwd`` are bound at the same place
    inside and the container gets the GPU when ``needs_gpu`` (or ``spec.gpu``) says so.
    """
    command = spec.command(default_executable)
    argv = [command, *(os.fspath(arg) for arg in inner[1:]), *spec.extra_args]
    gpu = needs_gpu if spec.gpu is None else spec.gpu
    gpu_id = assigned_gpu() if gpu else None
    env: dict[str, str] = {}
    cleanup: list[str] | None = None
    if spec.mode == "binary":
        if shutil.which(command) is None:
            raise ToolNotFoundError(
                f"{command} not found (not an executable file, nor on PATH); install it or set "
                f"executable in its [tools] settings",
                argv=argv,
            )
        env = dict(spec.environment)
        if gpu_id is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
        full = argv
    else:
        name = f"emlive-{secrets.token_hex(6)}"
        user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
        bound = [*paths, *([cwd] if cwd is not None else [])]
        full = container_argv(spec, argv, paths=bound, workdir=cwd, gpu=gpu, gpu_id=gpu_id, name=name, user=user)
        cleanup = container_cleanup_argv(spec, name)
    log.debug("running %s", " ".join(full))
    return call(
        full,
        stdin=stdin,
        timeout_s=timeout_s or spec.timeout_s,
        cwd=cwd,
        env=env,
        check=check,
        cleanup=cleanup,
    )


_versions: dict[tuple[str, str, tuple[str, ...]], Version] = {}


def detect_version(
    spec: ToolSpec,
    *,
    default_executable: str,
    args: Sequence[str],
    parse: Callable[[str], Version | None],
    timeout_s: float = 120.0,
) -> Version:
    """The tool's version: ``spec.version`` if set, else parsed from ``EXECUTABLE *args``.

    Asked once per process and tool configuration. A program that prints no version it can
    parse raises :class:`ToolVersionError` with what it printed.
    """
    if spec.version is not None:
        return Version.parse(spec.version)
    key = (spec.model_dump_json(), default_executable, tuple(args))
    if key not in _versions:
        done = run_tool(
            spec, [default_executable, *args], default_executable=default_executable, check=False, timeout_s=timeout_s
        )
        text = done.stdout + "\n" + done.stderr
        version = parse(text)
        if version is None:
            raise ToolVersionError(
                f"cannot tell the version of {spec.command(default_executable)} from its output; "
                "set version in its [tools] settings if it is a supported release",
                argv=done.argv,
                exit_code=done.returncode,
                stderr_tail=tail(text),
            )
        _versions[key] = version
    return _versions[key]


def check_version(
    version: Version, *, tool: str, supported: tuple[Version, Version], argv: Sequence[str] = ()
) -> None:
    """Raise :class:`ToolVersionError` unless ``supported[0] <= version < supported[1]``."""
    low, high = supported
    if not low <= version < high:
        raise ToolVersionError(
            f"{tool} {version} is not supported (this engine reads the output of {low} up to, "
            f"not including, {high})",
            argv=argv,
        )
