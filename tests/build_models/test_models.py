"""Model factory and the in-model normalisation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.build
torch = pytest.importorskip("torch")


def test_unknown_preset_lists_the_valid_ones():
    from build_models import arch

    with pytest.raises(ValueError, match="valid: seed, mobile"):
        arch.preset("huge")


def test_presets_build_and_trimap_has_three_channels():
    from build_models import arch
    from build_models import models as M

    model = M.create(arch.preset("mobile", size=64, label_mode="trimap"))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert arch.preset("seed").arch == "FPN" and arch.preset("seed").encoder == "resnet34"
    assert arch.preset("seed").encoder_weights is None


def test_normalisation_is_inside_the_model():
    from build_models import models as M
    from build_models.arch import IMAGENET_MEAN, IMAGENET_STD

    model = M.SegModel(torch.nn.Identity(), IMAGENET_MEAN, IMAGENET_STD)
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(model(x), torch.zeros(1, 3, 1, 1), atol=1e-5)
    one_std = x + torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    assert torch.allclose(model(one_std), torch.ones(1, 3, 1, 1), atol=1e-5)
