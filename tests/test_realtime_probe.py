"""The realtime probe's verdicts (pure: the tests move the clock themselves)."""

from __future__ import annotations

import pytest

from worker.sources.realtime_probe import REASON_HEARTBEAT_LOST, Probe


def started(interval: float = 1.0, timeout: float = 4.0) -> Probe:
    probe = Probe(interval, timeout)
    probe.restart(0.0)
    return probe


def touch(probe: Probe, now: float, ok: bool = True) -> int:
    beat = probe.next_beat()
    probe.touched(beat, now, ok)
    return beat


def test_the_subscribe_gap_waits_for_the_first_echo() -> None:
    probe = started()
    probe.subscribed("subscribed", 0.0)
    first = touch(probe, 0.0)
    touch(probe, 0.5)  # retouched while pending: the first may fall in the window before the feed flows
    assert probe.echo(first + 1, 0.6).gap == "subscribed"  # the lost first touch is covered by this gap
    assert not probe.overdue(10.0)  # nothing pending any more


def test_resubscribes_do_not_restart_a_pending_probe() -> None:
    probe = started(timeout=4.0)
    probe.subscribed("subscribed", 0.0)
    touch(probe, 0.0)
    for second in (1.0, 2.0, 3.0):  # a client that rejoins every second after a channel error
        probe.subscribed("reconnected", second)
        touch(probe, second)
    assert probe.overdue(4.0)


def test_a_heartbeat_overtaken_by_a_later_one_is_a_loss() -> None:
    probe = started()
    probe.subscribed("subscribed", 0.0)
    assert probe.echo(touch(probe, 0.0), 0.1).gap == "subscribed"
    skipped = touch(probe, 1.0)
    later = touch(probe, 1.5)
    echo = probe.echo(later, 1.6)
    assert (echo.gap, echo.lost) == (REASON_HEARTBEAT_LOST, 1) and skipped < later
    assert probe.echo(touch(probe, 3.0), 3.1).gap is None  # in order again: nothing to say


def test_a_failed_touch_still_counts_as_a_probe_but_never_as_a_loss() -> None:
    probe = started(timeout=2.0)
    probe.subscribed("subscribed", 0.0)
    assert probe.echo(touch(probe, 0.0), 0.1).gap == "subscribed"
    touch(probe, 1.0, ok=False)  # the REST call failed: it may or may not have been committed
    assert probe.echo(touch(probe, 1.5), 1.6).gap is None
    touch(probe, 3.0, ok=False)
    assert probe.overdue(5.0)  # an unverifiable feed is treated as a dead one


def test_trouble_makes_a_probe_pending_at_once() -> None:
    probe = started(interval=5.0)
    probe.subscribed("subscribed", 0.0)
    assert probe.echo(touch(probe, 0.0), 0.1).gap == "subscribed"
    assert not probe.wants_touch(1.0)  # healthy: next touch after the interval
    probe.troubled(1.0)
    assert probe.wants_touch(1.0)


def test_nonsense_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Probe(0.0, 1.0)
