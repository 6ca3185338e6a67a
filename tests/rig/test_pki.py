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
    assert first == ["ca", "server", "client cam-a", "client dash", "crl"]
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
                      False) == ["server", "client cam-a"]  # removed by hand: nothing to revoke
    assert (d / "ca.crt").read_bytes() == ca and (d / "clients/cam-b.crt").read_bytes() == b_cert
    # valid for 30 days, renew when fewer than 40 are left: everything but the CA
    assert pki.ensure(d, "broker", ["DNS:broker", "IP:10.0.0.6"], ["cam-b"], 30, 40,
                      True) == ["server", "client cam-b", "crl"]


def test_check_mode_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(ROLE / "files/segedge-pki"), "--dir",
                           str(tmp_path / "p"), "--server", "b", "--san", "DNS:b", "--client",
                           "c", "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] == ["ca", "server", "client c", "crl"]
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


def test_revoked_and_renewed_certificates_go_on_the_crl(tmp_path):
    from cryptography import x509

    d = tmp_path / "pki"
    pki.ensure(d, "broker", ["DNS:broker"], ["cam-a", "cam-b"], 30, 5, False)
    old = x509.load_pem_x509_certificate((d / "clients/cam-a.crt").read_bytes()).serial_number
    crl = (d / "crl.pem").read_bytes()
    assert pki.revoke(d, "cam-a") and not (d / "clients/cam-a.key").exists()
    assert pki.ensure(d, "broker", ["DNS:broker"], ["cam-a", "cam-b"], 30, 5,
                      False) == ["client cam-a", "crl"]
    revoked = {r.serial_number for r in x509.load_pem_x509_crl((d / "crl.pem").read_bytes())}
    assert revoked == {old} and (d / "crl.pem").read_bytes() != crl
    assert pki.ensure(d, "broker", ["DNS:broker"], ["cam-a", "cam-b"], 30, 5, False) == []
    b_old = x509.load_pem_x509_certificate((d / "clients/cam-b.crt").read_bytes()).serial_number
    # renewal (fewer than 40 of 30 days left) revokes the certificate it replaces
    assert "client cam-b" in pki.ensure(d, "broker", ["DNS:broker"], ["cam-b"], 30, 40, False)
    revoked = {r.serial_number for r in x509.load_pem_x509_crl((d / "crl.pem").read_bytes())}
    assert revoked == {old, b_old}
