"""Is a source live? Frame freshness from arrival times, and cheap probes of a camera.

Pure or nearly so (``probe`` opens one TCP connection): the capture thread decides
with them, the unit tests check them with plain numbers and loopback sockets.
"""

from __future__ import annotations

import socket
from typing import Optional, Tuple
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 1.0
RECOVER_FRAMES = 3  # frames in a row, each within half the stall limit: the source is live
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}


def redact(uri: str) -> str:
    """The URI without its password, for logs and reasons."""
    url = urlparse(uri)
    if url.password is None:
        return uri
    netloc = url.netloc.replace(f":{url.password}@", ":***@", 1)
    return url._replace(netloc=netloc).geturl()


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the camera's server answers; else why not. Cheap: no decoding, no FFmpeg."""
    url = urlparse(uri)
    scheme = url.scheme.lower()
    host = url.hostname or ""
    try:
        port = url.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    if scheme == "udp" or not host or not port:  # nothing to connect to: the open decides
        return None
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return f"connection refused by {where}"
    except socket.timeout:
        return f"no answer from {where}"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    with sock:
        path = url.path or "/"
        if scheme == "rtsp":
            request = f"OPTIONS rtsp://{where}{path} RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        elif scheme == "http":
            request = f"HEAD {path} HTTP/1.0\r\nHost: {host}\r\n\r\n"
        else:  # TLS or other protocols: accepting the connection is all we check cheaply
            return None
        try:
            sock.settimeout(timeout)
            sock.sendall(request.encode("ascii", "replace"))
            if not sock.recv(64):
                return f"{where} closes connections without answering"
        except socket.timeout:
            return f"{where} accepts connections but does not answer"
        except OSError as exc:
            return f"{where}: {exc.strerror or exc}"
    return None


class Liveness:
    """From frame arrival times: publish this frame? is the source live? (pure, no I/O)

    A frame after a gap of ``stall_s`` or more is stale (dropped). After one, frames
    stay suspect (dropped) and the source not live until ``recover`` frames arrive in a
    row, each within ``stall_s / 2`` of the previous one. Frames of a fresh connection
    are published at once; after a loss the source is called live again only after
    ``recover`` of them (the very first frame of the agent's life is enough).
    """

    def __init__(self, stall_s: float, recover: int = RECOVER_FRAMES) -> None:
        self.stall_s, self.recover = stall_s, recover
        self.live = False
        self._was_lost = False
        self._suspect = False
        self._streak = 0
        self._last: Optional[float] = None

    def connected(self) -> None:
        """A new connection: its first frames are fresh."""
        self._last, self._streak, self._suspect = None, 0, False

    def lost(self) -> None:
        self.live = False
        self._was_lost = True
        self._streak = 0

    def waited(self, now: float) -> None:
        """The reader waited for inference, not for the source: gaps count from now."""
        if self._last is not None:
            self._last = now

    def frame(self, now: float) -> Tuple[bool, bool]:
        """(publish it, the source just became live)."""
        gap = None if self._last is None else now - self._last
        self._last = now
        if gap is not None and self.stall_s and gap >= self.stall_s:
            self.live, self._suspect, self._streak, self._was_lost = False, True, 0, True
            return False, False
        if gap is None or not self.stall_s or gap <= self.stall_s / 2:
            self._streak += 1
        else:
            self._streak = 1
        became = False
        if self._streak >= (self.recover if self._was_lost else 1):
            self._suspect = False
            if not self.live:
                self.live = became = True
        return not self._suspect, became
