"""MQTT out: retained status with an ``offline`` last will, masks, stats, frames.

paho-mqtt 2.x with ``connect_async`` + ``loop_start`` reconnects by itself: every
``RECONNECT_S`` (1 s) while the broker cannot be reached, so the agent is back within
about a second of the broker's return whatever the outage length, at one TCP connect
attempt a second; a broker that answers but refuses (TLS, login) is retried 1 s doubling
to ``REFUSED_MAX_S``. This module owns the connection's truth: why it is down (refused, TLS,
login, unreachable), logged once per change, and ``problem()`` for the agent's
health after a short grace. Nothing is lost while disconnected within bounds:

- status and stats go to a spool (``SPOOL_MAX`` messages, oldest dropped first,
  counted) and are delivered in order once connected; QoS 1 messages handed to paho
  stay with paho until acknowledged (it resends them after a reconnect). Before the
  first connection statuses are spooled only once an attempt has failed; after every
  connect the agent publishes the status then current (``take_announce``);
- masks wait in their own queue (50, oldest dropped first, counted);
- frames and overlay JPEGs are best effort (QoS 0, dropped while disconnected);
- command states, discovery configs and each camera's quality (retained) go through the
  spool like status;
  command replies (MQTT 5 response topics) are sent at once or dropped.

Every publish goes through ``_publish``: the topic is checked (``topics.
publish_topic_problem``) and paho's errors are caught, so a bad topic or a client error
is one counted (``publish_failed``), logged refusal, never an exception in the thread
that published.

Messages on subscribed topics are handed to ``on_message`` on paho's network thread,
which must only queue them (edge_agent.control.service does the work on its own thread).

Every connection is numbered; each status carries the number of the connection it
was sent on, and the last will set before connection *k* carries *k*, so a consumer
can order a will against the statuses around it (docs/mqtt.md).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Deque, Dict, Optional, Sequence, Set, Tuple, Union

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.health.pacing import LogThrottle
from edge_agent.protocol.messages import Status
from edge_agent.protocol.topics import publish_topic_problem, quality_topic

log = logging.getLogger("segedge.mqtt")
Payload = Union[str, Callable[[int], str]]  # text, or rendered with the connection number
Message = Tuple[str, Payload, int, bool]  # topic, payload, qos, retain
# (topic, payload, retain, response_topic, correlation_data) of a message we subscribed to
Incoming = Callable[[str, bytes, bool, Optional[str], Optional[bytes]], None]
GRACE_S = 3.0  # not connected for longer than this: the agent is degraded
SPOOL_MAX = 1000  # status + stats messages kept while disconnected (~1.2 MB)
MASK_QUEUE = 50  # masks kept while disconnected
WINDOW = 100  # QoS>0 messages handed to paho and not yet acknowledged
RECONNECT_S = 1  # broker unreachable: one connect attempt a second (a TCP connect: cheap)
REFUSED_MAX_S = 5  # broker refusing (TLS, login): 1 s doubling to this
FAILED_LOG_EVERY_S = 60.0  # failed publishes: one log line a minute
MAX_INCOMING_BYTES = 1 << 20  # MQTT 5 Maximum Packet Size we accept (commands are tiny)


class OutboundQueue:
    """Bounded FIFO: append drops the oldest when full and counts it."""

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

    def has(self, topic: str) -> bool:
        return any(item[0] == topic for item in self._items)

    def __len__(self) -> int:
        return len(self._items)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_error(exc: BaseException, host: str, port: int) -> str:
    """One line saying what failed and where (no secrets: nothing from the config but host)."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({exc.verify_message or exc.reason}) at {where}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc} at {where}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer from {where} (timeout)"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def describe_refusal(reason_code: object, host: str, port: int) -> str:
    text = str(reason_code)
    low = text.lower()
    if "authori" in low or "user name or password" in low:
        return f"not authorised: {host}:{port} refused the login ({text})"
    return f"{host}:{port} refused the connection ({text})"


class _Client(mqtt.Client):
    """paho's client, telling us why a connect attempt failed (paho keeps it to itself)
    and which thread runs its network loop (``loop_start`` runs ``loop_forever`` on it),
    through public methods only."""

    on_attempt: Optional[Callable[[], None]] = None
    on_attempt_error: Optional[Callable[[BaseException], None]] = None
    network_thread: Optional[threading.Thread] = None

    def loop_forever(self, *args: Any, **kwargs: Any) -> Any:
        self.network_thread = threading.current_thread()
        return super().loop_forever(*args, **kwargs)

    def reconnect(self):  # noqa: ANN201 - paho's signature
        if self.on_attempt:
            self.on_attempt()
        try:
            return super().reconnect()
        except BaseException as exc:
            if self.on_attempt_error:
                self.on_attempt_error(exc)
            raise


