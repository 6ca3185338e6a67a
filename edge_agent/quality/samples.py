"""Samples for labelling: frames the model is unsure of, plus a random share, on disk.

The publish thread asks ``Sampler.offer`` about each published frame: a cheap choice
(the frame's uncertain-pixel share against ``uncertain_above``, rate-limited; a random
frame now and then) and, for a chosen one, a hand-over of references to a bounded queue.
One ``SampleWriter`` thread encodes and writes them, so inference never waits on a disk.

Each camera writes ``<dir>/<camera_id>/`` in the Oxford-IIIT Pet layout that
``segedge-build`` reads (docs/field-loop.md, "Samples on the device")::

    images/<name>.jpg                   the frame
    annotations/trimaps/<name>.png      the pre-label (palette PNG): 1 pet, 2 background, 3 unsure
    annotations/samples/<name>.json     sidecar: camera, frame, time, model, figures, reason
    annotations/trainval.txt            the names, kept in step (others' lines kept)

Names start with ``segedge-``; the agent lists, counts and deletes only regular files of
that prefix that its own user owns, reached through directory descriptors opened with
``O_NOFOLLOW`` (a symlink anywhere below ``dir`` is refused, never followed), so other
people's files in the folder are left alone and nothing is written outside it. Each
camera keeps at most ``max_samples`` samples and ``max_bytes`` bytes: a new sample
deletes the oldest (counted). A write that fails (full disk, read-only folder, a symlink
where a folder should be) stops that camera's sampling with one log line and a counter;
inference goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import queue
import random
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edge_agent.config import SamplesConfig, valid_id
from edge_agent.health.pacing import RateLimiter
from edge_agent.health.stats import Counters
from edge_agent.inference.preprocess import as_bgr
from edge_agent.protocol.overlay import palette_png

log = logging.getLogger("segedge.samples")

PREFIX = "segedge-"  # every name the sampler writes (and the only ones it deletes)
TMP_PREFIX = ".segedge-tmp-"  # written first, renamed into place
IMAGES, TRIMAPS, SIDECARS = "images", "trimaps", "samples"  # the last two in annotations/
LIST_NAME = "trainval.txt"
SUFFIX = {IMAGES: ".jpg", TRIMAPS: ".png", SIDECARS: ".json"}
PET, BACKGROUND, UNSURE = 1, 2, 3  # trimap values (Oxford-IIIT Pet: 3 is the border)
# the pre-label is a palette PNG: its values are 1..3 as the build reads them, and an image
# editor shows them in colour (0 unused, pet magenta, background dark grey, unsure amber)
TRIMAP_PALETTE = np.array([[0, 0, 0], [255, 0, 200], [40, 40, 40], [255, 190, 0]], np.uint8)
QUEUE_SIZE = 4  # samples waiting for the writer (frames by reference: bounded memory)
JPEG_QUALITY = 90
MAX_LIST_BYTES = 16 << 20  # a trainval.txt larger than this is not ours to rewrite
SCHEMA_VERSION = 1
COUNTERS = ("chosen", "saved", "dropped_oldest", "queue_full", "too_big", "failed")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Unsafe(OSError):
    """Something in the sample folder the sampler will not touch (one line says what)."""


def finite_share(value: Any) -> Optional[float]:
    """A figure as a float in [0, 1], or None (missing, NaN, inf, out of range)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and 0.0 <= number <= 1.0 else None


