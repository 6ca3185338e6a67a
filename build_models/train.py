"""Train a segmentation model on an Oxford-IIIT Pet folder.

    python -m build_models.train --data DIR --out runs/x --preset mobile --epochs 40

Writes ``best.pt`` (best validation Dice), ``last.pt`` (for ``--resume``),
``curves.png`` and ``report.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from build_models import code_version, tool_versions
from build_models import data as D


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "mobile"
    size: Optional[int] = None  # None: the preset's
    label_mode: Optional[str] = None
    encoder_weights: Optional[str] = None
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    seed: int = 0
    augment: bool = True
    max_minutes: Optional[float] = None
    max_steps: Optional[int] = None
    limit: Optional[int] = None  # use at most this many training pairs (tests, quick runs)
    threads: Optional[int] = None
    strict: bool = False
    resume: Optional[str] = None
    progress: bool = True


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss(label_mode: str):
    """Dice + BCE (binary, one logit channel) or Dice + CE (trimap)."""
    import torch
    from segmentation_models_pytorch.losses import DiceLoss

    if label_mode == "binary":
        dice, bce = DiceLoss("binary", from_logits=True), torch.nn.BCEWithLogitsLoss()
        return lambda logits, y: dice(logits, y.unsqueeze(1)) + bce(logits, y.unsqueeze(1).float())
    dice, ce = DiceLoss("multiclass", from_logits=True), torch.nn.CrossEntropyLoss()
    return lambda logits, y: dice(logits, y) + ce(logits, y)


def cosine_lr(base: float, progress: float) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def save_checkpoint(path: Path, model, optimizer, state: Dict[str, Any],
                    meta: Dict[str, Any]) -> Path:
    import torch

    tmp = Path(str(path) + ".tmp")
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "state": state, "meta": meta}, tmp)
    tmp.replace(path)
    return Path(path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_checkpoint(path: Path):
    """(SegModel in eval mode, meta) from a checkpoint written by ``train``."""
    from build_models.models import ModelConfig, create

    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = create(ModelConfig.from_dict({**meta["model"], "encoder_weights": None}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), meta


def train(cfg: TrainConfig) -> Dict[str, Any]:
    import torch

    from build_models import evaluate as E
    from build_models import models as M
    from build_models.report import plot_curves

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    resumed = load_checkpoint(Path(cfg.resume)) if cfg.resume else None
    if resumed:
        mcfg = M.ModelConfig.from_dict(resumed["meta"]["model"])
    else:
        mcfg = M.preset(cfg.preset, size=cfg.size, label_mode=cfg.label_mode,
                        encoder_weights=cfg.encoder_weights)
    D.check_size(mcfg.size)
    train_scan = D.scan_split(Path(cfg.data), "train", strict=cfg.strict)
    val_scan = D.scan_split(Path(cfg.data), "val", strict=cfg.strict)
    train_pairs = train_scan.pairs[: cfg.limit] if cfg.limit else train_scan.pairs
    train_set = D.PetData(train_pairs, mcfg.size, mcfg.label_mode, cfg.augment, cfg.seed)
    val_set = D.PetData(val_scan.pairs, mcfg.size, mcfg.label_mode)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = M.create(mcfg).to(device)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = make_loss(mcfg.label_mode)
    state: Dict[str, Any] = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": 0,
                             "elapsed_s": 0.0, "history": []}
    if resumed:
        model.load_state_dict(resumed["state_dict"])
        optimizer.load_state_dict(resumed["optimizer"])
        state = resumed["state"]
    meta = {
        "preset": cfg.preset if not resumed else resumed["meta"]["preset"],
        "model": mcfg.to_dict(), "size": mcfg.size, "label_mode": mcfg.label_mode,
        "classes": D.CLASSES[mcfg.label_mode], "mean": mcfg.mean, "std": mcfg.std,
        "data_hash": D.data_hash(train_pairs + val_scan.pairs), "data": str(cfg.data),
        "train_images": len(train_set), "val_images": len(val_set),
        "code_version": code_version(), "tools": tool_versions(),
        "train_config": asdict(cfg),
    }
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    start = time.monotonic() - state["elapsed_s"]
    stop_reason = "epochs"
    while state["epoch"] < cfg.epochs:
        model.train()
        losses: List[float] = []
        bar = E.tqdm(train_set.batches(cfg.batch_size, shuffle=True), total=steps_per_epoch,
                     desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}", disable=not cfg.progress)
        for images, masks in bar:
            elapsed = time.monotonic() - start
            progress = state["step"] / total_steps
            if budget_s:
                progress = max(progress, elapsed / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, progress)
            x = torch.from_numpy(images).to(device)
            y = torch.from_numpy(masks).to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            losses.append(float(loss.detach()))
            cm = E.confusion(M.predict_classes(logits).cpu().numpy(), masks, mcfg.num_classes)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", dice=f"{E.metrics(cm)['dice']:.3f}")
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if budget_s and time.monotonic() - start >= budget_s:
                stop_reason = "max_minutes"
                break
        bar.close()
        state["epoch"] += 1
        val = E.validate(E.torch_infer(model), val_set, mcfg.num_classes, cfg.batch_size,
                         desc="val", progress=cfg.progress)
        model.train()
        state["elapsed_s"] = time.monotonic() - start
        state["history"].append({"epoch": state["epoch"], "step": state["step"],
                                 "train_loss": float(np.mean(losses)) if losses else 0.0,
                                 "val_dice": val["dice"], "val_fg_iou": val["fg_iou"],
                                 "lr": optimizer.param_groups[0]["lr"],
                                 "elapsed_s": round(state["elapsed_s"], 1)})
        E.tqdm.write(f"epoch {state['epoch']}: loss {state['history'][-1]['train_loss']:.4f} "
                     f"val dice {val['dice']:.4f} pet IoU {val['fg_iou']:.4f}")
        if val["dice"] > state["best_dice"]:
            state["best_dice"], state["best_epoch"] = val["dice"], state["epoch"]
            save_checkpoint(out / "best.pt", model, optimizer, state,
                            {**meta, "val": val, "epoch": state["epoch"]})
        save_checkpoint(out / "last.pt", model, optimizer, state, {**meta, "val": val})
        if stop_reason != "epochs":
            break
    plot_curves(state["history"], out / "curves.png")
    report = {
        "step": "train", "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checkpoint": str(out / "best.pt"), "last": str(out / "last.pt"),
        "curves": str(out / "curves.png"), "stopped_by": stop_reason,
        "best_epoch": state["best_epoch"], "best_val_dice": state["best_dice"],
        "epochs_run": state["epoch"], "steps": state["step"],
        "elapsed_s": round(state["elapsed_s"], 1), "device": device.type,
        "amp": device.type == "cuda", "data_summary": {
            "train": train_scan.summary(), "val": val_scan.summary()},
        "meta": meta, "history": state["history"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    from build_models.models import PRESETS

    p.add_argument("--data", required=True, help="Oxford-IIIT Pet folder (official layout)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and report")
    p.add_argument("--preset", default="mobile", choices=sorted(PRESETS))
    p.add_argument("--size", type=int, help="input size, a multiple of 32 (default: preset's)")
    p.add_argument("--label-mode", choices=D.LABEL_MODES, help="default: preset's (binary)")
    p.add_argument("--encoder-weights", default=None, help="e.g. imagenet (needs the internet)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adamw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this training time")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--limit", type=int, help="use at most N training pairs")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--strict", action="store_true", help="bad data is fatal (default: skip)")
    p.add_argument("--resume", help="continue from a last.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return train(TrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
