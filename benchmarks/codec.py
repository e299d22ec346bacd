"""Codec micro-benchmark: the broker's per-message decode and re-encode cost.

Stream-decodes pipelined QoS 1 PUBLISH packets (64-byte payload, three properties: Content Type,
Message Expiry Interval, one User Property) through ``PacketDecoder.feed`` with full validation,
fed in 64 KiB reads as a socket would deliver them; then re-encodes each one the way the broker
forwards it (``encode_publish_parts`` with the publisher's raw property bytes and a new packet
identifier). Reports the best of several rounds in microseconds per packet.

Run from the repository root::

    .venv/bin/python benchmarks/codec.py            # a table
    .venv/bin/python benchmarks/codec.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from mqttv5.protocol.packets import PacketDecoder, Publish, encode_publish_parts
from mqttv5.protocol.properties import Properties


def build_stream(count: int, payload_size: int, vary: bool = False) -> bytes:
    """``count`` QoS 1 PUBLISH packets back to back; with ``vary`` every packet carries a
    different trace id, so no two consecutive property blocks are alike (the decoder's
    repeated-properties shortcut never applies)."""
    props = Properties(
        content_type="application/json",
        message_expiry_interval=3600,
        user_properties=[("trace-id", "4bf92f3577b34da6")],
    )
    payload = bytes(range(256))[:payload_size].ljust(payload_size, b"x")
    out = bytearray()
    for i in range(count):
        if vary:
            props = Properties(
                content_type="application/json",
                message_expiry_interval=3600,
                user_properties=[("trace-id", f"{i:016x}")],
            )
        packet = Publish(
            f"sensors/building-{i % 10}/floor-{i % 7}/temperature",
            payload,
            qos=1,
            packet_id=i % 65535 + 1,
            properties=props,
        )
        out += packet.encode(5)
    return bytes(out)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def decode_all(chunks: list[bytes]) -> list[Any]:
    decoder = PacketDecoder(5)
    out: list[Any] = []
    feed = decoder.feed
    for chunk in chunks:
        out.extend(feed(chunk))
    return out


def encode_all(decoded: list[Publish]) -> list[bytes]:
    # What the broker does per subscriber copy: topic bytes, payload and raw properties as
    # received, a packet identifier of its own, DUP cleared.
    out: list[bytes] = []
    append = out.append
    for n, p in enumerate(decoded):
        append(
            encode_publish_parts(
                p.topic.encode("utf-8"),
                p.payload,
                p.qos,
                p.retain,
                False,
                n % 65535 + 1,
                p.props_raw,
            )
        )
    return out


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def run(
    count: int, payload_size: int, chunk_size: int, repeat: int, vary: bool = False
) -> dict[str, Any]:
    stream = build_stream(count, payload_size, vary)
    chunks = chunked(stream, chunk_size)

    # Sanity check (not timed): everything decodes, and forwarding reproduces the input.
    decoded = decode_all(chunks)
    assert len(decoded) == count, len(decoded)
    assert all(isinstance(p, Publish) and p.qos == 1 for p in decoded)
    assert b"".join(encode_all(decoded)) == stream

    decode_times: list[float] = []
    encode_times: list[float] = []
    totals: list[float] = []
    for _ in range(repeat):
        t_dec, decoded = timed(lambda: decode_all(chunks))
        t_enc, _ = timed(lambda: encode_all(decoded))  # noqa: B023 - used immediately
        decode_times.append(t_dec)
        encode_times.append(t_enc)
        totals.append(t_dec + t_enc)

    def per_packet(seconds: float) -> float:
        return seconds / count * 1e6

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "compiled_modules": compiled_modules(),
        "packets": count,
        "packet_bytes": len(stream) // count,
        "payload_bytes": payload_size,
        "chunk_bytes": chunk_size,
        "repeat": repeat,
        "decode_us": per_packet(min(decode_times)),
        "encode_us": per_packet(min(encode_times)),
        "total_us": per_packet(min(totals)),
        "decode_us_median": per_packet(statistics.median(decode_times)),
        "encode_us_median": per_packet(statistics.median(encode_times)),
        "total_us_median": per_packet(statistics.median(totals)),
    }


PROTOCOL_MODULES = ("codec", "properties", "packets", "reason_codes", "connection")


def compiled_modules() -> list[str]:
    """The protocol modules loaded from a C extension (a mypyc build) rather than a .py file."""
    out = []
    for name in PROTOCOL_MODULES:
        module = importlib.import_module(f"mqttv5.protocol.{name}")
        if not (module.__file__ or "").endswith(".py"):
            out.append(name)
    return out


def print_table(r: dict[str, Any]) -> None:
    compiled = r["compiled_modules"]
    build = f"mypyc-compiled: {', '.join(compiled)}" if compiled else "pure Python"
    print(
        f"mqttv5 codec benchmark: {r['packets']:,} QoS 1 PUBLISH packets of {r['packet_bytes']} "
        f"bytes ({r['payload_bytes']}-byte payload, 3 properties), {r['chunk_bytes'] // 1024} KiB "
        f"reads, best of {r['repeat']}"
    )
    print(f"{r['implementation']} {r['python']}, {build}")
    print()
    print(f"{'phase':<30} {'best µs/pkt':>12} {'median µs/pkt':>14} {'packets/s (best)':>17}")
    rows = [
        ("decode (PacketDecoder.feed)", "decode_us"),
        ("encode (encode_publish_parts)", "encode_us"),
        ("total", "total_us"),
    ]
    for label, key in rows:
        best = r[key]
        print(f"{label:<30} {best:>12.3f} {r[key + '_median']:>14.3f} {1e6 / best:>17,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=10_000, help="packets per round")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per packet")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per feed() call")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--vary-properties",
        action="store_true",
        help="a different property block in every packet (worst case for the decoder)",
    )
    args = parser.parse_args(argv)
    result = run(args.packets, args.payload, args.chunk, args.repeat, args.vary_properties)
    result["vary_properties"] = args.vary_properties
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
