"""Batch augmentation, losses, the learning-rate schedule and the EMA (torch, on CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.build
torch = pytest.importorskip("torch")


def _pet_batch(n: int = 4, size: int = 64):
    """Images whose red channel is 200 inside a square pet and 20 outside, blue random."""
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    masks[:, 16:48, 20:44] = 1
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    images[:, 0] = torch.where(masks.bool(), 200, 20).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    images[:, 2] = torch.randint(0, 255, (n, size, size), generator=gen, dtype=torch.uint8)
    return images, masks


def test_identity_warp_keeps_image_and_mask():
    from build_models import augment

    images, masks = _pet_batch()
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).repeat(4, 1, 1)
    x, m = augment.warp(images.float(), masks, theta, 64)
    assert torch.equal(m, masks)
    assert torch.allclose(x, images.float(), atol=1e-3)


def test_warp_moves_the_mask_with_the_image():
    """After crops, flips and rotations the labels still sit on the pet's pixels."""
    from build_models import augment

    images, masks = _pet_batch(16)
    cfg = augment.AugmentConfig(brightness=0, contrast=0, saturation=0, grey=0, blur=0, noise=0)
    x, m = augment.augment_batch(images, masks, 48, cfg, augment.generator(3))
    assert x.shape == (16, 3, 48, 48) and m.shape == (16, 48, 48) and m.dtype == torch.int64
    assert set(m.unique().tolist()) <= {0, 1}
    red = x[:, 0]
    inside, outside = red[m == 1], red[m == 0]
    assert inside.numel() and outside.numel()
    # bilinear edges blur a one-pixel rim; nearly every labelled pixel has its class's colour
    assert (inside > 110).float().mean() > 0.95 and (outside < 110).float().mean() > 0.95


def test_augmentation_is_seeded_and_varies_per_image():
    from build_models import augment

    images, masks = _pet_batch(6)
    cfg = augment.AugmentConfig()
    a = augment.augment_batch(images, masks, 64, cfg, augment.generator(1))
    b = augment.augment_batch(images, masks, 64, cfg, augment.generator(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1][0], a[1][1])  # different crops for different images
    assert float(a[0].min()) >= 0 and float(a[0].max()) <= 255


def test_trimap_masks_keep_their_classes():
    from build_models import augment

    images, masks = _pet_batch(4)
    masks[:, 16:18] = 2
    _, m = augment.augment_batch(images, masks, 64, augment.AugmentConfig(),
                                 augment.generator(0), binary=False)
    assert set(m.unique().tolist()) <= {0, 1, 2}


def test_background_mix_changes_only_background_pixels():
    from build_models import augment

    images, masks = _pet_batch(4)
    images[1:, 0][masks[1:] == 0] = 90  # other images' backgrounds differ
    x = images.float()
    mixed = augment.mix_backgrounds(x, masks, 1.0, augment.generator(0))
    pet = masks.bool()[:, None].expand_as(x)
    assert torch.equal(mixed[pet], x[pet])
    assert not torch.equal(mixed[~pet], x[~pet])
    assert torch.equal(augment.mix_backgrounds(x, masks, 0.0, augment.generator(0)), x)


def test_blur_keeps_a_flat_image_flat():
    from build_models import augment

    flat = torch.full((2, 3, 32, 32), 77.0)
    assert torch.allclose(augment._blur(flat, 1.2), flat, atol=1e-3)


@pytest.mark.parametrize("kind", ["dice_bce", "dice_focal"])
def test_losses_are_small_for_right_and_large_for_wrong_logits(kind):
    from build_models.losses import make_loss

    y = torch.zeros(2, 16, 16, dtype=torch.int64)
    y[:, 4:12, 4:12] = 1
    right = (y[:, None].float() * 2 - 1) * 8
    binary = make_loss("binary", kind)
    assert float(binary(right, y)) < 0.05 < 1.0 < float(binary(-right, y))
    onehot = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 16 - 8
    multi = make_loss("trimap", kind)
    assert float(multi(onehot, y)) < 0.05 < 1.0 < float(multi(-onehot, y))
    with pytest.raises(ValueError, match="valid: dice_bce, dice_focal"):
        make_loss("binary", "l2")


def test_learning_rate_warmup_cosine_and_restarts():
    from build_models.train import learning_rate

    assert learning_rate(1.0, 0.0) == 1.0 and learning_rate(1.0, 1.0) == 0.0
    assert math.isclose(learning_rate(1.0, 0.5), 0.5)
    assert math.isclose(learning_rate(1.0, 0.05, warmup=0.1), 0.5)
    assert math.isclose(learning_rate(1.0, 0.1, warmup=0.1), 1.0)
    # two cycles: back at the top halfway through, at the bottom at the end
    assert math.isclose(learning_rate(1.0, 0.5, restarts=1), 1.0)
    assert learning_rate(1.0, 0.49, restarts=1) < 0.01
    assert learning_rate(1.0, 1.0, restarts=1) == 0.0


def test_ema_follows_the_weights_with_a_warm_up():
    from build_models.train import Ema

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = Ema(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 5
    before = ema.model[0].weight.clone()
    ema.update()  # decay min(0.99, 2/11): mostly the new weights
    moved = ema.model[0].weight - before
    assert np.allclose(moved.numpy(), 1 - 2 / 11, atol=1e-6)
    assert int(ema.model[1].num_batches_tracked) == 5
    assert not any(p.requires_grad for p in ema.model.parameters())
