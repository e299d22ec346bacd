"""``BrokerConfig``: the top-level keys, and the key tables every other part reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .bridge import (
    BridgeSettings,
    BridgeTopic,
    MetricsSettings,
)
from .keys import (
    _MAX_PACKET,
    _U16,
    _U32,
    WS_LISTENER_TYPES,
    KeySpec,
    _key,
    _no_nul,
    _spec,
    _unlimited_or_positive,
)
from .listener import (
    ListenerSettings,
    _default_listeners,
)


@dataclass
class BrokerConfig:
    """Every setting of the broker; the defaults give a usable local broker.

    Build it from a TOML file with :func:`load_config`, from command-line flags with
    :func:`config_from_args`, or directly in Python (then call :func:`validate_config`).
    """

    # --- listeners and security ---
    listeners: list[ListenerSettings] = field(
        default_factory=list,
        metadata=_spec(
            "The sockets to listen on, one `[[listener]]` table each (keys below). None "
            "configured: TCP port 1883 on 127.0.0.1 and ::1 (the IPv6 one only where the host "
            "has IPv6 loopback), anonymous access allowed unless a password file is set: "
            "Mosquitto 2.0's local-only default, so a fresh install is never open to the network.",
            default_doc="TCP 1883 on 127.0.0.1 and ::1",
        ),
    )
    allow_anonymous: bool | None = _key(
        None,
        "Accept clients that send no user name. Unset: allowed on a loopback listener without a "
        "password file, refused where a password file applies; a listener on any other address "
        "refuses to start until `allow_anonymous` or a `password_file` is set (Mosquitto 2.0's "
        "rule: exposing a broker is an explicit choice). A WebSocket listener never counts as "
        "loopback, since a reverse proxy on the same host may forward anyone.",
    )
    password_file: str | None = _key(
        None,
        "Password file in Mosquitto's format (`user:$7$...`, made by `mqttv5 passwd` or "
        "`mosquitto_passwd`), used by every listener without its own.",
    )
    scram_file: str | None = _key(
        None,
        "SCRAM-SHA-256 credentials file (`user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:"
        "<ServerKey>`, made by `mqttv5 passwd --hash scram-sha-256 --scram-file FILE USER`), "
        "used by every listener without its own. Clients authenticate with MQTT 5 enhanced "
        "authentication, method `SCRAM-SHA-256`; with a `password_file` too, both work. Needs "
        "the `auth` extra (scramp).",
    )
    acl_file: str | None = _key(
        None,
        "Access control file, used by every listener without its own. Unset: no topic "
        "restrictions, as Mosquitto.",
    )
    # --- storage and logging ---
    storage: str = _key(
        "sqlite",
        "Where sessions, retained messages and queued messages live: `sqlite` (durable: a file "
        "under `data_dir`; a QoS 1/2 message is acknowledged only once it is on disk, so none "
        "that was acknowledged is lost even if the broker is killed) or `memory` (lost on "
        "restart). Differs from Mosquitto, whose `persistence` is off by default and which "
        "saves periodically.",
        choices=("memory", "sqlite"),
    )
    data_dir: str = _key(
        "./mqttv5-data",
        'Directory for durable storage (`storage = "sqlite"`): the database `mqttv5.db` and '
        "its journal segments; created if missing, and locked while the broker runs (a second "
        "broker or `mqttv5 storage` on it is refused). A relative path is relative to the "
        "working directory. As Mosquitto's `persistence_location`.",
    )
    storage_sync: str = _key(
        "normal",
        "How hard a `sqlite` commit pushes to disk: `normal` (each group commit is one write to "
        "a journal, folded into the database by a child process: an acknowledged message "
        "survives a crash of the broker process) or `full` (a writer process also fsyncs each "
        "journal write before the acknowledgements go out: it survives a power loss too, at the "
        "cost of an fsync per commit).",
        choices=("normal", "full"),
    )
    log_level: str = _key(
        "info",
        "Least severe messages logged: `debug`, `info`, `warning` or `error`.",
        choices=("debug", "info", "warning", "error"),
    )
    log_format: str = _key(
        "text",
        "`text`: Mosquitto-style lines prefixed with a Unix timestamp "
        "(`1700000000: New client connected ...`). `json`: one JSON object per line with `ts`, "
        "`level`, `logger`, `msg` and any extra fields, for log collectors.",
        choices=("text", "json"),
    )
    log_file: str | None = _key(
        None,
        "File to append the log to (reopened if moved, so logrotate works). Unset: standard error.",
    )
    # --- limits on what clients send ---
    max_packet_size: int = _key(
        1_048_576,
        "Largest packet accepted from a client, in bytes (1 MiB), sent to MQTT 5 clients as "
        "Maximum Packet Size in CONNACK; a larger packet closes the connection with 0x95 Packet "
        "too large. Mosquitto allows the protocol's 256 MB; we bound it, as EMQX does (1 MB), "
        "so a few clients cannot exhaust the broker's memory.",
        minimum=1,
        maximum=_MAX_PACKET,
    )
    receive_maximum: int = _key(
        20,
        "QoS 1 and 2 PUBLISH packets a client may have unacknowledged towards the broker, sent "
        "as Receive Maximum in CONNACK; exceeding it earns DISCONNECT 0x93. Mosquitto uses "
        "`max_inflight_messages` for both directions.",
        minimum=1,
        maximum=_U16,
    )
    topic_alias_maximum: int = _key(
        10,
        "Topic aliases a client may use towards the broker (Topic Alias Maximum in CONNACK); "
        "0 disables them. As Mosquitto's `max_topic_alias`.",
        minimum=0,
        maximum=_U16,
    )
    max_keepalive: int = _key(
        _U16,
        "Largest Keep Alive, in seconds, a client may use. An MQTT 5 client asking for more is "
        "told this value as Server Keep Alive in CONNACK. As Mosquitto.",
        minimum=1,
        maximum=_U16,
    )
    max_topic_levels: int = _key(
        128,
        "Most levels (`/`-separated parts) in a topic name or topic filter; deeper ones are "
        "refused. Bounds the work of matching a topic against the subscription tree.",
        minimum=1,
        maximum=_U16,
    )
    max_subscriptions: int = _key(
        0,
        "Most subscriptions one client may hold; 0 = unlimited.",
        minimum=0,
    )
    max_client_id_length: int = _key(
        1024,
        "Longest Client Identifier accepted, in UTF-8 bytes. The specification requires at "
        "least 23 [MQTT-3.1.3-5].",
        minimum=23,
        maximum=_U16,
    )
    connect_timeout: float = _key(
        10.0,
        "Seconds a new connection may take to send its CONNECT before it is closed.",
        above=0.0,
    )
    # --- what the broker offers (CONNACK capabilities) ---
    maximum_qos: int = _key(
        2,
        "Highest QoS the broker accepts (Maximum QoS in CONNACK). As Mosquitto's `max_qos`.",
        minimum=0,
        maximum=2,
    )
    retain_available: bool = _key(
        True,
        "Support retained messages (Retain Available in CONNACK). As Mosquitto.",
    )
    wildcard_subscriptions: bool = _key(
        True,
        "Allow `+` and `#` in topic filters (Wildcard Subscription Available in CONNACK).",
    )
    subscription_identifiers: bool = _key(
        True,
        "Support Subscription Identifiers (Subscription Identifier Available in CONNACK).",
    )
    shared_subscriptions: bool = _key(
        True,
        "Support `$share/group/filter` subscriptions (Shared Subscription Available in CONNACK).",
    )
    # --- sessions and queues ---
    max_inflight_messages: int = _key(
        20,
        "QoS 1 and 2 messages the broker has unacknowledged towards one client at a time (the "
        "smaller of this and the client's Receive Maximum). As Mosquitto.",
        minimum=1,
        maximum=_U16,
    )
    max_queued_messages: int = _key(
        1000,
        "Messages queued for one client beyond those in flight (offline, or at its in-flight "
        "limit); 0 = unlimited. As Mosquitto.",
        minimum=0,
    )
    max_queued_bytes: int = _key(
        0,
        "Payload bytes queued for one client; 0 = unlimited. As Mosquitto.",
        minimum=0,
    )
    queue_overflow: str = _key(
        "drop_newest",
        "What a full queue does with one more message: `drop_newest` (discard the arriving "
        "message, as Mosquitto) or `drop_oldest` (discard the oldest queued one).",
        choices=("drop_newest", "drop_oldest"),
    )
    max_session_expiry: int | None = _key(
        None,
        "Cap, in seconds, on the Session Expiry Interval a client may ask for; a client asking "
        "for more is told this value in CONNACK. Unset: no cap.",
        minimum=0,
        maximum=_U32,
    )
    persistent_client_expiration: int | None = _key(
        None,
        "Seconds after which the session of an MQTT 3.1.1 client that connected with "
        "clean session = 0 is removed if it has not reconnected (3.1.1 has no Session Expiry "
        "Interval). Unset: kept forever, as Mosquitto.",
        minimum=0,
        maximum=_U32,
    )
    assigned_client_id_prefix: str = _key(
        "auto-",
        "Prefix of the Client Identifier the broker assigns to a client that connects with an "
        "empty one. As Mosquitto's `auto_id_prefix`.",
        check=_no_nul,
    )
    # --- resources ---
    max_connections: int = _key(
        -1,
        "Most simultaneous connections over all listeners; -1 = unlimited. (Mosquitto's "
        "`max_connections` limits each listener: here that is `max_connections` in a "
        "`[[listener]]` table.)",
        check=_unlimited_or_positive,
        rule_doc="-1 or ≥ 1",
    )
    max_connections_per_address: int = _key(
        0,
        "Most simultaneous connections from one source address (an IPv6 address counts by its "
        "/64), per listener; 0 = unlimited. A connection over it is closed at once. Unlimited "
        "by default because a NAT or a mobile carrier puts thousands of legitimate devices "
        "behind one address; set it on a listener facing the Internet (see docs/security.md).",
        minimum=0,
    )
    max_connection_rate: float = _key(
        0.0,
        "New connections per second from one source address, per listener (a token bucket of "
        "`connection_rate_burst`); 0 = unlimited. A client over it gets CONNACK 0x9F "
        "Connection rate exceeded (3.1.1: return code 3). Off by default, as in Mosquitto: "
        "after a broker restart a whole fleet behind one NAT reconnects at once.",
        minimum=0,
    )
    connection_rate_burst: int = _key(
        0,
        "Connections one address may open at once before `max_connection_rate` applies; "
        "0 = the rate rounded up (at least 1).",
        minimum=0,
    )
    max_publish_rate: float = _key(
        0.0,
        "PUBLISH packets per second one client may send (a token bucket of "
        "`publish_rate_burst`); 0 = unlimited. Over it, QoS 0 messages are dropped and counted "
        "and QoS 1/2 messages are throttled (the broker stops reading from the client until "
        "the rate allows more; none is lost); a client whose dropped messages exceed 10 times "
        "the rate is disconnected with 0x96 Message rate too high.",
        minimum=0,
    )
    publish_rate_burst: int = _key(
        0,
        "PUBLISH packets a client may send at once before `max_publish_rate` applies; 0 = the "
        "rate rounded up (at least 1).",
        minimum=0,
    )
    max_inbound_bytes_per_second: int = _key(
        0,
        "Bytes per second the broker reads from one client (over one second on average); "
        "0 = unlimited. A faster client is throttled: the broker stops reading from it for a "
        "while (its keep-alive is not held against it).",
        minimum=0,
    )
    max_retained_messages: int = _key(
        1_000_000,
        "Most retained messages the broker stores; 0 = unlimited. A retained PUBLISH for a new "
        "topic beyond it is refused whole (QoS 1/2: PUBACK/PUBREC 0x97 Quota exceeded; QoS 0: "
        "dropped), while replacing or clearing a retained message still works. Mosquitto has "
        "no limit; ours bounds what one client can make the broker keep forever.",
        minimum=0,
    )
    max_retained_bytes: int = _key(
        268_435_456,
        "Most bytes (topic and payload) of retained messages stored from clients (256 MiB); "
        "0 = unlimited. A retained PUBLISH that would exceed it is refused as for "
        "`max_retained_messages`.",
        minimum=0,
    )
    outbound_high_water: int = _key(
        1_048_576,
        "Bytes waiting to be written to one client above which QoS 0 messages to it are dropped "
        "(QoS 1 and 2 are queued), so a slow reader cannot grow the broker's memory.",
        minimum=1,
    )
    memory_limit: int = _key(
        536_870_912,
        "Bytes buffered in the whole broker above which it stops reading from publishers until "
        "the backlog drains (512 MiB). Mosquitto's `memory_limit` (unlimited by default) drops "
        "messages and disconnects publishers instead; pausing loses nothing.",
        minimum=1,
    )
    # --- timers ---
    sys_interval: float = _key(
        10.0,
        "Seconds between updates of the `$SYS/broker/...` topics; 0 disables `$SYS`. As Mosquitto.",
        minimum=0,
    )
    keepalive_sweep_interval: float = _key(
        1.0,
        "Seconds between checks for connections silent for 1.5 times their Keep Alive.",
        above=0.0,
    )
    shutdown_timeout: float = _key(
        5.0,
        "Seconds a graceful shutdown (SIGINT, SIGTERM) waits for clients to be sent DISCONNECT "
        "0x8B Server shutting down and for pending writes and storage to be flushed.",
        minimum=0,
    )
    # --- bridges and the metrics listener (tables with keys of their own, below) ---
    bridges: list[BridgeSettings] = field(
        default_factory=list,
        metadata=_spec(
            "Connections to other brokers, one `[[bridge]]` table each (keys below; a guide in "
            "docs/bridges.md). Bridges added, removed or changed in the file apply on SIGHUP.",
            default_doc="none",
        ),
    )
    metrics: MetricsSettings | None = field(
        default=None,
        metadata=_spec(
            "HTTP listener for Prometheus (`/metrics`) and health checks (`/health`): a "
            "`[metrics]` table (keys below), even an empty one, turns it on (docs/metrics.md). "
            "A change needs a restart.",
            default_doc="unset: off",
        ),
    )

    def effective_listeners(self) -> list[ListenerSettings]:
        """The configured listeners, or the default pair (TCP 1883 on 127.0.0.1 and ::1)."""
        return list(self.listeners) if self.listeners else _default_listeners()

    def effective_password_file(self, listener: ListenerSettings) -> str | None:
        """The password file that applies to ``listener``: its own, else the global one."""
        return listener.password_file if listener.password_file is not None else self.password_file

    def effective_scram_file(self, listener: ListenerSettings) -> str | None:
        """The SCRAM file that applies to ``listener``: its own, else the global one."""
        return listener.scram_file if listener.scram_file is not None else self.scram_file

    def effective_acl_file(self, listener: ListenerSettings) -> str | None:
        """The ACL file that applies to ``listener``: its own, else the global one."""
        return listener.acl_file if listener.acl_file is not None else self.acl_file

    def effective_max_packet_size(self, listener: ListenerSettings) -> int:
        """The Maximum Packet Size that applies to ``listener``."""
        own = listener.max_packet_size
        return own if own is not None else self.max_packet_size

    def effective_allow_anonymous(self, listener: ListenerSettings) -> bool:
        """Whether ``listener`` accepts clients without a user name.

        The listener's value, else the global one; when both are unset, anonymous access is
        allowed exactly when no password or SCRAM file applies and the listener is not a
        WebSocket one (:func:`validate_security` has made sure such a listener is on loopback).
        """
        if listener.allow_anonymous is not None:
            return listener.allow_anonymous
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        if listener.type in WS_LISTENER_TYPES:
            return False  # never loopback: a proxy may forward anyone (see validate_security)
        return (
            self.effective_password_file(listener) is None
            and self.effective_scram_file(listener) is None
        )


def _specs(cls: type) -> dict[str, KeySpec]:
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


#: The declaration table: key -> KeySpec, in declaration order (the TOML key of ``listeners``
#: is ``listener``).
BROKER_KEYS: Final[Mapping[str, KeySpec]] = _specs(BrokerConfig)
LISTENER_KEYS: Final[Mapping[str, KeySpec]] = _specs(ListenerSettings)
_DEFAULT_LISTENER: Final = ListenerSettings()
BRIDGE_KEYS: Final[Mapping[str, KeySpec]] = _specs(BridgeSettings)
BRIDGE_TOPIC_KEYS: Final[Mapping[str, KeySpec]] = _specs(BridgeTopic)
METRICS_KEYS: Final[Mapping[str, KeySpec]] = _specs(MetricsSettings)
