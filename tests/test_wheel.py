"""The release artefacts (issue 21): the wheel and the sdist are built from a copy of the
source with ``python -m build``, pass ``twine check --strict`` (no upload), carry the one
version (``edge_agent.__version__``); the wheel, installed into a fresh venv with only
the agent's deps, checks bundles against the shipped schema and refuses a schema-invalid
manifest (issue 7), and its commands say that version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from importlib.util import find_spec
from pathlib import Path

import pytest

from edge_agent import __version__
from tests.conftest import IN_CI, require

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


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built from a copy of what the package needs (no checkout state);
    without ``build`` (no dev extra, never under CI) only the wheel, by pip."""
    tmp = tmp_path_factory.mktemp("release")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("edge_agent", "build_models"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if find_spec("build") is None and not IN_CI:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_isolation(), "-q",
              "-w", str(tmp / "dist"), str(src)])
        return tmp / "dist"
    isolation = ["--no-isolation", "--skip-dependency-check"] if _isolation() else []
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", *isolation, "--outdir",
          str(tmp / "dist"), str(src)])
    return tmp / "dist"


def _release_tools() -> None:
    require(find_spec("build") is not None and find_spec("twine") is not None,
            "build and twine (the dev extra: scripts/setup.sh all)")


def test_sdist_and_wheel_pass_twine_check(dist):
    _release_tools()
    files = sorted(dist.iterdir())
    assert [f.name for f in files] == [f"segedge-{__version__}-py3-none-any.whl",
                                       f"segedge-{__version__}.tar.gz"], files
    res = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])
    assert res.stdout.count("PASSED") == 2, res.stdout


def test_sdist_holds_the_package_and_its_schemas(dist):
    _release_tools()
    with tarfile.open(dist / f"segedge-{__version__}.tar.gz") as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        info = sdist.extractfile(f"segedge-{__version__}/PKG-INFO").read().decode()
    assert {"pyproject.toml", "README.md", "LICENSE", "edge_agent/__main__.py",
            "edge_agent/protocol/schemas/manifest.schema.json", "build_models/cli.py"} <= names
    assert f"\nVersion: {__version__}\n" in info


def test_wheel_in_a_fresh_venv_checks_the_schema(tmp_path, tiny_bundle, dist):
    wheel = dist / f"segedge-{__version__}-py3-none-any.whl"
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
    for command in ("segedge-agent", "segedge-subscribe", "segedge-build"):
        res = _run([str(venv / "bin" / command), "--version"], cwd=tmp_path, env=env)
        assert res.stdout == f"{command} {__version__}\n", res.stdout
    res = _run([str(py), "-c", "from importlib.metadata import version; print(version("
                "'segedge'))"], cwd=tmp_path, env=env)
    assert res.stdout.strip() == __version__
