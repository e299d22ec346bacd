"""Option parsing shared by ``mqttv5 pub`` and ``mqttv5 sub``: the flags a mosquitto_pub /
mosquitto_sub user types (``-h`` is the host; help is ``--help``), and the exit codes and error
messages of Mosquitto's clients."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..client import ConnectOptions, MqttClient, ReconnectPolicy, Will
from ..protocol.errors import ConnectRefused, MqttError
from ..protocol.properties import PROPERTY_TABLE, Properties, WireType
from ..transport.base import TransportError
from ..transport.dtls import DtlsClientSettings
from ..transport.tls import TlsConfig

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "CliError",
    "Common",
    "add_common_options",
    "build_client",
    "error_message",
    "parse",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1  # connection refused, network error, bad arguments (as Mosquitto's clients)
EXIT_TIMEOUT: Final = 27  # -W timeout elapsed (MOSQ_ERR_TIMEOUT, as mosquitto_sub)

_VERSIONS: Final = {"5": 5, "mqttv5": 5, "311": 4, "mqttv311": 4, "31": 3, "mqttv31": 3}
_COMMANDS: Final = ("connect", "publish", "subscribe", "unsubscribe", "disconnect", "will", "auth")


class CliError(MqttError):
    """A usage error (bad flag or value): printed as ``Error: ...`` with exit status 1."""


@dataclass
class Common:
    """The parsed options both tools share."""

    args: argparse.Namespace
    url: str
    client_id: str
    options: ConnectOptions
    properties: dict[str, Properties] = field(default_factory=dict)

    def props(self, command: str) -> Properties:
        """The ``-D command ...`` properties of one packet type (a fresh copy)."""
        found = self.properties.get(command)
        return found.copy() if found is not None else Properties()


def add_common_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """Add the options mosquitto_pub and mosquitto_sub share."""
    add = parser.add_argument
    add("--help", action="help", help="show this help and exit")
    add("-h", "--host", default="localhost", help="broker host (default localhost)")
    add("-p", "--port", type=int, default=None,
        help="broker port (default 1883, 8883 with TLS options)")  # fmt: skip
    add("-L", "--url", help="mqtt://[user[:password]@]host[:port]/topic; also mqtts://, "
        "ws://host:port/path, wss://, mqtt-udp:// and mqtts-dtls://")  # fmt: skip
    add("-t", "--topic", action="append", default=[], help="topic (sub: filter, repeatable)")
    add("-q", "--qos", type=int, choices=(0, 1, 2), default=0, help="quality of service")
    add("-i", "--id", help="client identifier")
    add("-I", "--id-prefix", help="client identifier prefix (the process id is appended)")
    add("-u", "--username", help="user name")
    add("-P", "--pw", help="password")
    add("-k", "--keepalive", type=int, default=60, help="keep alive in seconds (default 60)")
    add("-c", "--disable-clean-session", action="store_true", help="resume a session")
    add("-x", "--session-expiry-interval", type=int, default=None, help="seconds (MQTT 5)")
    add("-V", "--protocol-version", default="5", help="5, 311, mqttv5 or mqttv311")
    add("-d", "--debug", action="store_true", help="print debug messages")
    add("--quiet", action="store_true", help="do not print error messages")
    add("--will-topic", help="topic of the Will Message")
    add("--will-payload", default="", help="payload of the Will Message")
    add("--will-qos", type=int, choices=(0, 1, 2), default=0, help="QoS of the Will Message")
    add("--will-retain", action="store_true", help="retain the Will Message")
    add("--cafile", help="CA certificates (PEM) the broker's certificate must chain to; "
        "any TLS option means TLS (mqtts://, wss:// with -L ws://)")  # fmt: skip
    add("--capath", help="CA certificate directory (TLS)")
    add("--cert", help="client certificate (PEM), for mutual TLS")
    add("--key", help="client private key (PEM)")
    add("--insecure", action="store_true", help="do not check the server's host name (TLS)")
    add("--psk", metavar="HEX", help="pre-shared key in hexadecimal, for DTLS (mqtts-dtls://; "
        "without -L: mqtts-dtls on port 8884)")  # fmt: skip
    add("--psk-identity", metavar="ID", help="the identity of --psk (the broker's user name)")
    add("--no-reconnect" if sub else "--reconnect", action="store_true",
        help="do not reconnect when the connection is lost" if sub else
        "reconnect when the connection is lost")  # fmt: skip
    add("-D", "--property", nargs="+", action="append", default=[],
        metavar="ARG", help="command property value [value]: an MQTT 5 property, e.g. "
        "-D publish user-property key value; -D connect session-expiry-interval 60")  # fmt: skip


def _split_property_args(argv: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Take ``-D command property value [value]`` groups out of argv (user-property has two
    values, every other property one)."""
    rest: list[str] = []
    groups: list[list[str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-D", "--property"):
            name = argv[i + 2] if i + 2 < len(argv) else ""
            width = 4 if name == "user-property" else 3
            group = list(argv[i + 1 : i + 1 + width])
            if len(group) != width:
                raise CliError(f"-D {' '.join(group)}: expected command, property and value")
            groups.append(group)
            i += 1 + width
            continue
        rest.append(arg)
        i += 1
    return rest, groups


def _apply_property(store: dict[str, Properties], group: list[str]) -> None:
    command, name = group[0].lower(), group[1].lower()
    if command not in _COMMANDS:
        raise CliError(f"-D: unknown command {command!r} (one of {', '.join(_COMMANDS)})")
    props = store.setdefault(command, Properties())
    if name == "user-property":
        props.user_properties.append((group[2], group[3]))
        return
    attr = name.replace("-", "_")
    spec = next((s for s in PROPERTY_TABLE.values() if s.attr == attr), None)
    if spec is None:
        raise CliError(f"-D: unknown property {name!r}")
    raw = group[2]
    value: int | str | bytes
    if spec.wire in (WireType.BYTE, WireType.U16, WireType.U32, WireType.VARINT):
        try:
            value = int(raw, 0)
        except ValueError:
            raise CliError(f"-D {command} {name}: {raw!r} is not a number") from None
        if not spec.minimum <= value <= spec.maximum:
            raise CliError(f"-D {command} {name}: {value} out of range")
    elif spec.wire is WireType.BINARY:
        value = raw.encode()
    else:
        value = raw
    if spec.repeatable:
        props.subscription_identifiers.append(int(value))
    else:
        setattr(props, attr, value)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], *, sub: bool) -> Common:
    """Parse argv into :class:`Common` (raises :class:`CliError` on a bad value)."""
    rest, groups = _split_property_args(argv)
    args = parser.parse_args(rest)
    store: dict[str, Properties] = {}
    for group in groups:
        _apply_property(store, group)
    version = _VERSIONS.get(str(args.protocol_version).lower())
    if version not in (4, 5):
        raise CliError(f"unsupported protocol version {args.protocol_version!r}")
    tls = _tls_config(args)
    dtls = _dtls_config(args)
    # As mosquitto_pub: a TLS option means TLS, on 8883 unless -p says otherwise; a PSK means
    # DTLS (this tool's TLS over TCP has no PSK), on 8884.
    scheme = "mqtts-dtls" if dtls is not None else "mqtts" if tls is not None else "mqtt"
    default_port = 8884 if dtls is not None else 8883 if tls is not None else 1883
    host, port, url_topic = args.host, args.port or default_port, None
    username, password = args.username, args.pw
    path = ""
    if args.url:
        from ..transport.url import parse_url

        endpoint = parse_url(args.url)
        scheme, host, port = endpoint.scheme, endpoint.host, endpoint.port
        username = endpoint.username or username
        password = endpoint.password or password
        if scheme in ("ws", "wss"):
            path = endpoint.path  # the WebSocket path (/mqtt), not a topic
        else:
            url_topic = endpoint.path.lstrip("/") or None
        if (tls is not None or dtls is not None) and scheme == "mqtt-udp":
            scheme = "mqtts-dtls"
        elif dtls is not None and scheme != "mqtts-dtls":
            raise CliError(f"--psk needs a mqtts-dtls:// URL (not {scheme}://)")
        elif tls is not None and scheme in ("mqtt", "tcp", "ws"):
            scheme = {"ws": "wss"}.get(scheme, "mqtts")
    if url_topic and not args.topic:
        args.topic = [url_topic]
    client_id = args.id or (f"{args.id_prefix}{os.getpid()}" if args.id_prefix else "")
    if args.disable_clean_session and not client_id:
        raise CliError("Invalid id and/or clean_session: -c needs a client id (-i)")
    connect = store.get("connect", Properties())
    expiry = args.session_expiry_interval
    if expiry is None:
        expiry = connect.session_expiry_interval
    if expiry is None:
        expiry = 0xFFFFFFFF if args.disable_clean_session and version == 5 else 0
    will = None
    if args.will_topic:
        will = Will(
            args.will_topic, args.will_payload.encode(), args.will_qos, args.will_retain,
            store.get("will", Properties()),
        )  # fmt: skip
    options = ConnectOptions(
        clean_start=not args.disable_clean_session,
        keep_alive=args.keepalive,
        session_expiry_interval=expiry,
        receive_maximum=connect.receive_maximum,
        maximum_packet_size=connect.maximum_packet_size,
        topic_alias_maximum=connect.topic_alias_maximum or 0,
        request_response_information=bool(connect.request_response_information),
        request_problem_information=(
            None
            if connect.request_problem_information is None
            else bool(connect.request_problem_information)
        ),
        user_properties=connect.user_properties,
        username=username,
        password=password,
        will=will,
        version=version,
        tls=tls,
        dtls=dtls,
    )
    bracket = f"[{host}]" if ":" in host else host
    return Common(args, f"{scheme}://{bracket}:{port}{path}", client_id, options, store)


