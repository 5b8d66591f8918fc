"""STAR files (RELION's tables) written atomically via ``starfile``."""

from __future__ import annotations

import os

import pandas as pd
import starfile

from emlive.io.atomic import atomic_path

__all__ = ["write_star_atomic"]


def write_star_atomic(
    path: str | os.PathLike[str],
    blocks: dict[str, pd.DataFrame | dict[str, object]],
    *,
    float_format: str = "%.6f",
) -> None:
    """Write data blocks ``{name: table}`` to ``path`` atomically.

    Each key becomes ``data_<name>``; a table becomes a loop, a plain dict a key–value block
    (as RELION writes ``data_general``). Column names are written as given
    (RELION's ``rlnMicrographName`` etc., without the leading underscore).
    """
    if not blocks:
        raise ValueError(f"{path}: no data blocks to write")
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=float_format, overwrite=True)
