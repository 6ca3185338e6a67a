"""``segedge-build`` in an agent-only install: one line naming the extra, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from build_models.errors import BUILD_EXTRA_MODULES, BuildError, missing_build_extra

REPO = Path(__file__).resolve().parents[2]
# what an install without the build extra lacks; importing any of them fails
AGENT_ONLY = ("import sys\n"
              f"for m in {BUILD_EXTRA_MODULES!r}:\n"
              "    sys.modules[m] = None\n"
              "from build_models.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def run_agent_only(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AGENT_ONLY, *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("argv", [("train", "--help"), ("export", "--help"),
                                  ("fetch", "--help"), ("all", "--help"),
                                  ("finetune", "--help"),
                                  ("train", "--data", "x", "--out", "y")])
def test_build_commands_name_the_extra(argv):
    res = run_agent_only(*argv)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    # segedge is not on PyPI: the hint is the command that works in a checkout
    assert len(lines) == 1 and "pip install -c constraints.txt -e '.[build]'" in lines[0]
    assert "segedge[build]" not in lines[0]
    assert lines[0].startswith(f"segedge-build {argv[0]}: needs the build extra")


def test_verify_help_and_usage_work_without_the_extra():
    res = run_agent_only("verify", "--help")
    assert res.returncode == 0 and "bundle" in res.stdout, res.stderr
    res = run_agent_only()
    assert res.returncode == 2 and "-e '.[build]'" in res.stderr


def test_every_build_error_shares_one_base_importable_without_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "from build_models.errors import BuildError, BundleError\n"
            "assert issubclass(BundleError, BuildError)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    pytest.importorskip("PIL")
    pytest.importorskip("tqdm")
    from build_models.data import DataError
    from build_models.fetch import FetchError

    assert issubclass(DataError, BuildError) and issubclass(FetchError, BuildError)


def test_missing_build_extra_only_for_the_extras_modules():
    assert missing_build_extra(ModuleNotFoundError("x", name="torch.nn")) == "torch"
    assert missing_build_extra(ModuleNotFoundError("x", name="PIL")) == "PIL"
    assert missing_build_extra(ModuleNotFoundError("x", name="numpy")) == ""
    assert missing_build_extra(ValueError("torch")) == ""