class Chooser:
    """Which frames become samples: pure, clock and random source injectable; one owner
    (the publish thread).

    ``per_minute * (1 - random_share)`` a minute are frames whose uncertain share is at
    least ``uncertain_above`` (evenly spaced: ``RateLimiter``); ``per_minute *
    random_share`` a minute are the first frame after a random moment (intervals drawn
    uniformly between half and one and a half of the mean), whatever its figures.
    """

    def __init__(self, cfg: SamplesConfig, now: float,
                 rand: Callable[[], float] = random.random) -> None:
        share = min(1.0, max(0.0, cfg.random_share))
        self.threshold = cfg.uncertain_above
        per_s = cfg.per_minute / 60.0
        self._uncertain = RateLimiter(per_s * (1.0 - share)) if share < 1.0 else None
        self._period = 1.0 / (per_s * share) if share > 0.0 else 0.0
        self._rand = rand
        self._next_random = now + self._period * rand() if self._period else math.inf

    def choose(self, uncertain: Optional[float], now: float) -> Optional[str]:
        """``"uncertain"``, ``"random"`` or None for a frame with this uncertain share
        (None: unknown, only a random pick can take it)."""
        if uncertain is not None and uncertain >= self.threshold and self._uncertain \
                and self._uncertain.allow(now):
            return "uncertain"
        if now >= self._next_random:
            self._next_random = now + self._period * (0.5 + self._rand())
            return "random"
        return None


def prelabel(mask: np.ndarray, frame_hw: Tuple[int, int],
             unsure: Optional[np.ndarray] = None) -> np.ndarray:
    """The trimap a person corrects: predicted pet 1, background 2, unsure 3, at frame size.

    ``mask`` holds class indices (0 background, 1 pet, 2 a trimap model's border: 3),
    at any size (nearest neighbour to the frame's). ``unsure`` (bool, any size) marks the
    pixels the model was unsure of; without it a thin band around the predicted boundary
    is 3 (about 1/160 of the shorter side on each side of it, at least 1 pixel)."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    classes = np.asarray(mask)
    if classes.ndim != 2 or classes.size == 0:
        raise ValueError(f"mask of shape {classes.shape} is not a class map")
    if classes.shape != (h, w):
        classes = cv2.resize(classes.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    lut = np.array([BACKGROUND, PET] + [UNSURE] * 254, np.uint8)
    trimap = lut[np.clip(classes, 0, 255).astype(np.uint8)]
    if unsure is not None:
        band = np.asarray(unsure).astype(np.uint8)
        if band.shape != (h, w):
            band = cv2.resize(band, (w, h), interpolation=cv2.INTER_NEAREST)
        trimap[band > 0] = UNSURE
        return trimap
    radius = max(1, min(h, w) // 160)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    pet = (trimap == PET).astype(np.uint8)
    edge = cv2.dilate(pet, kernel) != cv2.erode(pet, kernel)
    trimap[edge] = UNSURE
    return trimap


def sample_name(camera_id: str, ts: float, frame_id: int) -> str:
    """``segedge-<camera>-<UTC yyyymmdd-hhmmss-mmm>-f<frame>``: sorts oldest first."""
    ts = ts if math.isfinite(ts) and ts > 0 else time.time()
    whole = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ts))
    return f"{PREFIX}{camera_id}-{whole}-{int(ts * 1000) % 1000:03d}-f{int(frame_id)}"


def model_record(engine: Any) -> Dict[str, Any]:
    """name, version, precision and the target's model file with its sha256 (from the
    verified manifest) of the engine that made the mask."""
    info = engine.info
    target = getattr(engine, "target", None)
    record = {"name": info.name, "version": info.version, "precision": info.precision,
              "file": None, "sha256": None}
    if target is not None:
        record["file"] = target.model
        record["sha256"] = next((f.sha256 for f in target.files if f.path == target.model),
                                None)
    return record


@dataclass
class Sample:
    """One chosen frame on its way to the writer (references, no copies)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    unsure: Optional[np.ndarray]
    sidecar: Dict[str, Any]


