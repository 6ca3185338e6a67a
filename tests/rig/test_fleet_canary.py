"""The canary rollout on the booted fleet (issue 20, item 6; docs/deploy.md "Canary rollout").

The fleet first runs a known baseline (tiny 0.1.0, sure of every pixel of the camera
stand-in) deployed without a canary phase. Then, with the playbook's defaults (the first
host of the run, dev-cpu, is the canary):

1. tiny 0.1.1, a valid and verified bundle that makes the same decisions with top-class
   probabilities near 0.5 (poor in the field), is refused by the canary gate on its field
   quality after the soak, rolled back on dev-cpu, and no other device ever runs it;
2. tiny 0.1.2, as sure as the baseline, passes the gate and reaches every device.

Needs an agent that writes the health file's ``quality`` (issue 20, items 1-3). Runs after
test_fleet.py and test_fleet_cameras.py on the same session fleet, and leaves it on tiny
0.1.2 (registered in ``fleet.bundles`` for the tests after it).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.rig.rig import wait_for

pytestmark = [pytest.mark.rig, pytest.mark.timeout(1500)]
AGENTS = ("dev-cpu", "dev-gpu", "dev-npu", "dev-myriad")
CANARY = "dev-cpu"
SETTLED = ("ok", "no_reference")


def _health(dev) -> dict:
    out = dev.run("cat /var/lib/segedge/health.json").stdout
    return json.loads(out) if out.strip() else {}


def _flat(out: str) -> str:
    """The playbook's output on one line: the yaml callback wraps long messages and doubles
    the apostrophes of single-quoted ones."""
    return " ".join(out.split()).replace("''", "'")


def _current(dev) -> str:
    return dev.run("readlink /opt/segedge/models/current").stdout.strip().rsplit("/", 1)[-1]


def _settled(fleet, version: str, timeout: float = 240) -> dict:
    """Wait until the canary's agent reports settled quality figures of ``version`` for its
    camera (the baseline the gate records before the switch); return them."""
    dev = fleet.devices[CANARY]

    def figures():
        health = _health(dev)
        if "quality" not in health:
            return None
        entry = health["quality"].get(CANARY) or {}
        ok = entry.get("state") in SETTLED and entry.get("model_version") == version
        return entry if ok else None

    try:
        wait_for(lambda: "quality" in _health(dev), 60, 2, "a health file with 'quality'")
    except TimeoutError:
        pytest.fail(f"the agent on {CANARY} writes no 'quality' into its health file: the "
                    "canary rig tests need the agent's field quality (issue 20, items 1-3; "
                    f"branch i20-quality). Health file: {_health(dev)}", pytrace=False)
    try:
        return wait_for(figures, timeout, 2, f"{CANARY}'s settled quality figures of {version}")
    except TimeoutError as exc:
        pytest.fail(f"{exc}\nhealth file: {_health(dev)}\n{dev.journal()}", pytrace=False)


@pytest.fixture(scope="module")
def canary_fleet(fleet):
    from tests.helpers.tiny_bundle import add_myriad_target, make_tiny_bundle

    root = fleet.rig.rundir.parent / "bundles-canary"
    bundles = {
        "baseline": add_myriad_target(make_tiny_bundle(root, version="0.1.0")),
        "poor": add_myriad_target(make_tiny_bundle(root, version="0.1.1", scale=1e-4),
                                  scale=1e-4),
        "good": add_myriad_target(make_tiny_bundle(root, version="0.1.2")),
    }
    for key, path in bundles.items():
        fleet.bundles[f"canary-{key}"] = path
    t0 = time.monotonic()
    rc, out, rec = fleet.playbook("-e", f"segedge_agent_bundle_dir={bundles['baseline']}",
                                  "-e", "segedge_canary_count=0")
    assert rc == 0, out[-6000:]
    assert "passed the canary gate" not in out, out[-3000:]
    for name in AGENTS:
        assert _current(fleet.devices[name]) == "tiny-0.1.0", name
    fleet.canary_timings = {"baseline_s": time.monotonic() - t0}
    yield fleet, bundles
    # leave the fleet on the session's own release: later modules (test_security's password
    # rotation) run the playbook with the inventory's bundle and expect the devices on it
    rc, out, _ = fleet.playbook("-e", "segedge_canary_count=0")
    assert rc == 0, out[-6000:]


def test_a_release_poor_in_the_field_is_rolled_back_on_the_canary_alone(canary_fleet):
    fleet, bundles = canary_fleet
    t0 = time.monotonic()
    baseline = _settled(fleet, "0.1.0")
    fleet.canary_timings["settle_s"] = time.monotonic() - t0
    pids = {name: fleet.devices[name].unit("MainPID")["MainPID"] for name in AGENTS}
    t1 = time.monotonic()
    rc, out, rec = fleet.playbook("-e", f"segedge_agent_bundle_dir={bundles['poor']}")
    fleet.canary_timings["refused_rollout_s"] = time.monotonic() - t1
    dev = fleet.devices[CANARY]
    assert rc != 0 and rec[CANARY]["failed"] == 1, out[-6000:]
    out = _flat(out)
    # the reason names field quality, against the previous release on this device
    assert "release tiny-0.1.1 failed the canary gate on dev-cpu after a soak of" in out, \
        out[-6000:]
    assert "confidence below the previous release's on this device" in out, out[-6000:]
    assert "of tiny 0.1.0" in out and "rolled back to tiny-0.1.0 (healthy again)" in out, \
        out[-6000:]
    # the canary ran it, and is back on the previous release
    assert "model tiny 0.1.1 " in dev.journal(lines=400), dev.journal()
    assert _current(dev) == "tiny-0.1.0"
    assert dev.run("test -e /opt/segedge/models/releases/tiny-0.1.1").returncode != 0
    health = wait_for(lambda: (h := _health(dev)).get("model", {}).get("version") == "0.1.0"
                      and h.get("state") == "online" and h, 60, 1, "dev-cpu online on 0.1.0")
    assert health["model"]["name"] == "tiny", health
    # the others were never touched: not in the play, same process, never shipped or run
    for name in AGENTS[1:]:
        other = fleet.devices[name]
        assert name not in rec, f"{name} was part of the refused rollout: {rec}"
        assert _current(other) == "tiny-0.1.0", name
        assert other.run("test -e /opt/segedge/models/releases/tiny-0.1.1").returncode != 0
        assert other.unit("MainPID")["MainPID"] == pids[name], f"{name} restarted"
        assert "tiny 0.1.1" not in other.journal(lines=2000), other.journal()
        assert _health(other)["model"]["version"] == "0.1.0"
    fleet.canary_baseline = baseline


def test_a_good_release_passes_the_canary_and_reaches_every_device(canary_fleet):
    fleet, bundles = canary_fleet
    _settled(fleet, "0.1.0")  # the rollback restarted dev-cpu's agent: a fresh window
    t0 = time.monotonic()
    rc, out, rec = fleet.playbook("-e", f"segedge_agent_bundle_dir={bundles['good']}")
    fleet.canary_timings["good_rollout_s"] = time.monotonic() - t0
    assert rc == 0, out[-6000:]
    out = _flat(out)
    assert "release tiny-0.1.2 passed the canary gate on dev-cpu" in out, out[-6000:]
    assert f"camera {CANARY}: " in out and "(was " in out, out[-6000:]  # compared with 0.1.0
    for name in AGENTS:
        dev = fleet.devices[name]
        assert rec[name]["failed"] == 0, (name, rec)
        assert _current(dev) == "tiny-0.1.2", name
        health = _health(dev)
        assert health["model"]["version"] == "0.1.2", (name, health)
        assert "model tiny 0.1.2 " in dev.journal(lines=400), dev.journal()
    # the canary alone was judged
    assert [n for n in AGENTS if f"passed the canary gate on {n}" in out] == [CANARY], out[-6000:]
    (fleet.rig.rundir.parent / "canary-timings.json").write_text(
        json.dumps(fleet.canary_timings, indent=1))
