"""CPU speed of a compiled precision: sync latency and async throughput (OpenVINO only)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def summary(times_s: Sequence[float], fps: float, **extra: Any) -> Dict[str, Any]:
    ms = sorted(t * 1000 for t in times_s)
    return {"latency_ms_mean": statistics.mean(ms), "latency_ms_p50": ms[len(ms) // 2],
            "latency_ms_p90": ms[min(len(ms) - 1, int(len(ms) * 0.9))], "fps": fps,
            "iterations": len(ms), **extra}


def measure(core: Any, model: Any, frames: List[np.ndarray], iterations: int = 30,
            warmup: int = 3, precision: Optional[str] = "f32", device: str = "CPU"
            ) -> Dict[str, Any]:
    """Sync latency (PERFORMANCE_HINT=LATENCY, one request) and async throughput
    (PERFORMANCE_HINT=THROUGHPUT, AsyncInferQueue of the plugin's optimal size)."""
    import openvino as ov

    from edge_agent.inference.ovcompat import precision_name, property_or

    extra = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    sync = core.compile_model(model, device, {"PERFORMANCE_HINT": "LATENCY", **extra})
    request = sync.create_infer_request()
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        request.infer({0: frames[i % len(frames)]})
        if i >= warmup:
            times.append(time.perf_counter() - start)
    used = precision_name(property_or(sync, "INFERENCE_PRECISION_HINT", precision or "auto"))
    del request, sync
    tput = core.compile_model(model, device, {"PERFORMANCE_HINT": "THROUGHPUT", **extra})
    nreq = int(tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(tput, nreq)
    for i in range(nreq):  # warm-up: one inference per request
        queue.start_async({0: frames[i % len(frames)]})
    queue.wait_all()
    count = max(iterations, 2 * nreq)
    start = time.perf_counter()
    for i in range(count):
        queue.start_async({0: frames[i % len(frames)]})
    queue.wait_all()
    fps = count / (time.perf_counter() - start)
    return summary(times, fps, inference_precision=used, async_requests=nreq, device=device)
