"""MQTT out: retained status with an ``offline`` last will, masks, stats.

paho-mqtt 2.x with ``connect_async`` + ``loop_start`` reconnects by itself with
backoff. While disconnected masks wait in a bounded queue (oldest dropped first);
the status and the newest stats are kept aside and always sent on (re)connect.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from typing import Callable, Deque, Dict, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttConfig

log = logging.getLogger("segedge.mqtt")
Message = Tuple[str, str, int, bool]  # topic, payload, qos, retain


class OutboundQueue:
    """Bounded mask queue: append drops the oldest when full and counts it."""

    def __init__(self, maxlen: int) -> None:
        self._items: Deque[Message] = deque(maxlen=maxlen)
        self.dropped = 0

    def append(self, item: Message) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)

    def drain(self, send: Callable[[Message], bool]) -> int:
        """Send queued items oldest first; stop at the first failure, keeping the rest."""
        sent = 0
        while self._items:
            if not send(self._items[0]):
                break
            self._items.popleft()
            sent += 1
        return sent

    def __len__(self) -> int:
        return len(self._items)


class MqttComms:
    def __init__(self, cfg: MqttConfig, device_id: str, offline_payload: str,
                 on_connected: Optional[Callable[[bool], None]] = None,
                 queue_len: int = 50) -> None:
        self.cfg, self.device_id = cfg, device_id
        self.on_connected = on_connected
        self._lock = threading.RLock()
        self._connected = False
        self._stopping = False
        self._status: Optional[str] = None
        self._stats: Optional[str] = None
        self.queue = OutboundQueue(queue_len)
        self.connects = 0
        self._subs: Dict[str, int] = {}
        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        self.client_id = cfg.client_id or f"segedge-{device_id}"
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=self.client_id, protocol=protocol)
        self.client.max_queued_messages_set(queue_len)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls_ca or cfg.tls_cert:
            self.client.tls_set(ca_certs=cfg.tls_ca or None, certfile=cfg.tls_cert or None,
                                keyfile=cfg.tls_key or None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.will_set(self.topic("status"), offline_payload, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def topic(self, kind: str) -> str:
        return f"{self.cfg.prefix}/{self.device_id}/{kind}"

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        log.info("connecting to mqtt%s://%s:%d as %s (MQTT %s)",
                 "s" if self.cfg.tls_ca or self.cfg.tls_cert else "", self.cfg.host,
                 self.cfg.port, self.client_id, self.cfg.protocol)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Remembered and renewed after every reconnect."""
        with self._lock:
            self._subs[topic] = qos
            if self._connected:
                self.client.subscribe(topic, qos)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        with self._lock:
            self._connected = True
            self.connects += 1
            for topic, qos in self._subs.items():
                client.subscribe(topic, qos)
            if self._status is not None:
                self._send((self.topic("status"), self._status, 1, True))
            if self._stats is not None:
                self._send((self.topic("stats"), self._stats, 1, False))
                self._stats = None
            self.queue.drain(self._send)
        log.info("mqtt connected (%s)", "reconnect" if self.connects > 1 else "first")
        if self.on_connected:
            self.on_connected(True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was, self._connected = self._connected, False
        if was and not self._stopping:
            log.warning("mqtt disconnected: %s; paho reconnects", reason_code)
            if self.on_connected:
                self.on_connected(False)

    def _send(self, item: Message) -> bool:
        topic, payload, qos, retain = item
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def publish_status(self, payload: str) -> None:
        with self._lock:
            self._status = payload
            if self._connected:
                self._send((self.topic("status"), payload, 1, True))

    def publish_stats(self, payload: str) -> None:
        with self._lock:
            if self._connected and self._send((self.topic("stats"), payload, 1, False)):
                self._stats = None
            else:
                self._stats = payload

    def publish_frame(self, payload: str) -> bool:
        """Source frames are best effort: sent at QoS 0 when connected, else dropped."""
        with self._lock:
            return self._connected and self._send((self.topic("frame"), payload, 0, False))

    def publish_mask(self, payload: str) -> bool:
        """True when handed to paho; False when queued (disconnected) or dropped.

        Masks queue only while disconnected (the queue drains on reconnect); a
        failed send while connected is dropped and counted, never queued behind
        newer masks.
        """
        item = (self.topic("mask"), payload, self.cfg.qos_mask, False)
        with self._lock:
            if not self._connected:
                self.queue.append(item)
                return False
            if self._send(item):
                return True
            self.queue.dropped += 1
            return False

    def stop(self, offline_payload: str, timeout: float = 3.0) -> None:
        """Publish ``offline`` (retained), disconnect, stop the network thread."""
        with self._lock:
            connected = self._connected
            self._status = offline_payload
            self._stopping = True
        if connected:
            info = self.client.publish(self.topic("status"), offline_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
