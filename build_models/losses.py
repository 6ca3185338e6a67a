"""Training losses: region (Dice) + pixel (BCE/CE or focal) terms.

The labels count the trimap border as pet (binary mode), as the metric does, so the loss
needs no special border treatment.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("dice_bce", "dice_focal")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per class over the batch, averaged over classes present or predicted."""
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (logits and 0/1 target of the same shape)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def make_loss(label_mode: str, kind: str = "dice_bce") -> LossFn:
    """logits [N,C,H,W] (C=1 binary), target [N,H,W] int64 -> scalar loss."""
    if kind not in LOSSES:
        raise ValueError(f"loss '{kind}' unknown (valid: {', '.join(LOSSES)})")

    def binary(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y[:, None].float()
        probs = torch.sigmoid(logits)
        region = soft_dice(torch.cat([1 - probs, probs], 1), torch.cat([1 - target, target], 1))
        pixel = (F.binary_cross_entropy_with_logits(logits, target) if kind == "dice_bce"
                 else focal(logits, target))
        return region + pixel

    def multiclass(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).float()
        region = soft_dice(torch.softmax(logits, 1), onehot)
        ce = F.cross_entropy(logits, y, reduction="none")
        pixel = ce.mean() if kind == "dice_bce" else ((1 - torch.exp(-ce)) ** 2 * ce).mean()
        return region + pixel

    return binary if label_mode == "binary" else multiclass