class SampleStore:
    """One camera's folder, ``<root>/<camera_id>/``; used by the writer thread only."""

    def __init__(self, root: str, camera_id: str, cfg: SamplesConfig, counters: Counters
                 ) -> None:
        self.root, self.camera_id, self.cfg, self.counters = root, camera_id, cfg, counters
        self.stopped: Optional[str] = None
        self._uid = os.geteuid()

    # --- the folder ------------------------------------------------------------------
    def _open_tree(self) -> Dict[str, int]:
        """Descriptors of the camera folder and its subfolders, made when missing; a
        symlink or a non-directory on the way is refused (ELOOP/ENOTDIR)."""
        if not valid_id(self.camera_id):  # one folder level, never '..' or a path
            raise Unsafe(errno.EINVAL, f"camera id {self.camera_id!r:.60} is no folder name")
        os.makedirs(self.root, 0o750, exist_ok=True)
        fds: Dict[str, int] = {}
        cam = self.camera_id
        try:
            fds["root"] = _open_dir(None, self.root, "the samples folder")
            fds["camera"] = _open_dir(fds["root"], cam)
            fds[IMAGES] = _open_dir(fds["camera"], IMAGES, f"{cam}/{IMAGES}")
            fds["annotations"] = _open_dir(fds["camera"], "annotations", f"{cam}/annotations")
            fds[TRIMAPS] = _open_dir(fds["annotations"], TRIMAPS, f"{cam}/annotations/{TRIMAPS}")
            fds[SIDECARS] = _open_dir(fds["annotations"], SIDECARS,
                                      f"{cam}/annotations/{SIDECARS}")
        except BaseException:
            _close(fds)
            raise
        return fds

    def _scan(self, fds: Dict[str, int]) -> Dict[str, List[Tuple[str, str, int]]]:
        """Our samples on disk: name -> [(folder, file, bytes)]. Leftover temporary files
        of ours (a crash mid-write) are removed; anything else is not ours: not counted,
        not touched."""
        found: Dict[str, List[Tuple[str, str, int]]] = {}
        for folder in (IMAGES, TRIMAPS, SIDECARS):
            fd = fds[folder]
            for entry in _names(fd):
                if entry.startswith(TMP_PREFIX) and self._ours(fd, entry):
                    _unlink(fd, entry)
                    continue
                if not entry.startswith(PREFIX) or not entry.endswith(SUFFIX[folder]):
                    continue
                size = self._ours(fd, entry)
                if size is not None:
                    name = entry[: -len(SUFFIX[folder])]
                    found.setdefault(name, []).append((folder, entry, size))
        return found

    def _ours(self, fd: int, entry: str) -> Optional[int]:
        """The size of a regular file our user owns (no symlink followed), else None."""
        try:
            info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_uid != self._uid:
            return None
        return info.st_size

    # --- one sample ------------------------------------------------------------------
    def write(self, sample: Sample) -> bool:
        """Encode and write one sample whole (or nothing of it); False when not written."""
        if self.stopped:
            return False
        try:
            files = self._encode(sample)
        except (ValueError, cv2.error) as exc:
            self.counters.add("failed")
            log.warning("%s: sample %s not written: %s", self.camera_id, sample.name, exc)
            return False
        size = sum(len(data) for _folder, data in files)
        if size > self.cfg.max_bytes:
            self.counters.add("too_big")
            return False
        try:
            fds = self._open_tree()
        except OSError as exc:
            self._stop(exc)
            return False
        written: List[Tuple[str, str]] = []
        try:
            found = self._scan(fds)
            self._make_room(fds, found, size)
            for folder, data in files:
                entry = sample.name + SUFFIX[folder]
                _put(fds[folder], entry, data)
                written.append((folder, entry))
            found[sample.name] = [(f, e, 0) for f, e in written]
            self._write_list(fds["annotations"], found)
        except OSError as exc:
            for folder, entry in written:  # nothing of a half-written sample stays
                _discard(fds[folder], entry)
            self._stop(exc)
            return False
        finally:
            _close(fds)
        self.counters.add("saved")
        return True

    def _encode(self, sample: Sample) -> List[Tuple[str, bytes]]:
        image = as_bgr(sample.image)
        trimap = prelabel(sample.mask, image.shape[:2], sample.unsure)
        ok_jpg, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok_jpg:
            raise ValueError("the image did not encode")
        png = palette_png(trimap, TRIMAP_PALETTE)  # values 1..3, shown in colour
        sidecar = dict(sample.sidecar, image={"width": int(image.shape[1]),
                                              "height": int(image.shape[0])},
                       prelabel={"sha256": hashlib.sha256(png).hexdigest(),
                                 "unsure": "model" if sample.unsure is not None
                                 else "border"})
        text = json.dumps(sidecar, indent=1, allow_nan=False, sort_keys=True) + "\n"
        # the sidecar last: a sample is complete once its sidecar is there
        return [(IMAGES, jpg.tobytes()), (TRIMAPS, png), (SIDECARS, text.encode())]

    def _make_room(self, fds: Dict[str, int], found: Dict[str, List[Tuple[str, str, int]]],
                   size: int) -> None:
        """Delete the oldest samples until one more fits both bounds."""
        total = sum(s for files in found.values() for _f, _e, s in files)
        for name in sorted(found):
            if len(found) + 1 <= self.cfg.max_samples and total + size <= self.cfg.max_bytes:
                break
            for folder, entry, bytes_ in found.pop(name):
                _unlink(fds[folder], entry)
                total -= bytes_
            self.counters.add("dropped_oldest")

    def _write_list(self, ann_fd: int, found: Dict[str, List[Tuple[str, str, int]]]) -> None:
        """trainval.txt: others' lines as they were, then our complete samples, oldest
        first."""
        kept: List[str] = []
        try:
            fd = os.open(LIST_NAME, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=ann_fd)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise Unsafe(errno.EINVAL, f"{self.camera_id}/annotations/{LIST_NAME} is "
                                               f"not a regular file")
                raw = handle.read(MAX_LIST_BYTES + 1)
            if len(raw) > MAX_LIST_BYTES:
                raise Unsafe(errno.EFBIG, f"{self.camera_id}/annotations/{LIST_NAME} is "
                                          f"over {MAX_LIST_BYTES} bytes")
            kept = [line for line in raw.decode("utf-8", "replace").splitlines()
                    if line.strip() and not line.split()[0].startswith(PREFIX)]
        complete = sorted(name for name, files in found.items() if len(files) == 3)
        _put(ann_fd, LIST_NAME, ("\n".join(kept + complete) + "\n").encode(), replace=True)

    def _stop(self, exc: OSError) -> None:
        """The one log line and the counter; this camera samples no more until restart."""
        reason = exc.strerror if isinstance(exc, Unsafe) or not exc.filename else \
            f"{exc.filename}: {exc.strerror or exc}"
        if exc.errno == errno.ELOOP and not isinstance(exc, Unsafe):
            reason = f"{exc.filename}: a symlink (never followed)"
        reason = f"{reason or exc} (errno {errno.errorcode.get(exc.errno or 0, exc.errno)})"
        self.stopped = " ".join(reason.split())[:300]
        self.counters.add("failed")
        log.error("%s: sampling stopped (inference goes on): %s in %s", self.camera_id,
                  self.stopped, os.path.join(self.root, self.camera_id))


