"""The canary gate's verdict: is a new release's field quality good enough to go on?

Pure functions on the agent's health file (dicts in, a verdict out), run on the controller
by tasks/canary.yml and unit-tested in tests/rig/test_canary_gate.py. The health file's
``quality`` key (docs/notes of issue 20, the agent's side):

    "quality": {<camera_id>: {"state": "warming_up"|"ok"|"drifting"|"no_reference",
                              "uncertain_mean": float, "margin_mean": float,
                              "drift_score": float|null, "frames": int,
                              "model_version": str}}

A camera missing from it has no figures yet. ``before`` is the health file read just before
the switch (the previous release's figures on this device), ``after`` the one read after the
soak. Per camera the new release is refused when

* its drift state is ``drifting``, or
* its confidence is below the previous release's on the same camera: the share of
  uncertain pixels rose by more than ``max_uncertain_increase`` or the mean margin fell by
  more than ``max_margin_drop`` (both absolute, figures in [0, 1]);

it waits while the camera is ``warming_up``, has no figures, or shows figures of another
model version; once the wait is over (``final``) waiting is a refusal when
``require_quality`` (fail closed: too few frames to judge is not a pass), else a pass that
says it was not judged. Malformed figures (not numbers in [0, 1], NaN) are refused.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

PASS, WAIT, FAIL = "pass", "wait", "fail"
STATES = ("warming_up", "ok", "drifting", "no_reference")
DEFAULTS = {"max_uncertain_increase": 0.05, "max_margin_drop": 0.05, "require_quality": True}
# The health file is written by the device (the least trusted side of the gate): it may
# name at most this many cameras, and the verdict's text is cut to this length, so a
# device cannot flood the controller's output or memory through its figures.
MAX_CAMERAS = 256
MAX_SUMMARY = 2000


def _clip(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def segedge_health_from_print(result: Any) -> Optional[Dict[str, Any]]:
    """The health file's dict from ``segedge-healthcheck --print`` (a command result: it read
    the file bounded and without following a link, as root, on the device); None when the
    command failed or printed anything but a JSON object (never raises)."""
    if not isinstance(result, Mapping) or result.get("rc") not in (0, None) \
            or not isinstance(result.get("stdout"), str):
        return None
    try:
        data = json.loads(result["stdout"])
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _model(health: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    model = health.get("model") if isinstance(health, Mapping) else None
    return dict(model) if isinstance(model, Mapping) else {}


def _quality(health: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    quality = health.get("quality") if isinstance(health, Mapping) else None
    return quality if isinstance(quality, Mapping) else None


def _share(value: Any) -> Optional[float]:
    """A figure in [0, 1] as a float; None when it is not one (bool, NaN, out of range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _figures(entry: Any) -> Optional[Dict[str, Any]]:
    """One camera's entry, checked; None when malformed."""
    if not isinstance(entry, Mapping) or entry.get("state") not in STATES:
        return None
    uncertain, margin = _share(entry.get("uncertain_mean")), _share(entry.get("margin_mean"))
    frames = entry.get("frames")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
        return None
    settled = entry["state"] != "warming_up"
    if settled and (uncertain is None or margin is None):
        return None  # a settled window always has its figures
    score = entry.get("drift_score")
    score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) \
        and math.isfinite(float(score)) else None
    return {"state": entry["state"], "uncertain_mean": uncertain, "margin_mean": margin,
            "frames": frames, "drift_score": score,
            "model_version": str(entry.get("model_version", ""))}


def _flag(value: Any) -> bool:
    """A boolean option that may arrive templated as text ("False")."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _baseline(before: Optional[Mapping[str, Any]], camera: str):
    """(figures, why-not) of the previous release on ``camera``: figures only when they are
    that release's and settled."""
    quality = _quality(before)
    if quality is None:
        return None, "no figures of the previous release"
    if camera not in quality:
        return None, "no figures of the previous release for this camera"
    figures = _figures(quality[camera])
    version = str(_model(before).get("version", ""))
    if figures is None:
        return None, "the previous release's figures are malformed"
    if figures["model_version"] != version:
        return None, "the previous release's figures are of another model version"
    if figures["state"] == "warming_up":
        return None, "the previous release was still warming up"
    return figures, None


