"""``segedge-dashboard``: the fleet page served from the standard library's HTTP server.

    segedge-dashboard --host broker.lan --port 8883 --tls-ca ca.crt \\
        --tls-cert viewer.crt --tls-key viewer.key --listen 127.0.0.1:8080

Subscribes to ``<prefix>/+/status``, ``stats``, ``overlay`` and ``paused/state`` (never
to masks: the page shows the overlays the agents publish), keeps a bounded
:class:`~edge_agent.client.dashboard.fleet.Fleet` and pushes changed cards to every open
page over server-sent events (``/events``), at most every ``--push-interval`` seconds;
overlays are fetched by the page from ``/overlay/<id>.jpg`` when their number changes.
With ``--operator`` (the identity may write ``<prefix>/+/+/set``) the page has pause,
resume and snapshot buttons; commands go to ``<prefix>/<id>/<feature>/set`` with an MQTT 5
response topic under ``<prefix>/<id>/reply/`` and the reply is shown on the card.
The page itself has no login: listen on loopback (the default) or behind a proxy that
authenticates.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import __version__
from edge_agent.client.connection import add_connection_args, client_from_args
from edge_agent.client.dashboard.fleet import (
    MAX_DEVICES,
    MAX_JSON_BYTES,
    MAX_OVERLAY_BYTES,
    OVERLAY_BUDGET_BYTES,
    Fleet,
)
from edge_agent.config import valid_id

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/static/style.css": ("style.css", "text/css; charset=utf-8")}
COMMANDS = {("paused", "ON"), ("paused", "OFF"), ("snapshot", "PRESS")}
MAX_STREAMS = 16  # open pages at once; more get 503
MAX_PENDING = 32  # commands waiting for their reply
REPLY_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class Commander:
    """Commands to ``<prefix>/<id>/<feature>/set`` and their MQTT 5 replies."""

    def __init__(self, client: mqtt.Client, prefix: str, mqtt5: bool) -> None:
        self.client, self.prefix, self.mqtt5 = client, prefix, mqtt5
        self.tag = "dash-" + uuid.uuid4().hex[:8]
        self.lock = threading.Lock()
        self.pending: Dict[bytes, Tuple[threading.Event, List[Any]]] = {}
        self.acks: Dict[int, int] = {}  # mid -> PUBACK reason code

    @property
    def reply_filter(self) -> str:
        return f"{self.prefix}/+/reply/{self.tag}"

    def on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            if len(self.acks) > 1000:
                self.acks.clear()
            self.acks[mid] = reason_code.value if hasattr(reason_code, "value") else 0

    def on_reply(self, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self.lock:
            waiter = self.pending.get(bytes(corr)) if corr else None
        if waiter is None:
            return
        try:
            reply = json.loads(msg.payload[:4096])
        except ValueError:
            reply = {"result": "unreadable reply"}
        waiter[1].append(reply if isinstance(reply, dict) else {"result": str(reply)[:200]})
        waiter[0].set()

    def send(self, device_id: str, feature: str, value: str) -> Tuple[int, Dict[str, Any]]:
        if not valid_id(device_id) or (feature, value) not in COMMANDS:
            return 400, {"result": "refused", "reason": "unknown id or command"}
        topic = f"{self.prefix}/{device_id}/{feature}/set"
        if not self.mqtt5:
            info = self.client.publish(topic, value, qos=1)
            return 200, {"result": "sent", "reason": "MQTT 3.1.1: no reply; the card shows "
                         "the state the agent republishes", "rc": info.rc}
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.prefix}/{device_id}/reply/{self.tag}"
        props.CorrelationData = corr
        event, box, mid = threading.Event(), [], -1
        with self.lock:
            if len(self.pending) >= MAX_PENDING:
                return 429, {"result": "refused", "reason": "too many commands waiting"}
            self.pending[corr] = (event, box)
        try:
            info = self.client.publish(topic, value, qos=1, properties=props)
            mid = info.mid
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return 503, {"result": "not sent", "reason": mqtt.error_string(info.rc)}
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            while not event.wait(0.05):
                with self.lock:
                    ack = self.acks.get(mid)
                if ack is not None and ack >= 128:
                    return 200, {"result": "refused by the broker",
                                 "reason": f"PUBACK reason {ack} (not authorised is 135: "
                                           f"this identity may not command)"}
                if time.monotonic() >= deadline:
                    return 504, {"result": "no reply",
                                 "reason": f"no reply within {REPLY_TIMEOUT_S:.0f} s"}
            return 200, box[0]
        finally:
            with self.lock:
                self.pending.pop(corr, None)
                self.acks.pop(mid, None)


class Dashboard:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = args.prefix
        self.fleet = Fleet(args.max_devices, args.max_json_bytes, args.max_overlay_bytes,
                           args.overlay_budget_mb << 20)
        self.client = client_from_args(args)
        self.commander = Commander(self.client, self.prefix, args.protocol == "5")
        self.token = secrets.token_urlsafe(16)  # commands must carry it (no cross-site posts)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.broker: Dict[str, Any] = {"connected": False, "since": time.time(), "reason": None}
        self.first_connect = threading.Event()
        self.connect_error: Optional[str] = None
        self.stop = threading.Event()
        c = self.client
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_message, c.on_publish = self._on_message, self.commander.on_publish
        c.reconnect_delay_set(1, 10)
        if args.protocol == "5":  # tell the broker what we take, so larger ones never come
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = max(args.max_overlay_bytes, args.max_json_bytes) + 65536
            self.connect_properties: Optional[Properties] = props
        else:
            self.connect_properties = None

    # ---- MQTT ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.connect_error = f"broker refused the connection: {reason_code}"
            self._broker_state(False, str(reason_code))
            self.first_connect.set()
            return
        p = self.prefix
        client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/stats", 0), (f"{p}/+/overlay", 0),
                          (f"{p}/+/paused/state", 1), (self.commander.reply_filter, 1)])
        self._broker_state(True, None)
        self.first_connect.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._broker_state(False, str(reason_code))

    def _broker_state(self, connected: bool, reason: Optional[str]) -> None:
        with self.fleet.changed:
            self.broker = {"connected": connected, "since": time.time(), "reason": reason}
            self.fleet._version += 1  # wake the streams: the banner changed
            self.fleet.changed.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        try:  # an exception escaping here would end paho's network thread
            parts = msg.topic.split("/")
            if len(parts) == 3:
                self.fleet.handle(parts[1], parts[2], msg.payload, bool(msg.retain))
            elif len(parts) == 4 and parts[2:] == ["paused", "state"]:
                self.fleet.handle(parts[1], "paused", msg.payload, bool(msg.retain))
            elif len(parts) == 4 and parts[2] == "reply":
                self.commander.on_reply(msg)
        except Exception as exc:  # noqa: BLE001 - log and go on with the next message
            print(f"segedge-dashboard: message on {msg.topic[:200]!r}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def connect(self, timeout: float = 10.0) -> Optional[str]:
        """Connect once, synchronously: None, or the one-line reason it failed."""
        host, port = self.args.host, self.args.port
        try:
            self.client.connect(host, port, keepalive=30, properties=self.connect_properties)
        except OSError as exc:
            return f"cannot reach the broker at {host}:{port}: {exc.strerror or exc}"
        self.client.loop_start()
        if not self.first_connect.wait(timeout):
            return f"no answer from the broker at {host}:{port} within {timeout:.0f} s"
        return self.connect_error

    # ---- HTTP ------------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        return {"operator": bool(self.args.operator), "token": self.token if
                self.args.operator else "", "stale_after_s": self.args.stale_after,
                "prefix": self.prefix, "version": __version__}

    def meta(self) -> Dict[str, Any]:
        return {"broker": dict(self.broker), **self.fleet.counters()}

    def serve(self) -> ThreadingHTTPServer:
        host, _, port = self.args.listen.rpartition(":")
        dashboard = self

        class Handler(PageHandler):
            dash = dashboard

        server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        server.daemon_threads = True
        return server


class PageHandler(BaseHTTPRequestHandler):
    dash: Dashboard
    protocol_version = "HTTP/1.1"
    server_version = "segedge-dashboard"
    timeout = 10.0  # a peer that stops mid-request (or idles on keep-alive) frees its thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if self.dash.args.log_requests:
            super().log_message(format, *args)

    def _send(self, code: int, body: bytes, ctype: str, extra: Optional[Dict[str, str]] = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; "
                         "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data).encode(), "application/json")

    def _host_ok(self) -> bool:
        """On loopback, only requests addressed to a loopback name: a web page whose own
        name was rebound to 127.0.0.1 (DNS rebinding) cannot read or command this one."""
        listen_host = self.server.server_address[0]
        if listen_host not in LOOPBACK_NAMES and not listen_host.startswith("127."):
            return True
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        return host in LOOPBACK_NAMES or host.startswith("127.") or host == listen_host

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._host_ok():
            return self._send(403, b"wrong Host for a loopback dashboard", "text/plain")
        path = urlsplit(self.path).path
        if path in FILES:
            name, ctype = FILES[path]
            body = (STATIC / name).read_bytes()
            if name == "index.html":
                body = body.replace(b"{{CONFIG}}", json.dumps(self.dash.config())
                                    .replace("<", "\\u003c").encode())
            return self._send(200, body, ctype)
        if path == "/events":
            return self._events()
        if path.startswith("/overlay/") and path.endswith(".jpg"):
            jpeg = self.dash.fleet.overlay_of(unquote(path[len("/overlay/"):-4]))
            if jpeg is None:
                return self._send(404, b"no overlay", "text/plain")
            return self._send(200, jpeg, "image/jpeg")
        if path == "/api/fleet":
            _, cards = self.dash.fleet.changes(0)
            return self._json(200, {"now": time.time(), "meta": self.dash.meta(), "cards": cards})
        if path == "/healthz":
            return self._json(200 if self.dash.broker["connected"] else 503, self.dash.meta())
        return self._send(404, b"not found", "text/plain")

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._send(403, b"wrong Host for a loopback dashboard", "text/plain")
        if urlsplit(self.path).path != "/api/command":
            return self._send(404, b"not found", "text/plain")
        if not self.dash.args.operator:
            return self._json(403, {"result": "refused", "reason": "read-only dashboard "
                                    "(start it with --operator and an operator identity)"})
        if not secrets.compare_digest(self.headers.get("X-Segedge-Token", ""), self.dash.token):
            return self._json(403, {"result": "refused", "reason": "missing or wrong token"})
        raw_length = self.headers.get("Content-Length") or "0"
        length = int(raw_length) if raw_length.isdigit() else -1
        if not 0 < length <= 1024:
            return self._json(400, {"result": "refused", "reason": "bad request size"})
        try:
            req = json.loads(self.rfile.read(length))
            device_id, feature, value = (str(req["id"]), str(req["feature"]),
                                         str(req.get("value", "PRESS")))
        except (ValueError, KeyError, TypeError):
            return self._json(400, {"result": "refused", "reason": "bad request"})
        code, reply = self.dash.commander.send(device_id, feature, value)
        self._json(code, reply)

    def _events(self) -> None:
        dash = self.dash
        if not dash.streams.acquire(blocking=False):
            return self._send(503, b"too many open pages", "text/plain")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            since, last_beat = 0, time.monotonic()
            while not dash.stop.is_set():
                version, cards = dash.fleet.changes(since)
                if version != since:
                    data = json.dumps({"now": time.time(), "meta": dash.meta(), "cards": cards})
                    self.wfile.write(f"event: cards\ndata: {data}\n\n".encode())
                    self.wfile.flush()
                    since, last_beat = version, time.monotonic()
                elif time.monotonic() - last_beat > HEARTBEAT_S:
                    self.wfile.write(b": beat\n\n")
                    self.wfile.flush()
                    last_beat = time.monotonic()
                # coalesce: at most one batch per push interval, at once when idle ends
                dash.stop.wait(dash.args.push_interval)
                dash.fleet.wait(since, HEARTBEAT_S)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            dash.streams.release()


def listen_address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segedge-dashboard", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_connection_args(p)
    p.add_argument("--listen", type=listen_address, default="127.0.0.1:8080",
                   help="ADDR:PORT the page is served on (no login: keep it on loopback or "
                        "behind an authenticating proxy)")
    p.add_argument("--operator", action="store_true",
                   help="show pause, resume and snapshot buttons (the identity must be an "
                        "operator: it may write <prefix>/+/+/set)")
    p.add_argument("--stale-after", type=float, default=30.0,
                   help="seconds without any message after which a card shows offline")
    p.add_argument("--push-interval", type=float, default=0.5,
                   help="seconds between pushes of changed cards to a page")
    p.add_argument("--max-devices", type=int, default=MAX_DEVICES,
                   help="device and camera ids tracked; more are dropped and counted")
    p.add_argument("--max-json-bytes", type=int, default=MAX_JSON_BYTES,
                   help="largest status/stats message taken")
    p.add_argument("--max-overlay-bytes", type=int, default=MAX_OVERLAY_BYTES,
                   help="largest overlay JPEG taken")
    p.add_argument("--overlay-budget-mb", type=int, default=OVERLAY_BUDGET_BYTES >> 20,
                   help="all overlays kept together; the least recently updated go first")
    p.add_argument("--log-requests", action="store_true", help="log every HTTP request")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    dash = Dashboard(args)
    try:
        server = dash.serve()
    except OSError as exc:
        print(f"segedge-dashboard: cannot listen on {args.listen}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    error = dash.connect()
    if error:
        print(f"segedge-dashboard: {error}", file=sys.stderr)
        server.server_close()
        return 1
    host, port = server.server_address[:2]
    mode = "operator (commands on)" if args.operator else "read-only"
    print(f"segedge-dashboard: http://{host}:{port}/ ({mode}), broker "
          f"{args.host}:{args.port}", flush=True)

    def stop(*_: Any) -> None:
        dash.stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        dash.stop.set()
        with dash.fleet.changed:
            dash.fleet.changed.notify_all()
        server.server_close()
        dash.client.disconnect()
        dash.client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
