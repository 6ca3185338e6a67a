"""The canary gate's verdict on sample health files (no devices, fast): dicts in, verdicts out.

deploy/roles/segedge_agent/filter_plugins/segedge_canary.py judges a new release on a canary
from the health file's ``quality`` (per camera: state, uncertain_mean, margin_mean,
drift_score, frames, model_version) after the soak, against the previous release's figures
read from the same device just before the switch (docs/deploy.md, "Canary rollout").
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import require
from tests.rig.broker_config import _load

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "deploy/roles/segedge_agent"
gate = _load(ROLE / "filter_plugins/segedge_canary.py", "segedge_canary")
NEW = {"name": "tiny", "version": "0.0.7"}


def cam(state="ok", uncertain=0.08, margin=0.85, frames=240, version="0.0.7", score=0.02):
    return {"state": state, "uncertain_mean": uncertain, "margin_mean": margin,
            "drift_score": score, "frames": frames, "model_version": version}


def health(version="0.0.7", name="tiny", **cameras):
    out = {"state": "online", "pid": 4242, "model": {"name": name, "version": version},
           "mqtt": {"connected": True}, "masks_published": 9}
    if cameras:
        out["quality"] = cameras
    return out


BEFORE = health("0.0.6", **{"cam-01": cam(version="0.0.6", uncertain=0.08, margin=0.85)})


def verdict(after, before=BEFORE, cameras=("cam-01",), final=False, **options):
    return gate.segedge_canary_verdict(after, before, NEW, list(cameras), options, final)


def test_as_good_as_the_previous_release_passes_and_says_both():
    v = verdict(health(**{"cam-01": cam(uncertain=0.10, margin=0.82)}))
    assert v["decision"] == "pass", v
    assert "uncertain share 0.100 (was 0.080)" in v["summary"]
    assert "margin 0.820 (was 0.850 on tiny 0.0.6)" in v["summary"]


def test_drifting_is_refused_and_named():
    v = verdict(health(**{"cam-01": cam(state="drifting", score=0.41, uncertain=0.3)}))
    assert v["decision"] == "fail"
    assert "camera cam-01: drift state 'drifting' on tiny 0.0.7 (drift score 0.410" in v["summary"]


@pytest.mark.parametrize("figures, words", [
    (cam(uncertain=0.97, margin=0.02), "uncertain share 0.970 against 0.080"),
    (cam(uncertain=0.14, margin=0.85), "+0.060, more than the allowed +0.050"),
    (cam(uncertain=0.08, margin=0.70), "mean margin 0.700 against 0.850"),
])
def test_confidence_below_the_previous_release_is_refused(figures, words):
    v = verdict(health(**{"cam-01": figures}))
    assert v["decision"] == "fail", v
    assert "confidence below the previous release's on this device" in v["summary"]
    assert words in v["summary"] and "of tiny 0.0.6" in v["summary"], v["summary"]


def test_the_margins_are_options():
    after = health(**{"cam-01": cam(uncertain=0.14, margin=0.70)})
    assert verdict(after, max_uncertain_increase=0.1, max_margin_drop=0.2)["decision"] == "pass"


def test_warming_up_waits_then_fails_closed_or_passes_unjudged():
    after = health(**{"cam-01": cam(state="warming_up", uncertain=None, margin=None, frames=12)})
    assert verdict(after)["decision"] == "wait"
    closed = verdict(after, final=True)
    assert closed["decision"] == "fail", closed
    assert "still warming_up (12 frames)" in closed["summary"]
    assert "refused (fail closed)" in closed["summary"]
    opened = verdict(after, final=True, require_quality=False)
    assert opened["decision"] == "pass" and "not judged" in opened["summary"]


def test_drift_is_judged_even_without_a_previous_release():
    first = verdict(health(**{"cam-01": cam(state="no_reference")}), before=None)
    assert first["decision"] == "pass" and "drift state only" in first["summary"]
    assert verdict(health(**{"cam-01": cam(state="drifting")}), before=None)["decision"] == "fail"


@pytest.mark.parametrize("before, words", [
    (health("0.0.6"), "no figures of the previous release"),
    (health("0.0.6", **{"other": cam(version="0.0.6")}), "for this camera"),
    (health("0.0.6", **{"cam-01": cam(version="0.0.5")}), "another model version"),
    (health("0.0.6", **{"cam-01": cam(state="warming_up", version="0.0.6")}), "warming up"),
    (health("0.0.6", **{"cam-01": {"state": "ok", "uncertain_mean": "x", "frames": 3}}),
     "malformed"),
])
def test_without_a_settled_baseline_only_the_drift_state_counts(before, words):
    v = verdict(health(**{"cam-01": cam(uncertain=0.99, margin=0.0)}), before=before)
    assert v["decision"] == "pass" and words in v["summary"], v


def test_figures_of_the_old_model_or_no_figures_wait():
    stale = verdict(health(**{"cam-01": cam(version="0.0.6")}))
    assert stale["decision"] == "wait" and "not yet of tiny 0.0.7" in stale["summary"]
    assert verdict(health(**{"other": cam()}))["decision"] == "wait"
    assert verdict(health("0.0.6", **{"cam-01": cam()}))["decision"] == "wait"
    assert verdict(None)["decision"] == "wait"


def test_an_agent_without_quality_waits_unless_quality_is_not_required():
    bare = health()
    assert verdict(bare)["decision"] == "wait"
    final = verdict(bare, final=True)
    assert final["decision"] == "fail" and "carries no quality figures" in final["summary"]
    assert verdict(bare, require_quality=False)["decision"] == "pass"


@pytest.mark.parametrize("bad", [
    cam(uncertain=math.nan), cam(uncertain=1.5), cam(margin=-0.1), cam(uncertain=True),
    cam(frames=-1), cam(frames="12"), cam(state="fine"), "ok", None,
    {"state": "ok", "frames": 10},
])
def test_malformed_figures_are_refused(bad):
    v = verdict(health(**{"cam-01": bad}))
    assert v["decision"] == "fail" and "malformed quality figures" in v["summary"], v


def test_one_bad_camera_of_several_refuses_and_only_it_is_named():
    after = health(**{"front": cam(), "yard": cam(state="drifting")})
    v = verdict(after, cameras=["front", "yard"])
    assert v["decision"] == "fail" and "camera yard" in v["summary"]
    assert "camera front" not in v["summary"] and v["cameras"]["front"]["decision"] == "pass"
    waiting = verdict(health(**{"front": cam()}), cameras=["front", "yard"])
    assert waiting["decision"] == "wait" and "camera yard: no quality figures" in waiting["summary"]


def test_no_configured_camera_judges_what_the_health_file_reports():
    assert verdict(health(**{"pi-door": cam(state="drifting")}), cameras=[])["decision"] == "fail"
    empty = dict(health(), quality={})
    assert verdict(empty, cameras=[])["decision"] == "pass"


def test_health_from_print_never_raises():
    good = {"rc": 0, "stdout": json.dumps(health())}
    assert gate.segedge_health_from_print(good)["model"]["version"] == "0.0.7"
    for bad in (None, {}, {"rc": 2, "stdout": "usage: ..."}, {"rc": 0, "stdout": "null"},
                {"rc": 0, "stdout": "!!"}, {"rc": 0, "stdout": "[1]"},
                {"rc": 0, "stdout": "[" * 100000}, {"rc": 0, "stdout": None},
                {"failed": True, "msg": "no such file"}):
        assert gate.segedge_health_from_print(bad) is None, bad


def test_the_gates_reader_never_follows_a_link_the_agent_planted(tmp_path):
    """The agent's user writes the state folder: a health.json pointing at a root-only file
    (or /dev/zero, a FIFO) must not be read by the root-side reader the gate runs."""
    helper = ROLE / "files/libexec/segedge-healthcheck"
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"model": {"name": "x"}, "token": "s3cret"}))
    (tmp_path / "health.json").symlink_to(secret)
    out = subprocess.run([sys.executable, str(helper), "--print", "--health-file",
                          str(tmp_path / "health.json")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "null", out
    assert gate.segedge_health_from_print({"rc": 0, "stdout": out.stdout}) is None
    (tmp_path / "health.json").unlink()
    (tmp_path / "health.json").write_text(json.dumps(health()))
    out = subprocess.run([sys.executable, str(helper), "--print", "--health-file",
                          str(tmp_path / "health.json")], capture_output=True, text=True,
                         timeout=30)
    assert gate.segedge_health_from_print({"rc": 0, "stdout": out.stdout}) == health()


def test_refusals_name_failed_and_refusing_canaries():
    hostvars = {"a": {}, "b": {"segedge_agent__refused": True,
                               "segedge_agent__refusal": "camera x: drifting"}, "c": {}}
    out = gate.segedge_canary_refusals(["a", "b", "c"], hostvars, active=["b", "c"])
    assert out == [{"host": "a", "why": "failed before its gate (see its error above)"},
                   {"host": "b", "why": "camera x: drifting"}]
    assert gate.segedge_canary_refusals(["c"], hostvars, ["c"]) == []


def test_the_filters_work_inside_ansible(tmp_path):
    """The plugin loads in the real ansible-playbook (the role's filter_plugins), and a
    verdict computed there is the one computed here."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    require(playbook.exists(), "ansible-playbook (the deploy extra)")
    (tmp_path / "health.json").write_text(json.dumps(
        health(**{"cam-01": cam(uncertain=0.97, margin=0.02)})))
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [], "tasks": [
        {"ansible.builtin.command": {"argv": [
            sys.executable, str(ROLE / "files/libexec/segedge-healthcheck"), "--print",
            "--health-file", str(tmp_path / "health.json")]}, "register": "raw"},
        {"ansible.builtin.copy": {
            "dest": str(tmp_path / "verdict.json"), "mode": "0600",
            "content": "{{ raw | segedge_health_from_print | segedge_canary_verdict("
                       "before, release, ['cam-01'], {}, true) | to_json }}"}}],
        "vars": {"before": BEFORE, "release": NEW,
                 "ansible_python_interpreter": sys.executable}}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "filter_plugins").symlink_to(ROLE / "filter_plugins")
    proc = subprocess.run([str(playbook), "-i", "localhost,", "-c", "local", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1",
                                   ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inside = json.loads((tmp_path / "verdict.json").read_text())
    outside = verdict(health(**{"cam-01": cam(uncertain=0.97, margin=0.02)}), final=True)
    assert inside == outside and inside["decision"] == "fail"


def _canary_tasks(tmp_path: Path, after: dict, before: dict, pid_after_soak: int = 4242) -> dict:
    """tasks/canary.yml run by the real ansible-playbook on this machine: the health file and
    ``systemctl`` are stand-ins, the healthcheck is the role's own script. Returns the facts
    the gate left (refusal, verdict)."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    require(playbook.exists(), "ansible-playbook (the deploy extra)")
    state, prefix, venv, bin_dir = (tmp_path / d for d in ("state", "prefix", "venv", "bin"))
    for d in (state, prefix / "libexec", venv / "bin", bin_dir):
        d.mkdir(parents=True)
    (prefix / "libexec/segedge-healthcheck").write_text(
        (ROLE / "files/libexec/segedge-healthcheck").read_text())
    (venv / "bin/python").symlink_to(sys.executable)
    (state / "health.json").write_text(json.dumps(dict(after, pid=pid_after_soak)))
    (bin_dir / "systemctl").write_text(
        f"#!/bin/sh\nprintf 'ActiveState=active\\nSubState=running\\nMainPID={pid_after_soak}\\n"
        "NRestarts=0\\n'\n")
    (bin_dir / "systemctl").chmod(0o755)
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    facts = {
        # as text, the way -e hands them over
        "segedge_agent_canary": True, "segedge_agent_canary_soak_s": "0",
        "segedge_agent_canary_wait_max_s": "5", "segedge_agent_venv_dir": str(venv),
        "segedge_agent_prefix": str(prefix), "segedge_agent_state_dir": str(state),
        "segedge_agent_source_uri": "http://cam", "segedge_agent_device_id": "cam-01",
        "segedge_agent__manifest": NEW, "segedge_agent__release": "tiny-0.0.7",
        "segedge_agent__health": {"rc": 0, "stdout": json.dumps({"healthy": True, "pid": 4242})},
        "segedge_agent__health_before": {"rc": 0, "stdout": json.dumps(before)},
        "ansible_python_interpreter": sys.executable}
    report = {"ansible.builtin.copy": {
        "dest": str(tmp_path / "facts.json"), "mode": "0600",
        "content": "{{ {'refused': segedge_agent__refused | default(false), "
                   "'refusal': segedge_agent__refusal | default(''), "
                   "'verdict': segedge_agent__canary_verdict | default({})} | to_json }}"}}
    play = [{"hosts": "localhost", "gather_facts": False, "vars": dict(defaults, **facts),
             "tasks": [{"block": [{"ansible.builtin.import_tasks": str(ROLE / "tasks/canary.yml")}],
                        "rescue": [{"ansible.builtin.set_fact": {"segedge_agent__refused": True}}]},
                       report]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(playbook), "-i", "localhost,", "-c", "local", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1",
                                   PATH=f"{bin_dir}:{os.environ['PATH']}",
                                   ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins")))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return dict(json.loads((tmp_path / "facts.json").read_text()), out=proc.stdout)


def test_canary_tasks_refuse_a_poor_release_with_the_reason(tmp_path):
    poor = health(**{"cam-01": cam(uncertain=0.97, margin=0.02)})
    got = _canary_tasks(tmp_path, poor, BEFORE)
    assert got["refused"] is True and got["verdict"]["decision"] == "fail", got
    assert "confidence below the previous release's on this device" in got["refusal"]


def test_canary_tasks_pass_a_good_release(tmp_path):
    got = _canary_tasks(tmp_path, health(**{"cam-01": cam()}), BEFORE)
    assert got["refused"] is False and got["verdict"]["decision"] == "pass", got
    assert "passed the canary gate on localhost after a soak of 0 s" in got["out"]


def test_canary_tasks_refuse_an_agent_that_restarted_during_the_soak(tmp_path):
    got = _canary_tasks(tmp_path, health(**{"cam-01": cam()}), BEFORE, pid_after_soak=5151)
    assert got["refused"] is True and "restarted during the soak (pid 4242 -> 5151)" in \
        got["refusal"], got


def test_canary_tasks_fail_closed_on_a_camera_still_warming_up(tmp_path):
    warming = health(**{"cam-01": cam(state="warming_up", uncertain=None, margin=None, frames=3)})
    got = _canary_tasks(tmp_path, warming, BEFORE)
    assert got["refused"] is True and "refused (fail closed)" in got["refusal"], got


def test_one_canarys_refusal_fails_every_canary_with_the_reason(tmp_path):
    """tasks/health.yml on two canaries (local stand-ins, no previous release to restore):
    c1's poor figures refuse the release; c2, good, is failed too, naming c1 and why."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    require(playbook.exists(), "ansible-playbook (the deploy extra)")
    prefix, venv, bin_dir = tmp_path / "prefix", tmp_path / "venv", tmp_path / "bin"
    for d in (prefix / "libexec", venv / "bin", bin_dir):
        d.mkdir(parents=True)
    (prefix / "libexec/segedge-healthcheck").write_text(
        (ROLE / "files/libexec/segedge-healthcheck").read_text())
    (venv / "bin/python").symlink_to(sys.executable)
    (bin_dir / "systemctl").write_text("#!/bin/sh\nprintf 'ActiveState=active\\nSubState=running"
                                       "\\nMainPID=4242\\nNRestarts=0\\n'\n")
    (bin_dir / "systemctl").chmod(0o755)
    hosts = {}
    for host, figures in (("c1", cam(uncertain=0.97, margin=0.02)), ("c2", cam())):
        state = tmp_path / host
        state.mkdir()
        (state / "health.json").write_text(json.dumps(health(**{host: figures})))
        before = health("0.0.6", **{host: cam(version="0.0.6")})
        hosts[host] = {"segedge_agent_state_dir": str(state), "segedge_agent_device_id": host,
                       "segedge_agent__health_before": {"rc": 0,
                                                        "stdout": json.dumps(before)}}
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    facts = {
        "segedge_agent_canary": True, "segedge_agent_canary_soak_s": 0,
        "segedge_agent_canary_wait_max_s": 5, "segedge_agent_venv_dir": str(venv),
        "segedge_agent_prefix": str(prefix), "segedge_agent_source_uri": "http://cam",
        "segedge_agent__manifest": NEW, "segedge_agent__release": "tiny-0.0.7",
        "segedge_agent__release_dir": str(tmp_path / "nowhere"), "segedge_agent__previous": "",
        "segedge_agent__switch": {"changed": True}, "segedge_agent__config": {},
        "ansible_python_interpreter": sys.executable, "ansible_connection": "local"}
    defaults = {k: v for k, v in defaults.items()  # host vars below play vars: per host
                if k not in ("segedge_agent_state_dir", "segedge_agent_device_id")}
    play = [{"hosts": "c1,c2", "gather_facts": False, "vars": dict(defaults, **facts),
             "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks/health.yml")}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    proc = subprocess.run([str(playbook), "-i", "hosts.yml", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1",
                                   PATH=f"{bin_dir}:{os.environ['PATH']}",
                                   ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins")))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    fails = {h: " ".join(json.loads(body)["msg"].split())
             for h, body in re.findall(r"^fatal: \[(c\d)\]: FAILED! => (.*)$", out, re.M)}
    assert set(fails) == {"c1", "c2"}, out[-4000:]
    assert "release tiny-0.0.7 failed the canary gate on c1 after a soak of 0 s" in fails["c1"]
    assert "confidence below the previous release's on this device" in fails["c1"]
    assert "release tiny-0.0.7 refused on canary c2 too: the canary gate refused it on c1" in \
        fails["c2"] and "camera c1: confidence below" in fails["c2"], fails["c2"]
    assert "-- no previous release to roll back to." in fails["c2"], fails["c2"]


def test_a_hostile_health_file_cannot_flood_the_verdict():
    """The device writes the health file: thousands of cameras, huge ids or a huge model
    version give a refusal (or a wait) with a bounded text, never an exception."""
    release = {"name": "tiny", "version": "0.1.2"}
    many = {"model": {"name": "tiny", "version": "0.1.2"},
            "quality": {f"cam-{i}": {"state": "ok"} for i in range(5000)}}
    verdict = gate.segedge_canary_verdict(many, {}, release, [], {})
    assert verdict["decision"] == "fail" and "5000 cameras" in verdict["summary"]
    long_id = {"model": {"name": "tiny", "version": "0.1.2"},
               "quality": {"x" * 100000: {"state": "drifting", "uncertain_mean": 0.5,
                                          "margin_mean": 0.5, "frames": 100}}}
    verdict = gate.segedge_canary_verdict(long_id, {}, release, [], {})
    assert verdict["decision"] in ("fail", "wait")
    assert len(verdict["summary"]) <= gate.MAX_SUMMARY + 1
    odd = {"model": {"name": "n" * 100000, "version": ["x"] * 1000}, "quality": {}}
    verdict = gate.segedge_canary_verdict(odd, {}, release, [], {})
    assert verdict["decision"] == "wait" and len(verdict["summary"]) < 300
    mixed = {"model": {"name": "tiny", "version": "0.1.2"},
             "quality": {"a": {"state": "ok"}, "1": None, "b": "nonsense"}}
    assert gate.segedge_canary_verdict(mixed, {}, release, [], {})["decision"] in ("fail", "wait")
