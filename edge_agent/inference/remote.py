"""The model on a KServe v2 / Open Inference Protocol server (OVMS, Triton, KServe).

``RemoteEngine`` is driven by the pipeline exactly like ``engine.Engine`` (load, warmup,
start(on_result), submit, drain; info, classes, device, num_requests): the pipeline
keeps latest-frame-wins, frame order and the publish path. The protocol is written here
over ``http.client`` and numpy (REST, with the binary tensor extension), so the runtime
gains no dependency: the agent sends its preprocessed u8 ``[1,H,W,3]`` BGR frame and gets
the u8 class map ``[1,H,W]`` back (the repository's served model does the rest:
``build_models.repository``).

``server_requests`` worker threads, each with its own keep-alive connection, bound the
requests in flight; ``submit`` blocks while they are all busy. Every failure is one line
handed to ``on_problem`` (the agent's health: ``degraded: inference server unreachable at
…``, ``model not ready``, wrong answers, timeouts) and the frame's result is None (counted
as an error); the first good answer clears it. While the server is down, workers wait a
growing pause (up to ``MAX_BACKOFF_S``) before the next try, so frames are not burnt.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple
from urllib.parse import quote, urlsplit

import numpy as np

from edge_agent.bundle.manifest import BundleError, Manifest, OpenedBundle
from edge_agent.config import ModelConfig
from edge_agent.inference.postprocess import num_classes
from edge_agent.protocol.messages import ModelInfo

log = logging.getLogger("segedge.inference")

SERVED_OUTPUT = "classes"  # the served model's output: the u8 class map
MAX_BACKOFF_S = 2.0
HEADER_LEN = "Inference-Header-Content-Length"
# An answer is a JSON header and a u8 class map (64 KiB at 256x256): anything far larger
# is refused before it is read whole, whatever the server claims or sends.
MAX_ANSWER_BYTES = 16 << 20
ResultCallback = Callable[[Any, Optional[np.ndarray]], None]


def repository_version(version: str) -> int:
    """The integer version a model repository gives a bundle version: its digits
    (``2026.11.25-113000`` -> 20261125113000, ``0.0.2`` -> 2): sortable like the bundle
    versions of one scheme, and known to the agent and the repository without a table."""
    digits = re.sub(r"\D", "", version or "").lstrip("0")
    if not digits or len(digits) > 18:
        raise ValueError(f"bundle version {version!r} has no integer form for a model "
                         "repository (1 to 18 digits)")
    return int(digits)


class ServerProblem(Exception):
    """One line for status and logs; ``down``: the server cannot be reached at all."""

    def __init__(self, reason: str, down: bool = False) -> None:
        super().__init__(reason)
        self.down = down


def _one_line(text: Any, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


class KServeClient:
    """KServe v2 REST on one keep-alive connection (one per thread; not thread-safe)."""

    def __init__(self, url: str, timeout: float, cafile: str = "") -> None:
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        self.context: Optional[ssl.SSLContext] = None
        if self.https:
            self.context = ssl.create_default_context(cafile=cafile or None)
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.timeout,
                                                         context=self.context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        """One exchange; ServerProblem for a transport failure (retried once on a
        keep-alive connection the server had closed)."""
        for attempt in (0, 1):
            conn = self._connection()
            expired = threading.Event()
            # the socket timeout bounds each read; this bounds the whole exchange (a server
            # trickling its answer byte by byte)
            timer = threading.Timer(self.timeout, _expire, (conn, expired))
            timer.daemon = True
            timer.start()
            try:
                conn.request(method, self.base + path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read(MAX_ANSWER_BYTES + 1)
                if len(data) > MAX_ANSWER_BYTES:
                    self.close()  # the rest is not read: the connection cannot be reused
                    raise ServerProblem(f"inference server at {self.url} answered over "
                                        f"{MAX_ANSWER_BYTES >> 20} MiB")
                if expired.is_set():
                    raise TimeoutError
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if expired.is_set() or isinstance(exc, (socket.timeout, TimeoutError)):
                    raise ServerProblem(f"inference server at {self.url} did not answer "
                                        f"within {self.timeout:g} s") from None
                if isinstance(exc, ssl.SSLError):
                    raise ServerProblem(f"inference server at {self.url}: TLS: "
                                        f"{_one_line(exc)}", down=True) from None
                if attempt == 0 and isinstance(exc, (http.client.RemoteDisconnected,
                                                     BrokenPipeError, ConnectionResetError)):
                    continue  # a kept-alive connection closed by the server: once more
                reason = getattr(exc, "strerror", None) or _one_line(exc) or type(exc).__name__
                raise ServerProblem(f"inference server unreachable at {self.url} ({reason})",
                                    down=True) from None
            finally:
                timer.cancel()
        raise AssertionError("unreachable")

    def model_path(self, model: str, version: int) -> str:
        return f"/v2/models/{quote(model, safe='')}/versions/{version}"

    def ready(self, model: str, version: int) -> Optional[str]:
        """None when the model version is ready, else why not (one line)."""
        status, _, data = self.request("GET", self.model_path(model, version) + "/ready")
        if status == 200:
            return None
        return (f"model not ready: {model} version {version} at {self.url} (HTTP {status}"
                f"{': ' + _error_text(data) if data else ''})")

    def metadata(self, model: str, version: int) -> Dict[str, Any]:
        status, _, data = self.request("GET", self.model_path(model, version))
        if status != 200:
            raise ServerProblem(f"model not ready: {model} version {version} at {self.url} "
                                f"(HTTP {status}: {_error_text(data)})")
        try:
            return json.loads(data)
        except ValueError:
            raise ServerProblem(f"inference server at {self.url}: model metadata is not "
                                "JSON") from None

    def infer(self, model: str, version: int, input_name: str, tensor: np.ndarray,
              binary: bool = True) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """One inference of a u8 tensor; (the response's JSON header, outputs by name)."""
        tensor = np.ascontiguousarray(tensor, np.uint8)
        spec: Dict[str, Any] = {"name": input_name, "shape": list(tensor.shape),
                                "datatype": "UINT8"}
        if binary:
            raw = tensor.tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"inputs": [spec], "outputs": [
                {"name": SERVED_OUTPUT, "parameters": {"binary_data": True}}]}).encode()
            body = header + raw
            headers = {"Content-Type": "application/octet-stream",
                       HEADER_LEN: str(len(header))}
        else:
            spec["data"] = tensor.ravel().tolist()
            body = json.dumps({"inputs": [spec], "outputs": [{"name": SERVED_OUTPUT}]}).encode()
            headers = {"Content-Type": "application/json"}
        status, resp_headers, data = self.request("POST", self.model_path(model, version)
                                                  + "/infer", body, headers)
        if status != 200:
            text = _error_text(data)
            if status in (400, 404, 503) and re.search(
                    r"unknown model|not found|unavailable|not ready|not at ready|no version",
                    text, re.I):
                raise ServerProblem(f"model not ready: {model} version {version} at "
                                    f"{self.url} (HTTP {status}: {text})")
            if status in (502, 503, 504):
                raise ServerProblem(f"inference server unreachable at {self.url} (HTTP "
                                    f"{status}: {text})", down=True)
            raise ServerProblem(f"inference server at {self.url} refused the request "
                                f"(HTTP {status}: {text})")
        return parse_response(self.url, resp_headers, data)


