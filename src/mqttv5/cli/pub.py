"""``mqttv5 pub``: publish messages, with mosquitto_pub's flags.

Examples::

    mqttv5 pub -h broker -t sensors/t1 -m 21.5 -q 1
    mqttv5 pub -t cmd -m go -D publish user-property origin cli --response-topic replies
    some-command | mqttv5 pub -t lines -l          # one message per line of stdin
    mqttv5 pub -t big -f payload.bin -r            # a retained file
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

from ..client import MqttClient
from ..protocol.errors import MqttError
from ..protocol.properties import Properties
from .common import EXIT_ERROR, EXIT_OK, CliError, Common, add_common_options, build_client, report
from .common import parse as parse_common

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqttv5 pub",
        description="Publish MQTT messages (options as mosquitto_pub).",
        add_help=False,
    )
    add_common_options(parser, sub=False)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("-m", "--message", help="the payload")
    src.add_argument("-f", "--file", help="send the file's contents as the payload")
    src.add_argument("-l", "--stdin-line", action="store_true", help="one message per line")
    src.add_argument("-n", "--null-message", action="store_true", help="an empty payload")
    src.add_argument("-s", "--stdin-file", action="store_true", help="stdin as one payload")
    add = parser.add_argument
    add("-r", "--retain", action="store_true", help="retain the message")
    add("--repeat", type=int, default=1, help="publish the message this many times")
    add("--repeat-delay", type=float, default=0.0, help="seconds between repeats")
    add("--response-topic", help="MQTT 5 Response Topic of the message")
    add("--correlation-data", help="MQTT 5 Correlation Data of the message")
    return parser


async def _payloads(args: argparse.Namespace) -> AsyncIterator[bytes]:
    if args.stdin_line:
        async for line in _lines():
            yield line
        return
    async for data in _repeated(args):
        yield data


async def _lines() -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not line:
            return
        yield line.rstrip(b"\r\n")


async def _repeated(args: argparse.Namespace) -> AsyncIterator[bytes]:
    if args.file is not None:
        with open(args.file, "rb") as fh:  # noqa: ASYNC230 - one read of a local file
            data = fh.read()
    elif args.stdin_file:
        data = sys.stdin.buffer.read()
    elif args.null_message:
        data = b""
    else:
        data = args.message.encode()
    for i in range(max(1, args.repeat)):
        if i and args.repeat_delay:
            await asyncio.sleep(args.repeat_delay)
        yield data


async def _run(common: Common) -> int:
    args = common.args
    props = common.props("publish")
    if args.response_topic:
        props.response_topic = args.response_topic
    if args.correlation_data is not None:
        props.correlation_data = args.correlation_data.encode()
    client = build_client(common, reconnect=args.reconnect)
    await client.connect()
    try:
        topic = args.topic[0]
        async for payload in _payloads(args):
            await _publish(client, topic, payload, args, props)
    finally:
        await client.disconnect(properties=common.props("disconnect") or None)
    return EXIT_OK


async def _publish(
    client: MqttClient, topic: str, payload: bytes, args: argparse.Namespace, props: Properties
) -> None:
    code = await client.publish(topic, payload, args.qos, args.retain, props if props else None)
    if code.is_error:
        raise MqttError(f"Publish failed: {code.text} (0x{int(code):02X})")
    if args.debug:
        print(f"Client {client.client_id} published {len(payload)} bytes to {topic!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mqttv5 pub``; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        common = parse_common(parser, argv, sub=False)
        args = common.args
        if len(args.topic) != 1:
            raise CliError("exactly one topic (-t) is needed")
        if not (args.message is not None or args.file or args.stdin_line or args.null_message
                or args.stdin_file):  # fmt: skip
            raise CliError("no message given (-m, -f, -l, -n or -s)")
        return asyncio.run(_run(common))
    except KeyboardInterrupt:
        return EXIT_OK
    except (MqttError, OSError) as exc:
        report(exc, "--quiet" in argv)
        return EXIT_ERROR
