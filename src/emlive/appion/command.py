"""Start-up and error handling shared by the drop-in commands (logging is configured here)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import pymysql

from emlive.appion.loop import RunLocked
from emlive.config import ConfigError

EXIT_FAILED_IMAGES = 1
EXIT_BAD_SETUP = 2
EXIT_LOCKED = 3


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import distributed  # noqa: F401  (it sets its loggers' levels on import; ours win after)

    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit code; setup problems are one clear line on stderr, not a traceback."""
    try:
        return body()
    except RunLocked as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except (ValueError, ConfigError, pymysql.Error) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_SETUP
