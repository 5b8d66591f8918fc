"""Rules of the controller loop that need no cluster."""

from emlive.runtime.loop import CHUNK_S, MAX_CHUNK, ChunkFailure, chunk_size, export_due, process_chunk


def test_exports_are_rewritten_at_most_every_interval_and_never_take_most_of_the_loop():
    assert not export_due(4.9, interval_s=5.0, cost_s=0.1)
    assert export_due(5.0, interval_s=5.0, cost_s=0.1)
    # an export that took 2 s (a large session) waits ten times that: the loop keeps 90 % of its time
    assert not export_due(19.9, interval_s=5.0, cost_s=2.0)
    assert export_due(20.0, interval_s=5.0, cost_s=2.0)
    assert export_due(0.0, interval_s=0.0, cost_s=0.0)  # export_interval_s = 0: after every change


def test_only_short_exposures_are_chunked_and_a_chunk_lasts_about_its_target():
    assert chunk_size(None) == 1  # not known yet
    assert chunk_size(CHUNK_S) == 1 and chunk_size(CHUNK_S / 2) == 1  # long enough alone
    assert chunk_size(0.05) == 4  # 4 x 50 ms ~ CHUNK_S
    assert chunk_size(1e-6) == MAX_CHUNK


def _flaky(spec: str, params: object) -> str:
    if spec == "bad":
        raise ValueError("bad.mrc: truncated")
    if spec == "lost":
        raise OSError("disk full")
    return spec.upper()


def test_one_exposure_failing_in_a_chunk_keeps_the_others_results():
    outcomes = process_chunk(_flaky, ["a", "bad", "lost", "b"], None)  # type: ignore[arg-type]
    assert outcomes[0] == "A" and outcomes[3] == "B"
    assert outcomes[1] == ChunkFailure("bad.mrc: truncated", permanent=True)  # bad input: not retried
    assert outcomes[2] == ChunkFailure("OSError: disk full", permanent=False)  # retried
