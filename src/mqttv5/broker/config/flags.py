"""Applying ``mqttv5 broker``'s command-line flags over a configuration."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from mqttv5.protocol.errors import ConfigError

from .checking import (
    _BROKER_KINDS,
    _LISTENER_KINDS,
    _check_value,
)
from .keys import (
    DEFAULT_PORTS,
    TLS_LISTENER_TYPES,
)
from .listener import (
    ListenerSettings,
    _default_listeners,
)
from .model import (
    BROKER_KEYS,
    LISTENER_KEYS,
    BrokerConfig,
)
from .sources import (
    load_config,
)
from .validation import (
    _flag_metrics,
    validate_config,
)

# --- command-line flags ---------------------------------------------------------------------------

# flag attribute -> (config key, flag as the user typed it); each overrides the file's value.
_FLAG_KEYS: Final[Mapping[str, tuple[str, str]]] = {
    "storage": ("storage", "--storage"),
    "data_dir": ("data_dir", "--data-dir"),
    "allow_anonymous": ("allow_anonymous", "--allow-anonymous"),
    "log_level": ("log_level", "--log-level"),
    "log_format": ("log_format", "--log-format"),
    "log_file": ("log_file", "--log-file"),
    "max_packet_size": ("max_packet_size", "--max-packet-size"),
    "sys_interval": ("sys_interval", "--sys-interval"),
    "password_file": ("password_file", "--password-file"),
    "scram_file": ("scram_file", "--scram-file"),
    "acl_file": ("acl_file", "--acl-file"),
}
# Flags that set a key listeners can override: the flag wins on every listener too.
_LISTENER_INHERITED: Final = (
    "allow_anonymous", "password_file", "scram_file", "acl_file", "max_packet_size",
)  # fmt: skip


# Flags that add a TLS, WebSocket, UDP or DTLS listener, and the flags that configure its keys.
_TRANSPORT_PORT_FLAGS: Final = (
    ("tls_port", "tls"), ("ws_port", "ws"), ("wss_port", "wss"), ("udp_port", "udp"),
    ("dtls_port", "dtls"),
)  # fmt: skip
_TLS_FLAGS: Final = {
    "certfile": "--certfile",
    "keyfile": "--keyfile",
    "cafile": "--cafile",
    "require_certificate": "--require-certificate",
}
_KEYED_TYPES: Final = TLS_LISTENER_TYPES | {"dtls"}


def _transport_flag_listeners(args: argparse.Namespace) -> list[ListenerSettings]:
    """The listeners of ``--tls-port``, ``--ws-port``, ``--wss-port``, ``--udp-port`` and
    ``--dtls-port``: on ``--bind`` (else 127.0.0.1); TLS and DTLS ones with ``--certfile
    --keyfile [--cafile --require-certificate]``, DTLS ones with ``--psk-file``.

    Raises:
        ConfigError: a bad port, or key flags without a listener to apply to.
    """
    bind = getattr(args, "bind", None) or "127.0.0.1"
    tls: dict[str, Any] = {}
    for key in _TLS_FLAGS:
        value = getattr(args, key, None)
        if value is not None and value is not False:
            tls[key] = value
    psk_file = getattr(args, "psk_file", None)
    out: list[ListenerSettings] = []
    for attr, kind in _TRANSPORT_PORT_FLAGS:
        port = getattr(args, attr, None)
        if port is None:
            continue
        flag = "--" + attr.replace("_", "-")
        _check_value("port", port, LISTENER_KEYS["port"], _LISTENER_KINDS["port"], flag)
        extra = dict(tls) if kind in _KEYED_TYPES else {}
        if kind == "dtls" and psk_file is not None:
            extra["psk_file"] = psk_file
        out.append(ListenerSettings(type=kind, bind=bind, port=port, **extra))
    if tls and not any(lis.type in _KEYED_TYPES for lis in out):
        key = next(iter(tls))
        raise ConfigError(key, "needs --tls-port, --wss-port or --dtls-port", _TLS_FLAGS[key])
    if psk_file is not None and not any(lis.type == "dtls" for lis in out):
        raise ConfigError("psk_file", "needs --dtls-port", "--psk-file")
    return out


def _flag_listeners(bind: str | None, port: int | None) -> list[ListenerSettings]:
    if bind is None:
        assert port is not None
        return [
            ListenerSettings(bind="127.0.0.1", port=port),
            ListenerSettings(bind="::1", port=port),
        ]
    return [ListenerSettings(bind=bind, port=DEFAULT_PORTS["tcp"] if port is None else port)]


def config_from_args(args: argparse.Namespace, base: BrokerConfig | None = None) -> BrokerConfig:
    """Apply command-line flags over a configuration (flags win).

    Args:
        args: the namespace of ``mqttv5 broker``'s parser; missing or None attributes are flags
            not given. ``--bind``/``--port`` replace all listeners with one TCP listener (only
            ``--port``: 127.0.0.1 and ::1 on that port; only ``--bind``: that address on 1883).
            ``--tls-port``, ``--ws-port`` and ``--wss-port`` add a listener each (on ``--bind``,
            else 127.0.0.1) to those, or to the default TCP listeners when there are none; the
            TLS ones take ``--certfile``, ``--keyfile``, ``--cafile`` and
            ``--require-certificate``.
            ``--allow-anonymous``, ``--password-file``, ``--acl-file`` and ``--max-packet-size``
            apply to every listener, replacing their own values.
        base: the configuration to override. None: the file named by ``args.config`` if any,
            else the defaults.

    Returns:
        The validated configuration, :func:`validate_security` included.

    Raises:
        ConfigError: a bad flag value (``source`` is the flag), or a problem in the file.
    """
    path: str | None = getattr(args, "config", None)
    if base is None:
        base = load_config(path, check_security=False) if path else BrokerConfig()
    changes: dict[str, Any] = {}
    for attr, (key, flag) in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            changes[key] = _check_value(key, value, BROKER_KEYS[key], _BROKER_KINDS[key], flag)
    if getattr(args, "verbose", False):
        changes["log_level"] = "debug"
    bind, port = getattr(args, "bind", None), getattr(args, "port", None)
    if bind is not None:
        _check_value("bind", bind, LISTENER_KEYS["bind"], _LISTENER_KINDS["bind"], "--bind")
    if port is not None:
        _check_value("port", port, LISTENER_KEYS["port"], _LISTENER_KINDS["port"], "--port")
    listeners = [dataclasses.replace(lis) for lis in base.listeners]
    if bind is not None or port is not None:
        listeners = _flag_listeners(bind, port)
    added = _transport_flag_listeners(args)
    if added:
        # added to the configured listeners; with none, to the default TCP pair
        listeners = (listeners or _default_listeners()) + added
    for listener in listeners:
        for key in _LISTENER_INHERITED:
            if key in changes:
                setattr(listener, key, None)
    metrics = _flag_metrics(args, base.metrics)
    config = dataclasses.replace(base, listeners=listeners, metrics=metrics, **changes)
    validate_config(config, source=path)
    return config


def changed_keys(old: BrokerConfig, new: BrokerConfig) -> list[str]:
    """Top-level keys whose values differ (``listeners`` when any listener changed).

    A helper for reloads: compare, then decide which changes can be applied live.
    """
    return [name for name in BROKER_KEYS if getattr(old, name) != getattr(new, name)]
