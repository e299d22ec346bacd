#!/usr/bin/env python3
"""Durable store (SQLite) versus in-memory, QoS 1, where durability costs something.

Starts `mqttv5 broker` twice per round on loopback (`--storage memory`, then `--storage sqlite`
in a fresh data directory) and measures, with pipelined publishers (a window of 20, the broker's
Receive Maximum):

- persistent: one publisher -> a connected subscriber whose session has an expiry (every
  message is written before its PUBACK), delivered messages per second;
- offline: a subscriber's queue filled while it is offline (publish rate), then drained when it
  returns (delivery rate);
- retained: retained QoS 1 publishes to distinct topics, per second.

    .venv/bin/python benchmarks/storage.py [--count N] [--rounds R] [--publishers P]
    MQTTV5_BENCH_SYNC=full .venv/bin/python benchmarks/storage.py    # storage_sync = "full"

``--ping`` adds the PINGREQ round-trip time of a bystander connection during the persistent
phase (median and 99th percentile): how long the event loop leaves other clients waiting.
With ``--publishers P`` the messages of each phase come from P publishers at once (P windows of
20 in flight), which keeps the broker's event loop busy: where an fsync on the loop costs the
most, and where the writer process of ``full`` should earn its keep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from mqttv5.protocol.packets import (
    Connack,
    Connect,
    PacketDecoder,
    Pingreq,
    Pingresp,
    PubAck,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)
from mqttv5.protocol.properties import Properties

KEEP = Properties(session_expiry_interval=3600)
WINDOW = 20
SYNC = os.environ.get("MQTTV5_BENCH_SYNC", "normal")  # normal | full: the sqlite runs' storage_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = PacketDecoder(5)
        self.inbox: list[object] = []

    @classmethod
    async def connect(cls, port: int, cid: str, clean: bool = True) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(Connect(cid, clean_start=clean, properties=KEEP).encode())
        assert isinstance(await client.recv(), Connack)
        return client

    async def recv(self) -> object:
        while not self.inbox:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    async def publish_many(self, count: int, topic: str, retain: bool = False) -> None:
        """Publish ``count`` QoS 1 messages with at most WINDOW unacknowledged."""
        sent = acked = 0
        while acked < count:
            while sent < count and sent - acked < WINDOW:
                sent += 1
                name = f"{topic}/{sent}" if retain else topic
                self.writer.write(
                    Publish(name, b"x" * 64, 1, retain, packet_id=sent % 60000 + 1).encode()
                )
            packet = await self.recv()
            if isinstance(packet, PubAck):
                acked += 1

    async def receive_many(self, count: int) -> None:
        got = 0
        while got < count:
            packet = await self.recv()
            if isinstance(packet, Publish):
                got += 1
                self.writer.write(PubAck(packet.packet_id).encode())  # type: ignore[arg-type]

    def close(self) -> None:
        self.writer.close()


async def publish_all(pubs: list[Client], count: int, topic: str, retain: bool = False) -> None:
    """``count`` messages split between the publishers, all publishing at once."""
    share = count // len(pubs)
    await asyncio.gather(
        *(
            p.publish_many(share + (count % len(pubs) if i == 0 else 0), f"{topic}{i}", retain)
            for i, p in enumerate(pubs)
        )
    )


async def ping_while(client: Client, done: asyncio.Future[Any]) -> list[float]:
    """PINGREQ round trips of a bystander connection until ``done``, in milliseconds."""
    times = []
    while not done.done():
        start = time.perf_counter()
        client.writer.write(Pingreq().encode())
        assert isinstance(await client.recv(), Pingresp)
        times.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.001)
    return times


async def scenario(
    port: int, count: int, publishers: int = 1, ping: bool = False
) -> dict[str, float]:
    results: dict[str, float] = {}
    sub = await Client.connect(port, "persistent-sub")
    sub.writer.write(Subscribe(1, [Subscription("live/#", 1)]).encode())
    assert isinstance(await sub.recv(), Suback)
    pubs = [await Client.connect(port, f"pub{i}") for i in range(publishers)]
    bystander = await Client.connect(port, "bystander") if ping else None
    start = time.perf_counter()
    load = asyncio.gather(publish_all(pubs, count, "live/t"), sub.receive_many(count))
    pinger = asyncio.ensure_future(ping_while(bystander, load)) if bystander else None
    await load
    results["persistent"] = count / (time.perf_counter() - start)
    if pinger is not None and bystander is not None:
        pings = sorted(await pinger)
        results["ping p50 ms"] = statistics.median(pings)
        results["ping p99 ms"] = pings[int(len(pings) * 0.99)]
        bystander.close()
    sub.close()

    off = await Client.connect(port, "offline-sub")
    off.writer.write(Subscribe(1, [Subscription("queue/#", 1)]).encode())
    assert isinstance(await off.recv(), Suback)
    off.close()
    await asyncio.sleep(0.1)
    start = time.perf_counter()
    await publish_all(pubs, count, "queue/t")
    results["offline fill"] = count / (time.perf_counter() - start)
    back = await Client.connect(port, "offline-sub", clean=False)
    start = time.perf_counter()
    await back.receive_many(count)
    results["offline drain"] = count / (time.perf_counter() - start)
    back.close()

    start = time.perf_counter()
    await publish_all(pubs, count, "ret", retain=True)
    results["retained"] = count / (time.perf_counter() - start)
    for p in pubs:
        p.close()
    return results


def run_broker(
    storage: str, data_dir: str, count: int, publishers: int = 1, ping: bool = False
) -> dict[str, float]:
    port = free_port()
    config = os.path.join(os.path.dirname(data_dir), "broker.toml")
    with open(config, "w") as f:
        f.write(f"max_queued_messages = {count * 2}\n")  # the offline phase queues them all
        f.write(f'storage_sync = "{SYNC}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttv5", "broker", "-c", config, "--port", str(port),
         "--bind", "127.0.0.1",
         "--storage", storage, "--data-dir", data_dir, "--sys-interval", "0",
         "--log-level", os.environ.get("BENCH_LOG", "warning")],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        return asyncio.run(scenario(port, count, publishers, ping))
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--publishers", type=int, default=1, help="publishers at once (more: a busier loop)"
    )
    parser.add_argument(
        "--ping",
        action="store_true",
        help="also time PINGREQ round trips of a bystander during the persistent phase",
    )
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    for _ in range(args.rounds):
        for storage in ("memory", "sqlite"):
            with tempfile.TemporaryDirectory() as data:
                runs[storage].append(
                    run_broker(
                        storage, os.path.join(data, "d"), args.count, args.publishers, args.ping
                    )
                )
    print(
        f"QoS 1, 64-byte payloads, {args.count} messages per phase, {args.publishers} "
        f"publisher(s), storage_sync = {SYNC!r}, medians of {args.rounds}"
    )
    print(f"{'phase':<15}{'memory msg/s':>14}{'sqlite msg/s':>14}{'ratio':>8}{'paired':>8}")
    for phase in runs["memory"][0]:
        mem = statistics.median(r[phase] for r in runs["memory"])
        dur = statistics.median(r[phase] for r in runs["sqlite"])
        # each round runs memory then sqlite back to back: the median of the per-round
        # ratios is less sensitive to a machine shared with other work
        paired = statistics.median(
            d[phase] / m[phase] for m, d in zip(runs["memory"], runs["sqlite"], strict=True)
        )
        print(f"{phase:<15}{mem:>14,.0f}{dur:>14,.0f}{dur / mem:>8.2f}{paired:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
