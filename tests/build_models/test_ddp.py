"""``segedge-build train`` unchanged under torchrun: 2 processes (DDP over gloo on CPU) on a
tiny synthetic Pet set; rank 0 alone writes the checkpoints and the report; --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.build
torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def torchrun(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "build_models.cli", "train", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_under_torchrun_with_two_processes_and_resume(pets_dir, tmp_path):
    from build_models import checkpoint

    out = tmp_path / "run"
    args = ["--data", str(pets_dir), "--out", str(out), "--size", "64", "--batch-size", "4",
            "--device", "cpu", "--threads", "1", "--no-progress"]
    done = torchrun([*args, "--epochs", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone validates and prints the summary
    assert done.stdout.count("epoch 1: ") == 1 and done.stdout.count("epoch 2: ") == 1
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["checkpoint"] == str(out / "best.pt")
    report = json.loads((out / "report.json").read_text())
    assert report["distributed"] == {"world_size": 2, "backend": "gloo"}
    # 18 training pairs, 4 per process and step, 2 processes: 2 steps an epoch
    assert report["steps"] == 4 and [h["epoch"] for h in report["history"]] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt",
                                                     "report.json"]

    resumed = torchrun([*args, "--epochs", "3", "--resume", str(out / "last.pt")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 6 and [h["epoch"] for h in report["history"]] == [1, 2, 3]
    last = checkpoint.load(out / "last.pt")
    assert last.state["step"] == 6 and last.meta.preset == "mobile"
