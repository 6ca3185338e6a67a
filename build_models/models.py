"""Model factory over segmentation-models-pytorch (the presets: ``build_models.arch``).

The exported graph is ``SegModel``: raw 0..255 RGB in (``image``), normalisation
inside, ``logits`` out. Binary models have ONE output channel (pet where logit > 0);
trimap models have three (argmax).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from torch import nn

from build_models.arch import ArchConfig

if TYPE_CHECKING:
    from build_models.weights import WeightsRecord


class SegModel(nn.Module):
    """Normalisation + smp network: ``image`` f32 [N,3,H,W] raw 0..255 RGB -> logits."""

    def __init__(self, net: nn.Module, mean: List[float], std: List[float]):
        super().__init__()
        self.net = net
        self.pretrained: Optional[WeightsRecord] = None  # set by create()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - self.shift) * self.scale)


def create(config: ArchConfig) -> SegModel:
    """Build the model with its encoder weights (``SegModel.pretrained`` records where they
    came from); errors name the valid architectures/encoders."""
    import segmentation_models_pytorch as smp

    from build_models import weights

    kwargs: Dict[str, Any] = {}
    if config.decoder_channels:
        channels = tuple(config.decoder_channels)
        # DeepLabV3+ takes one width (its ASPP and decoder), Unet one per stage
        kwargs["decoder_channels"] = channels[0] if config.arch == "DeepLabV3Plus" else channels
    online = config.encoder_weights if config.encoder_weights == "imagenet" else None
    try:
        net = smp.create_model(config.arch, encoder_name=config.encoder, encoder_weights=online,
                               in_channels=3, classes=config.out_channels, **kwargs)
    except KeyError as exc:
        raise ValueError(f"cannot build {config.arch}/{config.encoder}: {exc}") from exc
    record = weights.WeightsRecord("imagenet") if online else None
    if config.encoder_weights and not online:
        record = weights.load_encoder(net, config.encoder_weights, config.encoder)
    model = SegModel(net, config.mean, config.std)
    model.pretrained = record
    return model


def predict_classes(logits: torch.Tensor) -> torch.Tensor:
    """Logits [N,C,H,W] -> class indices [N,H,W] (C == 1: logit > 0 is class 1)."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
