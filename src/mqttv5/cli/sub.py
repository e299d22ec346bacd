"""``mqttv5 sub``: subscribe and print messages, with mosquitto_sub's flags and ``-F`` format.

Examples::

    mqttv5 sub -h broker -t 'sensors/#' -v
    mqttv5 sub -t cmd -C 1 -W 10            # one message, or exit status 27 after 10 s
    mqttv5 sub -t 'a/#' -F '%t %q %r %P %p'  # Mosquitto's format specifiers
    mqttv5 sub -t 'a/#' --json              # one JSON object per line

It reconnects (resuming the session with ``-c``) when the connection is lost, as mosquitto_sub
does; ``--no-reconnect`` turns that off.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime

from ..client import Message, MqttClient
from ..protocol.errors import MqttError
from ..protocol.packets import Subscription
from ..protocol.topics import matches, parse_shared
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliError,
    Common,
    add_common_options,
    build_client,
    report,
)
from .common import parse as parse_common

__all__ = ["format_message", "main"]

_ESCAPES = {"n": b"\n", "\\": b"\\", "0": b"\0", "a": b"\a", "e": b"\x1b", "t": b"\t", "r": b"\r"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqttv5 sub",
        description="Subscribe and print MQTT messages (options as mosquitto_sub).",
        add_help=False,
    )
    add_common_options(parser, sub=True)
    add = parser.add_argument
    add("-C", "--count", type=int, default=0, help="exit after this many messages")
    add("-W", "--timeout", type=float, default=0, help="exit (status 27) after this many seconds")
    add("-R", "--no-stale", action="store_true", help="do not print retained (stale) messages")
    add("-v", "--verbose", action="store_true", help="print the topic before the payload")
    add("-F", "--format", help="output format (%%t topic, %%p payload ... see mosquitto_sub)")
    add("-N", "--no-newline", action="store_true", help="no newline after each message")
    add("-T", "--filter-out", action="append", default=[], help="do not print these topics")
    add("-U", "--unsubscribe", action="append", default=[], help="unsubscribe these filters")
    add("-E", "--exit-after-subscribe", action="store_true", help="exit once subscribed")
    add("--json", action="store_true", help="print each message as a JSON object")
    add("--retain-handling", type=int, choices=(0, 1, 2), default=0, help="MQTT 5 option")
    add("--no-local", action="store_true", help="do not receive our own messages (MQTT 5)")
    add("--retain-as-published", action="store_true", help="keep the RETAIN flag (MQTT 5)")
    return parser


# ---------------------------------------------------------------------------------------------
# output


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")


def _field(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _json(message: Message, now: float, raw: bool) -> bytes:
    tst = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    obj: dict[str, object] = {
        "tst": tst,
        "topic": message.topic,
        "qos": message.qos,
        "retain": int(message.retain),
    }
    props = message.properties
    for name, value in props.items():
        if name == "user_properties":
            obj["user_properties"] = [list(pair) for pair in props.user_properties]
        elif isinstance(value, bytes):
            obj[name] = value.decode("utf-8", "replace")
        else:
            obj[name] = value
    try:
        text = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        obj["payload_base64"] = base64.b64encode(message.payload).decode()
        return json.dumps(obj).encode()
    if raw:
        try:
            obj["payload"] = json.loads(text)
        except ValueError:
            obj["payload"] = text
    else:
        obj["payload"] = text
    return json.dumps(obj, ensure_ascii=False).encode()


def _conversion(c: str, m: Message, client_id: str, now: float) -> bytes | None:
    props = m.properties
    values: dict[str, object] = {
        "t": m.topic,
        "p": m.payload,
        "q": m.qos,
        "r": int(m.retain),
        "m": m.packet_id or 0,
        "i": client_id,
        "l": len(m.payload),
        "I": _iso(now),
        "U": f"{now:.9f}",
        "x": m.payload.hex(),
        "X": m.payload.hex().upper(),
        "P": " ".join(f"{k}:{v}" for k, v in props.user_properties),
        "C": props.content_type,
        "D": props.correlation_data,
        "E": props.message_expiry_interval,
        "A": props.topic_alias,
        "R": props.response_topic,
        "S": ",".join(str(s) for s in m.subscription_identifiers) or None,
        "F": props.payload_format_indicator,
    }
    if c == "j":
        return _json(m, now, False)
    if c == "J":
        return _json(m, now, True)
    if c not in values:
        return None
    return _field(values[c])


def format_message(fmt: str, message: Message, client_id: str = "", now: float = 0.0) -> bytes:
    """Render ``message`` with a mosquitto_sub ``-F`` format string.

    ``%`` sequences (with optional ``-``/``0`` flags, width and ``.precision``) print message
    fields, ``@`` sequences go to strftime (``@N``: nanoseconds), ``\\`` sequences are escapes.
    ``%i`` (the client identifier) is an mqttv5 extension.
    """
    now = now or time.time()
    out = bytearray()
    i, n = 0, len(fmt)
    while i < n:
        ch = fmt[i]
        if ch == "%" and i + 1 < n:
            j = i + 1
            flags = ""
            while j < n and fmt[j] in "-0":
                flags += fmt[j]
                j += 1
            width = ""
            while j < n and fmt[j].isdigit():
                width += fmt[j]
                j += 1
            precision = ""
            if j < n and fmt[j] == ".":
                j += 1
                while j < n and fmt[j].isdigit():
                    precision += fmt[j]
                    j += 1
            if j >= n:
                out += fmt[i:].encode()
                break
            conv = fmt[j]
            if conv == "%":
                out += b"%"
            else:
                value = _conversion(conv, message, client_id, now)
                if value is None:
                    out += fmt[i : j + 1].encode()
                else:
                    if precision:
                        value = value[: int(precision)]
                    if width and len(value) < int(width):
                        pad = int(width) - len(value)
                        if "-" in flags:
                            value = value + b" " * pad
                        else:
                            value = (b"0" if "0" in flags else b" ") * pad + value
                    out += value
            i = j + 1
        elif ch == "@" and i + 1 < n:
            conv = fmt[i + 1]
            if conv == "@":
                out += b"@"
            elif conv == "N":
                out += f"{int(now * 1e9) % 1_000_000_000:09d}".encode()
            else:
                out += datetime.fromtimestamp(now).strftime("%" + conv).encode()
            i += 2
        elif ch == "\\" and i + 1 < n:
            out += _ESCAPES.get(fmt[i + 1], fmt[i : i + 2].encode())
            i += 2
        else:
            out += ch.encode()
            i += 1
    return bytes(out)


def _render(message: Message, args: argparse.Namespace, client_id: str) -> bytes:
    if args.format is not None:
        return format_message(args.format, message, client_id)
    if args.json:
        line = _json(message, time.time(), False)
    elif args.verbose:
        line = message.topic.encode() + b" " + message.payload
    else:
        line = message.payload
    return line if args.no_newline else line + b"\n"


# ---------------------------------------------------------------------------------------------
# running


def _filtered_out(topic: str, filters: list[str]) -> bool:
    return any(matches(parse_shared(f)[1], topic) for f in filters)


async def _subscribe(client: MqttClient, common: Common) -> None:
    args = common.args
    subs = [
        Subscription(t, args.qos, args.no_local, args.retain_as_published, args.retain_handling)
        for t in args.topic
    ]
    props = common.props("subscribe")
    sid = props.subscription_identifiers[0] if props.subscription_identifiers else None
    codes = await client.subscribe(
        subs, subscription_identifier=sid, user_properties=props.user_properties
    )
    denied = [(s.topic_filter, c) for s, c in zip(subs, codes, strict=False) if c.is_error]
    for filt, code in denied:
        if not args.quiet:
            print(f"Warning: subscription to {filt!r} denied: {code.text} (0x{int(code):02X})",
                  file=sys.stderr)  # fmt: skip
    if len(denied) == len(subs):
        raise MqttError("All subscription requests were denied.")
    if args.unsubscribe:
        await client.unsubscribe(args.unsubscribe)


async def _consume(client: MqttClient, common: Common) -> None:
    args = common.args
    out = sys.stdout.buffer
    count = 0
    async for message in client.messages():
        if args.no_stale and message.retain:
            continue
        if args.filter_out and _filtered_out(message.topic, args.filter_out):
            continue
        out.write(_render(message, args, client.client_id))
        out.flush()
        count += 1
        if args.count and count >= args.count:
            return


async def _run(common: Common) -> int:
    args = common.args
    client = build_client(common, reconnect=not args.no_reconnect)
    await client.connect()
    try:
        await _subscribe(client, common)
        if args.exit_after_subscribe:
            return EXIT_OK
        if args.timeout:
            try:
                async with asyncio.timeout(args.timeout):
                    await _consume(client, common)
            except TimeoutError:
                if not args.quiet:
                    print("Timed out", file=sys.stderr)
                return EXIT_TIMEOUT
        else:
            await _consume(client, common)
        return EXIT_OK
    finally:
        await client.disconnect(properties=common.props("disconnect") or None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mqttv5 sub``; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        common = parse_common(parser, argv, sub=True)
        if not common.args.topic:
            raise CliError("at least one topic filter (-t) is needed")
        return asyncio.run(_run(common))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    except (MqttError, OSError) as exc:
        report(exc, "--quiet" in argv)
        return EXIT_ERROR
