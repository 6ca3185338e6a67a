"""benchmarks/bench_agent.py's measure of the agent, on stats ticks shaped like the agent's
(no agent run here: the figures' arithmetic, which decides the goal's ratio)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_agent.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_agent_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tick(uptime, inferred, fps, received, count=100, captured=None):
    captured = inferred + 10 if captured is None else captured
    return {"uptime_s": uptime, "_received_mono": received, "latency_ms": {
                "count": count, "p50": 7.0, "p95": 9.0, "p99": 11.0},
            "fps": {"capture": fps, "inference": fps, "publish": fps},
            "frames": {"captured": captured, "inferred": inferred, "published": inferred,
                       "dropped": captured - inferred},
            "process": {"cpu_percent": 190.0, "rss_bytes": 2**28},
            "device": "CPU", "inference_precision": "bf16", "num_requests": 3}


def test_the_start_and_the_shutdown_ticks_are_not_the_agents_pace(bench):
    """An agent inferring 150 frames/s from its 3rd second on: the tick whose interval holds
    the start (66 fps: compiles, the first frames) and the one it sends as it stops (a
    partial interval) are not its pace. The old measure averaged them in: 129.9 fps."""
    stats = [tick(1.1, 0, 0.0, 1.0, count=0),
             tick(3.1, 132, 66.0, 3.0),
             *[tick(3.1 + 2 * i, 132 + 300 * i, 150.0, 3.0 + 2 * i) for i in range(1, 6)],
             tick(14.2, 1632 + 93, 93.0, 14.15)]  # after the SIGTERM at 14.1
    got = bench.summarise(stats, stopped_at=14.1, code=0)
    assert got["fps_inference"] == 150.0 and got["fps_publish"] == 150.0
    assert got["ticks"] == 5 and got["dropped_fraction"] == 0.0
    old = sum(t["fps"]["inference"] for t in stats if t["uptime_s"] > 3.0
              and t["latency_ms"]["count"]) / 7
    assert round(old, 1) == 129.9  # what the old mean of the ticks' rates printed


def test_too_short_a_run_is_refused_in_one_line(bench):
    with pytest.raises(SystemExit, match="too few stats ticks"):
        bench.summarise([tick(3.1, 100, 50.0, 3.0)], stopped_at=10.0, code=0)


def test_a_malformed_tick_is_not_counted(bench):
    """A stats message without the measured fields (or with the wrong types) is skipped,
    not a traceback."""
    good = [tick(3.1, 132, 66.0, 3.0), tick(5.1, 432, 150.0, 5.0)]
    bad = [{}, {"uptime_s": "x"}, tick(4.0, 0, 0.0, 4.0, count=None),
           {**tick(4.5, 0, 0.0, 4.5), "frames": None}, []]
    assert bench.summarise(good[:1] + bad + good[1:], stopped_at=9.0, code=0)[
        "fps_inference"] == 150.0
