"""An MQTT client that tries one thing against a broker and reports what the broker said.

Used by the broker tests on this machine and, through ``python -m tests.rig.mqtt_probe``
inside the rig's controller namespace, against the broker on a booted device. Prints one
JSON object: the CONNACK reason, PUBACK/SUBACK reason codes (MQTT 5), messages received,
or the TLS error that ended the handshake.

    python -m tests.rig.mqtt_probe --host H --port 8883 --ca ca.crt \\
        [--cert c.crt --key c.key | --user U --password-file F] [--client-id ID] \\
        publish TOPIC [--retain] [--payload-file F] | subscribe TOPIC [--seconds S] |
        connect [--seconds S] |
        request TOPIC --payload-file F --response-topic R --correlation HEX [--seconds S]

``request`` is an MQTT 5 request: it subscribes to the response topic, publishes the
payload with that response topic and correlation data, and waits up to ``--seconds``
(default 20) for a message on the response topic; ``replies`` lists what came there
(topic, correlation data in hex, payload as JSON when it parses).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass
class Identity:
    host: str
    port: int
    ca: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""
    client_id: str = ""


@dataclass
class Probe:
    """One connection; every broker answer is recorded."""

    ident: Identity
    connack: Optional[int] = None
    connack_reason: str = ""
    session_present: bool = False
    error: str = ""
    disconnects: List[int] = field(default_factory=list)
    pubacks: Dict[int, int] = field(default_factory=dict)
    subacks: Dict[int, List[int]] = field(default_factory=dict)
    messages: List[mqtt.MQTTMessage] = field(default_factory=list)

    def __post_init__(self):
        self._event = threading.Condition()
        i = self.ident
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=i.client_id,
                                  protocol=mqtt.MQTTv5)
        if i.user:
            self.client.username_pw_set(i.user, i.password or None)
        if i.ca:
            self.client.tls_set(ca_certs=i.ca, certfile=i.cert or None, keyfile=i.key or None,
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- callbacks (paho's network thread) --------------------------------------
    def _notify(self, fn) -> None:
        with self._event:
            fn()
            self._event.notify_all()

    def _on_connect(self, client, userdata, flags, reason, props):
        def set_():
            self.connack, self.connack_reason = reason.value, str(reason)
            self.session_present = bool(flags.session_present)
        self._notify(set_)

    def _on_disconnect(self, client, userdata, flags, reason, props):
        self._notify(lambda: self.disconnects.append(reason.value))

    def _on_publish(self, client, userdata, mid, reason, props):
        self._notify(lambda: self.pubacks.__setitem__(mid, reason.value))

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        self._notify(lambda: self.subacks.__setitem__(mid, [r.value for r in reasons]))

    def _on_message(self, client, userdata, msg):
        self._notify(lambda: self.messages.append(msg))

    def _wait(self, predicate, timeout: float) -> bool:
        with self._event:
            return self._event.wait_for(predicate, timeout)

    # --- actions ------------------------------------------------------------------
    def connect(self, timeout: float = 10.0, session_expiry: int = 0) -> Optional[int]:
        """CONNACK reason code (0 = accepted), or None with ``error`` set.
        ``session_expiry`` > 0: a persistent session (clean start off, kept that many
        seconds after a disconnect), as a dashboard that must not miss a status."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        try:
            self.client.connect(self.ident.host, self.ident.port, keepalive=30,
                                clean_start=session_expiry == 0, properties=props)
        except (ssl.SSLError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        self.client.loop_start()
        if not self._wait(lambda: self.connack is not None or bool(self.disconnects), timeout):
            self.error = "no CONNACK"
        return self.connack

    def publish(self, topic: str, payload: bytes = b"probe", retain: bool = False,
                timeout: float = 10.0) -> Optional[int]:
        """PUBACK reason code of a QoS 1 publish (MQTT 5: 135 = not authorised)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self.pubacks, timeout)
        return self.pubacks.get(info.mid)

    def subscribe(self, topic: str, seconds: float = 0.0, timeout: float = 10.0) -> List[int]:
        """SUBACK reason codes (0-2 granted QoS, 135 not authorised); then listen."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        self._wait(lambda: mid in self.subacks, timeout)
        time.sleep(seconds)
        return self.subacks.get(mid, [])

    def request(self, topic: str, payload: bytes, response_topic: str, correlation: bytes,
                seconds: float, timeout: float = 10.0) -> Dict:
        """SUBACK of the response topic, PUBACK of the request, then wait for a reply."""
        suback = self.subscribe(response_topic, timeout=timeout)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, properties=props)
        self._wait(lambda: info.mid in self.pubacks, timeout)
        self._wait(lambda: any(m.topic == response_topic for m in self.messages), seconds)
        return {"suback": suback, "puback": self.pubacks.get(info.mid)}

    def replies(self) -> List[dict]:
        out = []
        for m in self.messages:
            corr = getattr(m.properties, "CorrelationData", None) if m.properties else None
            try:
                payload = json.loads(m.payload)
            except ValueError:
                payload = m.payload.decode("utf-8", "replace")
            out.append({"topic": m.topic, "correlation": corr.hex() if corr else None,
                        "payload": payload})
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def report(self) -> dict:
        return {"connack": self.connack, "connack_reason": self.connack_reason,
                "error": self.error, "disconnects": self.disconnects,
                "received": [m.topic for m in self.messages]}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", default="")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--password-file", default="")
    parser.add_argument("--client-id", default="")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--retain", action="store_true")
    parser.add_argument("--payload-file", default="")
    parser.add_argument("--response-topic", default="")
    parser.add_argument("--correlation", default="", help="hex")
    parser.add_argument("action", choices=["connect", "publish", "subscribe", "request"])
    parser.add_argument("topic", nargs="?", default="")
    args = parser.parse_args(argv)
    password = ""
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as handle:
            password = handle.read().strip()
    probe = Probe(Identity(args.host, args.port, args.ca, args.cert, args.key, args.user,
                           password, args.client_id))
    payload = b"probe"
    if args.payload_file:
        with open(args.payload_file, "rb") as handle:
            payload = handle.read()
    out: dict = {}
    if probe.connect() == 0:
        if args.action == "publish":
            out["puback"] = probe.publish(args.topic, payload, retain=args.retain)
        elif args.action == "request":
            out.update(probe.request(args.topic, payload, args.response_topic,
                                     bytes.fromhex(args.correlation), args.seconds or 20.0))
            out["replies"] = probe.replies()
        elif args.action == "subscribe":
            out["suback"] = probe.subscribe(args.topic, args.seconds)
        else:
            time.sleep(args.seconds)
        probe.close()
    out.update(probe.report())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
