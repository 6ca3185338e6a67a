"""performance_hint = auto: the policy (times in, a mode out) and the engine that follows it."""

import numpy as np
import pytest

from edge_agent.inference.hint import LATENCY, THROUGHPUT, HintPolicy
from tests.helpers.tiny_bundle import make_tiny_bundle, started_engine


def _feed(policy: HintPolicy, fps: float, seconds: float, start: float = 0.0,
          cameras: int = 1) -> float:
    """Submit frames at ``fps`` in all for ``seconds``, from ``cameras`` cameras in turn;
    the time after the last one."""
    t = start
    for i in range(int(fps * seconds)):
        policy.submitted(t, f"cam{i % cameras}")
        t += 1.0 / fps
    return t


def test_a_30fps_camera_stays_on_the_latency_hint():
    policy = HintPolicy(service_s=0.006)  # 30 fps x 6 ms: 0.18 of its capacity
    _feed(policy, 30, 600)
    assert policy.mode == LATENCY and policy.switches == 0


def test_frames_faster_than_the_latency_mode_switch_to_throughput_and_back():
    policy = HintPolicy(service_s=0.006)  # latency mode: ~166 fps at most
    t = _feed(policy, 160, 1.9)  # 0.96 of it, but the first choice holds 2 s
    assert policy.mode == LATENCY
    t = _feed(policy, 160, 0.5, t)
    assert policy.mode == THROUGHPUT and policy.switches == 1
    t = _feed(policy, 160, 10, t)
    assert policy.switches == 1  # no flapping under a steady load
    t = _feed(policy, 30, 1.5, t)  # the load falls: the window empties of the fast frames
    t = _feed(policy, 30, 3, t)
    assert policy.mode == LATENCY and policy.switches == 2


@pytest.mark.parametrize("start", [LATENCY, THROUGHPUT])
@pytest.mark.parametrize("cameras, fps", [(1, 125), (4, 70)])
def test_a_load_between_the_thresholds_keeps_the_current_mode(start, cameras, fps):
    policy = HintPolicy(service_s=0.006, mode=start)
    _feed(policy, fps, 30, cameras=cameras)  # one: 0.75 (0.6-0.9); four: 0.42 (0.3-0.5)
    assert policy.mode == start and policy.switches == 0


def test_one_camera_keeps_the_latency_hint_until_it_is_nearly_full():
    """The origin's model (22 ms under the latency hint) at one 30 fps camera loads the
    latency mode 0.66 (up to 0.76 as the in-agent time moves): each frame is done before
    the next comes, and the latency hint publishes it in 20 ms, not the 40 ms of one
    throughput stream. At 0.5 for any number of cameras, as before, it ran on throughput."""
    policy = HintPolicy(service_s=0.022)
    t = _feed(policy, 30, 30)
    for _ in range(50):
        policy.finished(LATENCY, 0.026)  # a busier stretch: 0.78
    _feed(policy, 30, 30, t)
    assert policy.mode == LATENCY and policy.switches == 0


def test_several_cameras_at_that_load_switch_to_throughput():
    """Frames of several cameras collide: they need the streams from 0.5 already."""
    policy = HintPolicy(service_s=0.022)
    _feed(policy, 30, 60, cameras=2)  # two 15 fps cameras: the same 0.66
    assert policy.mode == THROUGHPUT and policy.switches == 1
    assert policy.sources() == 2


def test_latency_requests_keep_the_service_time_current():
    policy = HintPolicy(service_s=0.005)
    for _ in range(100):
        policy.finished(LATENCY, 0.010)  # the device got slower (or busier)
        policy.finished(THROUGHPUT, 0.100)  # one core's time: not the latency mode's
    assert policy.service_s == pytest.approx(0.010, rel=1e-3)
    policy.finished(LATENCY, -1.0)  # a clock that went back: ignored
    assert policy.service_s == pytest.approx(0.010, rel=1e-3)


def test_more_frames_than_the_window_holds_still_read_as_overload():
    policy = HintPolicy(service_s=0.0002)  # a tiny model: 5000 fps under latency
    _feed(policy, 20000, 3)  # 4x that: more submissions than the bounded window keeps
    assert len(policy._submits) == policy.window_max
    assert policy.utilisation(3.0) > 3.0
    assert policy.mode == THROUGHPUT