class MqttComms:
    def __init__(self, cfg: MqttConfig, device_id: str, will: Callable[[int], Status],
                 on_connected: Optional[Callable[[], None]] = None,
                 max_incoming_bytes: int = MAX_INCOMING_BYTES) -> None:
        """``will(k)``: the offline status to leave as the last will of connection ``k``;
        ``on_connected``: called (no locks held) after each successful connect;
        ``max_incoming_bytes``: under MQTT 5 the broker is told not to send us larger
        packets (frames from other devices are the largest thing we take)."""
        self.cfg, self.device_id = cfg, device_id
        self.will = will
        self.on_connected = on_connected
        self.where = f"{cfg.host}:{cfg.port}"
        self._lock = threading.RLock()
        self._connected = False
        self._stopping = False
        self._started = False
        self._status_sent: Dict[str, int] = {}  # per status topic id: the last seq sent
        self.max_incoming_bytes = max_incoming_bytes
        self._announce = False
        self.spool = OutboundQueue(SPOOL_MAX)
        self.queue = OutboundQueue(MASK_QUEUE)
        self.connects = 0
        self._unacked: Set[int] = set()
        self._acked: Deque[int] = deque()
        self._down_since = time.monotonic()
        self._error: Optional[str] = None
        self._logged_error: Optional[str] = None
        self._fatal: Optional[BaseException] = None
        self._subs: Dict[str, int] = {}
        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        self.client_id = cfg.client_id or f"segedge-{device_id}"
        self.tls = bool(cfg.tls_ca or cfg.tls_cert)
        self.client = _Client(callback_api_version=CallbackAPIVersion.VERSION2,
                              client_id=self.client_id, protocol=protocol)
        self.client.max_queued_messages_set(0)  # bounded here: WINDOW, spool and queue
        self.client.reconnect_delay_set(min_delay=RECONNECT_S, max_delay=RECONNECT_S)
        self._refused = False  # the broker answers but refuses: back off (REFUSED_MAX_S)
        self.attempts = 0  # connect attempts made (a broker that stays down: ~1 a second)
        self.publish_failed = 0  # publishes refused by the topic check or the client
        self._failed_note = LogThrottle(FAILED_LOG_EVERY_S)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password or None)
        if self.tls:
            self.client.tls_set(ca_certs=cfg.tls_ca or None, certfile=cfg.tls_cert or None,
                                keyfile=cfg.tls_key or None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_attempt = self._on_attempt
        self.client.on_attempt_error = self._on_attempt_error
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.on_message: Optional[Incoming] = None
        self.client.on_message = self._on_message

    def topic(self, kind: str, camera_id: Optional[str] = None) -> str:
        """``<prefix>/<id>/<kind>``: the agent's own id, or a camera's."""
        return f"{self.cfg.prefix}/{camera_id or self.device_id}/{kind}"

    @property
    def connected(self) -> bool:
        """Connected to the broker now (the metrics' gauge; health reads ``problem()``)."""
        return self._connected

    # --- connection state -----------------------------------------------------------
    def start(self) -> None:
        log.info("connecting to mqtt%s://%s as %s (MQTT %s)", "s" if self.tls else "",
                 self.where, self.client_id, self.cfg.protocol)
        if self.cfg.username and not self.tls and not is_loopback(self.cfg.host):
            log.warning("mqtt credentials for user %r travel in plaintext to %s: set "
                        "mqtt.tls_ca to use TLS", self.cfg.username, self.where)
        self._down_since = time.monotonic()
        self._started = True
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.max_incoming_bytes
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                  properties=props)
        self.client.loop_start()

    def _on_attempt(self) -> None:
        self.attempts += 1
        # the will of the connection about to be made carries its number and the seq of
        # the last status sent before it
        k = self.connects + 1
        will = replace(self.will(k), connection=k,
                       seq=self._status_sent.get(self.device_id, 0))
        self.client.will_set(self.topic("status"), will.to_json(), qos=1, retain=True)

    def _on_attempt_error(self, exc: BaseException) -> None:
        if not isinstance(exc, OSError):
            self._fatal = exc
            log.error("mqtt network thread failed: %s: %s", type(exc).__name__, exc)
            return
        # unreachable: retry every RECONNECT_S; a TLS refusal: back off
        self._backoff(isinstance(exc, ssl.SSLError))
        self._note(describe_error(exc, self.cfg.host, self.cfg.port))

    def _backoff(self, refused: bool) -> None:
        """Retry every RECONNECT_S while the broker is unreachable (it is back within a
        second of its return); 1 s doubling to REFUSED_MAX_S while it answers but
        refuses. paho restarts its delay at each change, so only changes are set."""
        if refused != self._refused:
            self._refused = refused
            self.client.reconnect_delay_set(
                min_delay=RECONNECT_S, max_delay=REFUSED_MAX_S if refused else RECONNECT_S)

    def _note(self, error: str) -> None:
        """Remember why we are not connected; log it once per change, not per retry."""
        self._error = error
        if error != self._logged_error:
            self._logged_error = error
            log.warning("mqtt: %s; retrying", error)

    def problem(self, now: Optional[float] = None) -> Optional[str]:
        """The health reason: None while connected or within the grace after a drop.

        Before the first connection there is no grace: the agent is not delivering yet.
        """
        if self._connected:
            return None
        now = time.monotonic() if now is None else now
        if self.connects and now - self._down_since < GRACE_S:
            return None
        return f"mqtt: {self._error or f'connecting to {self.where}'}"

    def state(self) -> Dict[str, object]:
        """For the health file: connected, broker, reason."""
        return {"connected": self._connected, "broker": self.where,
                "reason": None if self._connected else self._error}

    def fatal(self) -> Optional[str]:
        """Why the network thread is gone, or None while it runs (or before start/after stop)."""
        if not self._started or self._stopping:
            return None
        thread = self.client.network_thread
        if thread is None or thread.is_alive():
            return None  # not yet in its loop (it records itself at once), or running
        exc = self._fatal
        return f"mqtt network thread died ({type(exc).__name__}: {exc})" if exc else \
            "mqtt network thread died"

    def subscribe(self, topic: str, qos: int = 1, handler: Optional[Incoming] = None) -> None:
        """Remembered and renewed after every reconnect. ``handler``: messages matching
        this filter go to it instead of ``on_message`` (paho's network thread: queue only)."""
        if handler is not None:
            self.client.message_callback_add(
                topic, lambda client, userdata, msg: self._deliver(handler, msg))
        with self._lock:
            self._subs[topic] = qos
            if self._connected:
                self.client.subscribe(topic, qos)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._backoff(True)
            self._note(describe_refusal(reason_code, self.cfg.host, self.cfg.port))
            return
        self._backoff(False)
        with self._lock:
            self._connected = True
            self.connects += 1
            self._announce = True  # the main loop publishes the status now current
            self._error = self._logged_error = None
            for topic, qos in self._subs.items():
                client.subscribe(topic, qos)
            self._pump()
        log.info("mqtt connected (%s) to %s", "reconnect" if self.connects > 1 else "first",
                 self.where)
        if self.on_connected:
            self.on_connected()

    def _on_message(self, client, userdata, msg) -> None:
        """Network thread: hand over and return (the handler only queues)."""
        if self.on_message is not None:
            self._deliver(self.on_message, msg)

    @staticmethod
    def _deliver(handler: Incoming, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        handler(msg.topic, bytes(msg.payload), bool(msg.retain), response or None,
                bytes(correlation) if correlation else None)

    def take_announce(self) -> bool:
        """True once after each connect: time to (re)publish the current status."""
        with self._lock:
            announce, self._announce = self._announce, False
            return announce

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was, self._connected = self._connected, False
            if was:
                self._down_since = time.monotonic()
        if was and not self._stopping:
            self._note(f"connection to {self.where} lost ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # called with paho's message lock held: no lock of ours here (see pump)
        self._acked.append(mid)

    # --- sending --------------------------------------------------------------------
    def _publish(self, topic: str, payload: Union[str, bytes], qos: int, retain: bool,
                 properties: Optional[Properties] = None) -> Optional[mqtt.MQTTMessageInfo]:
        """The one place the agent hands a message to paho. None: refused for good (an
        invalid topic, a client error), logged and counted; never raises."""
        problem = publish_topic_problem(topic)
        if problem is None:
            try:
                if properties is None:
                    return self.client.publish(topic, payload, qos=qos, retain=retain)
                return self.client.publish(topic, payload, qos=qos, retain=retain,
                                           properties=properties)
            except Exception as exc:  # noqa: BLE001 - a publish must never end a thread
                problem = f"{type(exc).__name__}: {exc}"
        self.publish_failed += 1
        if self._failed_note.allow():
            shown = " ".join(str(topic).split())[:120]
            log.warning("mqtt: publish to '%s' refused: %s (%d refused in all)", shown,
                        " ".join(problem.split())[:200], self.publish_failed)
        return None

    def _send(self, item: Message) -> Optional[bool]:
        """Hand one message to paho: True sent, False not now (kept by the caller),
        None refused for good (counted in ``publish_failed``: drop it)."""
        if not self._connected:
            return False
        topic, payload, qos, retain = item
        if qos and len(self._unacked) >= WINDOW:
            return False
        text = payload(self.connects) if callable(payload) else payload
        info = self._publish(topic, text, qos, retain)
        if info is None:
            return None
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos and info.rc == mqtt.MQTT_ERR_NO_CONN):
            if qos:  # paho keeps QoS>0 messages until acknowledged, across reconnects
                self._unacked.add(info.mid)
            return True
        return False

    def _consumed(self, item: Message) -> bool:
        """For a queue's drain: sent, or refused for good (it must not block the rest)."""
        return self._send(item) is not False

    def _pump(self) -> None:
        while self._acked:
            self._unacked.discard(self._acked.popleft())
        if self._connected:
            self.spool.drain(self._consumed)
            if not len(self.spool):
                self.queue.drain(self._consumed)

    def pump(self) -> None:
        """Deliver what waits (spool first, then masks); called from the main loop."""
        with self._lock:
            self._pump()

    def _status_item(self, status: Status) -> Message:
        return (self.topic("status", status.device_id),
                lambda k: self._stamp(status, k).to_json(), 1, True)

    def _stamp(self, status: Status, connection: int) -> Status:
        """Number a status as it is sent: ``seq`` counts the statuses sent on its topic,
        without gaps."""
        seq = self._status_sent.get(status.device_id, 0) + 1
        self._status_sent[status.device_id] = seq
        return replace(status, connection=connection, seq=seq)

    def publish_status(self, status: Status) -> None:
        """Spooled in order; before the first connection only once an attempt has failed
        (a normal start does not replay its first milliseconds of 'connecting')."""
        with self._lock:
            if self.connects or self._error:
                self.spool.append(self._status_item(status))
                self._pump()

    def publish_stats(self, payload: str, camera_id: Optional[str] = None) -> None:
        with self._lock:
            self.spool.append((self.topic("stats", camera_id), payload, 1, False))
            self._pump()

    def publish_quality(self, payload: str, camera_id: Optional[str] = None) -> None:
        """The retained quality message (QoS 1): spooled in order, like status."""
        with self._lock:
            self.spool.append((quality_topic(self.cfg.prefix, camera_id or self.device_id),
                               payload, 1, True))
            self._pump()

    def publish_frame(self, payload: str, camera_id: Optional[str] = None) -> bool:
        """Source frames are best effort: sent at QoS 0 when connected, else dropped."""
        with self._lock:
            return bool(self._send((self.topic("frame", camera_id), payload, 0, False)))

    def publish_retained(self, topic: str, payload: str) -> None:
        """A retained QoS 1 message (command state, discovery config): spooled in order."""
        with self._lock:
            self.spool.append((topic, payload, 1, True))
            self._pump()

    def publish_reply(self, topic: str, payload: str,
                      correlation_data: Optional[bytes] = None) -> bool:
        """A reply to an MQTT 5 response topic: QoS 1, not retained, now or never. The
        caller has checked the topic is the asker's (``topics.reply_topic_problem``)."""
        props = None
        if self.cfg.protocol == "5" and correlation_data:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        with self._lock:
            if not self._connected or len(self._unacked) >= WINDOW:
                return False
            info = self._publish(topic, payload, 1, False, props)
            if info is not None and info.rc == mqtt.MQTT_ERR_SUCCESS:
                self._unacked.add(info.mid)
                return True
            return False

    def publish_overlay(self, jpeg: bytes, camera_id: Optional[str] = None) -> bool:
        """Overlay JPEG bytes: QoS 0, not retained, dropped while disconnected."""
        with self._lock:
            return bool(self._send((self.topic("overlay", camera_id), jpeg, 0, False)))

    def publish_mask(self, payload: str, camera_id: Optional[str] = None) -> bool:
        """True when handed to paho; False when queued (not connected) or dropped.

        Masks queue while disconnected (or behind a spool being delivered) and drain on
        reconnect; a failed send while connected is dropped and counted, never queued.
        """
        item = (self.topic("mask", camera_id), payload, self.cfg.qos_mask, False)
        with self._lock:
            self._pump()
            if not self._connected or len(self.spool):
                self.queue.append(item)
                return False
            if self._send(item):
                return True
            self.queue.dropped += 1  # counted in publish_failed too when refused for good
            return False

    @property
    def dropped(self) -> int:
        """Masks lost: dropped oldest-first from the queue or refused while connected."""
        return self.queue.dropped

    def stop(self, offline: Status, timeout: float = 3.0,
             cameras: Sequence[Status] = ()) -> None:
        """Publish ``offline`` (retained) for the agent and each of ``cameras``,
        disconnect, stop the network thread."""
        with self._lock:
            connected = self._connected
            self._stopping = True
            self._pump()
        if connected:
            infos = [self._publish(self.topic("status", status.device_id),
                                   self._stamp(status, self.connects).to_json(), 1, True)
                     for status in (*cameras, offline)]
            deadline = time.monotonic() + timeout
            try:
                for info in filter(None, infos):
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
