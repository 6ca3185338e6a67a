"""A camera stand-in: MJPEG over HTTP (multipart/x-mixed-replace), any number of clients.

    python -m tests.helpers.mjpeg_server --host 127.0.0.1 --port 8081 [--fps 10]

Serves ``/cam.mjpg``: 64x64-multiple frames whose left part is red and right part blue,
the border moving each frame, so the tiny model's "pet" mask is predictable.
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

BOUNDARY = b"segedgeframe"


def make_frames(width: int, height: int, count: int = 16) -> list:
    import cv2

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


def serve(host: str, port: int, fps: float, width: int, height: int) -> None:
    frames = make_frames(width, height)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?")[0] != "/cam.mjpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type",
                             "multipart/x-mixed-replace; boundary=" + BOUNDARY.decode())
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            i = 0
            try:
                while True:
                    jpg = frames[i % len(frames)]
                    self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                                     + f"Content-Length: {len(jpg)}\r\n\r\n".encode()
                                     + jpg + b"\r\n")
                    self.wfile.flush()
                    i += 1
                    time.sleep(1.0 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.current_thread().name = "mjpeg-server"
    server.serve_forever()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.fps, args.width, args.height)


if __name__ == "__main__":
    main()
