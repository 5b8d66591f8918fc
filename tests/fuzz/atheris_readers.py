"""Coverage-guided fuzzing of the readers and parsers with atheris (libFuzzer), optional.

Not collected by pytest (not named test_*), not in requirements.lock. See tests/fuzz/README.md:

    pip install atheris
    python tests/fuzz/atheris_readers.py --corpus /tmp/emlive-corpus          # seed the corpus
    python tests/fuzz/atheris_readers.py /tmp/emlive-corpus -timeout=2 -rss_limit_mb=2048

An input's first byte picks the target (a movie format, a gain file, a defect list or a tool
parser, see TARGETS), the rest is the file or the text. The property is the Hypothesis tests':
only the typed error may escape; libFuzzer's -timeout and -rss_limit_mb bound time and memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.fuzz, run as a script

import atheris  # noqa: E402

# coverage feedback from emlive and the file-format libraries it trusts (instrumenting numpy,
# scipy and pydantic too takes minutes and adds nothing)
_FUZZING = "--corpus" not in sys.argv
with atheris.instrument_imports(include=["emlive", "mrcfile", "tifffile"]) if _FUZZING else contextlib.nullcontext():
    from emlive.ctf import ctffind, gctf
    from emlive.io.defects import read_defects
    from emlive.io.errors import GainError, MovieFormatError
    from emlive.io.gain import read_gain
    from emlive.io.movie import check_movie_complete, open_movie
    from emlive.io.mrc import read_mrc
    from emlive.motion import motioncor, relion
    from emlive.tools.spec import Version

_DIR = Path(tempfile.mkdtemp(prefix="emlive-atheris-"))


def _movie(suffix: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        path = _DIR / f"fuzzed{suffix}"
        path.write_bytes(data)
        try:
            check_movie_complete(path)
            with open_movie(path, eer_fractions=1) as movie:
                movie.frames()
            if suffix == ".mrc":
                read_mrc(path)
        except MovieFormatError as err:
            assert path.name in str(err), err

    return run


def _gain(suffix: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        path = _DIR / f"gain{suffix}"
        path.write_bytes(data)
        for call in (lambda: read_gain(path), lambda: read_defects(path, (16, 24))):
            try:
                call()
            except GainError as err:
                assert path.name in str(err), err

    return run


def _text(parse: Callable[[str], object]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        try:
            parse(data.decode("utf-8", errors="replace"))
        except ValueError as err:
            assert str(err), "an error without a message"

    return run


TARGETS: list[tuple[str, Callable[[bytes], None]]] = [
    ("mrc", _movie(".mrc")),
    ("tif", _movie(".tif")),
    ("eer", _movie(".eer")),
    ("gain_mrc", _gain(".mrc")),
    ("gain_tif", _gain(".tif")),
    ("defects_txt", _gain(".txt")),
    ("ctffind", _text(lambda t: ctffind.parse_output(t, Version(4, 1, 14)))),
    ("gctf", _text(lambda t: gctf.parse_output(t, Version(1, 6)))),
    ("gctf_epa", _text(gctf.parse_epa)),
    ("motioncor", _text(lambda t: motioncor.parse_output(t, Version(1, 6, 4)))),
    ("relion", _text(lambda t: relion.parse_output(t, Version(3, 1, 3)))),
    ("versions", _text(lambda t: [m.parse_version(t) for m in (ctffind, gctf, motioncor, relion)])),
]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)][1](data[1:])


def write_corpus(directory: Path) -> None:
    """The Hypothesis seeds and golden samples, each prefixed with its target's byte."""
    from tests.fuzz import seeds

    directory.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, (name, _) in enumerate(TARGETS)}
    entries: list[tuple[str, bytes]] = []
    for seed in seeds.mrc_seeds() + seeds.tiff_seeds() + seeds.eer_seeds():
        entries.append((seed.suffix.lstrip("."), seed.data))
    for seed in seeds.gain_seeds():
        entries.append(("gain_mrc" if seed.suffix == ".mrc" else "gain_tif", seed.data))
    entries.append(("defects_txt", b"0 0 1 16\n5 7 2 2\n"))
    for tool, target in [("ctffind", "ctffind"), ("gctf", "gctf"), ("gctf", "gctf_epa"),
                         ("motioncor", "motioncor"), ("relion", "relion"), ("relion", "versions")]:
        entries += [(target, text.encode()) for text in seeds.text_samples(tool).values()]
    for i, (target, data) in enumerate(entries):
        (directory / f"{i:03d}_{target}").write_bytes(bytes([index[target]]) + data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--corpus":
        write_corpus(Path(sys.argv[2]))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
