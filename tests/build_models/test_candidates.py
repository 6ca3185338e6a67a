"""Choosing the recipe from candidates' validation figures, and the candidates chart."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.build
pytest.importorskip("torch")


def _results(**dice):
    return {name: {"preset": name, "best_val_dice": d} for name, d in dice.items()}


def test_choose_takes_the_best_allowed_architecture_and_the_variants_that_helped():
    from build_models.candidates import EXTRA, choose

    results = _results(**{"mobile": 0.86, "mobile-noextra": 0.87, "mobile-bgmix": 0.88,
                          "mobile-focal": 0.85, "mobile-deeplab": 0.875, "r18": 0.9})
    choice = choose(results, allowed=("mobile", "mobile-deeplab"))
    assert choice["preset"] == "mobile-deeplab"
    assert choice["options"] == ["--background-mix", "0.3"]  # extra data did not help
    results["mobile-noextra"]["best_val_dice"] = 0.8
    assert choose(results)["preset"] == "r18"
    assert choose(results)["options"][:2] == ["--extra-data", EXTRA]


def test_choose_ignores_failed_runs_and_says_when_none_finished():
    from build_models.candidates import choose

    results = {"mobile": {"failed": 1, "log": "boom"}, "lite0": {"preset": "lite0",
                                                               "best_val_dice": 0.5}}
    assert choose(results)["architecture"] == "lite0"
    with pytest.raises(ValueError, match="no candidate architecture finished"):
        choose({"mobile": {"failed": 1}})


def test_options_fill_in_or_drop_the_extra_folder():
    from build_models.candidates import options

    assert options("mobile-bgmix", "/x") == ["--extra-data", "/x", "--background-mix", "0.3"]
    assert options("mobile-bgmix", None) == ["--background-mix", "0.3"]


def test_candidates_chart_is_written(tmp_path):
    from build_models.report import plot_candidates

    rows = {"a": {"preset": "a", "int8_fps": 300.0, "best_val_dice": 0.9, "params_m": 4.1},
            "a-variant": {"preset": "a", "int8_fps": 300.0, "best_val_dice": 0.9,
                          "params_m": 4.1},
            "b": {"preset": "b", "int8_fps": 450.0, "best_val_dice": 0.88, "params_m": 12.5}}
    path = plot_candidates(rows, tmp_path / "c.png", chosen="a")
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


def test_speeds_are_measured_per_preset_best_of_rounds():
    import torch

    from build_models import export, models
    from build_models.arch import IMAGENET_MEAN, IMAGENET_STD
    from build_models.candidates import measure_speeds

    net = models.SegModel(torch.nn.Conv2d(3, 1, 3, padding=1), IMAGENET_MEAN, IMAGENET_STD)
    ir = export.to_openvino(net, 32)
    frames = {"a": [torch.rand(1, 3, 32, 32).numpy() * 255]}
    speeds = measure_speeds({"a": {"params_m": 0.0, "int8": ir, "fp32": ir}}, frames, 5, 2)
    assert set(speeds) == {"a"} and speeds["a"]["repeats"] == 2
    assert speeds["a"]["int8_fps"] > 0 and speeds["a"]["fp32_fps"] > 0
