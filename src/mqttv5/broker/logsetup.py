"""Logging for ``mqttv5 broker``: Mosquitto-style text lines or JSON lines, to stderr or a file.

The broker's loggers are ``mqttv5`` and its children (``mqttv5.broker``, ``mqttv5.transport``, ...);
:func:`setup_logging` gives the ``mqttv5`` logger (and ``asyncio``'s, whose errors matter to an
operator) one handler. Calling it again, on a reload, replaces that handler instead of adding one.

Text lines look like Mosquitto's, a Unix timestamp and a colon first::

    1700000000: New client connected from 127.0.0.1:54321 as cid (p5, c1, k60, u'user').

JSON lines carry ``ts``, ``level``, ``logger``, ``msg`` and every field passed in ``extra``::

    {"ts": 1700000000.123, "level": "info", "logger": "mqttv5.broker", "msg": "...", "cid": "c1"}
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from typing import Final

from mqttv5.broker.config import BrokerConfig

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging", "teardown_logging"]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Loggers that get our handler: ours, and asyncio's ("Task exception was never retrieved"), so
# that with log_format = "json" every line on the log stream is JSON.
_LOGGER_NAMES: Final = ("mqttv5", "asyncio")
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_installed: list[tuple[logging.Logger, logging.Handler]] = []
_saved_level: list[int] = []  # the mqttv5 logger's level before setup_logging, while installed


class TextFormatter(logging.Formatter):
    """Mosquitto's format: ``<unix time>: <message>``; warnings and errors say so first."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            prefix = "Error: " if record.levelno >= logging.ERROR else "Warning: "
            if not message.startswith(prefix):
                message = prefix + message
        text = f"{int(record.created)}: {message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` plus ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field we cannot encode is logged as its str(), never lost.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _make_handler(config: BrokerConfig) -> logging.Handler:
    handler: logging.Handler
    if config.log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        # WatchedFileHandler reopens the file when logrotate moves it away.
        handler = logging.handlers.WatchedFileHandler(config.log_file, encoding="utf-8")
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    return handler


def setup_logging(config: BrokerConfig) -> logging.Logger:
    """Send the ``mqttv5`` loggers to ``config.log_file`` (or stderr) at ``config.log_level``.

    Idempotent: the handler of a previous call is removed (and its file closed) first, so a
    reload can apply new log settings.

    Returns:
        The ``mqttv5`` logger.

    Raises:
        OSError: ``log_file`` cannot be opened.
    """
    handler = _make_handler(config)  # first, so a bad log_file leaves the old setup in place
    teardown_logging()
    for name in _LOGGER_NAMES:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        _installed.append((logger, handler))
    root = logging.getLogger("mqttv5")
    _saved_level.append(root.level)
    root.setLevel(_LEVELS[config.log_level])
    return root


def teardown_logging() -> None:
    """Undo :func:`setup_logging`: remove and close its handler, restore the level."""
    handlers = {id(h): h for _, h in _installed}
    for logger, handler in _installed:
        logger.removeHandler(handler)
    _installed.clear()
    for handler in handlers.values():
        handler.close()
    if _saved_level:
        logging.getLogger("mqttv5").setLevel(_saved_level.pop())
