"""A WAN link between a site broker and the central broker, on loopback, that can be cut.

``Wan(target_port).start()`` listens on a free loopback port and relays every connection
to ``127.0.0.1:target_port``. ``cut()`` is an outage: the port stops accepting (connection
refused, as behind a router whose uplink is down) and the open connections are
black-holed (bytes in either direction are dropped, nothing is closed), so the site
broker notices only through its bridge keepalive, as on a real WAN. ``restore()`` ends
the outage: the black-holed connections are reset (their state is lost, as on a NAT that
rebooted) and the port accepts again.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import List, Tuple


class Wan:
    def __init__(self, target_port: int, port: int = 0):
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self.up = True
        self.cuts: List[Tuple[float, float]] = []
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener = None
        self._stop = False

    def start(self) -> Wan:
        self._listen()
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        sock.listen(16)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))

    def _pump(self) -> None:
        while not self._stop:
            with self._lock:
                socks = [s for pair in self._pairs for s in pair]
            if not socks:
                time.sleep(0.02)
                continue
            try:
                readable, _, _ = select.select(socks, [], [], 0.1)
            except (OSError, ValueError):
                continue
            for sock in readable:
                with self._lock:
                    pair = next((p for p in self._pairs if sock in p), None)
                if pair is None:
                    continue
                other = pair[1] if sock is pair[0] else pair[0]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._close(pair)
                    continue
                if self.up:  # down: dropped on the floor
                    try:
                        other.sendall(data)
                    except OSError:
                        self._close(pair)

    def _close(self, pair) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in pair:
            try:
                # linger 0: the close is a reset, as a NAT that lost the connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        self.up = False
        self.cuts.append((time.time(), 0.0))
        if self._listener:
            self._listener.close()
            self._listener = None

    def restore(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)
        self.up = True
        self.cuts[-1] = (self.cuts[-1][0], time.time())
        self._listen()

    def stop(self) -> None:
        self._stop = True
        if self._listener:
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)
