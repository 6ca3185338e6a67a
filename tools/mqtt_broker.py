"""A small MQTT 3.1.1 broker in the standard library, for the demo where Mosquitto is absent.

It does what the demo needs and no more: one process, loopback, anonymous clients,
QoS 0 and 1 (a QoS 2 publish is acknowledged with PUBREC/PUBCOMP and delivered at QoS 1),
retained messages, last wills, ``+``/``#`` filters, keep-alive. No persistent sessions,
no authentication, no TLS: use Mosquitto (or ``--broker``) for anything beyond the demo.

    python -m tools.mqtt_broker --port 1883
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = range(8, 15)
MAX_CLIENTS = 64
MAX_PACKET = 16 * 1024 * 1024
SEND_TIMEOUT_S = 5.0


class ProtocolError(Exception):
    """The peer broke MQTT 3.1.1: the connection is closed (without the will only on DISCONNECT)."""


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter match; ``$``-topics are not matched by a leading wildcard."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    pat, top = pattern.split("/"), topic.split("/")
    for i, level in enumerate(pat):
        if level == "#":
            return True
        if i >= len(top) or (level != "+" and level != top[i]):
            return False
    return len(pat) == len(top)


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + encode_length(len(body)) + body


def mqtt_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, pid: int = 0) -> bytes:
    body = mqtt_str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(PUBLISH, (qos << 1) | int(retain), body)


class Reader:
    """Fields of one packet body, in order."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def blob(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Session:
    sock: socket.socket
    client_id: str = ""
    subs: Dict[str, int] = field(default_factory=dict)
    will: Optional[Will] = None
    next_pid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def pid(self) -> int:
        with self.lock:
            self.next_pid = self.next_pid % 65535 + 1
            return self.next_pid


class MqttBroker:
    """Accept thread + one thread per client (at most MAX_CLIENTS); ``stop()`` ends them all."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = socket.create_server((host, port))
        self.host, self.port = host, self.listener.getsockname()[1]
        self.sessions: Dict[int, Session] = {}
        self.retained: Dict[str, Tuple[bytes, int]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []  # client threads, owned by the accept thread
        self.acceptor = threading.Thread(target=self._accept, name="mqtt-accept", daemon=True)

    def start(self) -> MqttBroker:
        self.listener.settimeout(0.2)
        self.acceptor.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join(timeout=5)
        with self.lock:
            socks = [s.sock for s in self.sessions.values()]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.threads = [t for t in self.threads if t.is_alive()]
            if len(self.threads) > MAX_CLIENTS:
                sock.close()
                continue
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name=f"mqtt-client-{sock.fileno()}")
            thread.start()
            self.threads.append(thread)

    # --- one client ------------------------------------------------------------------
    def _read_packet(self, sock: socket.socket) -> Tuple[int, int, bytes]:
        head = self._recv(sock, 1)[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = self._recv(sock, 1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise ProtocolError("remaining length longer than 4 bytes")
        if length > MAX_PACKET:
            raise ProtocolError(f"packet of {length} bytes (limit {MAX_PACKET})")
        return head >> 4, head & 0x0F, self._recv(sock, length)

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = sock.recv(min(n - got, 65536))
            if not chunk:
                raise ConnectionError("peer closed")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _serve(self, sock: socket.socket) -> None:
        session = Session(sock)
        clean_exit = False
        try:
            sock.settimeout(10)  # CONNECT must come soon
            kind, _, body = self._read_packet(sock)
            if kind != CONNECT:
                raise ProtocolError("first packet is not CONNECT")
            keepalive = self._connect(session, Reader(body))
            sock.settimeout(keepalive * 1.5 if keepalive else None)
            with self.lock:
                self.sessions[id(session)] = session
            session.send(packet(CONNACK, 0, b"\x00\x00"))
            while not self.stopping.is_set():
                kind, flags, body = self._read_packet(sock)
                if kind == DISCONNECT:
                    clean_exit = True
                    break
                self._dispatch(session, kind, flags, Reader(body))
        except (ProtocolError, ConnectionError, OSError):
            pass
        finally:
            with self.lock:
                self.sessions.pop(id(session), None)
            sock.close()
            if session.will and not clean_exit and not self.stopping.is_set():
                w = session.will
                self._publish(w.topic, w.payload, w.qos, w.retain)

    def _connect(self, session: Session, r: Reader) -> int:
        name, level = r.text(), r.u8()
        if name != "MQTT" or level != 4:
            session.send(packet(CONNACK, 0, b"\x00\x01"))  # unacceptable protocol version
            raise ProtocolError(f"protocol {name!r} level {level} (MQTT 3.1.1 only)")
        flags, keepalive = r.u8(), r.u16()
        session.client_id = r.text()
        if flags & 0x04:
            topic, payload = r.text(), r.blob()
            session.will = Will(topic, payload, (flags >> 3) & 3, bool(flags & 0x20))
        if flags & 0x80:
            r.text()  # user name: anonymous broker, ignored
        if flags & 0x40:
            r.blob()
        return keepalive

    def _dispatch(self, session: Session, kind: int, flags: int, r: Reader) -> None:
        if kind == PUBLISH:
            qos, retain = (flags >> 1) & 3, bool(flags & 1)
            topic = r.text()
            pid = r.u16() if qos else 0
            self._publish(topic, r.rest(), qos, retain)
            if qos == 1:
                session.send(packet(PUBACK, 0, struct.pack("!H", pid)))
            elif qos == 2:
                session.send(packet(PUBREC, 0, struct.pack("!H", pid)))
        elif kind == PUBREL:
            session.send(packet(PUBCOMP, 0, struct.pack("!H", r.u16())))
        elif kind == SUBSCRIBE:
            self._subscribe(session, r)
        elif kind == UNSUBSCRIBE:
            pid = r.u16()
            while r.pos < len(r.data):
                session.subs.pop(r.text(), None)
            session.send(packet(UNSUBACK, 0, struct.pack("!H", pid)))
        elif kind == PINGREQ:
            session.send(packet(PINGRESP, 0, b""))
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            pass  # we deliver at most QoS 1 and do not resend
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _subscribe(self, session: Session, r: Reader) -> None:
        pid = r.u16()
        granted, new = [], []
        while r.pos < len(r.data):
            pattern, qos = r.text(), min(r.u8() & 3, 1)
            session.subs[pattern] = qos
            granted.append(qos)
            new.append(pattern)
        session.send(packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted)))
        with self.lock:
            retained = list(self.retained.items())
        for topic, (payload, qos) in retained:
            for pattern in new:
                if topic_matches(pattern, topic):
                    self._deliver(session, topic, payload, min(qos, session.subs[pattern]), True)
                    break

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            with self.lock:
                if payload:
                    self.retained[topic] = (payload, min(qos, 1))
                else:
                    self.retained.pop(topic, None)
        with self.lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            best = max((q for p, q in session.subs.items() if topic_matches(p, topic)),
                       default=None)
            if best is not None:
                self._deliver(session, topic, payload, min(qos, best, 1), False)

    @staticmethod
    def _deliver(session: Session, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        try:
            session.send(publish_packet(topic, payload, qos, retain,
                                        session.pid() if qos else 0))
        except OSError:
            # a stuck or gone subscriber: its own thread ends on the closed socket
            with contextlib.suppress(OSError):
                session.sock.shutdown(socket.SHUT_RDWR)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mqtt_broker",
                                description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args(argv)
    broker = MqttBroker(args.host, args.port).start()
    print(f"mqtt broker on {broker.host}:{broker.port} (Ctrl-C stops)", flush=True)
    try:
        broker.stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
