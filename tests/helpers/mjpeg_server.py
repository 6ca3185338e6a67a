"""A camera stand-in: MJPEG over HTTP (multipart/x-mixed-replace), any number of clients.

In tests: ``MjpegServer(frame_fn, port).start()``; ``stop()`` closes the listener and every
client connection (the camera is gone), ``start()`` serves again on the same port (the
camera is back), ``frozen.set()`` keeps connections open without frames (a hung camera).

From the rig, in its controller namespace:

    python -m tests.helpers.mjpeg_server --host 127.0.0.1 --port 8081 [--fps 10]

serves ``/cam.mjpg``: frames whose left part is red and right part blue, the border moving
each frame, so the tiny model's "pet" mask is predictable.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Union

import cv2
import numpy as np

BOUNDARY = "segedgeframe"
Frame = Union[np.ndarray, bytes]  # an image to encode, or JPEG bytes ready to send


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.split("?")[0] != "/cam.mjpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        i = 0
        owner = self.server.owner
        while not owner.halt.is_set():
            if owner.frozen.is_set():
                owner.halt.wait(0.05)
                continue
            data = owner.jpeg(i)
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
    def __init__(self, frame_fn: Callable[[int], Frame], port: int, fps: float = 10.0,
                 host: str = "127.0.0.1") -> None:
        self.frame_fn, self.port, self.fps, self.host = frame_fn, port, fps, host
        self.halt = threading.Event()
        self.frozen = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/cam.mjpg"

    def jpeg(self, i: int) -> bytes:
        frame = self.frame_fn(i)
        if isinstance(frame, bytes):
            return frame
        ok, jpg = cv2.imencode(".jpg", frame)
        return jpg.tobytes()

    def start(self) -> MjpegServer:
        self.halt.clear()
        for _ in range(50):
            try:
                self._server = _Server((self.host, self.port), _Handler)
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
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False


def make_frames(width: int, height: int, count: int = 16) -> List[bytes]:
    frames = []
    for i in range(count):
        img = np.zeros((height, width, 3), np.uint8)  # BGR
        split = width // 4 + (i * width // (2 * count))
        img[:, :split, 2] = 220  # red on the left
        img[:, split:, 0] = 220  # blue on the right
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append(jpg.tobytes())
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args(argv)
    frames = make_frames(args.width, args.height)
    server = MjpegServer(lambda i: frames[i % len(frames)], args.port, args.fps,
                         args.host).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    server.stop()


if __name__ == "__main__":
    main()
