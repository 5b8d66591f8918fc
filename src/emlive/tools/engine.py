"""An external program as the engine of a step: the glue every such engine shares, written once.

:class:`ExternalTool` declares the program (its ``[tools.<name>]`` entry, usual executable, how
its version is read, the releases the engine reads, whether it needs a GPU). Its context manager
:meth:`ExternalTool.run` resolves the tool's settings, detects and checks the version before
anything is written, and yields a :class:`ToolRun` in a temporary work folder inside the output
folder (removed on the way out: a failure leaves nothing half-written). The run calls the
program there, checks the files it should have written and turns a parser's ``ValueError`` into
:class:`~emlive.tools.call.ToolOutputError`, naming the input, the command and the tool's last
words. An engine keeps only its own: its params, ``build_command``, ``parse_output``, and the
result it assembles and moves into the output folder (inside the ``with``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from emlive.io.atomic import temporary_prefix
from emlive.tools.call import (
    Completed, ToolError, ToolOutputError, check_version, detect_version, run_tool, tail, tool_spec,
)
from emlive.tools.spec import ToolSpec, Version

__all__ = ["ExternalTool", "ToolRun"]


@dataclass(frozen=True)
class ExternalTool:
    """A program as an engine sees it: ``name`` its ``[tools.<name>]`` entry, ``executable`` the
    command when the settings name none, ``label`` its name in messages (default: executable);
    ``EXECUTABLE *version_args`` prints what ``parse_version`` reads, and the engine reads releases
    from ``supported[0]`` up to, not including, ``supported[1]``; ``needs_gpu`` for containers."""

    name: str
    executable: str
    parse_version: Callable[[str], Version | None]
    supported: tuple[Version, Version]
    label: str = ""
    version_args: tuple[str, ...] = ("--version",)
    needs_gpu: bool = False

    @property
    def title(self) -> str:
        """The program's name in messages."""
        return self.label or self.executable

    def check(self, version: Version) -> None:
        """Raise :class:`~emlive.tools.call.ToolVersionError` unless this engine reads ``version``."""
        check_version(version, tool=self.title, supported=self.supported)

    def version(self, spec: ToolSpec) -> Version:
        """The configured program's version (asked once per process), checked as supported."""
        version = detect_version(spec, default_executable=self.executable, args=self.version_args, parse=self.parse_version)
        self.check(version)
        return version

    @contextmanager
    def run(
        self, source: Path, out_dir: Path, *, stem: str | None = None, spec: ToolSpec | None = None
    ) -> Iterator[ToolRun]:
        """A run of this program on ``source`` writing into ``out_dir`` (see the module doc).

        ``stem`` (default: the source's) names the outputs and the work folder; ``spec`` defaults
        to the configured ``[tools.<name>]``. A missing program or an unsupported release raises
        before anything is written.
        """
        source, out_dir = Path(source).resolve(), Path(out_dir)
        stem = stem or source.stem
        spec = spec or tool_spec(self.name)
        version = self.version(spec)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=temporary_prefix(stem, self.name), dir=out_dir) as tmp:
            yield ToolRun(self, source, out_dir, stem, spec, version, Path(tmp).resolve())


@dataclass
class ToolRun:
    """One run of an :class:`ExternalTool` (made by :meth:`ExternalTool.run`): ``source`` the
    input (absolute), ``work`` the folder the program runs in, ``done`` its last command."""

    tool: ExternalTool
    source: Path
    out_dir: Path
    stem: str
    spec: ToolSpec
    version: Version
    work: Path
    done: Completed | None = field(default=None, init=False)

    def call(self, argv: Sequence[str | os.PathLike[str]], *, stdin: str = "", paths: Iterable[Path] = ()) -> Completed:
        """Run ``argv`` (``argv[0]``: the configured executable) in the work folder, the source's
        folder and ``paths`` bound into a container; :class:`~emlive.tools.call.ToolError` on failure."""
        self.done = run_tool(
            self.spec, argv, default_executable=self.tool.executable, stdin=stdin, cwd=self.work,
            paths=[self.source.parent, *paths], needs_gpu=self.tool.needs_gpu,
        )
        return self.done

    @property
    def last(self) -> Completed:
        """The last command run (:meth:`call` first)."""
        if self.done is None:
            raise RuntimeError(f"no {self.tool.title} command has run in this work folder yet")
        return self.done

    def expect(self, *names: str | Path, log: Path | None = None) -> tuple[Path, ...]:
        """The files the program should have written (relative to the work folder), as paths, or
        :class:`~emlive.tools.call.ToolOutputError` naming the missing ones, with the tail of the
        program's stderr and of ``log`` (if it wrote one) or else its stdout."""
        paths = tuple(self.work / name for name in names)
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            done = self.last
            details = log.read_text(errors="replace") if log is not None and log.is_file() else done.stdout
            raise ToolOutputError(
                f"{self.source}: {self.tool.title} ended without writing {', '.join(missing)}",
                argv=done.argv,
                exit_code=done.returncode,
                stderr_tail=tail(done.stderr + "\n" + details),
            )
        return paths

    @contextmanager
    def reading(self, what: str, text: str | None = None) -> Iterator[None]:
        """Turn a parser's ``ValueError`` into :class:`~emlive.tools.call.ToolOutputError`:
        ``"<source>: cannot read <tool>'s <what>: <why>"`` with the tail of ``text`` (what was
        parsed; default: what the program printed)."""
        try:
            yield
        except ToolError:
            raise
        except ValueError as err:
            raise self.output_error(f"cannot read {self.tool.title}'s {what}: {err}", text=text) from err

    def output_error(self, message: str, *, text: str | None = None) -> ToolOutputError:
        """A :class:`~emlive.tools.call.ToolOutputError` about this run's output:
        ``"<source>: <message>"`` with the tail of ``text`` (default: what the program printed)."""
        done = self.last
        printed = done.stderr + "\n" + done.stdout if text is None else text
        return ToolOutputError(f"{self.source}: {message}", argv=done.argv, stderr_tail=tail(printed))
