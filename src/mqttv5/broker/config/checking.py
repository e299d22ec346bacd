"""Checking one value against its key's declaration: type, range, choices, rule."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from mqttv5.protocol.errors import ConfigError

from .bridge import (
    BridgeSettings,
    BridgeTopic,
    MetricsSettings,
)
from .keys import (
    KeySpec,
)
from .listener import (
    ListenerSettings,
)
from .model import (
    BrokerConfig,
)

# --- value checking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    base: str  # "int" | "float" | "bool" | "str" | "list[int]" | "list[str]" | "listeners"
    nullable: bool


def _kind_of(hint: Any) -> _Kind:
    nullable = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        nullable, hint = True, args[0]
    names = {int: "int", float: "float", bool: "bool", str: "str"}
    if hint in names:
        return _Kind(names[hint], nullable)
    if get_origin(hint) is list and get_args(hint) == (int,):
        return _Kind("list[int]", nullable)
    if get_origin(hint) is list and get_args(hint) == (str,):
        return _Kind("list[str]", nullable)
    if get_origin(hint) is list and get_args(hint) == (ListenerSettings,):
        return _Kind("listeners", nullable)
    if get_origin(hint) is list and get_args(hint) == (BridgeSettings,):
        return _Kind("bridges", nullable)
    if get_origin(hint) is list and get_args(hint) == (BridgeTopic,):
        return _Kind("topics", nullable)
    if hint is MetricsSettings:
        return _Kind("metrics", nullable)
    raise TypeError(f"unsupported configuration type {hint!r}")  # pragma: no cover


def _kinds(cls: type) -> dict[str, _Kind]:
    hints = get_type_hints(cls)
    return {f.name: _kind_of(hints[f.name]) for f in dataclasses.fields(cls)}


_BROKER_KINDS: Final = _kinds(BrokerConfig)
_LISTENER_KINDS: Final = _kinds(ListenerSettings)
_BRIDGE_KINDS: Final = _kinds(BridgeSettings)
_TOPIC_KINDS: Final = _kinds(BridgeTopic)
_METRICS_KINDS: Final = _kinds(MetricsSettings)

_TYPE_WORDS: Final = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list[int]": "an array of integers",
    "list[str]": "an array of strings",
    "listeners": "an array of tables ([[listener]])",
    "bridges": "an array of tables ([[bridge]])",
    "topics": "an array of tables",
    "metrics": "a table ([metrics])",
}


def _show(value: object) -> str:
    """A value as the user wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_ok(value: object, base: str) -> bool:
    if base == "int":
        return _is_int(value)
    if base == "float":
        return _is_int(value) or isinstance(value, float)
    if base == "bool":
        return isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "list[int]":
        return isinstance(value, list) and all(_is_int(v) for v in value)
    if base == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if base == "metrics":
        return isinstance(value, MetricsSettings)
    return isinstance(value, list)  # listeners, bridges, topics: checked one by one elsewhere


def _rule_error(value: Any, spec: KeySpec) -> str | None:
    """The message for a value of the right type that breaks its key's rules, else None."""
    if spec.choices and value not in spec.choices:
        return "must be one of " + ", ".join(_show(c) for c in spec.choices)
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    lo, hi = spec.minimum, spec.maximum
    if isinstance(value, int | float):
        if lo is not None and hi is not None and not lo <= value <= hi:
            return f"must be {lo}..{hi}"
        if lo is not None and value < lo:
            return f"must be at least {lo}"
        if hi is not None and value > hi:
            return f"must be at most {hi}"
        if spec.above is not None and value <= spec.above:
            return f"must be greater than {spec.above:g}"
    return spec.check(value) if spec.check is not None else None


def _check_value(key: str, value: object, spec: KeySpec, kind: _Kind, source: str | None) -> Any:
    """Check one value against its declaration; return it (ints for a float key become floats).

    Raises:
        ConfigError: naming ``key``, with what was expected and what was got.
    """
    if value is None and kind.nullable:
        return None
    if not _type_ok(value, kind.base):
        raise ConfigError(key, f"must be {_TYPE_WORDS[kind.base]} (got {_show(value)})", source)
    message = _rule_error(value, spec)
    if message is not None:
        raise ConfigError(key, f"{message} (got {_show(value)})", source)
    if kind.base == "float" and isinstance(value, int):
        return float(value)
    return value


# Mosquitto option names a migrating user may write, and what they are called here.
_MOSQUITTO_NAMES: Final[Mapping[str, str]] = {
    "message_size_limit": "max_packet_size",
    "max_qos": "maximum_qos",
    "max_topic_alias": "topic_alias_maximum",
    "auto_id_prefix": "assigned_client_id_prefix",
    "persistence_location": "data_dir",
    "persistence": "storage",
    "log_dest": "log_file",
    "log_type": "log_level",
    "bind_address": "bind",
    "protocol": "type",
    # bridges
    "connection": "name",
    "remote_clientid": "client_id",
    "clientid": "client_id",
    "local_clientid": "local_client_id",
    "remote_username": "username",
    "remote_password": "password",
    "bridge_protocol_version": "protocol_version",
    "keepalive_interval": "keepalive",
    "cleansession": "clean_start",
    "topic": "topics",
    "restart_timeout": "reconnect_delay",
    "bridge_outgoing_retain": "outgoing_retain",
}


def _unknown_key(key: str, path: str, known: Sequence[str], source: str | None) -> ConfigError:
    hint = ""
    if key in _MOSQUITTO_NAMES and _MOSQUITTO_NAMES[key] in known:
        hint = f" (Mosquitto's {key} is {_MOSQUITTO_NAMES[key]!r} here)"
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return ConfigError(path, f"unknown key{hint}", source)
