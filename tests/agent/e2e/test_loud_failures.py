"""Every command says a broker it cannot use in one line and exits non-zero (issue 21):
a closed port, an unknown host, a TLS failure, refused credentials; against real
Mosquitto brokers (a TLS one with a password file) on loopback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agent.e2e.test_tls_auth import _pki, tls_broker  # noqa: F401 - fixture
from tests.agent.helpers import ROOT
from tools.broker import free_port

pytestmark = pytest.mark.e2e
SUBSCRIBE = [sys.executable, "-m", "edge_agent.client.subscriber"]
SEND = [sys.executable, str(ROOT / "examples" / "send_frame.py"), "--agent", "edge-01",
        "--sender", "door", "--image", str(ROOT / "docs" / "img" / "overlay.jpg")]


def run(cmd, timeout=60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                          env=env)


def one_line(res: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``, nothing on stdout, one line on stderr holding ``words``."""
    shown = f"rc {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == code, shown
    assert res.stdout == "" and res.stderr.count("\n") == 1, shown
    assert "Traceback" not in res.stderr and all(w in res.stderr for w in words), shown
    print(res.stderr, end="")  # shown with pytest -s: the line as users see it
    return res.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_subscribe_closed_port(quiet):
    port = free_port()
    res = run(SUBSCRIBE + ["--host", "127.0.0.1", "--port", str(port), "--duration", "3"]
              + (["--quiet"] if quiet else []))
    one_line(res, 69, f"segedge-subscribe: broker 127.0.0.1:{port}: cannot connect: "
                      f"connection refused")


def test_subscribe_unknown_host():
    res = run(SUBSCRIBE + ["--host", "no-such-host.invalid", "--duration", "3"])
    one_line(res, 69, "broker no-such-host.invalid:1883: cannot connect: unknown host")


def test_subscribe_tls_untrusted(tls_broker, tmp_path):  # noqa: F811
    other = tmp_path / "other-ca"
    other.mkdir()
    _pki(other)  # a CA that did not sign the broker's certificate
    res = run(SUBSCRIBE + ["--port", str(tls_broker.port), "--tls-ca", str(other / "ca.pem"),
                           "--username", "cam", "--password", "s3cret", "--duration", "3"])
    one_line(res, 69, "cannot connect: TLS: certificate not trusted")


def test_subscribe_plain_to_tls_port(tls_broker):  # noqa: F811
    res = run(SUBSCRIBE + ["--port", str(tls_broker.port), "--duration", "3"])
    one_line(res, 69, f"broker 127.0.0.1:{tls_broker.port}: ")


def test_subscribe_auth_refused(tls_broker):  # noqa: F811
    res = run(SUBSCRIBE + ["--port", str(tls_broker.port), "--tls-ca", tls_broker.ca,
                           "--username", "cam", "--password", "wrong", "--duration", "3"])
    one_line(res, 77, "connection refused by the broker:")


def test_subscribe_missing_ca(tmp_path):
    res = run(SUBSCRIBE + ["--tls-ca", str(tmp_path / "ca.pem"), "--duration", "3"])
    one_line(res, 69, f"--tls-ca {tmp_path / 'ca.pem'}: no such file")


def test_subscribe_connected_and_quiet_still_exits_0(broker):
    res = run(SUBSCRIBE + ["--port", str(broker.port), "--device", "nobody", "--duration",
                           "1"])
    assert res.returncode == 0 and res.stdout == "received: nothing\n", res


def test_send_frame_closed_port():
    port = free_port()
    res = run(SEND + ["--port", str(port)])
    one_line(res, 69, f"send_frame.py: broker 127.0.0.1:{port}: cannot connect: "
                      f"connection refused")


def test_send_frame_unknown_host():
    res = run(SEND + ["--host", "no-such-host.invalid"])
    one_line(res, 69, "unknown host")


def test_send_frame_missing_image(tmp_path):
    res = run(SEND[:-1] + [str(tmp_path / "x.jpg")])
    one_line(res, 66, "No such file or directory")


def test_build_fetch_closed_port_and_unknown_host(tmp_path):
    """segedge-build's one network command (the dataset download) was already loud."""
    for url, words in ((f"http://127.0.0.1:{free_port()}", "Connection refused"),
                       ("http://no-such-host.invalid", "Name or service not known")):
        res = run([sys.executable, "-m", "build_models.cli", "fetch", "--dest",
                   str(tmp_path / "pets"), "--base-url", url, "--no-progress"])
        shown = f"rc {res.returncode}\n{res.stdout}\n{res.stderr}"
        assert res.returncode == 1 and res.stderr.count("\n") == 1, shown
        assert res.stderr.startswith(f"segedge-build fetch: error: {url}/images.tar.gz: ") \
            and words in res.stderr, shown
