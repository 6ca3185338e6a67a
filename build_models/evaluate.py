"""One ``measure_accuracy()`` for every precision, with pure numpy metrics.

Dice is the seed's metric: torchmetrics ``Dice(num_classes=2)`` micro-averages
over both classes, i.e. 2*sum(TP) / (2*sum(TP) + sum(FP) + sum(FN)) summed over
classes and over the whole split (which equals pixel accuracy). ``fg_iou`` is the
IoU of the pet class over the whole split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm

from edge_agent.inference.postprocess import to_mask

PET = 1  # class index of the foreground in both label modes

InferFn = Callable[[np.ndarray], np.ndarray]  # images NCHW f32 0..255 -> logits NCHW


def classes_from_logits(logits: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N,H,W] class indices, by the agent's own rule
    (edge_agent.inference.postprocess), so the accuracy measured here is that of the masks
    a device publishes."""
    return np.stack([to_mask(item) for item in np.asarray(logits)]).astype(np.int64)


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix cm[true, pred] over all pixels."""
    idx = target.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def metrics(cm: np.ndarray, fg: int = PET) -> Dict[str, float]:
    """Micro Dice over all classes (torchmetrics Dice(num_classes=C)), pet IoU and Dice."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    union = tp[fg] + fp[fg] + fn[fg]
    return {
        "dice": float(2 * tp.sum() / denom) if denom else 0.0,
        "fg_iou": float(tp[fg] / union) if union else 0.0,
        "fg_dice": float(2 * tp[fg] / (union + tp[fg])) if union else 0.0,
    }


def measure_accuracy(infer: InferFn, data: Any, num_classes: int, batch_size: int = 1,
             desc: str = "eval", progress: bool = True) -> Dict[str, Any]:
    """Run ``infer`` over ``data`` (a PetData) and return dice, fg_iou, fg_dice, images."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    total = (len(data) + batch_size - 1) // batch_size
    for images, masks in tqdm(data.batches(batch_size), total=total, desc=desc,
                              disable=not progress, leave=False):
        cm += confusion(classes_from_logits(infer(images)), masks, num_classes)
    return {**metrics(cm), "images": len(data)}


def torch_infer(model: Any) -> InferFn:
    import torch

    model.eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).float().numpy()

    return run


def compile_ov(model: Union[str, Path, Any], precision: str = "f32", device: str = "CPU",
               core: Optional[Any] = None) -> Tuple[Any, str]:
    """Compile an IR/ONNX path or ov.Model on ``device``; precision 'f32', 'bf16' or 'auto'.

    Returns the compiled model and the inference precision the plugin really uses.
    """
    from edge_agent.inference import ovcompat

    core = core or ovcompat.new_core()
    config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
    compiled = ovcompat.compile_model(core, str(model) if isinstance(model, Path) else model,
                                      device, config)
    used = ovcompat.property_or(compiled, "INFERENCE_PRECISION_HINT", precision)
    return compiled, ovcompat.precision_name(used)


def ov_infer(compiled: Any) -> InferFn:
    """Infer one image at a time (the IRs have a static batch of 1)."""
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        outs = [np.array(request.infer({0: images[i:i + 1]})[0]) for i in range(len(images))]
        return np.concatenate(outs)

    return run
