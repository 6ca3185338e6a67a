"""The checkpoint's typed record (``build_models.checkpoint``): it reads what the code of
961c3a6 wrote, writes the same format, and refuses a malformed or foreign file in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from build_models.checkpoint import Checkpoint, CheckpointMeta
from build_models.errors import BuildError

REPO = Path(__file__).resolve().parents[2]
#: ``meta`` of a best.pt written by the code of 961c3a6 (train --size 64 --max-steps 1)
OLD_META_FILE = Path(__file__).parent / "data" / "meta-961c3a6.json"
OLD_META = json.loads(OLD_META_FILE.read_text())


def test_reads_the_record_earlier_code_wrote_and_writes_it_back_unchanged():
    meta = CheckpointMeta.from_dict(OLD_META)
    assert meta.preset == "mobile" and meta.size == 64 and meta.label_mode == "binary"
    assert meta.model.decoder_channels == (128, 64, 32, 16, 16) and meta.num_classes == 2
    assert meta.epoch == 1 and meta.val["dice"] > 0 and meta.pretrained is None
    assert meta.to_dict() == OLD_META


@pytest.mark.parametrize("change, says", [
    (lambda m: m.pop("model"), "lacks 'model'"),
    (lambda m: m.pop("data_hash"), "lacks 'data_hash'"),
    (lambda m: m.update(model="Unet"), "'model' is not an architecture"),
    (lambda m: m.update(size=128), "disagrees with itself"),
])
def test_a_malformed_record_is_refused_in_one_line(change, says):
    meta = json.loads(json.dumps(OLD_META))
    change(meta)
    with pytest.raises(BuildError, match=says) as err:
        CheckpointMeta.from_dict(meta, "runs/x/best.pt")
    assert str(err.value).startswith("runs/x/best.pt: ") and "\n" not in str(err.value)


def test_a_file_that_is_not_a_checkpoint_is_refused():
    with pytest.raises(BuildError, match="no 'state_dict'"):
        Checkpoint.from_dict({"model": {}}, "x.pt")
    with pytest.raises(BuildError, match="no training record"):
        Checkpoint.from_dict({"state_dict": {}}, "x.pt")


def test_record_and_presets_read_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import json, pathlib\n"
            "from build_models.checkpoint import CheckpointMeta\n"
            "from build_models import arch, train\n"
            f"m = CheckpointMeta.from_dict(json.loads(pathlib.Path({str(OLD_META_FILE)!r})"
            ".read_text()))\n"
            "print(m.preset, arch.preset('seed').encoder)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mobile", "resnet34"]


def test_run_fields_are_typed():
    from build_models.train import Run

    loose = [name for name, kind in Run.__annotations__.items() if "Any" in str(kind)
             and not str(kind).startswith("Dict[")]
    assert loose == []


@pytest.mark.build
def test_an_old_checkpoint_file_loads_and_a_foreign_one_fails_the_cli_in_one_line(tmp_path,
                                                                                  capsys):
    torch = pytest.importorskip("torch")
    from build_models import cli
    from build_models.checkpoint import model_from_checkpoint
    from build_models.models import create

    meta = CheckpointMeta.from_dict(OLD_META)
    old = {"state_dict": create(meta.model).state_dict(), "optimizer": {}, "state": {},
           "meta": OLD_META}  # the dict 961c3a6's train wrote
    torch.save(old, tmp_path / "best.pt")
    model, read = model_from_checkpoint(tmp_path / "best.pt")
    assert read == meta and model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": old["state_dict"]}, tmp_path / "nometa.pt")
    for name, says in (("junk.pt", "cannot read checkpoint"), ("nometa.pt", "no training record")):
        rc = cli.main(["export", "--checkpoint", str(tmp_path / name), "--data", str(tmp_path),
                       "--out", str(tmp_path / "models")])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and says in err and "\n" not in err, err
