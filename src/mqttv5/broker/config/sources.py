"""Loading a configuration from a TOML file."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final

from mqttv5.protocol.errors import ConfigError

from .checking import (
    _BROKER_KINDS,
    _LISTENER_KINDS,
    _check_value,
    _show,
    _unknown_key,
)
from .listener import (
    ListenerSettings,
)
from .model import (
    BROKER_KEYS,
    LISTENER_KEYS,
    BrokerConfig,
)
from .validation import (
    _bridges_from_value,
    _metrics_from_table,
    validate_config,
)

# --- building from TOML ---------------------------------------------------------------------------


def _listener_from_table(index: int, table: object, source: str | None) -> ListenerSettings:
    prefix = f"listener[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"must be a table (got {_show(table)})", source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}"
        if key not in LISTENER_KEYS:
            raise _unknown_key(key, path, list(LISTENER_KEYS), source)
        values[key] = _check_value(path, value, LISTENER_KEYS[key], _LISTENER_KINDS[key], source)
    return ListenerSettings(**values)


def _config_from_table(data: Mapping[str, object], source: str | None) -> BrokerConfig:
    values: dict[str, Any] = {}
    known = ["listener", "bridge", *(k for k in BROKER_KEYS if k not in ("listeners", "bridges"))]
    for key, value in data.items():
        if key == "listener":
            if not isinstance(value, list):
                got = _show(value)
                message = f"must be an array of tables: write [[listener]] (got {got})"
                raise ConfigError(key, message, source)
            values["listeners"] = [
                _listener_from_table(i, table, source) for i, table in enumerate(value)
            ]
        elif key == "bridge":
            values["bridges"] = _bridges_from_value(value, source)
        elif key == "metrics":
            values["metrics"] = _metrics_from_table(value, source)
        elif key in known:
            values[key] = _check_value(key, value, BROKER_KEYS[key], _BROKER_KINDS[key], source)
        else:
            raise _unknown_key(key, key, known, source)
    return BrokerConfig(**values)


_TOML_POSITION: Final = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, path: str) -> ConfigError:
    """A TOML syntax error as a ConfigError whose key names the line (tomllib says where)."""
    message = str(exc)
    match = _TOML_POSITION.search(message)
    if match is None:
        return ConfigError("config", f"invalid TOML: {message}", path)
    detail = message[: match.start()]
    if match[1] is None:
        line = text.rstrip("\n").count("\n") + 1
        return ConfigError(f"line {line}", f"invalid TOML: {detail} (at end of file)", path)
    return ConfigError(f"line {match[1]}", f"invalid TOML: {detail} (column {match[2]})", path)


def load_config(path: str, *, check_security: bool = True) -> BrokerConfig:
    """Read a TOML configuration file.

    Args:
        path: the file. Every key is optional; missing keys take their defaults.
        check_security: run :func:`validate_security` at the end. The command line passes False
            and checks after applying its flags (``--allow-anonymous true`` may be what makes a
            file's public listener acceptable).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file cannot be read, is not valid TOML (the key names the line), or
            has an unknown key or a bad value (the key names it, e.g. ``listener[1].port``).
    """
    try:
        with open(path, "rb") as file:
            text = file.read().decode()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("config", f"cannot read {path}: {reason}", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{path} is not UTF-8 text: {exc.reason}", path) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, path) from exc
    config = _config_from_table(data, path)
    validate_config(config, source=path, check_security=check_security)
    return config
