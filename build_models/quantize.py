"""NNCF post-training INT8 quantization, with an accuracy-controlled retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np


@dataclass(frozen=True)
class QuantConfig:
    subset_size: int = 300  # calibration images (the seed's count)
    tolerance: float = 0.01  # max Dice drop INT8 vs FP32
    accuracy_control: bool = True  # retry with quantize_with_accuracy_control on a failed gate
    preset: str = "performance"  # NNCF preset: performance (symmetric) or mixed


def _images(data: Any, limit: int):
    """Yield single images [1,3,H,W] f32 0..255 from a PetData."""
    for i, (images, _) in enumerate(data.batches(1)):
        if i >= limit:
            return
        yield images


def calibration_dataset(data: Any, subset_size: int):
    import nncf

    items = list(_images(data, subset_size))
    return nncf.Dataset(items), len(items)


def quantize(ov_model: Any, calib: Any, cfg: QuantConfig) -> Tuple[Any, Dict[str, Any]]:
    """Plain PTQ: ``nncf.quantize`` calibrated on ``calib`` (a PetData of training images)."""
    import nncf

    dataset, n = calibration_dataset(calib, cfg.subset_size)
    model = nncf.quantize(ov_model, dataset, subset_size=n,
                          preset=nncf.QuantizationPreset(cfg.preset))
    return model, {"method": "ptq", "calibration_images": n}


def quantize_accuracy_control(ov_model: Any, calib: Any, validation: Any,
                              score: Callable[[Any, Any], float],
                              cfg: QuantConfig) -> Tuple[Any, Dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control``: keeps the Dice drop within ``tolerance``.

    ``score(compiled_model, data)`` returns Dice; NNCF calls it with a list of
    (image, mask) items from ``validation``.
    """
    import nncf

    dataset, n = calibration_dataset(calib, cfg.subset_size)
    items = [(img, mask) for img, mask in validation.batches(1)]
    model = nncf.quantize_with_accuracy_control(
        ov_model, dataset, nncf.Dataset(items), validation_fn=score,
        max_drop=cfg.tolerance, drop_type=nncf.DropType.ABSOLUTE, subset_size=n,
        preset=nncf.QuantizationPreset(cfg.preset))
    return model, {"method": "accuracy_control", "calibration_images": n,
                   "validation_images": len(items)}


def dice_of_items(compiled: Any, items: Any, num_classes: int) -> float:
    """Dice (micro) of a compiled model over (image, mask) items; NNCF's validation_fn."""
    from build_models.evaluate import classes_from_logits, confusion, metrics

    cm = np.zeros((num_classes, num_classes), np.int64)
    request = compiled.create_infer_request()
    for image, mask in items:
        logits = np.array(request.infer({0: image})[0])
        cm += confusion(classes_from_logits(logits), mask, num_classes)
    return metrics(cm)["dice"]
