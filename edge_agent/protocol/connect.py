"""Connecting a command-line client to the broker, with failures said in one line.

The tools (``segedge-subscribe``, ``segedge-agent --check-config --probe``,
``examples/send_frame.py``, the demo) connect once and wait for the broker's CONNACK, so
that an unknown host, a closed port, a TLS failure or refused credentials end the
command with one line and a non-zero exit instead of a quiet "nothing received".

Exit codes (sysexits.h): 69 (EX_UNAVAILABLE) the broker cannot be reached (DNS,
connection, TLS, no answer); 77 (EX_NOPERM) it answered and refused the connection
(credentials, authorisation).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

EX_UNAVAILABLE, EX_NOPERM = 69, 77


class BrokerError(Exception):
    """The broker could not be used; ``str()`` is one line, ``exit_code`` a sysexits code."""

    def __init__(self, message: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


def describe_error(exc: BaseException) -> str:
    """One line for a socket, DNS or TLS failure (no class names, no traceback)."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def connect(client: Any, host: str, port: int, keepalive: int = 30,
            timeout: float = 10.0) -> None:
    """Connect a paho client, start its loop and wait for the CONNACK.

    Raises BrokerError (the loop stopped) when the broker cannot be reached or refuses.
    The client's own ``on_connect`` is still called.
    """
    answered = threading.Event()
    outcome: dict = {}
    theirs = client.on_connect

    def on_connect(c, userdata, flags, reason_code, properties=None) -> None:
        outcome["reason"] = reason_code
        answered.set()
        if theirs is not None and not reason_code.is_failure:
            theirs(c, userdata, flags, reason_code, properties)

    def on_disconnect(c, userdata, flags, reason_code, properties=None) -> None:
        if not answered.is_set():  # closed before any CONNACK: say so now, not at the timeout
            outcome["closed"] = reason_code
            answered.set()

    theirs_disconnect = client.on_disconnect
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    where = f"broker {host}:{port}"
    try:
        client.connect(host, port, keepalive=keepalive)
    except (OSError, ValueError) as exc:  # DNS, refused, TLS handshake, unreachable
        raise BrokerError(f"{where}: cannot connect: {describe_error(exc)}") from None
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise BrokerError(f"{where}: no answer to MQTT CONNECT within {timeout:g} s "
                              f"(not an MQTT broker, or TLS expected?)")
        if "closed" in outcome:
            raise BrokerError(f"{where}: the connection closed before the broker answered "
                              f"(TLS expected, or not an MQTT broker?)")
        reason = outcome["reason"]
        if reason.is_failure:
            raise BrokerError(f"{where}: connection refused by the broker: {reason}",
                              EX_NOPERM)
    except BrokerError:
        client.loop_stop()
        with contextlib.suppress(Exception):  # already failing: the first reason is the one
            client.disconnect()
        raise
    finally:
        client.on_connect = theirs
        client.on_disconnect = theirs_disconnect
