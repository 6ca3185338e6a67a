"""RemoteEngine against a scripted KServe v2 server on loopback: each bad answer (wrong
shape, dtype or model name, a slow server, one that hangs mid-answer, none at all) is one
line in ``problem``, the frame's result is None, and the next good answer clears it.
Also: the bound on requests in flight, TLS with the configured CA, config refusals.
(The real server, Triton running the IR: tests/agent/e2e/test_inference_server.py.)"""

from __future__ import annotations

import dataclasses
import http.server
import json
import shutil
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from edge_agent import config as cf
from edge_agent.bundle.manifest import BundleError, OpenedBundle
from edge_agent.config import ModelConfig
from edge_agent.inference.remote import RemoteEngine, repository_version
from tests.agent.e2e.test_tls_auth import _pki
from tests.agent.helpers import to_toml
from tests.conftest import require
from tools.broker import free_port

H = W = 64


class Script:
    """What the scripted server answers next; what it saw."""

    def __init__(self) -> None:
        self.mode = "good"
        self.delay = 0.0
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        self.seen: List[Dict[str, Any]] = []


def _handler(script: Script):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: Optional[Dict[str, str]] = None,
                  length: Optional[int] = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.endswith("/ready"):
                self._send(200, b"")
                return
            meta = {"name": "tiny", "versions": ["1"], "platform": "openvino",
                    "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, H, W, 3]}],
                    "outputs": [{"name": "classes", "datatype": "UINT8", "shape": [1, H, W]}]}
            self._send(200, json.dumps(meta).encode())

        def do_POST(self) -> None:  # noqa: N802
            hlen = int(self.headers["Inference-Header-Content-Length"])
            body = self.rfile.read(int(self.headers["Content-Length"]))
            head = json.loads(body[:hlen])
            image = np.frombuffer(body[hlen:], np.uint8).reshape(head["inputs"][0]["shape"])
            with script.lock:
                script.seen.append(head)
                script.inflight += 1
                script.max_inflight = max(script.max_inflight, script.inflight)
            try:
                self._answer(image)
            finally:
                with script.lock:
                    script.inflight -= 1

        def _answer(self, image: np.ndarray) -> None:
            mode = script.mode
            time.sleep(script.delay if mode != "slow" else 3.0)
            # the tiny model's rule: red > blue is class 1 (frames are BGR)
            classes = (image[..., 2] > image[..., 0]).astype(np.uint8)
            name, dtype = "tiny", "UINT8"
            if mode == "shape":
                classes = classes[:, : H // 2, : W // 2]
            elif mode == "dtype":
                classes, dtype = classes.astype(np.float32), "FP32"
            elif mode == "name":
                name = "other"
            elif mode == "notready":
                self._send(400, b'{"error": "Request for unknown model: \'tiny\' version 1 '
                                b'is not at ready state"}')
                return
            raw = classes.tobytes()
            head = json.dumps({"model_name": name, "model_version": "1", "outputs": [
                {"name": "classes", "datatype": dtype, "shape": list(classes.shape),
                 "parameters": {"binary_data_size": len(raw)}}]}).encode()
            headers = {"Inference-Header-Content-Length": str(len(head)),
                       "Content-Type": "application/octet-stream"}
            if mode == "trickle":  # every read in time, the whole answer far too late
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(head) + len(raw)))
                self.end_headers()
                for i in range(12):
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            if mode == "huge":  # a valid header, then far more bytes than any class map
                raw = bytes(17 << 20)
                self._send(200, head + raw, headers)
                return
            if mode == "hang":  # headers and half the answer, then nothing
                self._send(200, (head + raw)[: len(head) // 2], headers,
                           length=len(head) + len(raw))
                time.sleep(3.0)
                return
            self._send(200, head + raw, headers)

    return Handler


@pytest.fixture
def server():
    script = Script()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(script))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    script.httpd = httpd
    yield script
    httpd.shutdown()
    httpd.server_close()


def _engine(bundle: Path, url: str, **kw: Any) -> RemoteEngine:
    cfg = ModelConfig(bundle=str(bundle), server=url, server_timeout_s=0.5, **kw)
    return RemoteEngine(cfg, OpenedBundle.open(str(bundle), "cpu"))


class Results:
    def __init__(self) -> None:
        self.got: Dict[int, Optional[np.ndarray]] = {}
        self.problems: List[Optional[str]] = []

    def __call__(self, userdata: int, output: Optional[np.ndarray]) -> None:
        self.got[userdata] = output


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (1, H, W, 3), dtype=np.uint8)


