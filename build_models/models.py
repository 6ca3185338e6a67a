"""Model factory over segmentation-models-pytorch, with named presets.

The exported graph is ``SegModel``: raw 0..255 RGB in (``image``), normalisation
inside, ``logits`` out. Binary models have ONE output channel (pet where logit > 0);
trimap models have three (argmax).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "Unet"
    encoder: str = "mobilenet_v2"
    label_mode: str = "binary"
    size: int = 256
    encoder_weights: Optional[str] = None  # "imagenet" needs the internet
    decoder_channels: Optional[Tuple[int, ...]] = None
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))

    @property
    def num_classes(self) -> int:
        return 3 if self.label_mode == "trimap" else 2

    @property
    def out_channels(self) -> int:
        return 1 if self.label_mode == "binary" else self.num_classes

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels) if self.decoder_channels else None
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if data.get("decoder_channels"):
            data["decoder_channels"] = tuple(data["decoder_channels"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# Seconds per 256x256 training image on 2 shared CPU cores (batch 8, docs/build.md):
# seed 0.21, Unet mobilenet_v2 (default decoder) 0.24, mobile 0.14, FPN mobilenet_v2 0.12.
PRESETS: Dict[str, ModelConfig] = {
    # the origin project's model
    "seed": ModelConfig(arch="FPN", encoder="resnet34", label_mode="binary", size=256),
    # measured: fastest to train on CPU at full-resolution output, 4.1 M parameters
    "mobile": ModelConfig(arch="Unet", encoder="mobilenet_v2", label_mode="binary", size=256,
                          decoder_channels=(128, 64, 32, 16, 16)),
    "mobile-fpn": ModelConfig(arch="FPN", encoder="mobilenet_v2", label_mode="binary", size=256),
    # the candidates of the accuracy-vs-speed chart (docs/build.md, demo/README.md)
    "mobile-wide": ModelConfig(arch="Unet", encoder="mobilenet_v2", label_mode="binary",
                               size=256),
    "mobile-deeplab": ModelConfig(arch="DeepLabV3Plus", encoder="mobilenet_v2",
                                  label_mode="binary", size=256),
    "lite0": ModelConfig(arch="Unet", encoder="tu-efficientnet_lite0", label_mode="binary",
                         size=256, decoder_channels=(128, 64, 32, 16, 16)),
    "r18": ModelConfig(arch="Unet", encoder="resnet18", label_mode="binary", size=256,
                       decoder_channels=(128, 64, 32, 16, 16)),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"preset '{name}' unknown (valid: {', '.join(PRESETS)})")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **overrides)


class SegModel(nn.Module):
    """Normalisation + smp network: ``image`` f32 [N,3,H,W] raw 0..255 RGB -> logits."""

    def __init__(self, net: nn.Module, mean: List[float], std: List[float]):
        super().__init__()
        self.net = net
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - self.shift) * self.scale)


def create(config: ModelConfig) -> SegModel:
    """Build the model; errors name the valid architectures/encoders."""
    import segmentation_models_pytorch as smp

    kwargs: Dict[str, Any] = {}
    if config.decoder_channels:
        kwargs["decoder_channels"] = tuple(config.decoder_channels)
    try:
        net = smp.create_model(config.arch, encoder_name=config.encoder,
                               encoder_weights=config.encoder_weights,
                               in_channels=3, classes=config.out_channels, **kwargs)
    except KeyError as exc:
        raise ValueError(f"cannot build {config.arch}/{config.encoder}: {exc}") from exc
    return SegModel(net, config.mean, config.std)


def predict_classes(logits: torch.Tensor) -> torch.Tensor:
    """Logits [N,C,H,W] -> class indices [N,H,W] (C == 1: logit > 0 is class 1)."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
