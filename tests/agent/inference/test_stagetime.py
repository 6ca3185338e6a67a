"""The benchmark's stage timers: off unless the environment names a file; on, a snapshot."""

import json
import threading

from edge_agent.inference.stagetime import ENV, StageTimes


def test_off_by_default_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    st = StageTimes()
    assert not st.enabled
    assert st.start() == 0.0 and st.stop("x", 0.0) == 0.0
    st.maybe_write({"inferred": 1}, force=True)
    assert st.snapshot()["stages"] == {}
    assert list(tmp_path.iterdir()) == []


def test_on_accumulates_per_stage_and_threads(tmp_path, monkeypatch):
    path = tmp_path / "stages.json"
    monkeypatch.setenv(ENV, str(path))
    st = StageTimes()
    assert st.enabled

    def work():
        t0 = st.start()
        sum(i * i for i in range(20000))
        st.stop("busy", t0)

    t = threading.Thread(target=work, name="worker")
    t.start()
    t.join()
    work()
    st.maybe_write({"inferred": 2}, force=True)
    snap = json.loads(path.read_text())
    assert snap["stages"]["busy"]["calls"] == 2
    assert snap["stages"]["busy"]["cpu_s"] > 0
    assert snap["counters"] == {"inferred": 2}
    assert "MainThread" in snap["threads"]
    assert snap["process_cpu_s"] >= snap["stages"]["busy"]["cpu_s"]