def _tls_config(args: argparse.Namespace) -> TlsConfig | None:
    """mosquitto_pub's TLS options as a :class:`TlsConfig` (None when none is given)."""
    if not any((args.cafile, args.capath, args.cert, args.key, args.insecure)):
        return None
    for flag, path in (("--cafile", args.cafile), ("--cert", args.cert), ("--key", args.key)):
        if path is not None and not os.path.isfile(path):
            raise CliError(f"{flag}: cannot read {path}")
    if args.capath is not None and not os.path.isdir(args.capath):
        raise CliError(f"--capath: {args.capath} is not a directory")
    if (args.cert is None) != (args.key is None):
        raise CliError("--cert and --key go together")
    return TlsConfig(
        ca_file=args.cafile,
        ca_path=args.capath,
        cert_file=args.cert,
        key_file=args.key,
        insecure=args.insecure,
    )


def _dtls_config(args: argparse.Namespace) -> DtlsClientSettings | None:
    """``--psk-identity`` and ``--psk`` (with the TLS options' CA and certificate) as DTLS
    settings; None without a PSK (DTLS with certificates then comes from the TLS options)."""
    if args.psk is None and args.psk_identity is None:
        return None
    if args.psk is None or args.psk_identity is None:
        raise CliError("--psk and --psk-identity go together")
    try:
        key = bytes.fromhex(args.psk)
    except ValueError:
        raise CliError("--psk: not a hexadecimal key") from None
    if not key:
        raise CliError("--psk: empty key")
    return DtlsClientSettings(
        psk_identity=args.psk_identity,
        psk=key,
        cafile=args.cafile,
        certfile=args.cert,
        keyfile=args.key,
    )


def build_client(common: Common, *, reconnect: bool, **kwargs: object) -> MqttClient:
    """An :class:`MqttClient` configured from the parsed options."""
    policy = ReconnectPolicy(enabled=reconnect, initial_delay=0.5, max_delay=30.0)
    return MqttClient(
        common.client_id,
        url=common.url,
        options=common.options,
        reconnect=policy,
        **kwargs,  # type: ignore[arg-type]
    )


def error_message(exc: BaseException) -> str:
    """What a script reads on stderr: ``Connection refused: not authorized (0x87)``, ..."""
    if isinstance(exc, ConnectRefused):
        return str(exc)
    if isinstance(exc, TransportError):
        return f"{exc.message} ({exc.address})"
    if isinstance(exc, MqttError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def report(exc: BaseException, quiet: bool) -> None:
    """Print an error the way Mosquitto's clients do (``Error: ...`` on stderr)."""
    if not quiet:
        print(f"Error: {error_message(exc)}", file=sys.stderr)
