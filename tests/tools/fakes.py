"""Small scripts standing in for external tools in tests: they answer ``--version``, record how
they were called (argv, stdin, cwd, CUDA_VISIBLE_DEVICES) and do what the test says: write
outputs like the real tool, print a golden log, crash, hang or print garbage."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"

_PRELUDE = """\
import json, os, sys, time
from pathlib import Path
import mrcfile
import numpy as np
args = sys.argv[1:]
if args == ["--version"]:
    sys.stdout.write({version!r})
    sys.exit(0)
stdin = sys.stdin.read()
answers = stdin.splitlines()
with open({record!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv, "stdin": stdin, "cwd": os.getcwd(),
                          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
def write_mrc(path, value=1.0, shape=(64, 64)):
    rng = np.random.default_rng(0)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data((rng.normal(size=shape) + value).astype(np.float32))
        mrc.voxel_size = 1.0
def flag(name):
    return args[args.index(name) + 1]
"""


def fake_tool(path: Path, *, version: str, body: str) -> Path:
    """An executable Python script at ``path``; its calls are recorded in ``path.calls.jsonl``."""
    record = path.with_name(path.name + ".calls.jsonl")
    path.write_text(f"#!{sys.executable}\n" + _PRELUDE.format(version=version, record=str(record)) + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(tool: Path) -> list[dict]:
    """How the fake tool was called (version queries are not recorded)."""
    record = tool.with_name(tool.name + ".calls.jsonl")
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def golden(relative: str) -> str:
    return (DATA / relative).read_text()