def _open_dir(parent: Optional[int], name: str, label: str = "") -> int:
    """A directory descriptor of ``name`` (made when missing), never through a symlink;
    ``Unsafe`` names a symlink or a non-folder there."""
    if parent is not None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o750, dir_fd=parent)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        what = "a symlink (never followed)" if link else "not a folder"
        raise Unsafe(errno.ELOOP if link else errno.ENOTDIR,
                     f"{label or name} is {what}") from None


def _close(fds: Dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def _names(fd: int) -> List[str]:
    return os.listdir(fd)


def _unlink(fd: int, entry: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry, dir_fd=fd)


def _discard(fd: int, entry: str) -> None:
    """Clean-up after a failure: best effort (the folder may have turned read-only)."""
    with contextlib.suppress(OSError):
        os.unlink(entry, dir_fd=fd)


def _put(fd: int, entry: str, data: bytes, replace: bool = False) -> None:
    """Write ``entry`` in the folder ``fd`` through a temporary file and a rename. An
    existing ``entry`` is replaced only with ``replace`` and only when it is a regular
    file (a symlink or anything else there is refused, never followed or removed)."""
    tmp = TMP_PREFIX + entry
    _unlink(fd, tmp)  # ours, from an attempt that failed before its rename
    out = os.open(tmp, _NEW_FLAGS, 0o640, dir_fd=fd)
    try:
        with os.fdopen(out, "wb") as handle:
            handle.write(data)
        try:
            there = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None and not (replace and stat.S_ISREG(there.st_mode)):
            raise Unsafe(errno.EEXIST, f"{entry} is already there (left alone)")
        os.replace(tmp, entry, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        _discard(fd, tmp)
        raise


class SampleWriter:
    """The agent's one writer thread: a bounded queue of (store, sample), each written by
    its camera's store. A full queue drops the new sample (counted by its sampler)."""

    def __init__(self, stop: threading.Event, size: int = QUEUE_SIZE) -> None:
        self.stop = stop
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._loop, name="samples", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, store: SampleStore, sample: Sample) -> bool:
        try:
            self._queue.put_nowait((store, sample))
            return True
        except queue.Full:
            return False

    def drain(self) -> None:
        """Write what is queued now (tests, and the writer's own loop)."""
        while True:
            try:
                store, sample = self._queue.get_nowait()
            except queue.Empty:
                return
            self._write(store, sample)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                store, sample = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._write(store, sample)

    @staticmethod
    def _write(store: SampleStore, sample: Sample) -> None:
        try:
            store.write(sample)
        except Exception:  # noqa: BLE001 - a sample never ends the writer (nor the agent)
            store.counters.add("failed")
            log.exception("%s: sample %s not written", store.camera_id, sample.name)


class Sampler:
    """One camera's sampling: ``offer`` on the publish thread, writing on the writer's."""

    def __init__(self, camera_id: str, cfg: SamplesConfig, root: str, writer: SampleWriter,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.camera_id, self.writer = camera_id, writer
        self.counters = Counters(COUNTERS)
        self.store = SampleStore(root, camera_id, cfg, self.counters)
        self.chooser = Chooser(cfg, clock(), rand)
        self._clock = clock

    def offer(self, frame_id: int, captured_at: float, image: np.ndarray, mask: np.ndarray,
              figures: Any, engine: Any, unsure: Optional[np.ndarray] = None
              ) -> Optional[str]:
        """Choose or not; a chosen frame goes to the writer by reference (the frame and
        its mask are never changed after publication). Returns the reason when queued.
        ``figures``: any object with ``uncertain`` and ``margin`` shares, or None."""
        if self.store.stopped:
            return None
        uncertain = finite_share(getattr(figures, "uncertain", None))
        reason = self.chooser.choose(uncertain, self._clock())
        if reason is None:
            return None
        self.counters.add("chosen")
        sidecar = {"schema_version": SCHEMA_VERSION, "camera_id": self.camera_id,
                   "frame_id": int(frame_id), "ts": round(float(captured_at), 3),
                   "model": model_record(engine), "uncertain": uncertain,
                   "margin": finite_share(getattr(figures, "margin", None)), "reason": reason}
        sample = Sample(sample_name(self.camera_id, captured_at, frame_id), image, mask,
                        unsure, sidecar)
        if not self.writer.submit(self.store, sample):
            self.counters.add("queue_full")
            return None
        return reason

    def report(self) -> Dict[str, Any]:
        """The health file's view: counters and why sampling stopped (None: it did not)."""
        return {**self.counters.snapshot(), "stopped": self.store.stopped}