def _engine(bundle, hint: str, got):
    return started_engine(bundle, got, decide=True, hint=hint)


def test_auto_compiles_both_hints_on_cpu_and_follows_the_policy(tmp_path):
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    got = {}
    engine = _engine(bundle, "auto", got)
    assert engine.hints == (THROUGHPUT, LATENCY)
    assert {k[-1] for k in engine._variants} == {THROUGHPUT, LATENCY}
    assert engine.policy is not None and 0 < engine.policy.service_s < 1.0
    # one request more than the CPU's streams under throughput; the optimum under latency
    assert engine._requests[THROUGHPUT] == engine._requests[LATENCY] + 1 \
        or engine._requests[THROUGHPUT] > engine._requests[LATENCY]
    assert engine.performance_hint == LATENCY
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    engine.policy.dwell_s = engine.policy.window_s = 0.0
    engine.policy.to_throughput = engine.policy.one_source_to_throughput = -1.0  # throughput
    for i in range(5):
        engine.submit(frame, i)
    assert engine.performance_hint == THROUGHPUT
    for name in ("to_throughput", "to_latency", "one_source_to_throughput",
                 "one_source_to_latency"):
        setattr(engine.policy, name, np.inf)  # any load: latency
    for i in range(5, 10):
        engine.submit(frame, i)
    engine.drain()
    assert engine.performance_hint == LATENCY and engine.policy.switches == 2
    assert sorted(got) == list(range(10))  # every frame's own userdata back, both queues
    assert all(out.shape[-2:] == (64, 64) for out in got.values())


@pytest.mark.parametrize("hint", [THROUGHPUT, LATENCY])
def test_a_fixed_hint_compiles_once(tmp_path, hint):
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    got = {}
    engine = _engine(bundle, hint, got)
    assert engine.hints == (hint,) and engine.policy is None
    assert {k[-1] for k in engine._variants} == {hint}
    engine.submit(np.zeros((1, 64, 64, 3), np.uint8), 7)
    engine.drain()
    assert engine.performance_hint == hint and list(got) == [7]


def test_a_hung_latency_request_does_not_pin_the_policy_to_throughput():
    """A latency request that took 60 s (a stalled device) counted in full made the
    estimate 6 s: any frame rate then read as overload, and in throughput mode no latency
    request comes to bring it back. One request among many does not move the median."""
    policy = HintPolicy(service_s=0.006)
    t = _feed(policy, 30, 3)
    for _ in range(30):
        policy.finished(LATENCY, 0.006)
    policy.finished(LATENCY, 60.0)
    policy.finished(LATENCY, float("nan"))
    policy.finished(LATENCY, float("inf"))
    assert policy.service_s == pytest.approx(0.006)
    _feed(policy, 30, 10, t)
    assert policy.mode == LATENCY


def test_a_slow_first_second_does_not_send_one_camera_to_throughput():
    """The origin's model at one 30 fps camera (20 ms: 0.6 of the latency mode) whose
    requests take twice that in the agent's first 1.5 s (the start's own work on the
    cores): a running mean read 1.2 at the first decision and went to throughput, where
    nothing corrects it (p50 39 ms instead of 20 in one probe of three)."""
    policy = HintPolicy(service_s=0.020)
    t = 0.0
    for _ in range(30 * 20):
        policy.submitted(t, "cam0")
        policy.finished(LATENCY, 0.040 if t < 1.5 else 0.020, t + 0.030)
        t += 1 / 30
    assert policy.mode == LATENCY and policy.switches == 0
    assert policy.service_s == pytest.approx(0.020)


def test_frames_of_endless_new_cameras_keep_the_policy_bounded():
    """Frames-in senders are cameras too: a new id for every frame (a sender cycling its
    names) keeps at most ``window_max`` submissions and their sources, and counts as
    several cameras (the sooner switch), not one."""
    policy = HintPolicy(service_s=0.006, window_max=256)
    t = 0.0
    for i in range(20000):
        policy.submitted(t, f"sender-{i}")
        t += 0.001
    assert len(policy._submits) <= 256 and policy.sources() <= 256
    assert policy.mode == THROUGHPUT
