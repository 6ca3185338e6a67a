"""Plots for the training run and the bundle report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 80) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return Path(path)


def plot_curves(history: List[Dict[str, Any]], path: Path) -> Path:
    """Training loss and validation Dice/IoU per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker=".")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [h["val_dice"] for h in history], marker=".", label="val Dice (micro)")
    ax2.plot(epochs, [h["val_fg_iou"] for h in history], marker=".", label="val pet IoU")
    ax2.set(xlabel="epoch", title="validation", ylim=(0, 1))
    ax2.legend(loc="lower right")
    return _save(fig, path)


def plot_candidates(rows: Dict[str, Dict[str, Any]], path: Path,
                    chosen: Optional[str] = None) -> Path:
    """Accuracy vs speed: validation Dice against INT8 CPU throughput, one point per
    candidate (same training budget), labelled; recipe variants of one architecture share
    its speed and are drawn hollow; the chosen one is ringed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    last: Dict[str, float] = {}  # per side: the y of the last label, to step apart
    offset = {"left": 0.0, "right": 0.0}
    span = max(r["best_val_dice"] for r in rows.values()) - min(
        r["best_val_dice"] for r in rows.values())
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["best_val_dice"]):
        x, y = r["int8_fps"], r["best_val_dice"]
        variant = name != r["preset"]  # a recipe variant of an architecture candidate
        side = "left" if variant else "right"
        close = side in last and abs(last[side] - y) < 0.04 * max(span, 1e-6)
        offset[side] = offset[side] - 9 if close else 0.0
        last[side] = y
        ax.scatter(x, y, s=30, color="C0" if not variant else "none", edgecolors="C0")
        ax.annotate(name if variant else f"{name} ({r['params_m']:.1f} M)", (x, y),
                    fontsize=7, xytext=(-6 if variant else 6, 3 + offset[side]),
                    textcoords="offset points", ha="right" if variant else "left")
        if name == chosen:
            ax.scatter(x, y, s=160, facecolors="none", edgecolors="black")
    ax.set(xlabel="INT8 throughput on this CPU (frames/s, OpenVINO async, batch 1)",
           ylabel="best validation Dice", title="candidates, same training budget")
    ax.margins(x=0.25, y=0.15)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_precisions(metrics: Dict[str, Dict[str, Any]], path: Path, title: str = "") -> Path:
    """Bar chart: Dice and pet IoU per precision (FP32/FP16/INT8), labelled."""
    plt = _plt()
    names = list(metrics)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for off, key, label in ((-0.2, "dice", "Dice (micro)"), (0.2, "fg_iou", "pet IoU")):
        vals = [metrics[n][key] for n in names]
        bars = ax.bar(x + off, vals, 0.4, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, [f"{n}\n({metrics[n].get('inference_precision', '?')})" for n in names])
    ax.set(ylim=(0, 1.1), ylabel="score", title=title or "accuracy per precision")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_speed(speed: Dict[str, Dict[str, Any]], path: Path, title: str = "") -> Path:
    """Bar charts: async throughput and sync p50 latency per precision."""
    plt = _plt()
    names = list(speed)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((ax1, "fps", "throughput, async (frames/s)"),
                           (ax2, "latency_ms_p50", "latency, sync p50 (ms)")):
        bars = ax.bar([f"{n}\n({speed[n]['inference_precision']})" for n in names],
                      [speed[n][key] for n in names])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint class>0 pixels (pet red, border yellow) on an RGB uint8 image."""
    colours = np.array([[0, 0, 0], [230, 40, 40], [240, 200, 0]], np.float32)
    out = image.astype(np.float32)
    sel = mask > 0
    out[sel] = (1 - alpha) * out[sel] + alpha * colours[np.clip(mask[sel], 0, 2)]
    return out.astype(np.uint8)


def save_overlays(samples: Sequence[Dict[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """One row per sample: image | ground truth | prediction."""
    plt = _plt()
    n = max(1, len(samples))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for row, s in zip(axes, samples):
        for ax, img, label in ((row[0], s["image"], "image"),
                               (row[1], overlay(s["image"], s["truth"]), "ground truth"),
                               (row[2], overlay(s["image"], s["pred"]), "prediction")):
            ax.imshow(img)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=72)
