"""``mqttv5 broker``: run the MQTT broker until SIGINT or SIGTERM.

Settings come from the defaults, then the TOML file of ``-c``, then the flags (flags win). Start-up
errors (a bad setting, a port in use) print one line on stderr and exit with status 1, before any
socket is opened when the configuration is at fault. SIGHUP re-reads the file and applies what can
change while running; SIGINT and SIGTERM stop gracefully (clients get DISCONNECT 0x8B).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from mqttv5 import __version__
from mqttv5.broker.config import (
    BROKER_KEYS,
    BrokerConfig,
    config_from_args,
    config_reference_markdown,
)
from mqttv5.broker.logsetup import setup_logging, teardown_logging
from mqttv5.protocol.errors import ConfigError

__all__ = ["build_parser", "describe_config_error", "describe_os_error", "main"]

PROG = "mqttv5 broker"
log = logging.getLogger("mqttv5.broker")


class _Broker(Protocol):
    """What this command needs of ``mqttv5.broker.broker.MqttBroker``."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_closed(self) -> None: ...
    def reload(self, config: BrokerConfig) -> list[str]: ...


# --- the parser -----------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    value = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
    try:
        return value[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"must be true or false (got {text!r})") from None


def _choices(key: str) -> tuple[str, ...]:
    return BROKER_KEYS[key].choices


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mqttv5 broker`` (its ``--help`` documents every option)."""
    d = BrokerConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the mqttv5 MQTT broker (MQTT 5.0, 3.1.1 and 3.1). With no options it "
        "listens on TCP port 1883 on 127.0.0.1 and ::1 and accepts anonymous clients, like "
        "Mosquitto 2.0. Flags override the configuration file.",
        epilog="Signals: SIGINT/SIGTERM stop gracefully (clients are sent DISCONNECT 0x8B); "
        "SIGHUP re-reads the -c file and applies what can change while running, logging the "
        "settings that need a restart. Exit status: 0 after a clean shutdown, 1 when the broker "
        "cannot start (the reason is one line on stderr). Every configuration key is described "
        "in docs/configuration.md.",
    )
    add = parser.add_argument
    add("-c", "--config", metavar="FILE.toml", help="read settings from this TOML file")
    add(
        "--bind",
        metavar="ADDR",
        help="listen on ADDR only (port 1883 unless --port is given); replaces the listeners of "
        "the configuration file. A non-loopback ADDR needs --allow-anonymous or --password-file",
    )
    add(
        "-p",
        "--port",
        type=int,
        metavar="N",
        help="listen on port N (0 = any free port); without --bind, on 127.0.0.1 and ::1. "
        "Replaces the listeners of the configuration file",
    )
    add(
        "--tls-port",
        type=int,
        metavar="N",
        help="also listen for MQTT over TLS on port N (on --bind, else 127.0.0.1); needs "
        "--certfile and --keyfile",
    )
    add(
        "--ws-port",
        type=int,
        metavar="N",
        help="also listen for MQTT over WebSocket on port N (on --bind, else 127.0.0.1); "
        "needs --allow-anonymous or --password-file, as a proxy may forward anyone",
    )
    add(
        "--wss-port",
        type=int,
        metavar="N",
        help="also listen for MQTT over secure WebSocket on port N; needs --certfile and --keyfile",
    )
    add(
        "--udp-port",
        type=int,
        metavar="N",
        help="also listen for MQTT over UDP (docs/udp.md) on port N (on --bind, else 127.0.0.1)",
    )
    add(
        "--dtls-port",
        type=int,
        metavar="N",
        help="also listen for MQTT over DTLS on port N; needs --psk-file, or --certfile and "
        "--keyfile",
    )
    add(
        "--psk-file",
        metavar="FILE",
        help="pre-shared keys of --dtls-port: lines identity:hexkey (as Mosquitto's psk_file)",
    )
    add(
        "--certfile",
        metavar="FILE",
        help="server certificate chain (PEM) of --tls-port, --wss-port and --dtls-port",
    )
    add("--keyfile", metavar="FILE", help="private key (PEM) of --certfile")
    add("--cafile", metavar="FILE", help="CA certificates (PEM) for client certificates")
    add(
        "--require-certificate",
        action="store_true",
        default=None,
        help="clients of --tls-port, --wss-port and --dtls-port must present a certificate "
        "signed by --cafile (mutual TLS)",
    )
    add("--storage", choices=_choices("storage"), help=f"session storage (default: {d.storage})")
    add("--data-dir", metavar="DIR", help=f"directory for sqlite storage (default: {d.data_dir})")
    add(
        "--allow-anonymous",
        type=_bool,
        metavar="true|false",
        help="accept clients without a user name, on every listener (default: only on loopback "
        "listeners without a password file)",
    )
    add("--password-file", metavar="FILE", help="password file (Mosquitto format), all listeners")
    add(
        "--scram-file",
        metavar="FILE",
        help="SCRAM-SHA-256 credentials (mqttv5 passwd --hash scram-sha-256), all listeners",
    )
    add("--acl-file", metavar="FILE", help="access control file, all listeners")
    add(
        "--log-level",
        type=str.lower,
        choices=_choices("log_level"),
        help=f"least severe messages logged (default: {d.log_level})",
    )
    add("-v", "--verbose", action="store_true", help="log debug messages (= --log-level debug)")
    add(
        "--log-format",
        choices=_choices("log_format"),
        help=f"text (Mosquitto-style) or json lines (default: {d.log_format})",
    )
    add("--log-file", metavar="FILE", help="append the log to FILE (default: stderr)")
    add(
        "--max-packet-size",
        type=int,
        metavar="BYTES",
        help=f"largest packet accepted from a client (default: {d.max_packet_size})",
    )
    add(
        "--sys-interval",
        type=float,
        metavar="SECONDS",
        help=f"seconds between $SYS updates, 0 disables $SYS (default: {d.sys_interval:g})",
    )
    add(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics and /health over HTTP on port N (0 = any free port), "
        "on the [metrics] table's bind address, else 127.0.0.1 (default: off, or the "
        "[metrics] table of the file)",
    )
    add(
        "--print-config-reference",
        action="store_true",
        help="print the configuration reference (Markdown) and exit",
    )
    return parser


# --- one-line errors ------------------------------------------------------------------------------


def _fail(text: str) -> int:
    print(f"{PROG}: error: {' '.join(text.split())}", file=sys.stderr)
    return 1


def describe_config_error(exc: ConfigError) -> str:
    """``key: message in file`` (or ``argument --flag: message``) for one line on stderr."""
    source = exc.source
    if source is not None and source.startswith("-"):
        return f"argument {source}: {exc.message}"
    text = f"{exc.key}: {exc.message}" if exc.key else exc.message
    if source and source not in exc.message:
        text += f" in {source}"
    return text


_BIND_ERROR = re.compile(r"bind on address \('([^']*)', (\d+)[^)]*\): (.+)$", re.DOTALL)


def describe_os_error(exc: OSError) -> str:
    """A start-up OSError as ``cannot listen on HOST:PORT: reason`` where it says which."""
    text = exc.strerror or str(exc)  # OSError(errno, message): str() would add "[Errno n]"
    match = _BIND_ERROR.search(text)
    if match is not None:
        host, port, reason = match.groups()
        host = f"[{host}]" if ":" in host else host
        return f"cannot listen on {host}:{port}: {reason.strip()}"
    if text.startswith("cannot "):
        return text
    return f"cannot start: {text}"


# --- running --------------------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``mqttv5[fast]`` is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _broker_factory() -> Callable[[BrokerConfig], _Broker]:
    # Imported here, not at the top: --help and configuration errors must not need the broker.
    module = importlib.import_module("mqttv5.broker.broker")
    factory: Callable[[BrokerConfig], _Broker] = module.MqttBroker
    return factory


class _Signals:
    """SIGINT/SIGTERM stop the broker once; SIGHUP reloads the configuration file."""

    def __init__(self, broker: _Broker, args: argparse.Namespace) -> None:
        self._broker = broker
        self._args = args
        self.stopping: asyncio.Task[None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        wanted = [(signal.SIGINT, self.stop), (signal.SIGTERM, self.stop)]
        if hasattr(signal, "SIGHUP"):
            wanted.append((signal.SIGHUP, self.reload))
        for sig, callback in wanted:
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C raises instead
                loop.add_signal_handler(sig, callback, sig)

    def stop(self, sig: signal.Signals) -> None:
        if self.stopping is not None:
            log.info("%s received: already shutting down.", sig.name)
            return
        log.info("%s received: shutting down.", sig.name)
        self.stopping = asyncio.create_task(self._broker.stop())

    def reload(self, sig: signal.Signals) -> None:
        path = self._args.config
        if not path:
            log.info("%s received: no configuration file (-c) to reload.", sig.name)
            return
        try:
            config = config_from_args(self._args)
        except ConfigError as exc:
            log.error("Reload failed, configuration unchanged: %s", describe_config_error(exc))
            return
        try:
            restart = self._broker.reload(config)
        except ConfigError as exc:
            log.error("Reload failed, configuration unchanged: %s", describe_config_error(exc))
            return
        try:
            setup_logging(config)
        except OSError as exc:
            log.error("Reload: cannot open log file %s: %s", config.log_file, exc.strerror)
        if restart:
            log.warning(
                "Config reloaded from %s; these settings need a restart: %s.",
                path,
                ", ".join(restart),
            )
        else:
            log.info("Config reloaded from %s.", path)


async def _serve(
    args: argparse.Namespace, config: BrokerConfig, factory: Callable[[BrokerConfig], _Broker]
) -> int:
    log.info("mqttv5 version %s starting.", __version__)
    if args.config:
        log.info("Config loaded from %s.", args.config)
    else:
        log.info("Using default config.")
    broker = factory(config)
    try:
        await broker.start()
    except ConfigError as exc:
        return _fail(describe_config_error(exc))
    except OSError as exc:
        return _fail(describe_os_error(exc))
    signals = _Signals(broker, args)
    # The handlers stay until the runner closes the loop, so a second Ctrl+C during the last
    # steps of shutdown is logged rather than turned into KeyboardInterrupt.
    signals.install()
    await broker.wait_closed()
    if signals.stopping is not None:
        await signals.stopping
    log.info("mqttv5 version %s terminating.", __version__)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mqttv5 broker``; returns the exit status (0 clean shutdown, 1 cannot start)."""
    args = build_parser().parse_args(argv)
    if args.print_config_reference:
        sys.stdout.write(config_reference_markdown())
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return _fail(describe_config_error(exc))
    try:
        factory = _broker_factory()
    except ModuleNotFoundError as exc:
        if exc.name != "mqttv5.broker.broker":
            raise
        return _fail("the broker core (mqttv5.broker.broker) is not installed")
    try:
        setup_logging(config)
    except OSError as exc:
        return _fail(f"log_file: cannot open {config.log_file}: {exc.strerror or exc}")
    status: int | None = None
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            status = runner.run(_serve(args, config, factory))
    except KeyboardInterrupt:
        pass  # Ctrl+C before the signal handlers were installed, or on Windows
    finally:
        teardown_logging()
    return 130 if status is None else status


if __name__ == "__main__":
    sys.exit(main())
