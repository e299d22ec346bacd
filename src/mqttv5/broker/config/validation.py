"""Validation of a whole configuration (listeners, transports, security, bridges, metrics),
and building bridges and metrics from TOML tables."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from mqttv5.protocol.errors import ConfigError, ProtocolError
from mqttv5.protocol.topics import validate_topic_filter, validate_topic_name

from .bridge import (
    BridgeSettings,
    BridgeTopic,
    MetricsSettings,
)
from .checking import (
    _BRIDGE_KINDS,
    _BROKER_KINDS,
    _LISTENER_KINDS,
    _METRICS_KINDS,
    _TOPIC_KINDS,
    _check_value,
    _Kind,
    _show,
    _unknown_key,
)
from .keys import (
    TLS_LISTENER_TYPES,
    UDP_LISTENER_TYPES,
    WS_LISTENER_TYPES,
    KeySpec,
)
from .listener import (
    ListenerSettings,
)
from .model import (
    _DEFAULT_LISTENER,
    BRIDGE_KEYS,
    BRIDGE_TOPIC_KEYS,
    BROKER_KEYS,
    LISTENER_KEYS,
    METRICS_KEYS,
    BrokerConfig,
)

# --- validation of a whole configuration ----------------------------------------------------------


def _check_fields(
    obj: object,
    specs: Mapping[str, KeySpec],
    kinds: Mapping[str, _Kind],
    prefix: str,
    source: str | None,
) -> None:
    for name, spec in specs.items():
        if kinds[name].base not in _TABLE_KINDS:
            _check_value(prefix + name, getattr(obj, name), spec, kinds[name], source)


def validate_config(
    config: BrokerConfig, *, source: str | None = None, check_security: bool = True
) -> None:
    """Check every value of a configuration built in Python, then the rules across keys.

    :func:`load_config` and :func:`config_from_args` call it; call it yourself for a
    :class:`BrokerConfig` you construct.

    Raises:
        ConfigError: the first bad value, naming its key (``listener[0].port``).
    """
    _check_fields(config, BROKER_KEYS, _BROKER_KINDS, "", source)
    if not isinstance(config.listeners, list):
        raise ConfigError("listener", "must be a list of ListenerSettings", source)
    seen: dict[tuple[str, str, int], int] = {}
    for index, listener in enumerate(config.listeners):
        prefix = f"listener[{index}]."
        _check_fields(listener, LISTENER_KEYS, _LISTENER_KINDS, prefix, source)
        _check_transport_keys(listener, prefix, source)
        where = (_transport_family(listener.type), listener.bind, listener.port)
        if listener.port != 0 and where in seen:
            message = f"listener[{seen[where]}] already uses {listener.address}"
            raise ConfigError(prefix + "port", message, source)
        seen[where] = index
    _validate_bridges(config, source)
    _validate_metrics(config, source)
    if check_security:
        validate_security(config, source=source)


_TLS_KEYS: Final = (
    "certfile", "keyfile", "cafile", "capath", "require_certificate", "use_identity_as_username",
    "use_subject_as_username", "tls_version", "ciphers", "crlfile", "alpn",
)  # fmt: skip
_WS_KEYS: Final = (
    "ws_path", "ws_subprotocols", "allowed_origins", "ws_compression",
)  # fmt: skip
_FILE_KEYS: Final = ("certfile", "keyfile", "cafile", "crlfile", "psk_file")
# The TLS keys a dtls listener takes too.
_DTLS_KEYS: Final = (
    "certfile", "keyfile", "cafile", "require_certificate", "use_identity_as_username",
)  # fmt: skip
_UDP_KEYS: Final = ("mtu", "rto_min", "rto_max", "max_retransmits", "idle_timeout")


def _check_transport_keys(listener: ListenerSettings, prefix: str, source: str | None) -> None:
    """The TLS and WebSocket keys of one listener: set only where they apply, files present,
    and the combinations that make sense (mutual TLS needs a CA ...).

    Raises:
        ConfigError: naming the key (``listener[0].certfile``).
    """
    default = _DEFAULT_LISTENER
    kind = listener.type
    if kind in WS_LISTENER_TYPES and importlib.util.find_spec("websockets") is None:
        message = f"a {kind} listener needs the websockets package: pip install 'mqttv5[ws]'"
        raise ConfigError(prefix + "type", message, source)
    if kind == "dtls" and importlib.util.find_spec("mbedtls") is None:
        message = "a dtls listener needs python-mbedtls: pip install 'mqttv5[dtls]'"
        raise ConfigError(prefix + "type", message, source)
    for keys, allowed, what in (
        (_TLS_KEYS, TLS_LISTENER_TYPES, "tls and wss"),
        (_WS_KEYS, WS_LISTENER_TYPES, "ws and wss"),
        (_UDP_KEYS, UDP_LISTENER_TYPES, "udp and dtls"),
        (("psk_file",), frozenset({"dtls"}), "dtls"),
    ):
        if kind in allowed:
            continue
        for key in keys:
            if kind == "dtls" and key in _DTLS_KEYS:
                continue
            if getattr(listener, key) != getattr(default, key):
                message = f"applies to {what} listeners only (this one is {kind!r})"
                raise ConfigError(prefix + key, message, source)
    if listener.trusted_proxies and kind not in ("tcp", *WS_LISTENER_TYPES):
        message = f"applies to tcp, ws and wss listeners only (this one is {kind!r})"
        raise ConfigError(prefix + "trusted_proxies", message, source)
    if kind in UDP_LISTENER_TYPES and listener.rto_min > listener.rto_max:
        raise ConfigError(prefix + "rto_min", "must not exceed rto_max", source)
    if kind == "dtls":
        _check_dtls_keys(listener, prefix, source)
    if kind not in TLS_LISTENER_TYPES | {"dtls"}:
        return
    for key in ("certfile", "keyfile"):
        if kind == "dtls" and listener.certfile is None and listener.keyfile is None:
            break  # PSK only
        if getattr(listener, key) is None:
            raise ConfigError(prefix + key, f"a {kind} listener needs certfile and keyfile", source)
    for key in _FILE_KEYS:
        path = getattr(listener, key)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(prefix + key, f"no such file: {path}", source)
    if listener.capath is not None and not os.path.isdir(listener.capath):
        raise ConfigError(prefix + "capath", f"no such directory: {listener.capath}", source)
    has_ca = listener.cafile is not None or listener.capath is not None
    for key in ("require_certificate", "use_identity_as_username", "use_subject_as_username"):
        if getattr(listener, key) and not has_ca:
            message = "needs cafile or capath to verify client certificates"
            raise ConfigError(prefix + key, message, source)
    if listener.crlfile is not None and not has_ca:
        raise ConfigError(prefix + "crlfile", "needs cafile or capath", source)
    if listener.use_identity_as_username and listener.use_subject_as_username:
        message = "choose one of use_identity_as_username and use_subject_as_username"
        raise ConfigError(prefix + "use_subject_as_username", message, source)


def _check_dtls_keys(listener: ListenerSettings, prefix: str, source: str | None) -> None:
    """A dtls listener needs keys to offer: a PSK file, a certificate, or both."""
    if listener.psk_file is None and listener.certfile is None:
        message = "a dtls listener needs psk_file, or certfile and keyfile"
        raise ConfigError(prefix + "psk_file", message, source)


def _transport_family(listener_type: str) -> str:
    return "udp" if listener_type in ("udp", "dtls") else "tcp"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address: 127.0.0.0/8, ::1 (also IPv4-mapped) or localhost."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def validate_security(config: BrokerConfig, *, source: str | None = None) -> None:
    """Mosquitto 2.0's rule: exposing the broker beyond this machine is an explicit choice.

    A listener bound to anything but loopback needs ``allow_anonymous`` set (on it or globally),
    a password file (its own or the global one), or certificate authentication
    (``require_certificate`` with ``use_identity_as_username`` or ``use_subject_as_username``).
    A WebSocket listener counts as not on loopback wherever it is bound: a reverse proxy on this
    host may forward clients from anywhere.

    Raises:
        ConfigError: key ``allow_anonymous``, naming the listener's address.
    """
    for listener in config.effective_listeners():
        websocket = listener.type in WS_LISTENER_TYPES
        if is_loopback(listener.bind) and not websocket:
            continue
        decided = listener.allow_anonymous is not None or config.allow_anonymous is not None
        if decided or config.effective_password_file(listener) is not None:
            continue
        if config.effective_scram_file(listener) is not None:
            continue  # SCRAM-SHA-256 credentials: an authentication choice too
        if listener.require_certificate and (
            listener.use_identity_as_username or listener.use_subject_as_username
        ):
            continue  # every client is authenticated by its certificate
        if websocket:
            # A reverse proxy on this host forwards clients from anywhere to a loopback
            # WebSocket listener, so loopback proves nothing about who connects.
            message = (
                f"{listener.label} is a WebSocket listener, which never counts as loopback "
                "(a proxy may forward anyone): set allow_anonymous = true or a password_file"
            )
        else:
            message = (
                f"listener {listener.address} is not on loopback: "
                "set allow_anonymous = true or a password_file"
            )
        raise ConfigError("allow_anonymous", message, source)


# --- bridges and the metrics listener: loading and checking --------------------------------------

_TABLE_KINDS: Final = frozenset({"listeners", "bridges", "topics", "metrics"})


def _values_from_table(
    prefix: str,
    table: object,
    specs: Mapping[str, KeySpec],
    kinds: Mapping[str, _Kind],
    source: str | None,
) -> dict[str, Any]:
    """The checked values of one TOML table; table-valued keys are left to the caller.

    Raises:
        ConfigError: not a table, an unknown key or a bad value (``bridge[0].keepalive``).
    """
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"must be a table (got {_show(table)})", source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}"
        if key not in specs:
            raise _unknown_key(key, path, list(specs), source)
        kind = kinds[key]
        values[key] = (
            value
            if kind.base in _TABLE_KINDS
            else _check_value(path, value, specs[key], kind, source)
        )
    return values


def _bridges_from_value(value: object, source: str | None) -> list[BridgeSettings]:
    if not isinstance(value, list):
        message = f"must be an array of tables: write [[bridge]] (got {_show(value)})"
        raise ConfigError("bridge", message, source)
    return [_bridge_from_table(i, table, source) for i, table in enumerate(value)]


def _bridge_from_table(index: int, table: object, source: str | None) -> BridgeSettings:
    prefix = f"bridge[{index}]"
    values = _values_from_table(prefix, table, BRIDGE_KEYS, _BRIDGE_KINDS, source)
    if "topics" in values:
        rules = values["topics"]
        if not isinstance(rules, list):
            message = (
                'must be an array of tables, e.g. [{ pattern = "sensors/#", direction = "out" }] '
                f"(got {_show(rules)})"
            )
            raise ConfigError(f"{prefix}.topics", message, source)
        values["topics"] = [
            BridgeTopic(
                **_values_from_table(
                    f"{prefix}.topics[{j}]", rule, BRIDGE_TOPIC_KEYS, _TOPIC_KINDS, source
                )
            )
            for j, rule in enumerate(rules)
        ]
    return BridgeSettings(**values)


def _metrics_from_table(value: object, source: str | None) -> MetricsSettings:
    return MetricsSettings(
        **_values_from_table("metrics", value, METRICS_KEYS, _METRICS_KINDS, source)
    )


def _validate_bridges(config: BrokerConfig, source: str | None) -> None:
    """Every ``[[bridge]]``: its values, unique names and local client ids, its topic rules.

    Raises:
        ConfigError: naming the key (``bridge[0].topics[1].direction``).
    """
    if not isinstance(config.bridges, list):
        raise ConfigError("bridge", "must be a list of BridgeSettings", source)
    names: dict[str, int] = {}
    local_ids: dict[str, int] = {}
    for index, bridge in enumerate(config.bridges):
        prefix = f"bridge[{index}]."
        if not isinstance(bridge, BridgeSettings):
            raise ConfigError(f"bridge[{index}]", "must be a BridgeSettings", source)
        if not bridge.name:
            raise ConfigError(prefix + "name", "required: a name for the bridge", source)
        _check_fields(bridge, BRIDGE_KEYS, _BRIDGE_KINDS, prefix, source)
        if bridge.name in names:
            message = f"bridge[{names[bridge.name]}] already has the name {bridge.name!r}"
            raise ConfigError(prefix + "name", message, source)
        names[bridge.name] = index
        _check_bridge(bridge, prefix, source)
        local_id = bridge.effective_local_client_id
        if local_id in local_ids:
            message = f"bridge[{local_ids[local_id]}] already uses the local client id {local_id!r}"
            raise ConfigError(prefix + "local_client_id", message, source)
        local_ids[local_id] = index


def _check_bridge(bridge: BridgeSettings, prefix: str, source: str | None) -> None:
    if not bridge.urls:
        message = 'required: the remote broker\'s URL, e.g. "mqtt://core.example.com:1883"'
        raise ConfigError(prefix + "address", message, source)
    if bridge.reconnect_delay_max < bridge.reconnect_delay:
        message = f"must be at least reconnect_delay ({bridge.reconnect_delay:g})"
        raise ConfigError(prefix + "reconnect_delay_max", message, source)
    if bridge.password is not None and bridge.username is None and bridge.protocol_version == 4:
        raise ConfigError(prefix + "password", "needs a username with MQTT 3.1.1", source)
    if bridge.effective_local_client_id == bridge.remote_client_id:
        message = "must differ from client_id (a bridge to this broker would take itself over)"
        raise ConfigError(prefix + "local_client_id", message, source)
    if not isinstance(bridge.topics, list) or not bridge.topics:
        message = (
            'must list at least one topic rule, e.g. topics = [{ pattern = "sensors/#", '
            'direction = "out" }]'
        )
        raise ConfigError(prefix + "topics", message, source)
    for index, rule in enumerate(bridge.topics):
        rule_prefix = f"{prefix}topics[{index}]."
        if not isinstance(rule, BridgeTopic):
            raise ConfigError(rule_prefix[:-1], "must be a BridgeTopic", source)
        _check_fields(rule, BRIDGE_TOPIC_KEYS, _TOPIC_KINDS, rule_prefix, source)
        _check_topic_rule(rule, rule_prefix, source)
    _check_loops(bridge, prefix, source)


def _check_topic_rule(rule: BridgeTopic, prefix: str, source: str | None) -> None:
    if not rule.pattern:
        if not rule.local_prefix or not rule.remote_prefix:
            message = (
                "required (it may be empty only when local_prefix and remote_prefix are both "
                "set: they are then the full topic names)"
            )
            raise ConfigError(prefix + "pattern", message, source)
        checks: list[tuple[str, str, str, Callable[[str], None]]] = [
            ("local_prefix", rule.local_prefix, "name", validate_topic_name),
            ("remote_prefix", rule.remote_prefix, "name", validate_topic_name),
        ]
    else:
        checks = [
            ("pattern", rule.local_filter, "filter", validate_topic_filter),
            ("pattern", rule.remote_filter, "filter", validate_topic_filter),
        ]
    for key, text, what, check in checks:
        if text.startswith("$share/"):
            message = f"{text!r} is a shared subscription, which a bridge cannot use"
            raise ConfigError(prefix + key, message, source)
        try:
            check(text)
        except ProtocolError as exc:
            message = f"{text!r} is not a valid topic {what}: {exc.message}"
            raise ConfigError(prefix + key, message, source) from None


def _filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both topic filters."""
    la, lb = a.split("/"), b.split("/")
    for x, y in zip(la, lb, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(la) == len(lb):
        return True
    longer = la if len(la) > len(lb) else lb
    return longer[min(len(la), len(lb))] == "#"  # "a/#" also matches "a"


def _check_loops(bridge: BridgeSettings, prefix: str, source: str | None) -> None:
    """Refuse rules that would loop: over MQTT 3.1.1 there is no No Local, so a remote broker
    sends the bridge's own publications back to its subscriptions unless it honours the bridge
    flag (``try_private``, as Mosquitto does)."""
    if bridge.protocol_version == 5 or bridge.try_private:
        return
    for j, inbound in enumerate(bridge.topics):
        if not inbound.incoming:
            continue
        for k, outbound in enumerate(bridge.topics):
            if outbound.outgoing and _filters_overlap(
                inbound.remote_filter, outbound.remote_filter
            ):
                rules = f"topics[{j}]" if j == k else f"topics[{k}] and topics[{j}]"
                message = (
                    f"{rules} send and receive the same remote topics over MQTT 3.1.1 without "
                    "try_private: the remote broker would send the bridge's own messages back "
                    "(3.1.1 has no No Local), a loop. Set try_private = true (Mosquitto honours "
                    "it), protocol_version = 5, or give the two directions disjoint topics"
                )
                raise ConfigError(f"{prefix}topics[{k}].direction", message, source)


def _validate_metrics(config: BrokerConfig, source: str | None) -> None:
    metrics = config.metrics
    if metrics is None:
        return
    if not isinstance(metrics, MetricsSettings):
        raise ConfigError("metrics", "must be a MetricsSettings", source)
    _check_fields(metrics, METRICS_KEYS, _METRICS_KINDS, "metrics.", source)
    if metrics.port == 0:
        return
    wildcard = ("0.0.0.0", "::")
    for listener in config.effective_listeners():
        same_host = (
            listener.bind == metrics.bind or listener.bind in wildcard or metrics.bind in wildcard
        )
        if (
            _transport_family(listener.type) == "tcp"
            and listener.port == metrics.port
            and same_host
        ):
            message = f"listener {listener.label} already uses port {metrics.port}"
            raise ConfigError("metrics.port", message, source)


def _flag_metrics(
    args: argparse.Namespace, metrics: MetricsSettings | None
) -> MetricsSettings | None:
    """``--metrics-port N``: the metrics listener on port N (at the file's ``bind``, if any)."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return metrics
    kind = _METRICS_KINDS["port"]
    _check_value("metrics.port", port, METRICS_KEYS["port"], kind, "--metrics-port")
    return dataclasses.replace(metrics or MetricsSettings(), port=port)