def _expire(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The whole-exchange deadline passed: unblock the reader."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _error_text(data: bytes) -> str:
    try:
        return _one_line(json.loads(data).get("error", data[:200].decode("utf-8", "replace")))
    except (ValueError, AttributeError):
        return _one_line(data[:200].decode("utf-8", "replace"))


DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "FP32": np.float32, "FP16": np.float16, "UINT16": np.uint16, "INT16": np.int16,
          "UINT32": np.uint32, "UINT64": np.uint64, "FP64": np.float64, "BOOL": np.bool_}


def parse_response(url: str, headers: Dict[str, str], data: bytes
                   ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The JSON header and the outputs (binary extension or JSON ``data``)."""
    bad = f"inference server at {url} sent a malformed answer"
    try:
        hlen = int(headers.get(HEADER_LEN.lower(), len(data)))
        head = json.loads(data[:hlen])
        outputs: Dict[str, np.ndarray] = {}
        offset = hlen
        for out in head.get("outputs", []):
            dtype = DTYPES.get(out.get("datatype", ""))
            shape = [int(d) for d in out.get("shape", [])]
            if dtype is None:
                raise ServerProblem(f"inference server at {url} answered {out.get('name')} "
                                    f"as {out.get('datatype')}, expected UINT8")
            size = (out.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arr = np.frombuffer(data, dtype, count=int(size) // np.dtype(dtype).itemsize,
                                    offset=offset)
                offset += int(size)
            else:
                arr = np.asarray(out.get("data", []), dtype)
            outputs[out.get("name", "")] = arr.reshape(shape)
        return head, outputs
    except ServerProblem:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ServerProblem(f"{bad}: {_one_line(exc, 120)}") from None


class RemoteEngine:
    """The pipeline's engine when ``[model] server`` is set (same interface as Engine)."""

    resize_in_graph = False
    result_kind = "classes"

    def __init__(self, cfg: ModelConfig, opened: OpenedBundle) -> None:
        from edge_agent.inference.engine import input_size

        self.cfg = cfg
        manifest = opened.manifest
        self.manifest: Manifest = manifest
        self.target = opened.target
        self.size_hw = input_size(manifest)
        self.info = ModelInfo(manifest.name, manifest.version, opened.target.precision)
        shape = manifest.output.shape
        named = list(manifest.classes)
        self.classes: List[str] = named + [
            f"class{i}" for i in range(len(named), num_classes(
                named, int(shape[1]) if len(shape) > 1 else 1))]
        self.server = cfg.server.rstrip("/")
        self.model_name = cfg.server_model or manifest.name
        try:
            self.version = repository_version(manifest.version)
        except ValueError as exc:
            raise BundleError(f"bundle refused: {exc}") from None
        self.input_name = manifest.input.name
        self.device = f"server {self.server}"  # stats, status, masks: where inference ran
        self.failures: Dict[str, str] = {}
        self.inference_precision = "server"
        self.num_requests = int(cfg.server_requests)
        self.decide = True
        self.quality: Optional[float] = None  # no figures from a server (class maps only)
        self.reference = None
        self.problem: Optional[str] = None
        self.on_problem: Optional[Callable[[Optional[str]], None]] = None
        self._lock = threading.Lock()
        self._on_result: Optional[ResultCallback] = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.num_requests)
        self._workers: List[threading.Thread] = []
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._backoff = 0.0
        self._down_until = 0.0

    def _client(self) -> KServeClient:
        return KServeClient(self.server, float(self.cfg.server_timeout_s), self.cfg.server_ca)

    def _set_problem(self, reason: Optional[str]) -> None:
        with self._lock:
            if reason == self.problem:
                return
            self.problem = reason
        if reason:
            log.warning("inference: %s", reason)
        else:
            log.info("inference server at %s serves %s version %d again", self.server,
                     self.model_name, self.version)
        if self.on_problem is not None:
            self.on_problem(reason)

    def check_model(self, client: KServeClient) -> None:
        """The served model answers what the bundle needs (ServerProblem if not)."""
        meta = client.metadata(self.model_name, self.version)
        h, w = self.size_hw
        want = {self.input_name: ("UINT8", [1, h, w, 3]), SERVED_OUTPUT: ("UINT8", [1, h, w])}
        for kind in ("inputs", "outputs"):
            for t in meta.get(kind, []):
                if t.get("name") in want:
                    dtype, shape = want.pop(t["name"])
                    if t.get("datatype") != dtype or [int(d) for d in t.get("shape", [])] \
                            not in (shape, [-1, *shape[1:]]):
                        raise ServerProblem(
                            f"model {self.model_name} version {self.version} at {self.server}"
                            f" has {t['name']} {t.get('datatype')} {t.get('shape')}, expected "
                            f"{dtype} {shape} (a repository from segedge-build repository)")
        if want:
            raise ServerProblem(f"model {self.model_name} version {self.version} at "
                                f"{self.server} lacks {', '.join(want)} (a repository from "
                                "segedge-build repository)")

    def load(self) -> None:
        """Ask the server about the model; a problem is recorded (status says it, the
        workers retry), not raised: the agent runs degraded until the server serves."""
        client = self._client()
        try:
            reason = client.ready(self.model_name, self.version)
            if reason is None:
                self.check_model(client)
            self._set_problem(reason)
        except ServerProblem as exc:
            self._set_problem(str(exc))
        finally:
            client.close()
        log.info("model %s %s: inference on %s as %s version %d, %d request(s) in flight, "
                 "timeout %g s%s", self.info.name, self.info.version, self.server,
                 self.model_name, self.version, self.num_requests, self.cfg.server_timeout_s,
                 f" ({self.problem})" if self.problem else "")

    def warmup(self) -> Optional[np.ndarray]:
        """One synchronous inference on a black frame (None, problem recorded, if it fails)."""
        if self.problem:
            return None
        h, w = self.size_hw
        client = self._client()
        try:
            return self._infer(client, np.zeros((1, h, w, 3), np.uint8))
        except ServerProblem as exc:
            self._set_problem(str(exc))
            return None
        finally:
            client.close()

    def _infer(self, client: KServeClient, tensor: np.ndarray) -> np.ndarray:
        head, outputs = client.infer(self.model_name, self.version, self.input_name, tensor)
        name = head.get("model_name")
        version = str(head.get("model_version") or "")
        if name != self.model_name or (version and version != str(self.version)):
            raise ServerProblem(f"inference server at {self.server} answered for model "
                                f"{name} version {version or '?'}, asked "
                                f"{self.model_name} version {self.version}")
        out = outputs.get(SERVED_OUTPUT)
        h, w = self.size_hw
        if out is None:
            raise ServerProblem(f"inference server at {self.server} sent no "
                                f"{SERVED_OUTPUT} output (got {', '.join(outputs) or 'none'})")
        if out.dtype != np.uint8 or tuple(out.shape) not in ((1, h, w), (h, w)):
            raise ServerProblem(f"inference server at {self.server} answered {SERVED_OUTPUT}"
                                f" {out.dtype} {list(out.shape)}, expected uint8 [1, {h}, {w}]")
        if int(out.max(initial=0)) >= len(self.classes):
            raise ServerProblem(f"inference server at {self.server} answered class "
                                f"{int(out.max())}, the model has {len(self.classes)}")
        return out.reshape(1, h, w)

    # --- the pipeline's side ------------------------------------------------------------
    def start(self, on_result: ResultCallback, decide: bool = True,
              quality: Optional[float] = None) -> None:
        """``quality`` is not served: the server answers class maps only, so a remote
        model's frames carry no figures (its quality stays ``warming_up``)."""
        if self._on_result is not None:
            raise RuntimeError("engine already started")
        self._on_result = on_result
        for i in range(self.num_requests):
            t = threading.Thread(target=self._work, name=f"remote-infer-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def prepare(self, frame_hw: Any) -> None:
        """Nothing to compile here: frames are resized before they are sent."""

    def submit(self, tensor: np.ndarray, userdata: Any, source: Hashable = None) -> None:
        """Send one [1, H, W, 3] u8 BGR frame at the model's size; blocks while every
        worker is busy (the bound on requests in flight). ``source``: the camera (the
        server schedules; not used here)."""
        if tuple(tensor.shape) != (1, *self.size_hw, 3) or tensor.dtype != np.uint8:
            raise ValueError(f"expected a u8 [1, {self.size_hw[0]}, {self.size_hw[1]}, 3] "
                             f"frame, got {tensor.dtype} {list(tensor.shape)}")
        with self._lock:
            self._pending += 1
        self._queue.put((tensor, userdata))

    def _work(self) -> None:
        client = self._client()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                tensor, userdata = item
                output = self._one(client, tensor)
                try:
                    self._on_result(userdata, output)
                finally:
                    with self._lock:
                        self._pending -= 1
                        self._idle.notify_all()
        finally:
            client.close()

    def _one(self, client: KServeClient, tensor: np.ndarray) -> Optional[np.ndarray]:
        wait = self._down_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the server was down: one pause, then try this frame
        try:
            output = self._infer(client, tensor)
        except ServerProblem as exc:
            with self._lock:
                if exc.down or str(exc).startswith("model not ready"):
                    self._backoff = min(MAX_BACKOFF_S, max(0.1, 2 * self._backoff))
                    self._down_until = time.monotonic() + self._backoff
            self._set_problem(str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a worker must not die on a surprise
            self._set_problem(f"inference server at {self.server}: {_one_line(exc)}")
            log.exception("remote inference failed")
            return None
        with self._lock:
            self._backoff, self._down_until = 0.0, 0.0
        if self.problem:
            self._set_problem(None)
        return output

    def drain(self) -> None:
        """Every submitted frame's result delivered (old engine on reload, shutdown)."""
        with self._lock:
            while self._pending > 0:
                self._idle.wait(0.5)

    def close(self) -> None:
        """Stop the workers (after ``drain``)."""
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(1.0)
        self._workers = []
