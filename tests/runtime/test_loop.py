"""Rules of the controller loop that need no cluster."""

from emlive.runtime.loop import export_due


def test_exports_are_rewritten_at_most_every_interval_and_never_take_most_of_the_loop():
    assert not export_due(4.9, interval_s=5.0, cost_s=0.1)
    assert export_due(5.0, interval_s=5.0, cost_s=0.1)
    # an export that took 2 s (a large session) waits ten times that: the loop keeps 90 % of its time
    assert not export_due(19.9, interval_s=5.0, cost_s=2.0)
    assert export_due(20.0, interval_s=5.0, cost_s=2.0)
    assert export_due(0.0, interval_s=0.0, cost_s=0.0)  # export_interval_s = 0: after every change
