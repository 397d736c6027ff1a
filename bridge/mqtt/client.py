"""paho-mqtt behind one seam: the client as the bridge configures it, and every use of paho's
private members, in one place.

Why private members at all: the public ``manual_ack`` API does what the bridge needs
(acknowledge only after the spool commit), but paho reads every packet with at least three
``recv`` calls, builds a message and a properties object and runs a callback per PUBLISH, and
sends each PUBACK with its own ``send``. Measured on a 100,000-message backlog on a 2-core
machine, that was half of the bridge's CPU: 5,348 msg/s and 0.169 CPU-s per 1,000 messages with
the public API alone, 7,617 msg/s and 0.106 CPU-s once the wire layer (:mod:`bridge.mqtt.wire`)
parsed PUBLISH itself and batched PUBACKs (today's full pipeline drains ~14,000 msg/s). To stand
where paho expects its socket, the wire needs:

- ``Client._sock``: the socket paho reads from and writes to (replaced by a
  :class:`~bridge.mqtt.wire.WireSocket` right after paho opens it);
- ``Client._sock_close()``: closing the link without sending DISCONNECT (paho has no public
  close-without-DISCONNECT; a DISCONNECT would be a clean end the broker may act on);
- ``Client._last_bytes_received``: paho's keepalive clock, moved forward for the PUBLISH packets
  the wire parses (they never pass through paho's reader, which is where paho moves it);
- ``MQTTMessage._topic``: the raw topic bytes, when a QoS 2 topic is not valid UTF-8.

pyproject.toml pins paho-mqtt to the minor version these were verified on (``~=2.2.0``) and
``tests/unit/test_paho_contract.py`` fails with a clear message if any of them changes. paho types
stay inside the ``bridge.mqtt`` package.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.mqtt.wire import WireSocket
from bridge.settings import MqttSettings, TlsSettings

log = logging.getLogger(__name__)

VERIFIED_PAHO = "2.2"  # the minor version whose private members are used here
# Private members the seam relies on: (owner, name, what for).
PRIVATE_MEMBERS = (
    ("Client", "_sock", "the socket the wire replaces"),
    ("Client", "_sock_close", "closing without DISCONNECT"),
    ("Client", "_last_bytes_received", "the keepalive clock"),
    ("MQTTMessage", "_topic", "raw topic bytes"),
)


def make_client(s: MqttSettings, password: str | None) -> mqtt.Client:
    """A paho client with manual acknowledgement, a persistent session, no reconnect of its
    own (the source reconnects with backoff) and TLS as configured."""
    v5 = s.protocol == "v5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=s.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=True,
        reconnect_on_failure=False,
    )
    if s.username is not None:
        client.username_pw_set(s.username, password)
    configure_tls(client, s)
    return client


def configure_tls(client: mqtt.Client, s: MqttSettings) -> None:
    """TLS as ``mqtt.tls`` says (nothing when it is off): shared by the bridge's client and
    the side sessions of ``discover`` and ``tap``."""
    if not s.tls.enabled:
        return
    if not s.tls.verify:
        log.warning(
            "mqtt.tls.verify is false: the broker's certificate is not checked, so "
            "anyone on the network path can pose as the broker"
        )
    client.tls_set_context(tls_context(s.tls))


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client TLS context of ``mqtt.tls`` (the bridge's, the side sessions' and
    ``check --connect``'s).

    Raises:
        OSError, ssl.SSLError: a CA, certificate or key file that cannot be loaded.
    """
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file and tls.key_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(client: mqtt.Client, s: MqttSettings) -> None:
    """The blocking part of connecting (DNS, TCP, TLS, sending CONNECT), resuming the session:
    v5 with Clean Start 0 and a Session Expiry Interval, v3.1.1 with Clean Session 0."""
    if s.protocol == "v5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        # Receive Maximum sizes the broker's window of unacknowledged messages; messages
        # wait here only until the next group commit, so a wide window keeps commits large.
        props.ReceiveMaximum = s.receive_maximum
        # A broker drops a packet over Maximum Packet Size for this client without a trace
        # (MQTT 5 §3.1.2.11.4: it "MUST discard it ... and then behave as if it had completed
        # sending"), so it is set far above mqtt.max_payload_bytes: payloads in between reach
        # the bridge, stream past and are counted and dead-lettered as too_large. It only
        # guards against packets so large that streaming them would hold up everything else.
        props.MaximumPacketSize = s.max_packet_size
        client.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
    else:
        client.connect(s.host, s.port, s.keepalive_s)


def subscribe(client: mqtt.Client, broker_filters: list[str], *, v5: bool) -> None:
    """Subscribe at QoS 1. With v5, retained messages only when the subscription is new: a
    reconnect re-subscribes to filters its session already has, and a replayed retained
    message without a payload time would otherwise be stored again as a new reading (Retain
    Handling 1)."""
    if broker_filters and v5:
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(f, opts) for f in broker_filters])
    elif broker_filters:
        client.subscribe([(f, 1) for f in broker_filters])


def install_wire(client: mqtt.Client, sock: Any) -> WireSocket:
    """Put a wire in front of the socket paho just opened (before it sends CONNECT): from here
    on paho reads and writes through it."""
    wire = WireSocket(sock)
    client._sock = wire
    return wire


def drop_link(client: mqtt.Client) -> None:
    """Close the socket without sending DISCONNECT (the broker keeps the session either way)."""
    if client.socket() is not None:
        client._sock_close()


def note_bytes_received(client: mqtt.Client) -> None:
    """Tell paho's keepalive that the broker is talking: PUBLISH packets parsed by the wire
    never pass through paho's reader, which is where it notes the time."""
    client._last_bytes_received = time.monotonic()


def message_topic(msg: mqtt.MQTTMessage) -> str:
    """The topic of a message paho parsed (QoS 2), also when it is not valid UTF-8."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return msg._topic.decode("utf-8", "replace")  # brokers validate UTF-8


def contract_problems() -> list[str]:
    """What of paho this seam relies on is missing or changed (empty: all present)."""
    problems: list[str] = []
    version = getattr(mqtt, "__version__", "") or _installed_version()
    if not version.startswith(VERIFIED_PAHO + "."):
        problems.append(f"paho-mqtt {version} installed; the seam was verified on {VERIFIED_PAHO}")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="contract-check")
    message = mqtt.MQTTMessage(topic=b"a/b")
    owners = {"Client": client, "MQTTMessage": message}
    for owner, name, purpose in PRIVATE_MEMBERS:
        if not hasattr(owners[owner], name):
            problems.append(f"paho-mqtt {owner}.{name} is gone ({purpose})")
    return problems


def _installed_version() -> str:
    from importlib.metadata import version

    return version("paho-mqtt")
