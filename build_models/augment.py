"""Batch augmentation with torch ops, on whatever device the batch lives (GPU or CPU).

One affine warp per image does the random resized crop, flip and rotation in a single
``grid_sample`` (image bilinear, mask bilinear then thresholded, both reflected at the
edges so the labels stay true); then colour jitter, blur, noise and background mixing.
Keeping it on the device is what makes GPU training fast: a CPU loader would starve it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    scale: Tuple[float, float] = (0.35, 1.0)  # crop area as a fraction of the image
    ratio: Tuple[float, float] = (0.75, 1.333)  # crop aspect ratio
    rotate: float = 15.0  # degrees, uniform in +-rotate
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.4
    grey: float = 0.05  # probability of a greyscale image
    blur: float = 0.2  # probability of a Gaussian blur (sigma 0.5..1.5 px)
    noise: float = 6.0  # max std of additive Gaussian noise, in 0..255 units
    background_mix: float = 0.0  # probability of replacing the background by another image's

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> AugmentConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in data.items() if k in known})


def _uniform(n: int, low: float, high: float, gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def affine_params(n: int, cfg: AugmentConfig, gen: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """[n,2,3] affine matrices mapping output to input coordinates (``affine_grid``'s theta):
    a crop of random area/aspect/position, rotated and maybe mirrored."""
    area = _uniform(n, *cfg.scale, gen, device)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), gen, device)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-extent in normalised coords
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, gen, device) * (1 - w)
    cy = _uniform(n, -1.0, 1.0, gen, device) * (1 - h)
    angle = _uniform(n, -cfg.rotate, cfg.rotate, gen, device) * (math.pi / 180)
    mirror = torch.where(torch.rand(n, generator=gen, device=device) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([w * cos * mirror, -h * sin, cx], 1),
                         torch.stack([w * sin * mirror, h * cos, cy], 1)], 1)
    return theta


def warp(images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor, size: int,
         binary: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images [N,3,H,W] float, masks [N,H,W] -> both warped to size x size. Binary masks
    are sampled bilinearly and thresholded (smooth edges), class masks by nearest."""
    grid = F.affine_grid(theta, [images.shape[0], 1, size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    sampled = F.grid_sample(masks[:, None].float(), grid, mode="bilinear" if binary else
                            "nearest", padding_mode="reflection", align_corners=False)[:, 0]
    return out, ((sampled > 0.5) if binary else sampled.round()).to(masks.dtype)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"),
                   k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"),
                    k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def photometric(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
                ) -> torch.Tensor:
    """Brightness, contrast, saturation, greyscale, blur and noise on 0..255 float images."""
    n, dev = images.shape[0], images.device

    def factor(amount: float) -> torch.Tensor:
        return _uniform(n, 1 - amount, 1 + amount, gen, dev).view(n, 1, 1, 1)

    x = images * factor(cfg.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(cfg.contrast) + mean
    grey = x.mean(dim=1, keepdim=True)
    sat = factor(cfg.saturation)
    sat = torch.where(torch.rand(n, 1, 1, 1, generator=gen, device=dev) < cfg.grey,
                      torch.zeros_like(sat), sat)
    x = (x - grey) * sat + grey
    if cfg.blur > 0:
        chosen = torch.rand(n, generator=gen, device=dev) < cfg.blur
        if bool(chosen.any()):
            sigma = float(_uniform(1, 0.5, 1.5, gen, dev))
            x = torch.where(chosen.view(n, 1, 1, 1), _blur(x, sigma), x)
    if cfg.noise > 0:
        std = _uniform(n, 0.0, cfg.noise, gen, dev).view(n, 1, 1, 1)
        x = x + torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype) * std
    return x.clamp(0, 255)


def mix_backgrounds(images: torch.Tensor, masks: torch.Tensor, p: float,
                    gen: torch.Generator) -> torch.Tensor:
    """With probability p per image, replace its background pixels by those of another
    image of the batch where that one is background too (labels unchanged)."""
    n = images.shape[0]
    if p <= 0 or n < 2:
        return images
    other = torch.roll(torch.arange(n, device=images.device), 1)
    chosen = (torch.rand(n, generator=gen, device=images.device) < p).view(n, 1, 1)
    swap = chosen & (masks == 0) & (masks[other] == 0)
    return torch.where(swap[:, None], images[other], images)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, size: int, cfg: AugmentConfig,
                  gen: torch.Generator, binary: bool = True
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N,3,H,W] and class masks [N,H,W] -> (float 0..255 images, int64 masks)
    at size x size, augmented."""
    x = images.float()
    theta = affine_params(x.shape[0], cfg, gen, x.device)
    x, m = warp(x, masks, theta, size, binary)
    x = mix_backgrounds(x, m, cfg.background_mix, gen)
    return photometric(x, cfg, gen), m.long()


def resize_batch(images: torch.Tensor, masks: torch.Tensor, size: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """No augmentation: the stored images resized to size x size (bilinear / nearest)."""
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    m = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return x.clamp(0, 255), m.long()


def generator(seed: int, device: Optional[torch.device] = None) -> torch.Generator:
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(seed)
    return gen
