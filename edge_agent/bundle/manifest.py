"""Read, write and verify model bundles (see docs/bundle.md).

Standard library only: the agent, the deploy role's on-device check and
``segedge-build verify`` all use this module, so a bundle is judged the same
way everywhere and never needs torch to be checked. Every manifest is validated
against the shipped JSON Schema (``edge_agent/protocol/schemas/manifest.schema.json``) before
it is parsed, so what this module accepts the schema accepts too. Any bad input ends
in ``BundleError`` with one line naming the file and the key, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from edge_agent.bundle import schema as schemas

SCHEMA_VERSION = 2  # written; 2 adds the optional ``reference``
SCHEMA_VERSIONS = (1, 2)  # read (a version 1 manifest carries no reference)
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few KB; refuse before parsing
MAX_DEPTH = 32  # JSON nesting a manifest may have (real ones: 5)
# Any file a manifest lists: checked from the manifest's declared size and the file's
# stat before a byte is read (the agent holds a model and its weights in memory once to
# compile them; real edge models are 5-100 MB)
MAX_FILE_BYTES = 1 << 30  # 1 GiB
MAX_IR_XML_BYTES = 16 << 20  # an IR's .xml is parsed whole at --check-config (real: < 5 MB)
HASH_BUFFER = 1 << 20  # files are hashed through one buffer of this size, never read whole
TARGETS = ("cpu", "gpu", "npu", "myriad")
# The quality reference (docs/quality.md): per split, one list per figure, one value
# (0..1) per image, at most this many images and splits.
REFERENCE_FIGURES = ("uncertain", "margin", "coverage")
MAX_REFERENCE_IMAGES = 10000
MAX_REFERENCE_SPLITS = 4
_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# The OpenVINO device each bundle target is meant for.
TARGET_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "myriad": "MYRIAD"}


class BundleError(Exception):
    """A bundle that must not be used; the message (one line) says what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


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
    # {"statistic": "uncertain", "threshold", "splits": {split: {figure: [...]}}} or None
    reference: Optional[Dict[str, Any]] = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for target in data["targets"].values():
            target.pop("name", None)
        if data["reference"] is None:
            data.pop("reference")
        return data


def sha256_file(path: Path, chunk_size: int = HASH_BUFFER) -> str:
    """The file's sha256, read through one ``chunk_size`` buffer (memory stays bounded)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _hash_checked(path: Path, expected: int, limit: int = MAX_FILE_BYTES) -> str:
    """Open once (no symlink at the last step), check from ``fstat`` that it is a regular
    file of ``expected`` bytes within ``limit`` before reading, then stream it through
    sha256 with one bounded buffer. BundleError names the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise BundleError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise BundleError(f"{path}: {info.st_size} bytes, over the {limit} bytes a bundle "
                              f"file may have")
        if info.st_size != expected:
            raise BundleError(f"{path}: size {info.st_size} != {expected} in manifest")
        digest, total = hashlib.sha256(), 0
        buffer = bytearray(HASH_BUFFER)
        view = memoryview(buffer)
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            total += n
            if total > expected:
                raise BundleError(f"{path}: changed while being read")
            digest.update(view[:n])
    if total != expected:
        raise BundleError(f"{path}: changed while being read")
    return digest.hexdigest()


def file_entry(bundle_dir: Path, path: Path) -> FileEntry:
    rel = Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix()
    return FileEntry(path=rel, sha256=sha256_file(path), size=Path(path).stat().st_size)


