"""LogThrottle: one line per interval per key, bounded keys (numbers in, booleans out)."""

from __future__ import annotations

from edge_agent.health.pacing import LogThrottle


def test_once_per_interval_per_key_and_the_first_time_always():
    now = [100.0]
    note = LogThrottle(60.0, clock=lambda: now[0])
    assert [note.allow("a"), note.allow("a"), note.allow("b"), note.allow()] == [
        True, False, True, True]
    now[0] += 59.9
    assert not note.allow("a") and not note.allow()
    now[0] += 0.1
    assert note.allow("a") and note.allow() and not note.allow("a")


def test_a_stranger_cycling_ids_costs_no_memory():
    note = LogThrottle(60.0, max_keys=8, clock=lambda: 0.0)
    said = sum(note.allow(f"id-{i}") for i in range(10_000))
    assert said == 10_000  # every new id is news once...
    assert len(note._last) <= 8  # ...but only the last few are remembered
