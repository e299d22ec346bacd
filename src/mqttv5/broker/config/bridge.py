"""The settings of bridges (``[[bridge]]``) and of the metrics listener (``[metrics]``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Final

from .keys import (
    _U16,
    _U32,
    _host,
    _key,
    _no_nul,
    _spec,
)

# --- bridges and the metrics listener -------------------------------------------------------------

#: Directions of a bridge topic rule, as in Mosquitto's ``topic`` lines.
BRIDGE_DIRECTIONS: Final[tuple[str, ...]] = ("out", "in", "both")


def _topic_prefix(value: str) -> str | None:
    if any(c in value for c in "+#\x00"):
        return "must not contain the wildcards + or # (or U+0000)"
    return None


def _bridge_name(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if any(c in value for c in "/+#\x00") or value != value.strip():
        return "must not contain /, +, # or U+0000, nor start or end with a space"
    return None


def _bridge_protocol(value: int) -> str | None:
    return None if value in (4, 5) else "must be 5 (MQTT 5.0) or 4 (MQTT 3.1.1)"


def _url_error(url: str) -> str | None:
    from mqttv5.protocol.errors import MqttError
    from mqttv5.transport.url import parse_url  # imported here: --help must not need transports

    try:
        parse_url(url)
    except MqttError as exc:
        return str(exc)
    return None


def _url(value: str) -> str | None:
    return "must not be empty" if not value else _url_error(value)


def _urls(value: list[str]) -> str | None:
    for url in value:
        message = _url(url)
        if message is not None:
            return message
    return None


def _topic_name(value: str) -> str | None:
    if not value or any(c in value for c in "+#\x00"):
        return "must be a topic name: not empty, without the wildcards + and #"
    return None


@dataclass
class BridgeTopic:
    """One topic rule of a bridge: Mosquitto's
    ``topic pattern [[[ out | in | both ] qos-level] local-prefix remote-prefix]``.

    The bridge subscribes to ``local_prefix + pattern`` on this broker (``out``, ``both``) and to
    ``remote_prefix + pattern`` on the remote one (``in``, ``both``); a forwarded message's
    topic loses the prefix of the side it came from and gains the other side's.
    """

    pattern: str = _key(
        "",
        "Topic filter shared between the two brokers (`+` and `#` allowed). Empty with both "
        "prefixes set: the single topic `local_prefix` on this broker is `remote_prefix` on "
        'the remote one (Mosquitto\'s `""` place marker).',
        check=_no_nul,
        default_doc="required",
    )
    direction: str = _key(
        "out",
        "`out`: messages published here are sent to the remote broker; `in`: messages "
        "published there are brought here; `both`: both ways. As Mosquitto (default `out`).",
        choices=BRIDGE_DIRECTIONS,
    )
    qos: int = _key(
        0,
        "QoS of the bridge's subscriptions: messages cross at the QoS they were published "
        "with, at most this one. As Mosquitto (default 0).",
        minimum=0,
        maximum=2,
    )
    local_prefix: str = _key(
        "",
        "Prefix of the topics on this broker: added to incoming topics, removed from "
        'outgoing ones (e.g. `"site1/"`).',
        check=_topic_prefix,
    )
    remote_prefix: str = _key(
        "",
        "Prefix of the topics on the remote broker: added to outgoing topics, removed from "
        "incoming ones.",
        check=_topic_prefix,
    )

    @property
    def local_filter(self) -> str:
        """What the bridge subscribes to on this broker (``out`` and ``both`` rules)."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """What the bridge subscribes to on the remote broker (``in`` and ``both`` rules)."""
        return self.remote_prefix + self.pattern

    @property
    def outgoing(self) -> bool:
        """Messages go from this broker to the remote one."""
        return self.direction != "in"

    @property
    def incoming(self) -> bool:
        """Messages come from the remote broker to this one."""
        return self.direction != "out"

    def to_remote(self, topic: str) -> str:
        """The remote topic of local ``topic`` (which matches :attr:`local_filter`)."""
        if not self.pattern:
            return self.remote_prefix
        return self.remote_prefix + topic[len(self.local_prefix) :]

    def to_local(self, topic: str) -> str:
        """The local topic of remote ``topic`` (which matches :attr:`remote_filter`)."""
        if not self.pattern:
            return self.local_prefix
        return self.local_prefix + topic[len(self.remote_prefix) :]


@dataclass
class BridgeSettings:
    """One ``[[bridge]]``: a connection to another broker and the topics it shares.

    Mosquitto's bridge options under the names of this file's other keys; see
    ``docs/bridges.md`` for the translation table.
    """

    name: str = _key(
        "",
        "Name of the bridge, unique: used in log lines, in the default client identifiers and "
        "in the notification topic. As Mosquitto's `connection`.",
        check=_bridge_name,
        default_doc="required",
    )
    address: str | None = _key(
        None,
        'URL of the remote broker: `"mqtt://host:1883"` (or `"host:port"`); other schemes '
        "(`mqtts://`, `ws://`, `wss://`) as their transports are available. As Mosquitto's "
        "`address`.",
        check=_url,
        default_doc="required (or `addresses`)",
    )
    addresses: list[str] = field(
        default_factory=list,
        metadata=_spec(
            "Fallback URLs, tried in order after `address` on every (re)connection: the first "
            "that accepts the connection is used (Mosquitto's further `address` values with "
            "`round_robin false`).",
            check=_urls,
        ),
    )
    topics: list[BridgeTopic] = field(
        default_factory=list,
        metadata=_spec(
            'The topic rules, one table each (keys below): `topics = [{ pattern = "sensors/#", '
            'direction = "out", qos = 1 }]`. At least one. As Mosquitto\'s `topic` lines.',
            default_doc="required",
        ),
    )
    client_id: str | None = _key(
        None,
        "Client Identifier on the remote broker. Unset: `<host name>.<name>`. As Mosquitto's "
        "`remote_clientid`.",
        check=_no_nul,
    )
    local_client_id: str | None = _key(
        None,
        "Client Identifier of the bridge's session on this broker (it counts as a client "
        "there). Unset: `local.<client_id>`. As Mosquitto's `local_clientid`.",
        check=_no_nul,
    )
    username: str | None = _key(
        None,
        "User name sent to the remote broker. As Mosquitto's `remote_username`.",
    )
    password: str | None = _key(
        None,
        "Password sent to the remote broker. As Mosquitto's `remote_password`.",
    )
    protocol_version: int = _key(
        5,
        "MQTT version spoken to the remote broker: 5 (MQTT 5.0) or 4 (MQTT 3.1.1). Mosquitto's "
        "`bridge_protocol_version` (`mqttv50`, `mqttv311`) defaults to 3.1.1.",
        check=_bridge_protocol,
        rule_doc="4 or 5",
    )
    keepalive: int = _key(
        60,
        "Keep Alive of the connection to the remote broker, in seconds. As Mosquitto's "
        "`keepalive_interval`.",
        minimum=5,
        maximum=_U16,
    )
    clean_start: bool = _key(
        False,
        "Start a fresh session on the remote broker when the bridge starts. false keeps the "
        "remote session (subscriptions, queued messages) across restarts of the bridge; "
        "reconnections after a lost connection always resume it. As Mosquitto's "
        "`cleansession`.",
    )
    session_expiry: int = _key(
        3600,
        "MQTT 5: seconds the remote broker keeps the bridge's session after its connection is "
        "lost; QoS 1 and 2 messages for the bridge queue there meanwhile. 0: the session ends "
        "with the connection. (3.1.1 sessions last until a clean start.)",
        minimum=0,
        maximum=_U32,
    )
    try_private: bool = _key(
        True,
        "MQTT 3.1.1: tell the remote broker it talks to a bridge (bit 0x80 of the protocol "
        "level), so that a Mosquitto remote neither sends the bridge its own messages back nor "
        "clears their RETAIN flag. MQTT 5.0 has No Local and Retain As Published for that, and "
        "the flag is not sent (as Mosquitto's own bridges). Set false for a 3.1.1 broker that "
        "refuses it.",
    )
    notifications: bool = _key(
        True,
        "Publish the bridge's state, `1` (connected) or `0` (not connected), as a retained "
        "message on `notification_topic` on this broker. As Mosquitto.",
    )
    notifications_local_only: bool = _key(
        True,
        "Publish the notifications on this broker only. false: also on the remote broker "
        "(`1` on connecting, `0` as the connection's Will), as Mosquitto does by default; "
        "the remote must accept publications there (mqttv5 brokers refuse clients' "
        "`$SYS` publications).",
    )
    notification_topic: str | None = _key(
        None,
        "Topic of the notifications. Unset: `$SYS/broker/connection/<name>/state` (Mosquitto "
        "puts the remote client id where we put the name).",
        check=_topic_name,
    )
    reconnect_delay: float = _key(
        5.0,
        "Seconds before the first reconnection attempt; the delay doubles after each failed "
        "attempt, with jitter, up to `reconnect_delay_max`. As Mosquitto's `restart_timeout` "
        "base.",
        above=0.0,
    )
    reconnect_delay_max: float = _key(
        30.0,
        "Longest delay between reconnection attempts, in seconds. As Mosquitto's "
        "`restart_timeout` cap.",
        above=0.0,
    )
    connect_timeout: float = _key(
        10.0,
        "Seconds a connection attempt to one address may take (TCP and CONNACK).",
        above=0.0,
    )
    max_inflight: int = _key(
        100,
        "QoS 1 and 2 messages the bridge forwards at a time in each direction (the Receive "
        "Maximum of its connections). Beyond it, messages wait in the brokers' session queues: "
        "here bounded by `max_queued_messages`, on the remote broker by its own limits.",
        minimum=1,
        maximum=_U16,
    )
    outgoing_retain: bool = _key(
        True,
        "Keep the RETAIN flag of messages sent to the remote broker; false clears it (for a "
        "3.1.1 broker without retained messages). As Mosquitto's `bridge_outgoing_retain`.",
    )

    @property
    def urls(self) -> list[str]:
        """``address`` then ``addresses``: the remote broker's URLs in the order tried."""
        return ([self.address] if self.address else []) + list(self.addresses)

    @property
    def remote_client_id(self) -> str:
        """The Client Identifier on the remote broker."""
        if self.client_id is not None:
            return self.client_id
        return f"{socket.gethostname()}.{self.name}"

    @property
    def effective_local_client_id(self) -> str:
        """The Client Identifier of the bridge's session on this broker."""
        if self.local_client_id is not None:
            return self.local_client_id
        return f"local.{self.remote_client_id}"

    @property
    def state_topic(self) -> str:
        """Where the bridge's state is published."""
        if self.notification_topic is not None:
            return self.notification_topic
        return f"$SYS/broker/connection/{self.name}/state"


@dataclass
class MetricsSettings:
    """The ``[metrics]`` table: an HTTP listener for Prometheus (``/metrics``) and ``/health``."""

    bind: str = _key(
        "127.0.0.1",
        "Address of the HTTP listener. It serves the broker's statistics without "
        "authentication: anything but loopback exposes them.",
        check=_host,
    )
    port: int = _key(
        9234,
        "TCP port of the HTTP listener; 0 picks a free port (for tests). 9234, not 9100: "
        "that one is the Prometheus node exporter's.",
        minimum=0,
        maximum=_U16,
    )

    @property
    def address(self) -> str:
        """``host:port`` as a user would write it."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{host}:{self.port}"
