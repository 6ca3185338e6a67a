"""``segedge-subscribe``: follow one device or all, decode masks, print live stats.

    segedge-subscribe --host 127.0.0.1 --device cam-01 --out ./masks

With ``--out`` it writes, per device, the mask as a palette PNG (pixel values are the
class indices, a viewer shows colours) and an overlay with outlines, legend and caption:
over the source frame when the agent publishes frames (``output.frame_every``),
otherwise over a grey canvas.

Every message is untrusted: one over MAX_PAYLOAD_BYTES, a mask or frame whose declared
or header size exceeds MAX_PIXELS (checked before decoding), or anything else unusable
is counted as bad and skipped, and handling goes on. Frames are decoded only with
``--out`` and kept within FRAMES_KEPT per device and FRAME_BUDGET_BYTES in all.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent import __version__
from edge_agent.client.connection import add_connection_args, make_client
from edge_agent.protocol import connect, overlay
from edge_agent.protocol.encoding import (
    MAX_PIXELS,
    MaskError,
    decode,
    image_budget_problem,
    image_size,
)

BAD_LOG_EVERY = 100  # log the 1st, then every Nth bad message
MAX_PAYLOAD_BYTES = 16 << 20  # larger messages are refused before JSON parsing
MAX_DEVICES = 1000  # device ids followed at once; messages for more are counted as bad
FRAMES_KEPT = 8  # newest source frames kept per device, for overlays
FRAME_BUDGET_BYTES = 256 << 20  # all kept frames together; the oldest go first


def safe_device_id(device_id: str) -> bool:
    """A device id usable as one folder name under ``--out``."""
    return bool(device_id) and device_id not in (".", "..") and "/" not in device_id \
        and "\\" not in device_id and "\0" not in device_id


LATENCY_KEEP = 1000  # latencies of the newest received masks, for the summary


@dataclass
class DeviceView:
    device_id: str
    status: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)
    masks: int = 0
    first_frame: Optional[int] = None
    last_frame: Optional[int] = None
    bad: int = 0
    frames: Dict[int, np.ndarray] = field(default_factory=dict)  # newest source frames
    latencies_ms: Deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_KEEP))


def latency_summary(values: Sequence[float]) -> Dict[str, Any]:
    """p50/p95 and count of the received masks' capture->publish latencies."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None}

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"count": len(ordered), "p50": pct(0.50), "p95": pct(0.95)}


def effective_state(status: Dict[str, Any], agent_status: Optional[Dict[str, Any]]) -> str:
    """A camera's state as a consumer must show it: ``offline`` while the agent serving it
    (``agent_id``, whose status carries the connection's last will) is offline, whatever
    the camera's own retained status says (docs/mqtt.md, "Several cameras")."""
    state = str(status.get("state", "?"))
    if status.get("agent_id") and agent_status and agent_status.get("state") == "offline":
        return "offline"
    return state


def stats_line(view: DeviceView, state: Optional[str] = None) -> str:
    s, st = view.stats, view.status
    fps, lat, fr = s.get("fps", {}), s.get("latency_ms", {}), s.get("frames", {})

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    state = state or str(st.get("state", "?"))
    return (f"{view.device_id:<12} {state:<8} {s.get('device', st.get('device'))} "
            f"{s.get('precision', '')} | fps cap {num(fps.get('capture'))} inf "
            f"{num(fps.get('inference'))} pub {num(fps.get('publish'))} | latency p50 "
            f"{num(lat.get('p50'))} p95 {num(lat.get('p95'))} p99 {num(lat.get('p99'))} ms | "
            f"frames cap {fr.get('captured', 0)} inf {fr.get('inferred', 0)} drop "
            f"{fr.get('dropped', 0)} pub {fr.get('published', 0)} | rx {view.masks} masks")


