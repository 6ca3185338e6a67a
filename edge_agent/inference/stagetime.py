"""CPU time per stage of the frame path, for benchmarks/bench_agent.py; free when off.

On only when the environment variable ``EDGE_AGENT_STAGE_TIMES`` names a file (read once,
at construction). Then each timed stage adds the calling thread's CPU time
(``time.thread_time``) and the owner writes a snapshot to that file every
``WRITE_EVERY_S``: per-stage CPU seconds and calls, per-thread CPU seconds (Linux
``/proc/self/task``: Python threads by name, FFmpeg's decoder threads as 'ffmpeg', the
rest 'native', i.e. OpenVINO's), the process's
CPU time and the caller's counters. The benchmark diffs two snapshots. Off, a timed
stage costs one attribute test.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

ENV = "EDGE_AGENT_STAGE_TIMES"
WRITE_EVERY_S = 0.25  # often enough to see most short-lived decoder threads


def thread_cpu() -> Dict[int, Tuple[str, float]]:
    """tid -> (name, CPU seconds): Python threads by name, then 'ffmpeg' and 'native'."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    out: Dict[int, Tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        name = names.get(int(tid)) or ("ffmpeg" if stat[stat.index("(") + 1:].startswith("av:")
                                        else "native")  # FFmpeg's decode workers: "av:..."
        out[int(tid)] = (name, cpu)
    return out


class StageTimes:
    """Accumulated CPU seconds and calls per stage name; thread-safe; off unless configured."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = os.environ.get(ENV, "") if path is None else path
        self.enabled = bool(self.path)
        self._lock = threading.Lock()
        self._cpu: Dict[str, float] = {}
        self._calls: Dict[str, int] = {}
        self._spans: Dict[str, List[float]] = {}  # wall seconds: [sum, count]
        self._next_write = 0.0
        self._seen: Dict[int, Tuple[str, float]] = {}  # threads that ended keep their CPU
        self._retired: Dict[str, float] = {}  # CPU of ended threads whose tid came back

    def threads(self) -> Dict[str, float]:
        """CPU seconds by thread name, ended threads included (as last seen: a thread that
        lived between two snapshots is missed and only shows in the process total)."""
        with self._lock:
            for tid, (name, cpu) in thread_cpu().items():
                old = self._seen.get(tid)
                if old is not None and (old[0] != name or old[1] > cpu):  # tid reused
                    self._retired[old[0]] = self._retired.get(old[0], 0.0) + old[1]
                self._seen[tid] = (name, cpu)
            out = dict(self._retired)
            for name, cpu in self._seen.values():
                out[name] = out.get(name, 0.0) + cpu
        return {k: round(v, 4) for k, v in out.items()}

    def start(self) -> float:
        return time.thread_time() if self.enabled else 0.0

    def stop(self, stage: str, t0: float) -> float:
        """Add the thread CPU since ``t0`` to ``stage``; returns now (the next stage's t0)."""
        if not self.enabled:
            return 0.0
        t1 = time.thread_time()
        with self._lock:
            self._cpu[stage] = self._cpu.get(stage, 0.0) + (t1 - t0)
            self._calls[stage] = self._calls.get(stage, 0) + 1
        return t1

    def span(self, name: str, seconds: float) -> None:
        """Add a wall-clock interval (where a frame's latency goes)."""
        if not self.enabled:
            return
        with self._lock:
            acc = self._spans.setdefault(name, [0.0, 0])
            acc[0] += seconds
            acc[1] += 1

    def snapshot(self, counters: Optional[Mapping[str, int]] = None) -> Dict[str, object]:
        with self._lock:
            stages = {k: {"cpu_s": round(v, 6), "calls": self._calls[k]}
                      for k, v in self._cpu.items()}
            spans = {k: {"wall_s": round(v[0], 6), "count": int(v[1])}
                     for k, v in self._spans.items()}
        times = os.times()
        return {"mono": time.monotonic(), "process_cpu_s": times.user + times.system,
                "stages": stages, "spans": spans, "threads": self.threads(),
                "counters": dict(counters or {})}

    def maybe_write(self, counters: Optional[Mapping[str, int]] = None,
                    force: bool = False) -> None:
        """Write a snapshot at most every WRITE_EVERY_S (always when ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self._next_write:
            return
        self._next_write = now + WRITE_EVERY_S
        tmp = Path(self.path + ".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot(counters)))
            os.replace(tmp, self.path)
        except OSError:
            self.enabled = False  # a benchmark aid: never let it disturb the agent
