"""Mosquitto password-file hashes computed on the controller, reproducibly.

``mosquitto_passwd`` salts at random, so a password file it writes changes on every run.
This filter writes the same ``$7$`` (PBKDF2-HMAC-SHA512) entry Mosquitto 2.x verifies,
with a salt derived from the password and the user name: the entry changes exactly when
the password does, which keeps the role idempotent and rotation visible.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

ITERATIONS = 1000  # Mosquitto's own default is 101; the count travels in the entry.
SALT_LEN = 12  # as mosquitto_passwd


def mosquitto_pbkdf2(password: str, username: str, iterations: int = ITERATIONS) -> str:
    """Return ``$7$<iterations>$<salt b64>$<hash b64>`` for a Mosquitto password file."""
    if not isinstance(password, str) or not password:
        raise ValueError(f"mosquitto_pbkdf2: empty or non-text password for user {username!r}")
    secret = password.encode("utf-8")
    salt = hmac.new(secret, b"segedge-mosquitto:" + username.encode("utf-8"),
                    hashlib.sha256).digest()[:SALT_LEN]
    digest = hashlib.pbkdf2_hmac("sha512", secret, salt, int(iterations), 64)
    return "$7${}${}${}".format(int(iterations), base64.b64encode(salt).decode("ascii"),
                                base64.b64encode(digest).decode("ascii"))


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {"mosquitto_pbkdf2": mosquitto_pbkdf2}