def _judge_camera(camera: str, after: Mapping[str, Any], before: Optional[Mapping[str, Any]],
                  release: Mapping[str, Any], opts: Mapping[str, Any]) -> Dict[str, Any]:
    quality = _quality(after) or {}
    new_name = f"{release.get('name')} {release.get('version')}"
    old = _model(before)
    old_name = f"{old.get('name')} {old.get('version')}"
    if camera not in quality:
        return {"decision": WAIT, "why": f"camera {camera}: no quality figures yet"}
    figures = _figures(quality[camera])
    if figures is None:
        return {"decision": FAIL, "why": f"camera {camera}: malformed quality figures "
                                         f"{json.dumps(quality[camera], sort_keys=True)[:200]}"}
    base = {"new": figures}
    if figures["model_version"] != str(release.get("version")):
        return dict(base, decision=WAIT, why=(
            f"camera {camera}: figures are of model version {figures['model_version']!r}, "
            f"not yet of {new_name}"))
    if figures["state"] == "drifting":
        return dict(base, decision=FAIL, why=(
            f"camera {camera}: drift state 'drifting' on {new_name} (drift score "
            f"{_fmt(figures['drift_score'])}, uncertain share {_fmt(figures['uncertain_mean'])}, "
            f"{figures['frames']} frames)"))
    if figures["state"] == "warming_up":
        return dict(base, decision=WAIT, why=(
            f"camera {camera}: still warming_up ({figures['frames']} frames): too few frames "
            f"to judge {new_name}"))
    previous, missing = _baseline(before, camera)
    base["old"] = previous
    if previous is None:
        return dict(base, decision=PASS, why=(
            f"camera {camera}: {figures['state']}, uncertain share "
            f"{_fmt(figures['uncertain_mean'])}, margin {_fmt(figures['margin_mean'])} "
            f"({missing}: drift state only)"))
    rise = figures["uncertain_mean"] - previous["uncertain_mean"]
    drop = previous["margin_mean"] - figures["margin_mean"]
    worse = []
    if rise > float(opts["max_uncertain_increase"]):
        worse.append(f"uncertain share {_fmt(figures['uncertain_mean'])} against "
                     f"{_fmt(previous['uncertain_mean'])} (+{rise:.3f}, more than the allowed "
                     f"+{float(opts['max_uncertain_increase']):.3f})")
    if drop > float(opts["max_margin_drop"]):
        worse.append(f"mean margin {_fmt(figures['margin_mean'])} against "
                     f"{_fmt(previous['margin_mean'])} (-{drop:.3f}, more than the allowed "
                     f"-{float(opts['max_margin_drop']):.3f})")
    if worse:
        return dict(base, decision=FAIL, why=(
            f"camera {camera}: confidence below the previous release's on this device: "
            f"{new_name} {' and '.join(worse)} of {old_name}"))
    return dict(base, decision=PASS, why=(
        f"camera {camera}: {figures['state']}, uncertain share "
        f"{_fmt(figures['uncertain_mean'])} (was {_fmt(previous['uncertain_mean'])}), margin "
        f"{_fmt(figures['margin_mean'])} (was {_fmt(previous['margin_mean'])} on {old_name})"))


def segedge_canary_verdict(after: Optional[Mapping[str, Any]],
                           before: Optional[Mapping[str, Any]],
                           release: Mapping[str, Any],
                           cameras: Sequence[str] = (),
                           options: Optional[Mapping[str, Any]] = None,
                           final: bool = False) -> Dict[str, Any]:
    """The gate's verdict: ``{"decision": pass|wait|fail, "summary": str, "cameras":
    {id: {"decision", "why", "new", "old"}}}``.

    ``release``: the new release's ``{"name", "version"}``. ``cameras``: the ids to judge
    (the device's configured cameras; empty = every camera the health file reports).
    ``options``: ``max_uncertain_increase``, ``max_margin_drop``, ``require_quality``
    (DEFAULTS for those left out). ``final``: the wait is over, decide.
    """
    opts = dict(DEFAULTS, **(options or {}))
    model = _model(after)
    if after is None or (model.get("name"), str(model.get("version"))) != (
            release.get("name"), str(release.get("version"))):
        verdicts = {}
        summary = ("no health file" if after is None else
                   f"the agent runs {_clip(model.get('name'))} {_clip(model.get('version'))}, "
                   f"not {release.get('name')} {release.get('version')}")
        decision = WAIT
    elif _quality(after) is None:
        verdicts = {}
        summary = ("the health file carries no quality figures (an agent without field "
                   "quality, or [quality] enabled = false)")
        decision = WAIT if _flag(opts["require_quality"]) else PASS
        if decision == PASS:
            summary += ": not judged (segedge_agent_canary_require_quality is false)"
    elif not cameras and len(_quality(after)) > MAX_CAMERAS:
        verdicts = {}
        summary = (f"the health file reports {len(_quality(after))} cameras, more than "
                   f"{MAX_CAMERAS}: refused")
        decision = FAIL
    else:
        judged = list(cameras) or sorted(_quality(after), key=str)
        verdicts = {cam: _judge_camera(cam, after, before, release, opts) for cam in judged}
        decisions = [v["decision"] for v in verdicts.values()]
        decision = FAIL if FAIL in decisions else WAIT if WAIT in decisions else PASS
        shown = [v["why"] for v in verdicts.values() if v["decision"] == decision] \
            if decision != PASS else [v["why"] for v in verdicts.values()]
        summary = "; ".join(shown) or "no camera reports figures: nothing to judge"
    if decision == WAIT and final:
        if _flag(opts["require_quality"]):
            decision = FAIL
            summary = (f"{summary}; not judged after the soak and the wait for figures: "
                       f"refused (fail closed)")
        else:
            decision = PASS
            summary = f"{summary}; not judged (segedge_agent_canary_require_quality is false)"
    return {"decision": decision, "summary": _clip(summary, MAX_SUMMARY), "cameras": verdicts}


def segedge_canary_refusals(hosts: Sequence[str], hostvars: Mapping[str, Any],
                            active: Sequence[str]) -> List[Dict[str, str]]:
    """The canaries of this play that refused the release: failed hosts (not ``active``)
    and those whose gate noted a refusal (``segedge_agent__refused``); ``[{"host", "why"}]``."""
    out = []
    for host in hosts:
        hv = hostvars.get(host, {}) if isinstance(hostvars, Mapping) else {}
        if host not in active:
            out.append({"host": host, "why": "failed before its gate (see its error above)"})
        elif hv.get("segedge_agent__refused"):
            out.append({"host": host, "why": str(hv.get("segedge_agent__refusal") or "refused")})
    return out


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {"segedge_health_from_print": segedge_health_from_print,
                "segedge_canary_verdict": segedge_canary_verdict,
                "segedge_canary_refusals": segedge_canary_refusals}
