"""A camera stand-in: RTSP (GStreamer's RTSP server from Debian) serving a looping JPEG clip.

The server runs in the system Python (it needs ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0``, see scripts/setup.sh), as its own process, so a test can
kill it (the camera is gone), freeze it with SIGSTOP (a hung camera: connections stay
open, nothing arrives) and thaw it with SIGCONT.

In tests::

    cam = RtspCamera(tmp_path, frames=[img0, img1, ...], fps=10).start()
    cam.url              # rtsp://127.0.0.1:<port>/cam
    cam.freeze(); cam.thaw(); cam.stop(); cam.start()

By hand: ``/usr/bin/python3 tests/helpers/rtsp_server.py --frames DIR --port 8554``
serves ``DIR/%05d.jpg`` as ``rtsp://127.0.0.1:8554/cam``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve()


def available() -> bool:
    """True when the system Python can load GStreamer's RTSP server."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    code = ("import gi; gi.require_version('Gst', '1.0'); "
            "gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import Gst, GstRtspServer")
    return subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True,
                          timeout=30).returncode == 0


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RtspCamera:
    """The RTSP server as a subprocess on a fixed loopback port (same port after restart)."""

    def __init__(self, workdir: Path, frames: Sequence, fps: float = 10.0,
                 port: int = 0, host: str = "127.0.0.1", codec: str = "jpeg") -> None:
        """``codec``: jpeg (RTP/JPEG) or h264 (openh264: the decoder keeps frames buffered)."""
        self.workdir, self.fps, self.host, self.codec = Path(workdir), fps, host, codec
        self.port = port or _free_port(host)
        self.frames_dir = self.workdir / "frames"
        self.log_path = self.workdir / "rtsp.log"
        self.proc: Optional[subprocess.Popen] = None
        self.set_frames(frames)

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/cam"

    def set_frames(self, frames: Sequence) -> None:
        """BGR images or JPEG bytes; takes effect at the next start()."""
        import cv2

        shutil.rmtree(self.frames_dir, ignore_errors=True)
        self.frames_dir.mkdir(parents=True)
        for i, frame in enumerate(frames):
            data = frame if isinstance(frame, bytes) else cv2.imencode(".jpg", frame)[1].tobytes()
            (self.frames_dir / f"{i:05d}.jpg").write_bytes(data)

    def start(self, timeout: float = 20.0) -> RtspCamera:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(HERE), "--frames", str(self.frames_dir), "--port",
                 str(self.port), "--host", self.host, "--fps", str(self.fps),
                 "--codec", self.codec],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtsp server exited: {self.log_path.read_text()[-2000:]}")
            if self.answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rtsp server did not answer on {self.url} in {timeout}s")

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(f"OPTIONS {self.url} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
                sock.settimeout(1.0)
                return sock.recv(16).startswith(b"RTSP/1.0")
        except OSError:
            return False

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server outright (a camera that is switched off)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


ENCODERS = {
    "jpeg": "jpegenc ! rtpjpegpay name=pay0 pt=96",
    "h264": "openh264enc ! video/x-h264,profile=constrained-baseline ! "
            "rtph264pay name=pay0 pt=96 config-interval=1",
}


def serve(frames: str, host: str, port: int, fps: float,
          codec: str = "jpeg") -> None:  # pragma: no cover - gi
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    rate = f"{int(round(fps * 1000))}/1000"
    # decode + re-encode: without it multifilesrc bursts frames as fast as it can
    factory.set_launch(
        f"( multifilesrc location={frames}/%05d.jpg loop=true index=0 "
        f"caps=\"image/jpeg,framerate={rate}\" ! jpegdec ! videoconvert ! "
        f"video/x-raw,format=I420 ! {ENCODERS[codec]} )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"serving rtsp://{host}:{port}/cam", flush=True)
    loop.run()


def main(argv=None) -> None:  # pragma: no cover - runs in the system Python
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", required=True, help="directory of %%05d.jpg frames")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="jpeg")
    args = parser.parse_args(argv)
    serve(args.frames, args.host, args.port, args.fps, args.codec)


if __name__ == "__main__":  # pragma: no cover
    main()
