"""emlive: near-real-time cryo-EM preprocessing.

From Python: ``emlive.run(inputs, out=..., acquisition=...)`` processes movies as
``emlive process`` does and returns the accepted micrographs as a pandas DataFrame;
``emlive.open_session(out)`` gives a processed session's results as DataFrames (docs/python.md).
Both are imported on first use, so ``import emlive`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("emlive")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from emlive.scripting import open_session, run

__all__ = ["__version__", "open_session", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "open_session"):
        from emlive import scripting

        return getattr(scripting, name)
    raise AttributeError(f"module 'emlive' has no attribute {name!r}")