def _safe_path(path: str) -> bool:
    """A non-empty relative path with forward slashes that cannot leave the bundle."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or ":" in path \
            or not path.isprintable():
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _root(bundle_dir: Path) -> Path:
    """The bundle directory with symlinks resolved (``current`` -> a version dir)."""
    try:
        return Path(bundle_dir).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # loops, ENAMETOOLONG, NUL
        raise BundleError(f"{bundle_dir}: cannot resolve bundle directory: {exc}") from None


def inside(root: Path, rel: str) -> Path:
    """``root/rel`` with every symlink resolved; BundleError if it leads outside ``root``."""
    where = root / rel
    try:
        real = where.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise BundleError(f"{where}: cannot resolve: {exc}") from None
    if real != root and root not in real.parents:
        raise BundleError(f"{where}: resolves to {real}, outside the bundle (symlinks must "
                          f"stay inside it)")
    return real


def _read_exact(path: Path, limit: int, expected: Optional[int] = None) -> bytes:
    """Open once (no symlink at the last step), check it is a file, read at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise BundleError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path}: not a regular file")
        if expected is not None and info.st_size != expected:
            raise BundleError(f"{path}: size {info.st_size} != {expected} in manifest")
        if info.st_size > limit:
            raise BundleError(f"{path}: {info.st_size} bytes, more than the {limit} allowed")
        data = handle.read(limit + 1)
    if len(data) > limit or (expected is not None and len(data) != expected):
        raise BundleError(f"{path}: changed while being read")
    return data


