"""Read, write and verify model bundles (see docs/bundle.md and ../shared/CONTRACT.md).

Standard library only: the agent, the deploy role's on-device check and
``segedge-build verify`` all use this module, so a bundle is judged the same
way everywhere and never needs torch to be checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TARGETS = ("cpu", "gpu", "npu", "myriad")
# The OpenVINO device each bundle target is meant for.
TARGET_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "myriad": "MYRIAD"}


class BundleError(Exception):
    """A bundle that must not be used; the message says what and where."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the bundle root, always with forward slashes
    sha256: str
    size: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: List[int]
    element_type: str  # "f32", "u8", ...
    layout: str = "NCHW"
    color_order: str = "RGB"  # input only
    value_range: List[float] = field(default_factory=lambda: [0.0, 255.0])
    normalization: str = "inside_model"  # or "caller"
    mean: Optional[List[float]] = None  # set when normalization == "caller"
    std: Optional[List[float]] = None
    kind: str = ""  # output only: "logits" or "probabilities"


@dataclass(frozen=True)
class TargetEntry:
    name: str  # cpu, gpu, npu, myriad
    device: str  # OpenVINO device name
    precision: str  # INT8, FP16, FP32
    format: str  # "openvino_ir" or "onnx"
    model: str  # path of the file to compile (model.xml or model.onnx)
    files: List[FileEntry]
    min_runtime: str
    static_shape: bool
    accuracy: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    tools: Dict[str, str]
    source_checkpoint: Dict[str, Any]
    model: Dict[str, Any]
    input: TensorSpec
    output: TensorSpec
    classes: List[str]
    targets: Dict[str, TargetEntry]
    evaluation: Dict[str, Any]
    files: List[FileEntry]
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for target in data["targets"].values():
            target.pop("name", None)
        return data


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(bundle_dir: Path, path: Path) -> FileEntry:
    rel = Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix()
    return FileEntry(path=rel, sha256=sha256_file(path), size=Path(path).stat().st_size)


def _require(data: Dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing key '{key}'")
    return data[key]


def _safe_path(path: str) -> bool:
    """A non-empty relative path with forward slashes that cannot leave the bundle."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or ":" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _files(items: Iterable[Dict[str, Any]], where: str) -> List[FileEntry]:
    out = []
    for i, item in enumerate(items):
        loc = f"{where}[{i}]"
        path = str(_require(item, "path", loc))
        if not _safe_path(path):
            raise BundleError(f"{loc}: path '{path}' must be relative and stay inside the bundle")
        out.append(FileEntry(path=path, sha256=str(_require(item, "sha256", loc)),
                             size=int(_require(item, "size", loc))))
    return out


def _tensor(data: Dict[str, Any], where: str) -> TensorSpec:
    for key in ("name", "shape", "element_type"):
        _require(data, key, where)
    known = set(TensorSpec.__dataclass_fields__)
    return TensorSpec(**{k: v for k, v in data.items() if k in known})


def parse_manifest(data: Dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
    """Turn manifest JSON into a Manifest, refusing unknown schema versions."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r} is not supported "
                          f"(this segedge reads {SCHEMA_VERSION})")
    targets = {}
    for name, entry in dict(_require(data, "targets", where)).items():
        loc = f"{where}: targets.{name}"
        if name not in TARGETS:
            raise BundleError(f"{loc}: unknown target (known: {', '.join(TARGETS)})")
        model = str(_require(entry, "model", loc))
        files = _files(_require(entry, "files", loc), f"{loc}.files")
        # The model is compiled from bundle/model: it must be one of the checksummed files.
        if not _safe_path(model) or model not in {f.path for f in files}:
            raise BundleError(f"{loc}.model: '{model}' must be a relative path listed in "
                              f"targets.{name}.files (only checksummed files are compiled)")
        targets[name] = TargetEntry(
            name=name,
            device=str(_require(entry, "device", loc)),
            precision=str(_require(entry, "precision", loc)),
            format=str(_require(entry, "format", loc)),
            model=model,
            files=files,
            min_runtime=str(_require(entry, "min_runtime", loc)),
            static_shape=bool(_require(entry, "static_shape", loc)),
            accuracy=dict(entry.get("accuracy", {})),
        )
    return Manifest(
        schema_version=version,
        name=str(_require(data, "name", where)),
        version=str(_require(data, "version", where)),
        created=str(_require(data, "created", where)),
        tools=dict(_require(data, "tools", where)),
        source_checkpoint=dict(_require(data, "source_checkpoint", where)),
        model=dict(_require(data, "model", where)),
        input=_tensor(_require(data, "input", where), f"{where}: input"),
        output=_tensor(_require(data, "output", where), f"{where}: output"),
        classes=[str(c) for c in _require(data, "classes", where)],
        targets=targets,
        evaluation=dict(_require(data, "evaluation", where)),
        files=_files(_require(data, "files", where), f"{where}: files"),
    )


def load_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is '{bundle_dir}' a bundle version directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from exc
    return parse_manifest(data, str(path))


def check_files(bundle_dir: Path, entries: Iterable[FileEntry]) -> List[str]:
    """Return one problem line per missing, resized or altered file."""
    problems = []
    for entry in entries:
        path = Path(bundle_dir) / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{path}: size {path.stat().st_size} != {entry.size} in manifest")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 mismatch (file altered or corrupt)")
    return problems


def open_target(bundle_dir: Path, target: str) -> tuple[Manifest, TargetEntry, Path]:
    """Load a bundle for one target after checking that target's files.

    Returns the manifest, the target entry and the absolute path of the model
    file to compile. Raises BundleError naming the problem.
    """
    manifest = load_manifest(bundle_dir)
    if target not in manifest.targets:
        built = ", ".join(sorted(manifest.targets)) or "none"
        raise BundleError(f"{Path(bundle_dir) / MANIFEST_NAME}: bundle has no target "
                          f"'{target}' (built: {built})")
    entry = manifest.targets[target]
    problems = check_files(bundle_dir, entry.files)
    if problems:
        raise BundleError("bundle refused: " + "; ".join(problems))
    return manifest, entry, (Path(bundle_dir) / entry.model).resolve()


def verify_bundle(bundle_dir: Path, targets: Optional[Iterable[str]] = None) -> List[str]:
    """Check schema and every checksum; an empty list means the bundle is good.

    With ``targets`` only the files of those targets are checked (a device
    that received only its own target can still verify what it has).
    """
    try:
        manifest = load_manifest(bundle_dir)
    except BundleError as exc:
        return [str(exc)]
    if targets is None:
        entries = list(manifest.files)
        missing = []
    else:
        wanted = list(targets)
        missing = [f"{Path(bundle_dir) / MANIFEST_NAME}: bundle has no target '{t}'"
                   for t in wanted if t not in manifest.targets]
        entries = [f for t in wanted if t in manifest.targets for f in manifest.targets[t].files]
    return missing + check_files(bundle_dir, entries)


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path
