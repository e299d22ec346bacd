"""``mqttv5 bench``: load-test an MQTT broker (ours, Mosquitto, any other).

Scenarios: ``fanin`` (P publishers -> 1 wildcard subscriber), ``fanout`` (1 publisher -> S
subscribers), ``pairs`` (N publisher/subscriber pairs), ``shared`` (publishers -> a ``$share``
group), ``latency`` (a fixed rate; percentiles from the intended send time), ``connect``
(CONNECT/CONNACK/DISCONNECT cycles per second) and ``idle`` (C connections with one subscription
each; the broker's memory per connection). The clients run in worker processes
(:mod:`mqttv5.bench.workers`); every message is checked: sent, received, lost, duplicated.

Exit status: 0 after a run (even one that lost messages, unless ``--strict``), 1 when the run
could not happen or, with ``--strict``, lost, duplicated or failed anything, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from ..bench.report import format_table
from ..bench.scenarios import DEFAULTS, SCENARIOS, STAMP, BenchError, BenchOptions, run

__all__ = ["build_parser", "main", "options_from_args"]

PROG = "mqttv5 bench"
_VERSIONS = {"5": 5, "mqttv5": 5, "311": 4, "mqttv311": 4}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``-h`` is the host, as in Mosquitto's tools; help is ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,
        description="Load-test an MQTT broker with pre-encoded packets from several worker "
        "processes, and check that every message arrived exactly once. Throughput is the "
        "delivered rate, with the publishers never more than --window messages ahead of the "
        "subscribers.",
        epilog="Scenarios and their options: "
        + "; ".join(
            f"{name} ({', '.join(f'--{k} {v:g}' for k, v in DEFAULTS[name].items())})"
            for name in SCENARIOS
        )
        + ". Exit status: 0 after a run, 1 if it could not run (or, with --strict, lost or "
        "duplicated messages), 2 for bad options.",
    )
    add = parser.add_argument
    add("scenario", choices=SCENARIOS, help="what to measure")
    add("--help", action="help", help="show this help and exit")
    add("-L", "--url", help="broker URL, mqtt://host:port (or tcp://)")
    add("-h", "--host", default="localhost", help="broker host (default localhost)")
    add("-p", "--port", type=int, default=1883, help="broker port (default 1883)")
    add("-V", "--protocol-version", default="5", metavar="5|311", help="MQTT version (default 5)")
    add("--qos", type=int, choices=(0, 1, 2), default=0, help="QoS of publications and "
        "subscriptions (default 0)")  # fmt: skip
    add("--payload-bytes", type=_positive_int, default=64, metavar="N",
        help=f"payload size, at least {STAMP.size} (default 64)")  # fmt: skip
    add("--duration", type=_positive_float, metavar="S",
        help="seconds of publishing (default 5; unlimited with --count alone)")  # fmt: skip
    add("--count", type=_positive_int, metavar="N",
        help="messages per publisher (connect: cycles per loop); stops earlier than --duration "
        "only if that is given too")  # fmt: skip
    add("--publishers", type=_positive_int, metavar="N", help="publishing connections")
    add("--subscribers", type=_positive_int, metavar="N", help="subscribing connections")
    add("--pairs", type=_positive_int, metavar="N", help="publisher/subscriber pairs")
    add("--rate", type=_positive_float, metavar="N", help="latency: messages per second")
    add("--clients", type=_positive_int, metavar="N",
        help="connect: concurrent loops; idle: connections")  # fmt: skip
    add("--broker-pid", type=_positive_int, metavar="PID",
        help="report the broker's CPU time and memory (read from /proc/PID)")  # fmt: skip
    add("--window", type=_positive_int, default=500, metavar="N",
        help="messages the publishers may be ahead of one subscriber (default 500)")  # fmt: skip
    add("--inflight", type=_positive_int, default=20, metavar="N",
        help="QoS 1/2 PUBLISH packets in flight per publisher under MQTT 3.1.1, which has no "
        "Receive Maximum (default 20; MQTT 5 uses the broker's Receive Maximum)")  # fmt: skip
    add("--workers", type=_positive_int, metavar="N", help="worker processes (default: by CPUs)")
    add("--json", action="store_true", help="print the result as one JSON object")
    add("--strict", action="store_true", help="exit 1 if anything was lost, duplicated or failed")
    add("--no-progress", action="store_true", help="no live progress line on a terminal")
    return parser


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Check the options against the scenario and build :class:`BenchOptions`.

    Raises:
        ValueError: an option does not apply or has a bad value (the message says which).
    """
    scenario = args.scenario
    for name in ("publishers", "subscribers", "pairs", "rate", "clients"):
        if getattr(args, name) is not None and name not in DEFAULTS[scenario]:
            raise ValueError(f"--{name} does not apply to the {scenario} scenario")
    version = _VERSIONS.get(str(args.protocol_version).lower())
    if version is None:
        raise ValueError(f"unsupported protocol version {args.protocol_version!r} (5 or 311)")
    host, port = args.host, args.port
    if args.url:
        from ..transport.url import parse_url

        endpoint = parse_url(args.url)
        if endpoint.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"{endpoint.scheme}:// is not supported yet (mqtt:// or tcp://)")
        host, port = endpoint.host, endpoint.port
    if args.payload_bytes < STAMP.size and scenario not in ("connect", "idle"):
        raise ValueError(f"--payload-bytes must be at least {STAMP.size}")
    duration = args.duration
    if duration is None:
        duration = math.inf if args.count else 5.0
    bracket = f"[{host}]" if ":" in host else host
    return BenchOptions(
        scenario=scenario,
        host=host,
        port=port,
        url=f"mqtt://{bracket}:{port}",
        qos=args.qos,
        payload_bytes=args.payload_bytes,
        duration=duration,
        count=args.count or 0,
        publishers=args.publishers,
        subscribers=args.subscribers,
        pairs=args.pairs,
        rate=args.rate,
        clients=args.clients,
        broker_pid=args.broker_pid,
        version=version,
        window=args.window,
        inflight=args.inflight,
        workers=args.workers,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mqttv5 bench``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        result = run(opts)
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_table(result))
    return 1 if args.strict and not result.ok else 0
