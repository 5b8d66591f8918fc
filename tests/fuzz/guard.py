"""The fuzz property, checked around one call: it returns, or raises the typed error with a
message, within a time limit and without a large allocation.

- **Typed error**: the exception must be an instance of the classes the entry point documents
  (``MovieFormatError``, ``GainError``, ``ValueError`` for the tools' parsers); anything else
  (``ZeroDivisionError``, ``struct.error``, ``MemoryError``, a warning turned error …) fails the
  example, with the traceback chained. Its message must not be empty and, for a file, must name
  the file.
- **Time**: the call may use :data:`TIME_LIMIT_S` of CPU time (all threads; a busy CI machine
  slows the wall clock, not this), checked when it returns; and it runs under ``SIGALRM`` at
  :data:`WALL_LIMIT_S` of wall time, so Python code that loops or waits is interrupted with
  :class:`Hang`. (pytest-timeout stays the last resort for a C call that never returns.)
- **Memory**: the call runs with its address space capped (``RLIMIT_AS``: what the process
  maps now plus :data:`ADDRESS_SPACE_HEADROOM`), so an allocation of gigabytes fails at once
  with ``MemoryError`` (which fails the example) instead of swapping or waking the OOM killer;
  and ``tracemalloc`` traces every Python and NumPy allocation (NumPy reports its data
  buffers to it), so the peak during the call is exact for what the readers allocate; a header
  claiming terabytes shows up as a huge peak, or as a ``MemoryError`` when the allocation fails,
  and both fail the example. Allocations inside C libraries that bypass Python's allocators are
  not seen; ``test_claims.py`` runs the "claims terabytes" files under ``RLIMIT_AS`` in a
  subprocess for those.
"""

from __future__ import annotations

import os
import resource
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")

TIME_LIMIT_S = 2.0
"""CPU seconds per call. The inputs are a few kB: anything slower is a loop or a blow-up."""

WALL_LIMIT_S = 10.0
"""Wall seconds per call before it is interrupted."""

MEMORY_LIMIT_BYTES = 64 * 2**20
"""Peak traced allocation per call: the valid inputs decode to well under 1 MB."""

ADDRESS_SPACE_HEADROOM = 1 << 30
"""Room for the call's own mappings (thread stacks, malloc arenas, the file mapped)."""

_SCALE = max(1, int(os.environ.get("EMLIVE_FUZZ_SCALE", "1")))


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible runs for CI: a fixed derandomized sequence, no example database.

    ``EMLIVE_FUZZ_SCALE=N`` multiplies the number of examples (a longer local hunt).
    """
    return settings(
        max_examples=max_examples * _SCALE,
        deadline=None,  # the per-call time limit below is the property; this is wall time of all calls
        derandomize=_SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


class Hang(Exception):
    """Raised in the main thread when a call runs past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # the one real-time timer is shared with pytest-timeout's alarm: put its remainder back after
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:
            remaining = max(outer_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, outer_interval)


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def address_space_limit(headroom: int = ADDRESS_SPACE_HEADROOM) -> Iterator[None]:
    """Cap the address space at what is mapped now plus ``headroom`` (Linux; no-op elsewhere)."""
    mapped = _mapped_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if mapped is None:
        yield
        return
    limit = mapped + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_call(
    call: Callable[[], T],
    *,
    allowed: tuple[type[BaseException], ...],
    path: Path | None = None,
    seconds: float = TIME_LIMIT_S,
    wall_seconds: float = WALL_LIMIT_S,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> T | BaseException:
    """Run ``call`` under the property; return its value or the allowed exception it raised.

    Raises ``AssertionError`` (the example fails, the real exception chained) otherwise.
    """
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start(1)
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    start = time.process_time()
    outcome: T | BaseException
    try:
        with address_space_limit(), time_limit(wall_seconds):
            outcome = call()
    except allowed as err:
        outcome = err
    except Hang as err:
        raise AssertionError(f"the call hung: {err}") from err
    except BaseException as err:  # noqa: BLE001 - the property: nothing else may escape
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise AssertionError(
            f"{type(err).__name__} escaped (only {', '.join(e.__name__ for e in allowed)} may): {err}"
        ) from err
    finally:
        elapsed = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
        if started_tracing:
            tracemalloc.stop()
    assert elapsed < seconds, f"the call took {elapsed:.2f} s of CPU time (limit {seconds} s)"
    assert peak - base < max_bytes, f"the call allocated {(peak - base) / 2**20:.0f} MiB at its peak"
    if isinstance(outcome, BaseException):
        message = str(outcome)
        assert message.strip(), f"{type(outcome).__name__} without a message"
        if path is not None:
            assert path.name in message, f"the message does not name the file {path.name}: {message}"
    return outcome
