"""A camera stand-in: HTTP MJPEG (multipart/x-mixed-replace) on 127.0.0.1 only.

``stop()`` closes the listener and every client connection (the camera is gone);
``start()`` serves again on the same port (the camera is back).
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import cv2
import numpy as np

BOUNDARY = "ffmpeg"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        i = 0
        owner = self.server.owner
        while not owner.halt.is_set():
            if owner.frozen.is_set():  # connection stays open, no frames (a hung camera)
                owner.halt.wait(0.05)
                continue
            ok, jpg = cv2.imencode(".jpg", owner.frame_fn(i))
            data = jpg.tobytes()
            try:
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 f"{len(data)}\r\n\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            except OSError:
                return
            i += 1
            owner.halt.wait(1.0 / owner.fps)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MjpegServer


class MjpegServer:
    def __init__(self, frame_fn: Callable[[int], np.ndarray], port: int, fps: float = 10.0):
        self.frame_fn, self.port, self.fps = frame_fn, port, fps
        self.halt = threading.Event()
        self.frozen = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cam.mjpg"

    def start(self) -> MjpegServer:
        self.halt.clear()
        for _ in range(50):
            try:
                self._server = _Server(("127.0.0.1", self.port), _Handler)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"port {self.port} stays busy")
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="mjpeg",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def reachable(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False
