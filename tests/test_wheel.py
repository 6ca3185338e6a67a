"""The built wheel, installed into a fresh venv with only the agent's deps, checks bundles
against the shipped schema and refuses a schema-invalid manifest (issue 7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import json, sys
from edge_agent.bundle import manifest
from edge_agent.bundle import schema
assert "/site-packages/edge_agent/" in manifest.__file__, manifest.__file__
for name in ("manifest", "status", "stats", "mask"):
    schema.load(name)
assert manifest.verify_bundle(sys.argv[1]) == [], manifest.verify_bundle(sys.argv[1])
problems = manifest.verify_bundle(sys.argv[2])
print(json.dumps(problems))
assert len(problems) == 1 and "schema: name" in problems[0], problems
assert "torch" not in sys.modules
"""


def _isolation():
    """Build with this venv's setuptools when it can (offline, fast); else let pip fetch it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []


def _clean_env():
    """No PYTHONPATH: a checkout on it (with its egg-info) would make pip think the wheel is
    already installed, and would shadow the installed package."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(cmd, **kw):
    kw.setdefault("env", _clean_env())
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_wheel_in_a_fresh_venv_checks_the_schema(tmp_path, tiny_bundle):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("edge_agent", "build_models"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_isolation(), "-q",
          "-w", str(tmp_path / "dist"), str(src)])
    wheel = next((tmp_path / "dist").glob("segedge-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    # the agent's deps come from this interpreter's site-packages, appended after the
    # venv's own (a .pth line is a plain path: its editable segedge finder is not run)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip())
    (site / "zz_agent_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["name"] = None
    (bad / "manifest.json").write_text(json.dumps(data))
    env = _clean_env()
    res = _run([str(py), "-c", CHECK, str(tiny_bundle), str(bad)], cwd=tmp_path, env=env)
    assert "schema: name" in res.stdout
    agent = venv / "bin" / "segedge-agent"
    config = tmp_path / "agent.toml"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    config.write_text(f'[source]\nuri = "{clip}"\n[model]\nbundle = "{bad}"\n')
    res = subprocess.run([str(agent), "--config", str(config), "--check-config"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 78, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "schema: name: None is not of type string" in \
        res.stderr
