"""The kit's PKI helper and the password-file filter (controller side, no devices)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

from tests.rig.broker_config import ROLE, filters_module, pki_module

pki = pki_module()


def test_ensure_is_idempotent_and_private(tmp_path):
    d = tmp_path / "pki"
    first = pki.ensure(d, "broker", ["DNS:broker", "IP:10.0.0.5"], ["cam-a", "dash"], 30, 5,
                       False)
    assert first == ["ca", "server", "client cam-a", "client dash"]
    assert pki.ensure(d, "broker", ["IP:10.0.0.5", "DNS:broker"], ["cam-a", "dash"], 30, 5,
                      False) == []
    for key in [d / "ca.key", d / "servers/broker.key", d / "clients/cam-a.key"]:
        assert key.stat().st_mode & 0o077 == 0, key
    assert d.stat().st_mode & 0o077 == 0


def test_new_names_rotation_and_renewal_reissue_only_what_changed(tmp_path):
    d = tmp_path / "pki"
    pki.ensure(d, "broker", ["DNS:broker"], ["cam-a", "cam-b"], 30, 5, False)
    ca = (d / "ca.crt").read_bytes()
    b_cert = (d / "clients/cam-b.crt").read_bytes()
    (d / "clients/cam-a.crt").unlink()  # rotate cam-a
    assert pki.ensure(d, "broker", ["DNS:broker", "IP:10.0.0.6"], ["cam-a", "cam-b"], 30, 5,
                      False) == ["server", "client cam-a"]
    assert (d / "ca.crt").read_bytes() == ca and (d / "clients/cam-b.crt").read_bytes() == b_cert
    # valid for 30 days, renew when fewer than 40 are left: everything but the CA
    assert pki.ensure(d, "broker", ["DNS:broker", "IP:10.0.0.6"], ["cam-b"], 30, 40,
                      True) == ["server", "client cam-b"]


def test_check_mode_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(ROLE / "files/segedge-pki"), "--dir",
                           str(tmp_path / "p"), "--server", "b", "--san", "DNS:b", "--client",
                           "c", "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] == ["ca", "server", "client c"]
    assert not (tmp_path / "p").exists()


def test_bad_names_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROLE / "files/segedge-pki"), "--dir",
                           str(tmp_path), "--server", "b", "--client", "../x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bad identity name" in proc.stderr


def test_password_hash_is_mosquittos_pbkdf2_and_stable():
    f = filters_module().mosquitto_pbkdf2
    entry = f("s3cret", "cam-a")
    assert entry == f("s3cret", "cam-a") != f("s3cret", "cam-b") != f("other", "cam-a")
    _, kind, iterations, salt, digest = entry.split("$")
    assert kind == "7" and len(base64.b64decode(salt)) == 12
    expect = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), int(iterations),
                                 64)
    assert base64.b64decode(digest) == expect
