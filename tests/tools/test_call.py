"""The one call: argv lists only, exit code and stderr tail on failure, a timeout that never hangs."""

from __future__ import annotations

import os
import pickle
import stat
import sys
import time
from pathlib import Path

import pytest

from emlive.tools import (
    ToolError,
    ToolNotFoundError,
    ToolSpec,
    ToolTimeoutError,
    ToolVersionError,
    Version,
    call,
    configure_tools,
    detect_version,
    find_version,
    run_tool,
    tool_spec,
    ToolsSettings,
)


def script(path: Path, body: str) -> Path:
    """An executable Python script standing in for a tool."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_call_returns_what_the_program_printed_and_feeds_stdin(tmp_path):
    tool = script(tmp_path / "echo_tool", "import sys\nprint(sys.stdin.read().upper(), end='')\nprint('note', file=sys.stderr)\n")
    done = call([tool], stdin="answers\n", timeout_s=30)
    assert done.stdout == "ANSWERS\n"
    assert done.stderr == "note\n"
    assert done.returncode == 0
    assert done.argv == (str(tool),)


def test_call_refuses_a_shell_string():
    with pytest.raises(TypeError, match="never a shell string"):
        call("echo hi", timeout_s=5)  # type: ignore[arg-type]


def test_a_crash_raises_with_the_exit_code_the_stderr_tail_and_the_argv(tmp_path):
    lines = "\n".join(f"print('line {i}', file=sys.stderr)" for i in range(40))
    tool = script(tmp_path / "crash", f"import sys\n{lines}\nsys.exit(7)\n")
    with pytest.raises(ToolError) as caught:
        call([tool, "--flag", "a b"], timeout_s=30)
    error = caught.value
    assert error.exit_code == 7
    assert error.argv == (str(tool), "--flag", "a b")
    assert error.stderr_tail.splitlines() == [f"line {i}" for i in range(20, 40)]
    assert "exit code 7" in str(error) and "line 39" in str(error) and "line 19" not in str(error)
    assert not isinstance(error, ValueError)  # a crash may be transient: retried by the controller


def test_a_tool_killed_by_a_signal_says_so(tmp_path):
    tool = script(tmp_path / "segfault", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(ToolError, match="SIGSEGV"):
        call([tool], timeout_s=30)


def test_a_hanging_tool_and_its_children_are_killed_on_timeout(tmp_path):
    pid_file = tmp_path / "child.pid"
    tool = script(
        tmp_path / "hang",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('working...', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n",
    )
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError) as caught:
        call([tool], timeout_s=1.5)
    assert time.monotonic() - started < 10
    assert "did not finish within 1.5 s" in str(caught.value)
    assert caught.value.stderr_tail == "working..."
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the tool's child process survived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by init) counts as dead
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_a_missing_program_is_a_permanent_error(tmp_path):
    with pytest.raises(ToolNotFoundError, match="cannot run") as caught:
        call([tmp_path / "nope"], timeout_s=5)
    assert isinstance(caught.value, ValueError)  # not retried: the settings must change


def test_garbage_bytes_do_not_break_the_call(tmp_path):
    tool = script(tmp_path / "garbage", "import sys\nsys.stdout.buffer.write(bytes(range(256)))\n")
    assert len(call([tool], timeout_s=30).stdout) > 200


def test_tool_errors_survive_pickling_as_dask_sends_them():
    error = ToolTimeoutError("gctf did not finish", argv=["Gctf", "x.mrc"], exit_code=None, stderr_tail="last")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ToolTimeoutError
    assert (copy.argv, copy.stderr_tail, str(copy)) == (error.argv, "last", str(error))


def test_run_tool_says_which_setting_to_fix_when_the_binary_is_missing(tmp_path):
    spec = ToolSpec(executable=str(tmp_path / "MotionCor2"))
    with pytest.raises(ToolNotFoundError, match=r"executable in its \[tools\] settings"):
        run_tool(spec, ["MotionCor2"], default_executable="MotionCor2")


def test_run_tool_adds_the_environment_and_the_workers_gpu(tmp_path):
    tool = script(tmp_path / "env_tool", "import os\nprint(os.environ['MY_LICENSE'], os.environ['CUDA_VISIBLE_DEVICES'])\n")
    spec = ToolSpec(executable=str(tool), environment={"MY_LICENSE": "site"})
    configure_tools(ToolsSettings(), gpu_id=3)
    try:
        done = run_tool(spec, ["x"], default_executable="x", needs_gpu=True)
    finally:
        configure_tools(ToolsSettings())
    assert done.stdout.split() == ["site", "3"]


def test_configured_tools_are_what_engines_get():
    custom = ToolsSettings(gctf=ToolSpec(executable="/opt/gctf/bin/Gctf_v1.18", timeout_s=60))
    configure_tools(custom)
    try:
        assert tool_spec("gctf").command("Gctf") == "/opt/gctf/bin/Gctf_v1.18"
        assert tool_spec("ctffind4").command("ctffind") == "ctffind"
    finally:
        configure_tools(ToolsSettings())


def test_version_detection_parses_the_banner_once_and_rejects_garbage(tmp_path):
    counter = tmp_path / "count"
    tool = script(
        tmp_path / "banner",
        f"import sys\nopen({str(counter)!r}, 'a').write('x')\nprint('Usage: tool [options]', file=sys.stderr)\n"
        "print('RELION version: 4.0.1-commit-ex417f')\nsys.exit(1)\n",
    )
    spec = ToolSpec(executable=str(tool))
    parse = lambda text: find_version(text, r"RELION version:\s*(\d+\.\d+(?:\.\d+)?)")  # noqa: E731
    assert detect_version(spec, default_executable="x", args=["--version"], parse=parse) == Version(4, 0, 1)
    assert detect_version(spec, default_executable="x", args=["--version"], parse=parse) == Version(4, 0, 1)
    assert counter.read_text() == "x"
    garbage = ToolSpec(executable=str(script(tmp_path / "garbage", "print('\\x00\\x01 ???')\n")))
    with pytest.raises(ToolVersionError, match="cannot tell the version"):
        detect_version(garbage, default_executable="x", args=["--version"], parse=parse)
    pinned = ToolSpec(executable=str(tmp_path / "not-even-there"), version="3.1.4")
    assert detect_version(pinned, default_executable="x", args=["--version"], parse=parse) == Version(3, 1, 4)


def test_versions_parse_and_compare():
    assert Version.parse("1.6.4") == (1, 6, 4)
    assert Version.parse("v1.06") == Version(1, 6, 0)
    assert Version.parse("4.1") < Version.parse("4.1.14") < Version(5, 0, 0)
    assert str(Version.parse("5.0.2")) == "5.0.2"
    with pytest.raises(ValueError, match="not a version"):
        Version.parse("latest")
