"""An external program as the engine of a step: the glue every such engine shares, written once.

An engine built on a tool keeps only what is its own — its params mapping, its pure
``build_command`` and ``parse_output``, and the result it assembles. The rest is here:

- :class:`ExternalTool` declares the program: its ``[tools.<name>]`` entry, usual executable,
  how to ask and read its version, the releases the engine reads, whether it needs a GPU;
- :meth:`ExternalTool.run` is the context manager around one run on one input: it resolves the
  :class:`~emlive.tools.spec.ToolSpec`, detects and checks the version (before anything is
  written), and makes a temporary work folder inside the output folder (removed on the way out,
  so a failure leaves nothing half-written); the :class:`ToolRun` it yields runs commands there
  (:meth:`ToolRun.call`), checks the files the tool should have written (:meth:`ToolRun.expect`)
  and turns a parser's ``ValueError`` into :class:`~emlive.tools.call.ToolOutputError`
  (:meth:`ToolRun.reading`), each naming the input, the command and the tool's last words.

Moving or writing the outputs into the output folder (atomically) stays the engine's job,
inside the ``with`` block, so the work folder still exists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from emlive.tools.call import (
    Completed,
    ToolError,
    ToolOutputError,
    check_version,
    detect_version,
    run_tool,
    tail,
    tool_spec,
)
from emlive.tools.spec import ToolSpec, Version

__all__ = ["ExternalTool", "ToolRun"]


@dataclass(frozen=True)
class ExternalTool:
    """An external program as an engine sees it.

    ``name`` is its ``[tools.<name>]`` entry, ``executable`` the command run when the settings
    name none, ``label`` how messages call it (default: ``executable``). ``EXECUTABLE
    *version_args`` prints a text that ``parse_version`` reads; the engine reads the output of
    releases ``supported[0]`` up to, not including, ``supported[1]``. ``needs_gpu``: a container
    gets the worker's GPU unless the tool's settings say otherwise.
    """

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

    def check(self, version: Version, *, argv: Sequence[str] = ()) -> None:
        """Raise :class:`~emlive.tools.call.ToolVersionError` unless this engine reads ``version``."""
        check_version(version, tool=self.title, supported=self.supported, argv=argv)

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

        ``stem`` (default: the source's) names the outputs and the work folder; ``spec``
        defaults to the configured ``[tools.<name>]``. Raises
        :class:`~emlive.tools.call.ToolNotFoundError` or
        :class:`~emlive.tools.call.ToolVersionError` before anything is written.
        """
        source, out_dir = Path(source).resolve(), Path(out_dir)
        stem = stem or source.stem
        spec = spec or tool_spec(self.name)
        version = self.version(spec)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{stem}.tmp-{self.name}-", dir=out_dir) as tmp:
            yield ToolRun(self, source=source, stem=stem, spec=spec, version=version, work=Path(tmp).resolve())


class ToolRun:
    """One run of an :class:`ExternalTool` in its work folder (made by :meth:`ExternalTool.run`).

    ``source``: the input (absolute); ``work``: the temporary folder the program runs in;
    ``done``: the last command's :class:`~emlive.tools.call.Completed`.
    """

    def __init__(self, tool: ExternalTool, *, source: Path, stem: str, spec: ToolSpec, version: Version, work: Path) -> None:
        self.tool, self.source, self.stem, self.spec, self.version, self.work = tool, source, stem, spec, version, work
        self.done: Completed | None = None

    def call(self, argv: Sequence[str | os.PathLike[str]], *, stdin: str = "", paths: Iterable[Path] = ()) -> Completed:
        """Run ``argv`` (``argv[0]`` is replaced by the configured executable) in the work folder.

        The source's folder and ``paths`` are bound into a container at the same place. Raises
        :class:`~emlive.tools.call.ToolError` (exit code, stderr tail) when the program fails.
        """
        self.done = run_tool(
            self.spec,
            argv,
            default_executable=self.tool.executable,
            stdin=stdin,
            cwd=self.work,
            paths=[self.source.parent, *paths],
            needs_gpu=self.tool.needs_gpu,
        )
        return self.done

    @property
    def last(self) -> Completed:
        """The last command run (:meth:`call` first)."""
        if self.done is None:
            raise RuntimeError(f"no {self.tool.title} command has run in this work folder yet")
        return self.done

    def expect(self, *names: str | Path, log: Path | None = None) -> tuple[Path, ...]:
        """The files the program should have written (relative to the work folder), as paths.

        Raises :class:`~emlive.tools.call.ToolOutputError` naming the missing ones, with the tail
        of the program's stderr and of ``log`` (if it wrote one) or its stdout.
        """
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
