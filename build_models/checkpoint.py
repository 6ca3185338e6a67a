"""A training checkpoint, typed: the weights, the training state for ``--resume`` and
``CheckpointMeta`` (what the model is and how it was trained), which the bundle's
report and manifest carry. Reading the record needs no torch; ``load``/``save`` do.

The file is what ``torch.save`` writes of ``Checkpoint.to_dict()``: a dict with
``state_dict``, ``optimizer``, ``state``, ``meta`` (and ``train_state_dict``,
``ema_updates`` when EMA is on), the format of every earlier segedge checkpoint.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from build_models.arch import ArchConfig
from build_models.errors import BuildError

if TYPE_CHECKING:
    from build_models.models import SegModel

#: what an older or foreign file lacks, named in the one-line refusal
REQUIRED_META = ("preset", "model", "size", "label_mode", "classes", "data_hash",
                 "code_version")


@dataclass(frozen=True)
class CheckpointMeta:
    """What ``train`` records beside the weights (``meta`` in the file)."""

    preset: str
    model: ArchConfig
    classes: List[str]
    data_hash: str  # names, image sizes and trimap contents of train + val
    code_version: str  # segedge version + git commit
    tools: Dict[str, str] = field(default_factory=dict)
    train_config: Dict[str, Any] = field(default_factory=dict)  # train.TrainConfig, as a dict
    data: str = ""
    extra_data: List[str] = field(default_factory=list)
    train_images: int = 0
    val_images: int = 0
    augment: Optional[Dict[str, Any]] = None  # augment.AugmentConfig, None when off
    pretrained: Optional[Dict[str, Any]] = None  # weights.WeightsRecord of the encoder
    val: Optional[Dict[str, Any]] = None  # validation scores when saved
    epoch: Optional[int] = None  # the epoch of best.pt

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def label_mode(self) -> str:
        return self.model.label_mode

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def scored(self, val: Dict[str, Any], epoch: Optional[int] = None) -> CheckpointMeta:
        return replace(self, val=val, epoch=epoch)

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "preset": self.preset, "model": self.model.to_dict(), "size": self.size,
            "label_mode": self.label_mode, "classes": list(self.classes),
            "mean": list(self.model.mean), "std": list(self.model.std),
            "data_hash": self.data_hash, "data": self.data, "extra_data": list(self.extra_data),
            "train_images": self.train_images, "val_images": self.val_images,
            "code_version": self.code_version, "tools": dict(self.tools),
            "train_config": dict(self.train_config), "augment": self.augment}
        for key in ("pretrained", "val", "epoch"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "checkpoint") -> CheckpointMeta:
        """The record of a checkpoint's ``meta``; a BuildError naming ``where`` and the first
        thing wrong for a file that is not a segedge checkpoint or is too old."""
        if not isinstance(data, dict):
            raise BuildError(f"{where}: no training record ('meta'): not a checkpoint "
                             f"written by segedge-build train")
        missing = [k for k in REQUIRED_META if k not in data]
        if missing:
            raise BuildError(f"{where}: training record lacks '{missing[0]}': written by an "
                             f"older segedge or another tool; retrain with segedge-build train")
        model = data["model"]
        if not isinstance(model, dict) or not {"arch", "encoder"} <= set(model):
            raise BuildError(f"{where}: training record's 'model' is not an architecture "
                             f"(needs arch and encoder): {str(model)[:80]}")
        arch = ArchConfig.from_dict(model)
        if (arch.size, arch.label_mode) != (data["size"], data["label_mode"]):
            raise BuildError(f"{where}: training record disagrees with itself: size/label mode "
                             f"{data['size']}/{data['label_mode']} vs the model's "
                             f"{arch.size}/{arch.label_mode}")
        known = set(cls.__dataclass_fields__) - {"model"}
        return cls(model=arch, **{k: v for k, v in data.items() if k in known})


@dataclass
class Checkpoint:
    """One checkpoint file: ``state_dict`` is the model to deploy (the EMA weights when EMA
    is on); the raw weights, optimiser state and ``state`` are there for ``--resume``."""

    state_dict: Dict[str, Any]
    meta: CheckpointMeta
    state: Dict[str, Any]  # epoch, step, best_dice, best_epoch, elapsed_s, history
    optimizer: Dict[str, Any] = field(default_factory=dict)
    train_state_dict: Optional[Dict[str, Any]] = None  # raw weights when EMA is on
    ema_updates: int = 0

    @property
    def train_weights(self) -> Dict[str, Any]:
        return self.train_state_dict if self.train_state_dict is not None else self.state_dict

    def to_dict(self) -> Dict[str, Any]:
        data = {"state_dict": self.state_dict, "optimizer": self.optimizer,
                "state": self.state, "meta": self.meta.to_dict()}
        if self.train_state_dict is not None:
            data.update(train_state_dict=self.train_state_dict, ema_updates=self.ema_updates)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "checkpoint") -> Checkpoint:
        if not isinstance(data, dict) or "state_dict" not in data:
            raise BuildError(f"{where}: no 'state_dict': not a checkpoint written by "
                             f"segedge-build train")
        return cls(state_dict=data["state_dict"],
                   meta=CheckpointMeta.from_dict(data.get("meta"), where),
                   state=data.get("state") or {}, optimizer=data.get("optimizer") or {},
                   train_state_dict=data.get("train_state_dict"),
                   ema_updates=int(data.get("ema_updates", 0)))


def load(path: Path) -> Checkpoint:
    """Read a checkpoint file; a one-line BuildError for anything that is not one."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise BuildError(f"{path}: cannot read checkpoint: {str(exc).splitlines()[0]}") from exc
    return Checkpoint.from_dict(data, str(path))


def save(path: Path, ckpt: Checkpoint) -> Path:
    """Write atomically (a ``.tmp`` beside it, then a rename)."""
    import torch

    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt.to_dict(), tmp)
    tmp.replace(path)
    return Path(path)


def model_from_checkpoint(path: Path) -> Tuple[SegModel, CheckpointMeta]:
    """(SegModel in eval mode, its record) from a checkpoint written by ``train``."""
    from build_models.models import create

    ckpt = load(path)
    model = create(ckpt.meta.model.without_weights())  # the weights follow
    model.load_state_dict(ckpt.state_dict)
    return model.eval(), ckpt.meta
