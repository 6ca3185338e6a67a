"""The broker connection options every consumer tool offers, in one place.

``segedge-subscribe`` and ``segedge-dashboard`` take the same ``--host``, ``--port``,
``--prefix``, ``--protocol``, identity (``--username``/``--password`` or a client
certificate ``--tls-cert``/``--tls-key``) and TLS (``--tls-ca``) options, parsed here and
turned into a paho client by :func:`make_client`.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Add the broker connection and identity options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="broker host")
    parser.add_argument("--port", type=int, default=1883, help="broker port")
    parser.add_argument("--prefix", default="segedge", help="topic prefix")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol")
    parser.add_argument("--username", default="", help="user name (empty = anonymous)")
    parser.add_argument("--password", default="", help="password")
    parser.add_argument("--tls-ca", default="", help="CA file: connect with TLS, checking the "
                                                     "broker's certificate against it")
    parser.add_argument("--tls-cert", default="", help="client certificate (the identity, in "
                                                       "the kit's certificate mode)")
    parser.add_argument("--tls-key", default="", help="the client certificate's key")


def make_client(protocol: str = "5", username: str = "", password: str = "",
                tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
                client_id: str = "", properties: Optional[Any] = None) -> mqtt.Client:
    """A paho client (callback API 2) with the identity and TLS options applied."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    if username:
        client.username_pw_set(username, password or None)
    if tls_ca or tls_cert:
        client.tls_set(ca_certs=tls_ca or None, certfile=tls_cert or None,
                       keyfile=tls_key or None)
    return client


def client_from_args(args: argparse.Namespace, client_id: str = "") -> mqtt.Client:
    """:func:`make_client` from options added by :func:`add_connection_args`."""
    return make_client(args.protocol, args.username, args.password, args.tls_ca,
                       getattr(args, "tls_cert", ""), getattr(args, "tls_key", ""), client_id)
