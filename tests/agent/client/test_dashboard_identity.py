"""``segedge-dashboard`` over TLS with identities and the kit's ACL rules (a real Mosquitto
with a password file and an ACL, a real agent): a subscriber identity started with
``--operator`` still cannot command (the broker refuses the publish, PUBACK 135, and the
page is told so); an operator identity pauses the camera and gets the agent's reply."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from tests.agent.client.test_dashboard_page import DashboardProcess
from tests.agent.e2e.test_tls_auth import _pki
from tests.agent.helpers import agent_config, wait_until
from tests.conftest import require
from tools.broker import Broker, mosquitto_binary

pytestmark = pytest.mark.e2e
PASSWORD = "s3cret"


@pytest.fixture
def acl_broker(tmp_path, unique_id):
    """TLS on 127.0.0.1, passwords, and an ACL as docs/security.md's roles: the agent writes
    its own topics and reads its commands, ``viewer`` only reads, ``ops`` may also write
    ``segedge/+/+/set``."""
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    require(shutil.which("openssl") is not None and shutil.which("mosquitto_passwd") is not None,
            "openssl and mosquitto_passwd")
    pki = tmp_path / "pki"
    pki.mkdir()
    _pki(pki)
    passwd = tmp_path / "passwd"
    for i, user in enumerate(("agent", "viewer", "ops")):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd),
                        user, PASSWORD], check=True)
    passwd.chmod(0o644)
    acl = tmp_path / "acl"
    acl.write_text(f"user agent\ntopic write segedge/{unique_id}/#\n"
                   f"topic read segedge/{unique_id}/+/set\n\n"
                   "user viewer\ntopic read segedge/#\n\n"
                   "user ops\ntopic read segedge/#\ntopic write segedge/+/+/set\n")
    acl.chmod(0o644)
    b = Broker(tmp_path / "broker", extra_config=[
        f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'server.pem'}",
        f"keyfile {pki / 'server.key'}", f"password_file {passwd}", f"acl_file {acl}"])
    b.write_config()
    text = b.config_path.read_text().replace("allow_anonymous true", "allow_anonymous false")
    b.write_config = lambda: b.config_path.write_text(text)
    b.start()
    b.ca = str(pki / "ca.pem")
    yield b
    b.stop()


def command(dash: DashboardProcess, device: str, value: str) -> dict:
    html = urllib.request.urlopen(dash.url, timeout=5).read().decode()
    config = json.loads(html.split('id="config">', 1)[1].split("</script>", 1)[0])
    req = urllib.request.Request(dash.url + "api/command", method="POST",
                                 data=json.dumps({"id": device, "feature": "paused",
                                                  "value": value}).encode(),
                                 headers={"X-Segedge-Token": config["token"]})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.load(r)


def card(dash: DashboardProcess, device: str) -> dict:
    return next((c for c in dash.fleet()["cards"] if c["id"] == device), {})


def test_only_an_operator_identity_commands(acl_broker, tiny_bundle, clip, agents, unique_id,
                                            tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    agent = agents(agent_config(tiny_bundle, str(clip), "127.0.0.1", acl_broker.port, unique_id,
                                mqtt={"tls_ca": acl_broker.ca, "username": "agent",
                                      "password_file": str(pw)}))
    tls = ["--tls-ca", acl_broker.ca, "--password", PASSWORD, "--operator"]
    viewer = DashboardProcess(acl_broker, "--username", "viewer", *tls)
    ops = DashboardProcess(acl_broker, "--username", "ops", *tls)
    try:
        for dash in (viewer, ops):
            assert wait_until(lambda d=dash: card(d, unique_id).get("state") == "online", 60), (
                agent.log()[-2000:])
        refused = command(viewer, unique_id, "ON")
        assert refused["result"] == "refused by the broker" and "135" in refused["reason"]
        assert card(ops, unique_id)["paused"] is False  # the retained state: still OFF
        reply = command(ops, unique_id, "ON")
        assert reply["result"] == "accepted" and reply["value"] is True, reply
        assert wait_until(lambda: card(ops, unique_id).get("paused") is True
                          and card(ops, unique_id).get("reason") == "paused by command", 10)
        assert command(ops, unique_id, "OFF")["result"] == "accepted"
        assert wait_until(lambda: card(viewer, unique_id).get("state") == "online", 10)
    finally:
        assert viewer.stop() == 0 and ops.stop() == 0