class Subscriber:
    def __init__(self, host: str, port: int, prefix: str = "segedge", device: str = "+",
                 out: Optional[str] = None, protocol: str = "5", username: str = "",
                 password: str = "", tls_ca: str = "", quiet: bool = False,
                 save_every: int = 1, tls_cert: str = "", tls_key: str = "") -> None:
        self.prefix, self.device = prefix, device
        self.out = Path(out) if out else None
        self.quiet, self.save_every = quiet, max(1, save_every)
        self.views: Dict[str, DeviceView] = {}
        self._kept: Dict[Tuple[str, int], int] = {}  # (device, frame_id) -> arrival number
        self._arrivals = 0
        self._frame_bytes = 0
        self.bad_messages = 0  # not JSON objects, or failing in handling
        self.lock = threading.Lock()
        self.client = make_client(protocol, username, password, tls_ca, tls_cert, tls_key)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"{self.prefix}/{self.device}/+", qos=1)

    def _view(self, device_id: str) -> DeviceView:
        if device_id not in self.views and len(self.views) >= MAX_DEVICES:
            raise ValueError(f"already following {MAX_DEVICES} devices; {device_id!r:.40} "
                             f"ignored")
        return self.views.setdefault(device_id, DeviceView(device_id))

    def _on_message(self, client, userdata, msg) -> None:
        # an exception escaping here would end paho's network thread silently
        try:
            self._handle(msg)
        except Exception as exc:  # noqa: BLE001 - count and go on with the next message
            self._bad(msg.topic, exc)

    def _bad(self, topic: str, exc: Exception) -> None:
        with self.lock:
            self.bad_messages += 1
            count = self.bad_messages
            device_id = topic.split("/")[-2] if topic.count("/") >= 2 else ""
            if device_id in self.views:
                self.views[device_id].bad += 1
        if count % BAD_LOG_EVERY == 1 or BAD_LOG_EVERY == 1:
            print(printable(f"bad message on {topic} ({count} so far): {type(exc).__name__}: "
                            f"{exc}"),
                  file=sys.stderr, flush=True)

    def _handle(self, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3:
            return
        device_id, kind = parts[-2], parts[-1]
        if kind not in ("status", "stats", "frame", "mask"):
            return  # e.g. the overlay JPEG stream and the retained settings: not ours to read
        if len(msg.payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"{len(msg.payload)} bytes, more than the {MAX_PAYLOAD_BYTES} "
                             f"a message may have")
        try:
            data = json.loads(msg.payload)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object: {type(data).__name__}")
        with self.lock:
            view = self._view(device_id)
            if kind == "status":
                view.status = data
                self._follow_agent(data)
                if not self.quiet:
                    reason = f" ({data['reason']})" if data.get("reason") else ""
                    print(printable(f"{device_id}: status {data.get('state')}{reason}"),
                          flush=True)
                    if data.get("state") == "offline":
                        for cam in self._cameras_of(device_id):
                            print(printable(f"{cam}: offline (its agent {device_id} is "
                                            f"offline)"), flush=True)
            elif kind == "stats":
                view.stats = data
                if not self.quiet:
                    print(printable(stats_line(view, self._state(view))), flush=True)
            elif kind == "frame":
                self._on_frame(view, data)
            elif kind == "mask":
                self._on_mask(view, data)

    def _state(self, view: DeviceView) -> str:
        agent = view.status.get("agent_id")
        agent_view = self.views.get(agent) if isinstance(agent, str) else None
        return effective_state(view.status, agent_view.status if agent_view else None)

    def _cameras_of(self, agent_id: str) -> List[str]:
        return [d for d, v in self.views.items() if v.status.get("agent_id") == agent_id
                and v.status.get("state") != "offline"]

    def _follow_agent(self, status: Dict[str, Any]) -> None:
        """Following one camera: also follow its agent's status (the last will is there)."""
        agent = status.get("agent_id")
        if self.device != "+" and isinstance(agent, str) and agent != self.device \
                and agent not in self.views and "/" not in agent and "+" not in agent \
                and "#" not in agent:
            self._view(agent)
            self.client.subscribe(f"{self.prefix}/{agent}/status", qos=1)

    def _on_frame(self, view: DeviceView, data: Dict[str, Any]) -> None:
        image_b64 = data.get("image", "")
        if not isinstance(image_b64, str) or len(image_b64) > MAX_PAYLOAD_BYTES:
            raise ValueError("frame image must be base64 text")
        try:
            raw = base64.b64decode(image_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"frame image is not base64: {exc}") from None
        fid = _frame_id(data)
        width, height = image_size(raw)  # from the header: bound pixels before decoding
        if not 0 < width * height <= MAX_PIXELS:
            raise ValueError(f"frame of {width}x{height} is outside 1..{MAX_PIXELS} pixels")
        problem = image_budget_problem(raw, width, height)
        if problem:
            raise ValueError(problem)
        if not self.out:  # frames only serve the overlays written under --out
            return
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (height, width):
            raise ValueError("frame image does not decode to its declared size")
        self._keep_frame(view, fid, image)

    def _keep_frame(self, view: DeviceView, fid: int, image: np.ndarray) -> None:
        """Keep the newest FRAMES_KEPT frames per device, all within FRAME_BUDGET_BYTES."""
        self._drop_frame(view, fid)
        view.frames[fid] = image
        self._frame_bytes += image.nbytes
        self._arrivals += 1
        self._kept[(view.device_id, fid)] = self._arrivals
        for old in sorted(view.frames)[:-FRAMES_KEPT]:
            self._drop_frame(view, old)
        while self._frame_bytes > FRAME_BUDGET_BYTES and self._kept:
            device_id, old = min(self._kept, key=self._kept.__getitem__)  # oldest arrival
            self._drop_frame(self.views[device_id], old)

    def _drop_frame(self, view: DeviceView, fid: int) -> None:
        image = view.frames.pop(fid, None)
        self._kept.pop((view.device_id, fid), None)
        if image is not None:
            self._frame_bytes -= image.nbytes

    def _on_mask(self, view: DeviceView, data: Dict[str, Any]) -> None:
        try:
            fid = _frame_id(data)
            height, width = data.get("height"), data.get("width")
            if not (isinstance(height, int) and isinstance(width, int)
                    and 0 < height * width <= MAX_PIXELS):
                raise MaskError(f"height x width must be 1..{MAX_PIXELS} pixels")
            mask = decode(data.get("mask"), data.get("encoding"), max_pixels=height * width)
            if mask.shape != (height, width):
                raise MaskError(f"mask shape {mask.shape} != {height}x{width}")
        except MaskError as exc:
            view.bad += 1
            print(printable(f"{view.device_id}: undecodable mask: {exc}"), file=sys.stderr)
            return
        classes, coverage = data.get("classes"), data.get("coverage")
        if not (isinstance(classes, list) and len(classes) <= 256
                and all(isinstance(c, str) and len(c) <= 64 for c in classes)):
            data["classes"] = []  # only drawn in captions: bounded, or left out
        if not (isinstance(coverage, dict) and len(coverage) <= 256):
            data["coverage"] = None
        view.masks += 1
        view.first_frame = fid if view.first_frame is None else view.first_frame
        view.last_frame = fid
        if isinstance(data.get("latency_ms"), (int, float)):
            view.latencies_ms.append(float(data["latency_ms"]))
        # with published frames, save the masks that have one; otherwise every Nth
        wanted = fid in view.frames if view.frames else view.masks % self.save_every == 0
        if self.out and wanted and not safe_device_id(view.device_id):
            raise ValueError(f"device id {view.device_id!r} is not usable as a folder name")
        if self.out and wanted:
            folder = self.out / view.device_id
            folder.mkdir(parents=True, exist_ok=True)
            self._save(folder, fid, mask, data, view.frames.get(fid))

    def _save(self, folder: Path, fid: int, mask: np.ndarray, data: Dict[str, Any],
              frame: Optional[np.ndarray]) -> None:
        """The palette mask PNG and the overlay of one mask message."""
        classes = [str(c) for c in data.get("classes") or []]
        latency = data.get("latency_ms")
        label = overlay.Caption(data.get("device_id") or folder.name, fid,
                                float(latency) if isinstance(latency, (int, float)) else None,
                                overlay.coverage_pairs(classes, data.get("coverage")))
        (folder / f"mask_{fid:08d}.png").write_bytes(overlay.palette_png(mask))
        cv2.imwrite(str(folder / f"overlay_{fid:08d}.jpg"),
                    overlay.draw(mask, frame, classes, label), [cv2.IMWRITE_JPEG_QUALITY, 90])

    def run(self, duration: float = 0.0, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
        """Raises connect.BrokerError (one line) when the broker cannot be used."""
        stop = stop or threading.Event()
        connect.connect(self.client, self.host, self.port, keepalive=30)
        deadline = time.monotonic() + duration if duration > 0 else None
        try:
            while not stop.wait(0.2):
                if deadline and time.monotonic() >= deadline:
                    break
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        return self.summary()

    def summary(self) -> Dict[str, Any]:
        with self.lock:
            return {d: {"state": self._state(v) if v.status else None, "masks": v.masks,
                        "bad": v.bad,
                        "first_frame": v.first_frame, "last_frame": v.last_frame,
                        "latency_ms": latency_summary(v.latencies_ms), "stats": v.stats}
                    for d, v in self.views.items()}


def printable(text: str, limit: int = 1000) -> str:
    """A line safe for a terminal: no control characters (escape sequences) from messages."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _frame_id(data: Dict[str, Any]) -> int:
    fid = data.get("frame_id")
    if isinstance(fid, bool) or not isinstance(fid, int) or not 0 <= fid < 1 << 63:
        raise MaskError(f"frame_id must be a non-negative integer, got {str(fid)[:20]!r}")
    return fid


def main(argv: Optional[List[str]] = None) -> int:
    """Exit 0 after the run; 69 broker unreachable (DNS, connection, TLS), 77 refused."""
    p = argparse.ArgumentParser(prog="segedge-subscribe", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_connection_args(p)
    p.add_argument("--device", default="+", help="device id to follow (+ = all)")
    p.add_argument("--out", help="write masks and overlays under this folder")
    p.add_argument("--save-every", type=int, default=1, help="write every Nth mask")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    p.add_argument("--version", action="version", version=f"segedge-subscribe {__version__}")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sub = Subscriber(args.host, args.port, args.prefix, args.device, args.out,
                         args.protocol, args.username, args.password, args.tls_ca, args.quiet,
                         args.save_every, args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:  # tls_set: a missing or unusable CA file
        which = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                         (("tls_ca", args.tls_ca), ("tls_cert", args.tls_cert),
                          ("tls_key", args.tls_key)) if v)
        print(f"segedge-subscribe: {which}: {connect.describe_error(exc)}",
              file=sys.stderr)
        return connect.EX_UNAVAILABLE
    try:
        summary = sub.run(args.duration, stop)
    except connect.BrokerError as exc:
        print(f"segedge-subscribe: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.quiet:
        print(json.dumps(summary, indent=2, default=str))
    else:
        got = ", ".join(f"{d} {v['masks']} masks" for d, v in summary.items())
        print(f"received: {got or 'nothing'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
