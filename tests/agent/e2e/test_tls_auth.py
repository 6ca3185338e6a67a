"""TLS (server cert on 127.0.0.1) with username/password against a real Mosquitto."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

from edge_agent.client.subscriber import Subscriber
from tests.agent.helpers import agent_config, wait_until
from tests.conftest import require
from tools.broker import Broker, mosquitto_binary

pytestmark = pytest.mark.e2e


def _pki(d):
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=segedge-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture
def tls_broker(tmp_path):
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    require(shutil.which("openssl") is not None and shutil.which("mosquitto_passwd") is not None,
            "openssl and mosquitto_passwd")
    pki = tmp_path / "pki"
    pki.mkdir()
    _pki(pki)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "cam", "s3cret"], check=True)
    passwd.chmod(0o644)
    b = Broker(tmp_path / "broker", extra_config=[
        f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'server.pem'}",
        f"keyfile {pki / 'server.key'}", f"password_file {passwd}"])
    b.write_config()
    text = b.config_path.read_text().replace("allow_anonymous true", "allow_anonymous false")
    b.write_config = lambda: b.config_path.write_text(text)  # keep our edit on start()
    b.start()
    b.ca = str(pki / "ca.pem")
    yield b
    b.stop()


def test_tls_and_password(tls_broker, tiny_bundle, clip, unique_id, agents, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    agent = agents(agent_config(tiny_bundle, str(clip), "127.0.0.1", tls_broker.port, unique_id,
                                mqtt={"tls_ca": tls_broker.ca, "username": "cam",
                                      "password_file": str(pw)}))
    sub = Subscriber("127.0.0.1", tls_broker.port, device=unique_id, username="cam",
                     password="s3cret", tls_ca=tls_broker.ca, quiet=True)
    stop = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(sub.run(0, stop)))
    t.start()
    try:
        assert wait_until(lambda: sub.summary().get(unique_id, {}).get("masks", 0) >= 5, 30), \
            agent.log()
    finally:
        stop.set()
        t.join(10)
    assert result[unique_id]["state"] == "online"
    assert "mqtts://" in agent.log()
    assert agent.terminate() == 0, agent.log()


def test_wrong_password_keeps_running(tls_broker, tiny_bundle, clip, unique_id, agents):
    agent = agents(agent_config(tiny_bundle, str(clip), "127.0.0.1", tls_broker.port, unique_id,
                                mqtt={"tls_ca": tls_broker.ca, "username": "cam",
                                      "password": "wrong"}))
    assert wait_until(lambda: "refused" in agent.log(), 20), agent.log()
    assert agent.alive()
    assert agent.terminate() == 0, agent.log()