def test_bad_answers_each_one_line_then_recovery(tiny_bundle, server):
    engine = _engine(tiny_bundle, server.url)
    results = Results()
    engine.on_problem = results.problems.append
    engine.load()
    assert engine.problem is None
    assert np.array_equal(engine.warmup(), np.zeros((1, H, W), np.uint8))
    engine.start(results)
    expect = {
        "shape": "answered classes uint8 [1, 32, 32], expected uint8 [1, 64, 64]",
        "dtype": "answered classes float32 [1, 64, 64], expected uint8 [1, 64, 64]",
        "name": "answered for model other version 1, asked tiny version 1",
        "notready": "model not ready: tiny version 1 at " + server.url,
        "slow": f"inference server at {server.url} did not answer within 0.5 s",
        "hang": f"inference server at {server.url} did not answer within 0.5 s",
        "trickle": f"inference server at {server.url} did not answer within 0.5 s",
        "huge": f"inference server at {server.url} answered over 16 MiB",
    }
    n = 0
    for mode, reason in expect.items():
        server.mode = mode
        engine.submit(_frame(n), n)
        engine.drain()
        assert results.got[n] is None, mode
        assert reason in engine.problem and "\n" not in engine.problem, (mode, engine.problem)
        n += 1
        server.mode = "good"
        time.sleep(0.25)  # past the back-off of a "model not ready"
        engine.submit(_frame(n), n)
        engine.drain()
        frame = _frame(n)
        assert np.array_equal(results.got[n][0], (frame[0, ..., 2] > frame[0, ..., 0])), mode
        assert engine.problem is None, (mode, engine.problem)
        n += 1
    # every problem reached the health, each followed by its recovery (None)
    assert results.problems == [p for r in [(engine_reason, None) for engine_reason in
                                            results.problems[::2]] for p in r]
    assert len(results.problems) == 2 * len(expect)


def test_unreachable_then_back_and_bounded_inflight(tiny_bundle, server):
    port = int(server.url.rsplit(":", 1)[1])
    server.httpd.shutdown()
    server.httpd.server_close()
    engine = _engine(tiny_bundle, server.url, server_requests=3)
    results = Results()
    engine.load()
    assert engine.problem.startswith(f"inference server unreachable at {server.url} (")
    engine.start(results)
    engine.submit(_frame(0), 0)
    engine.drain()
    assert results.got[0] is None and "unreachable" in engine.problem
    # the server comes back on the same port
    script = Script()
    script.delay = 0.2
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(script))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for i in range(1, 13):
            engine.submit(_frame(i), i)  # blocks while 3 are in flight
        engine.drain()
        assert all(results.got[i] is not None for i in range(3, 13))
        assert engine.problem is None
        assert script.max_inflight == 3  # the bound, and it is used
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_check_config_probe_asks_the_server(server, tiny_bundle, tmp_path):
    from edge_agent.config import Config
    from edge_agent.config.preflight import probe_server

    cfg = Config()
    cfg.model.server = server.url
    assert probe_server(cfg, timeout=2.0) == ""
    server.httpd.shutdown()
    server.httpd.server_close()
    assert probe_server(cfg, timeout=2.0).startswith(f"unreachable at {server.url} (")


def test_tls_with_the_configured_ca(tiny_bundle, tmp_path):
    require(shutil.which("openssl") is not None, "openssl")
    _pki(tmp_path)
    script = Script()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(script))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        trusted = _engine(tiny_bundle, url, server_ca=str(tmp_path / "ca.pem"))
        trusted.load()
        assert trusted.problem is None and trusted.warmup() is not None
        stranger = _engine(tiny_bundle, url)  # the system's CAs do not know ours
        stranger.load()
        assert "TLS" in stranger.problem and "CERTIFICATE_VERIFY_FAILED" in stranger.problem
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_repository_version_and_refusals(tiny_bundle, tmp_path):
    assert repository_version("2026.11.25-113000") == 20261125113000
    assert repository_version("0.0.2") == 2
    for bad in ("latest", "0.0.0", "1" * 19):
        with pytest.raises(ValueError):
            repository_version(bad)
    engine = _engine(tiny_bundle, "http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"u8 \[1, 64, 64, 3\]"):
        engine.submit(np.zeros((1, 32, 32, 3), np.uint8), 0)  # the same refusal as local
    base = {"device_id": "cam-01", "source": {"uri": str(tmp_path)},
            "model": {"bundle": str(tiny_bundle)}}
    for server, extra, key in (("grpc://127.0.0.1:9000", {}, "model.server"),
                               ("ftp://x", {}, "model.server"),
                               ("http://127.0.0.1:notaport", {}, "model.server"),
                               ("http://user:secret@127.0.0.1:8000", {}, "model.server"),
                               ("http://127.0.0.1:8000", {"server_ca": "ca.pem"},
                                "model.server_ca"),
                               ("http://127.0.0.1:8000", {"server_timeout_s": 0},
                                "model.server_timeout_s")):
        data = {**base, "model": {**base["model"], "server": server, **extra}}
        path = tmp_path / "agent.toml"
        path.write_text(to_toml(data))
        with pytest.raises(cf.ConfigError, match=key.replace(".", r"\.")):
            cf.load(str(path), environ={})
    data = {**base, "model": {**base["model"], "server": "http://127.0.0.1:8000"},
            "output": {"mask_resolution": "frame"}}
    path.write_text(to_toml(data))
    with pytest.raises(cf.ConfigError, match="output.mask_resolution"):
        cf.load(str(path), environ={})
    # a bundle version with no integer form is refused like any bad bundle (exit 78)
    opened = OpenedBundle.open(str(tiny_bundle), "cpu")
    opened = dataclasses.replace(opened, manifest=dataclasses.replace(opened.manifest,
                                                                      version="latest"))
    with pytest.raises(BundleError, match="no integer form"):
        RemoteEngine(ModelConfig(bundle=str(tiny_bundle), server="http://127.0.0.1:1"),
                     opened)