def _depth_ok(data: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node \
            if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@lru_cache(maxsize=1)
def _validator() -> schemas.Validator:
    return schemas.Validator(schemas.load("manifest"))


def schema_errors(data: Any) -> List[str]:
    """Every way ``data`` breaks the shipped manifest schema ([] when it validates)."""
    return _validator().errors(data)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: expected an integer, got {value!r:.60}")
    return value


def _files(items: List[Dict[str, Any]], where: str) -> List[FileEntry]:
    out = []
    for i, item in enumerate(items):
        loc = f"{where}[{i}]"
        path = item["path"]
        if not _safe_path(path):
            raise BundleError(f"{loc}: path {path!r:.80} must be relative and stay inside "
                              f"the bundle")
        size = _int(item["size"], f"{loc}.size")
        if size > MAX_FILE_BYTES:
            raise BundleError(f"{loc}.size: {path!r:.80} declares {size} bytes, over the "
                              f"{MAX_FILE_BYTES} bytes a bundle file may have")
        out.append(FileEntry(path=path, sha256=item["sha256"], size=size))
    return out


def _tensor(data: Dict[str, Any], where: str) -> TensorSpec:
    known = set(TensorSpec.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known}
    values["shape"] = [_int(v, f"{where}.shape") for v in data["shape"]]
    return TensorSpec(**values)


def _reference(data: Any, where: str) -> Optional[Dict[str, Any]]:
    """The checked quality reference (the schema has passed): bounded, finite, each split's
    figures of the same images; BundleError names the split and figure."""
    if data is None:
        return None
    threshold = data["threshold"]
    if not math.isfinite(threshold) or not 0.5 <= threshold < 1.0:
        raise BundleError(f"{where}.threshold: must be >= 0.5 and < 1, got {threshold!r:.40}")
    splits = data["splits"]
    if len(splits) > MAX_REFERENCE_SPLITS:
        raise BundleError(f"{where}.splits: {len(splits)} splits, more than the "
                          f"{MAX_REFERENCE_SPLITS} allowed")
    out: Dict[str, Dict[str, List[float]]] = {}
    for name, split in splits.items():
        if not _SPLIT_NAME.fullmatch(name):
            raise BundleError(f"{where}.splits: split name {name!r:.40} must be "
                              f"{_SPLIT_NAME.pattern}")
        lengths = set()
        for figure in REFERENCE_FIGURES:
            values = split[figure]
            loc = f"{where}.splits.{name}.{figure}"
            if len(values) > MAX_REFERENCE_IMAGES:
                raise BundleError(f"{loc}: {len(values)} values, more than the "
                                  f"{MAX_REFERENCE_IMAGES} allowed")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                    raise BundleError(f"{loc}: {v!r:.40} is not a finite number in 0..1")
            lengths.add(len(values))
        if len(lengths) != 1:
            raise BundleError(f"{where}.splits.{name}: uncertain, margin and coverage must "
                              f"hold one value per image each (lengths {sorted(lengths)})")
        out[name] = {f: [float(v) for v in split[f]] for f in REFERENCE_FIGURES}
    checked: Dict[str, Any] = {"statistic": data["statistic"], "threshold": float(threshold),
                               "splits": out}
    if "target" in data:
        checked["target"] = data["target"]
    return checked


def parse_manifest(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Turn manifest JSON into a Manifest; BundleError for anything the schema refuses."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or version not in SCHEMA_VERSIONS:
        raise BundleError(f"{where}: schema_version {version!r:.40} is not supported "
                          f"(this segedge reads {' and '.join(map(str, SCHEMA_VERSIONS))})")
    if not _depth_ok(data):
        raise BundleError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    try:
        errors = schema_errors(data)
    except schemas.SchemaError as exc:  # a broken install: refuse, never pass unchecked
        raise BundleError(f"{where}: cannot be checked: {exc}") from None
    except RecursionError:  # pragma: no cover - depth is checked above
        raise BundleError(f"{where}: nested too deep") from None
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: schema: {errors[0]}{more}")
    targets = {}
    for name, entry in data["targets"].items():
        loc = f"{where}: targets.{name}"
        model = entry["model"]
        files = _files(entry["files"], f"{loc}.files")
        # The model is compiled from bundle/model: it must be one of the checksummed files.
        if not _safe_path(model) or model not in {f.path for f in files}:
            raise BundleError(f"{loc}.model: {model!r:.80} must be a relative path listed in "
                              f"targets.{name}.files (only checksummed files are compiled)")
        targets[name] = TargetEntry(
            name=name, device=entry["device"], precision=entry["precision"],
            format=entry["format"], model=model, files=files,
            min_runtime=entry["min_runtime"], static_shape=entry["static_shape"],
            accuracy=dict(entry.get("accuracy", {})))
    return Manifest(
        schema_version=version, name=data["name"], version=data["version"],
        created=data["created"], tools=dict(data["tools"]),
        source_checkpoint=dict(data["source_checkpoint"]), model=dict(data["model"]),
        input=_tensor(data["input"], f"{where}: input"),
        output=_tensor(data["output"], f"{where}: output"),
        classes=list(data["classes"]), targets=targets,
        evaluation=dict(data["evaluation"]),
        files=_files(data["files"], f"{where}: files"),
        reference=_reference(data.get("reference"), f"{where}: reference"),
    )


def parse_manifest_bytes(raw: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """Decode and parse manifest.json's bytes (size already bounded by the caller)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} "
                          f"allowed")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BundleError(f"{where}: unreadable manifest: {text}") from None
    return parse_manifest(data, where)


def load_manifest(bundle_dir: Path) -> Manifest:
    root = _root(bundle_dir)
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        present = path.is_file()
    except (OSError, ValueError):
        present = False
    if not present:
        raise BundleError(f"{path}: no manifest (is '{bundle_dir}' a bundle version directory?)")
    real = inside(root, MANIFEST_NAME)
    return parse_manifest_bytes(_read_exact(real, MAX_MANIFEST_BYTES), str(path))


def check_files(bundle_dir: Path, entries: Iterable[FileEntry]) -> List[str]:
    """Return one problem line per missing, resized, altered or escaping file."""
    problems = []
    root = _root(bundle_dir)
    for entry in entries:
        path = Path(bundle_dir) / entry.path
        try:
            real = inside(root, entry.path)
            if not real.is_file():
                problems.append(f"{path}: missing")
            elif _hash_checked(real, entry.size) != entry.sha256:
                problems.append(f"{path}: sha256 mismatch (file altered or corrupt)")
        except BundleError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{path}: unreadable: {exc.strerror or exc}")
    return problems


@dataclass(frozen=True)
class ModelBytes:
    """A target's model exactly as hashed: compile these bytes, never re-read the files."""
    path: Path  # where the model file lives (for messages)
    format: str  # "openvino_ir" or "onnx"
    model: bytes
    weights: Optional[bytes]  # the IR's .bin; None for ONNX


def _read_verified(root: Path, bundle_dir: Path, entry: FileEntry,
                   limit: int = MAX_FILE_BYTES) -> bytes:
    path = Path(bundle_dir) / entry.path
    real = inside(root, entry.path)
    if not real.exists():
        raise BundleError(f"bundle refused: {path}: missing")
    if entry.size > limit:
        raise BundleError(f"bundle refused: {path}: declares {entry.size} bytes, over the "
                          f"{limit} allowed")
    try:
        data = _read_exact(real, max(entry.size, 0), entry.size)
    except BundleError as exc:
        raise BundleError(f"bundle refused: {exc}") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(f"bundle refused: {path}: sha256 mismatch (file altered or corrupt)")
    return data


def _check_ir(path: Path, xml: bytes) -> None:
    """An IR whose XML does not parse fails here, at --check-config, not at start."""
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError) as exc:
        raise BundleError(f"bundle refused: {path}: not a readable OpenVINO IR: "
                          f"{' '.join(str(exc).split())[:120]}") from None
    if root.tag != "net" or root.find("layers") is None:
        raise BundleError(f"bundle refused: {path}: not an OpenVINO IR (root <{root.tag:.40}>, "
                          f"expected <net> with <layers>)")


def read_model(bundle_dir: Path, entry: TargetEntry) -> ModelBytes:
    """Read the target's model (and IR weights) once, check size and sha256 of those bytes.

    The caller compiles the returned bytes, so the model that runs is the one that was
    hashed even if the files change afterwards.
    """
    root = _root(bundle_dir)
    by_path = {f.path: f for f in entry.files}
    model = _read_verified(root, bundle_dir, by_path[entry.model],
                           MAX_IR_XML_BYTES if entry.format == "openvino_ir" else MAX_FILE_BYTES)
    weights = None
    if entry.format == "openvino_ir":
        _check_ir(Path(bundle_dir) / entry.model, model)
        bin_path = entry.model.rsplit(".", 1)[0] + ".bin"
        if bin_path in by_path:
            weights = _read_verified(root, bundle_dir, by_path[bin_path])
    return ModelBytes(path=Path(bundle_dir) / entry.model, format=entry.format, model=model,
                      weights=weights)


def open_target(bundle_dir: Path, target: str) -> Tuple[Manifest, TargetEntry, Path]:
    """Load a bundle for one target after checking that target's files.

    Returns the manifest, the target entry and the absolute path of the model
    file to compile. Raises BundleError naming the problem.
    """
    manifest = load_manifest(bundle_dir)
    if target not in manifest.targets:
        built = ", ".join(sorted(manifest.targets)) or "none"
        raise BundleError(f"{Path(bundle_dir) / MANIFEST_NAME}: bundle has no target "
                          f"{target!r:.40} (built: {built})")
    entry = manifest.targets[target]
    problems = check_files(bundle_dir, entry.files)  # streamed: memory stays bounded
    if problems:
        raise BundleError("bundle refused: " + "; ".join(problems))
    if entry.format == "openvino_ir":  # the IR parses (OpenVINO is not loaded here); the
        # weights were hashed above and are not read again until the agent compiles them
        root = _root(bundle_dir)
        by_path = {f.path: f for f in entry.files}
        xml = _read_verified(root, bundle_dir, by_path[entry.model], MAX_IR_XML_BYTES)
        _check_ir(Path(bundle_dir) / entry.model, xml)
    return manifest, entry, inside(_root(bundle_dir), entry.model)


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


@dataclass(frozen=True)
class OpenedBundle:
    """The bundle as the CLI checked it, handed to the agent so it is not hashed twice."""

    manifest: Manifest
    target: TargetEntry
    model_path: Path

    @classmethod
    def open(cls, bundle: str, target: str) -> OpenedBundle:
        """Read and check the bundle (BundleError on any problem)."""
        manifest, entry, path = open_target(Path(bundle), target)
        return cls(manifest, entry, Path(path))
