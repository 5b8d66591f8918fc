"""Headers that claim terabytes are refused before anything is allocated, checked in a separate
process whose address space is capped (``RLIMIT_AS``): there, an allocation of even a gigabyte
fails, whichever allocator (Python, NumPy, a C library) makes it, and a crash (a C library that
does not check malloc) shows as the child's exit status instead of taking pytest down with it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emlive.synth.eer import write_eer
from tests.fuzz.seeds import _mrc_bytes, distinct_events

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from emlive.io.errors import GainError, MovieFormatError
    from emlive.io.gain import read_gain
    from emlive.io.movie import check_movie_complete, read_movie
    from emlive.io.mrc import read_mrc

    def mapped():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))

    limit = mapped() + 512 * 2**20  # everything imported; room for a few MB of reading
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    results = {}
    for name in sys.argv[1:]:
        path = Path(name)
        calls = {"complete": check_movie_complete, "read": lambda p: read_movie(p, eer_fractions=1)}
        if path.suffix == ".mrc":
            calls["read_mrc"] = read_mrc
        if path.suffix in (".mrc", ".tif"):
            calls["read_gain"] = read_gain
        for call, fn in calls.items():
            try:
                fn(path)
                outcome = "read"
            except (MovieFormatError, GainError) as err:
                outcome = "typed" if path.name in str(err) else "typed, file not named: " + str(err)
            except BaseException as err:
                outcome = f"{type(err).__name__}: {err}"
            results[f"{path.name} {call}"] = outcome
    print(json.dumps(results))
    """
)


def _claims(tmp_path: Path) -> list[Path]:
    files: dict[str, bytes] = {}
    small = _mrc_bytes(np.zeros((2, 4, 4), np.float32))

    def mrc(fields: dict[int, int]) -> bytes:
        out = bytearray(small)
        for offset, value in fields.items():
            out[offset : offset + 4] = struct.pack("<i", value)
        return bytes(out)

    files["mrc_tb.mrc"] = mrc({0: 2**30, 4: 2**30, 8: 2**30})[:1024]
    files["mrc_ext_2gb.mrc"] = mrc({92: 2**31 - 1})
    files["mrc_tb_body.mrc"] = mrc({0: 2**30, 4: 2**30, 8: 2**30})

    def tiff(name: str, code: int, value: int, **kwargs: object) -> None:
        path = tmp_path / name
        if name.endswith(".eer"):
            rng = np.random.default_rng(8)
            write_eer(path, [distinct_events(rng, 10, (16, 16)) for _ in range(2)], shape=(16, 16))
        else:
            tifffile.imwrite(path, np.ones((2, 16, 16), np.uint16), photometric="minisblack", **kwargs)
        with tifffile.TiffFile(path) as tif:
            big = tif.is_bigtiff
            where = [(page.tags[code].offset, page.tags[code].dtype) for page in tif.pages]
        data = bytearray(path.read_bytes())
        for at, kind in where:
            start, width = (at + 12, 8) if big else (at + 8, {3: 2, 4: 4}[kind])
            data[start : start + width] = value.to_bytes(width, "little")
        files[name] = bytes(data)

    for code in (256, 257):
        tiff(f"lzw_{code}.tif", code, 2**32 - 1 if code == 256 else 2**16 - 1, compression="lzw")
        tiff(f"raw_{code}.tif", code, 2**32 - 1)
        tiff(f"big_{code}.tif", code, 2**40, bigtiff=True, compression="zlib")
        tiff(f"eer_{code}.eer", code, 2**40)
    paths = []
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_headers_claiming_terabytes_are_refused_under_a_capped_address_space(tmp_path):
    paths = _claims(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, f"the reading process died ({child.returncode}): {child.stderr[-2000:]}"
    results = json.loads(child.stdout)
    assert len(results) >= 2 * len(paths)
    wrong = {call: outcome for call, outcome in results.items() if outcome != "typed"}
    assert not wrong, wrong
