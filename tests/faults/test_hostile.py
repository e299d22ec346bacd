"""Hostile input against a broker in its own process (``mqttv5 broker -c ...``, 127.0.0.1 only).

One test, four attacks at once, all bounded in count and time:

- a seeded fuzzer: 3000 connections sending ~20,000 mutated packets (bit flips,
  truncation, insertions, forged lengths, 5-byte varints, wrong flags and types, random bytes,
  oversized packets) derived from valid packets of every type, MQTT 5.0 and 3.1.1, before and
  after a valid CONNECT;
- slowloris: connections that trickle a CONNECT one byte at a time and never finish it; each must
  be closed once ``connect_timeout`` (1.5 s here) has passed;
- a connection flood: 500 connections opened as fast as the loop can, all held open at once,
  each completing CONNECT;
- throughout, a well-behaved subscriber and publisher: every QoS 1 message published during the
  attacks must arrive, once, in order.

Afterwards the broker process is still running, accepts a new client, wrote no traceback, and
its resident memory grew by less than ``RSS_GROWTH_BOUND`` (read from /proc/PID/status; the
allocator keeps some of what the flood used, so the bound is generous but finite: a leak of one
buffer per connection would exceed it). The counts are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqttv5.client import ConnectOptions, MqttClient
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.rawclient import timeout

pytestmark = pytest.mark.slow

SEED = 20240607
FUZZ_CONNECTIONS = 3000
FUZZ_PARALLEL = 24
FLOOD_CONNECTIONS = 500
SLOWLORIS = 40
CONNECT_TIMEOUT = 1.5
MAX_PACKET = 65_536
RSS_GROWTH_BOUND = 64 * 1024 * 1024  # bytes of VmRSS growth allowed over the whole run
SCRIPT = Path(sys.executable).with_name("mqttv5")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mqttv5.cli"]

CONFIG = f"""
sys_interval = 0
connect_timeout = {CONNECT_TIMEOUT}
keepalive_sweep_interval = 0.2
max_packet_size = {MAX_PACKET}
log_level = "info"
log_file = "{{log}}"

[[listener]]
bind = "127.0.0.1"
port = 0
"""


# --- the broker process ----------------------------------------------------------------------


@contextlib.contextmanager
def broker_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``mqttv5 broker`` on 127.0.0.1 and a free port; yields (process, port, log file)."""
    log = tmp_path / "broker.log"
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG.format(log=log))
    out = open(tmp_path / "broker.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*COMMAND, "broker", "-c", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout(20)
        port = None
        while port is None:
            assert proc.poll() is None, (tmp_path / "broker.out").read_text()
            assert time.monotonic() < deadline, "broker did not start"
            text = log.read_text() if log.exists() else ""
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            port = int(match[1]) if match else None
            time.sleep(0.05)
        yield proc, port, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


# --- packets and their mutations -------------------------------------------------------------


def _valid_packets(version: int) -> list[bytes]:
    """One or more valid encodings of every packet type for ``version`` (5 or 4)."""
    v5 = version == 5
    props = Properties(user_properties=[("k", "v")], content_type="t") if v5 else Properties()
    will = Will(
        "will/t", b"bye", 1, True, Properties(will_delay_interval=1) if v5 else Properties()
    )
    packets: list[object] = [
        Connect("fz", protocol_level=version, username="u", password=b"p", will=will),
        Connect("", protocol_level=version, keep_alive=5),
        Connack(ReasonCode.SUCCESS, False),
        Publish("a/b", b"payload", 0, False, False, None, props if v5 else None),
        Publish("a/b", b"x" * 300, 1, True, False, 7, None),
        Publish("a/c", b"q2", 2, False, True, 9, None),
        PubAck(7),
        PubRec(9),
        PubRel(9),
        PubComp(9),
        Subscribe(3, [Subscription("a/#", 1), Subscription("$share/g/x", 2)]),
        Suback(3, [ReasonCode.GRANTED_QOS_1]),
        Unsubscribe(4, ["a/#"]),
        Unsuback(4, [ReasonCode.SUCCESS]),
        Pingreq(),
        Pingresp(),
        Disconnect(ReasonCode.NORMAL_DISCONNECTION),
    ]
    if v5:
        packets.append(
            Auth(ReasonCode.CONTINUE_AUTHENTICATION, Properties(authentication_method="X"))
        )
        packets.append(Publish("", b"alias", 0, False, False, None, Properties(topic_alias=1)))
    return [p.encode(version) for p in packets]  # type: ignore[attr-defined]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _body(packet: bytes) -> bytes:
    index = 1
    while index < len(packet) and packet[index] & 0x80:
        index += 1
    return packet[index + 1 :]


Mutation = Callable[[random.Random, bytes], bytes]


def _flip_bits(rng: random.Random, p: bytes) -> bytes:
    data = bytearray(p)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _overwrite(rng: random.Random, p: bytes) -> bytes:
    data = bytearray(p)
    data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _truncate(rng: random.Random, p: bytes) -> bytes:
    return p[: rng.randrange(1, len(p))] if len(p) > 1 else b""


def _insert(rng: random.Random, p: bytes) -> bytes:
    at = rng.randrange(len(p) + 1)
    return p[:at] + rng.randbytes(rng.randint(1, 8)) + p[at:]


def _forge_length(rng: random.Random, p: bytes) -> bytes:
    body = _body(p)
    declared = rng.choice([0, 1, len(body) - 1, len(body) + 1, len(body) + 50, 127, 16383])
    return p[:1] + _varint(max(0, declared)) + body


def _five_byte_varint(rng: random.Random, p: bytes) -> bytes:
    return p[:1] + b"\xff\xff\xff\xff\x01" + _body(p)


def _oversize_declared(rng: random.Random, p: bytes) -> bytes:
    return p[:1] + _varint(rng.randint(MAX_PACKET + 1, 268_435_455)) + _body(p)[:16]


def _oversize_real(rng: random.Random, p: bytes) -> bytes:
    return Publish("big", rng.randbytes(MAX_PACKET + rng.randint(1, 4096))).encode(5)


def _flags(rng: random.Random, p: bytes) -> bytes:
    return bytes([(p[0] & 0xF0) | rng.randrange(16)]) + p[1:]


def _type(rng: random.Random, p: bytes) -> bytes:
    return bytes([(rng.randrange(16) << 4) | (p[0] & 0x0F)]) + p[1:]


def _random(rng: random.Random, p: bytes) -> bytes:
    return rng.randbytes(rng.randint(1, 64))


def _duplicate(rng: random.Random, p: bytes) -> bytes:
    at = rng.randrange(len(p))
    return p[:at] + p[at : at + rng.randint(1, 16)] * rng.randint(2, 5) + p[at:]


MUTATIONS: list[tuple[str, Mutation, int]] = [
    ("flip_bits", _flip_bits, 20),
    ("overwrite", _overwrite, 15),
    ("truncate", _truncate, 10),
    ("insert", _insert, 10),
    ("forge_length", _forge_length, 10),
    ("varint_5", _five_byte_varint, 3),
    ("oversize_declared", _oversize_declared, 3),
    ("oversize_real", _oversize_real, 1),
    ("flags", _flags, 8),
    ("type", _type, 8),
    ("random", _random, 8),
    ("duplicate", _duplicate, 4),
]


def _mutate(rng: random.Random, packet: bytes, stats: collections.Counter[str]) -> bytes:
    names, functions, weights = zip(*MUTATIONS, strict=True)
    index = rng.choices(range(len(functions)), weights)[0]
    stats[f"mutation {names[index]}"] += 1
    return functions[index](rng, packet)


def _summary(data: bytes, version: int) -> str:
    """How the broker's side of a connection ended: its last DISCONNECT or refusing CONNACK."""
    last = "closed"
    index = 0
    while index + 1 < len(data):
        kind = data[index] >> 4
        length, shift, pos = 0, 0, index + 1
        while pos < len(data) and shift < 28:
            length |= (data[pos] & 0x7F) << shift
            shift += 7
            pos += 1
            if not data[pos - 1] & 0x80:
                break
        body = data[pos : pos + length]
        if kind == 14:
            last = f"DISCONNECT 0x{body[0] if body else 0:02x}"
        elif kind == 2 and len(body) >= 2 and body[1]:
            last = f"CONNACK 0x{body[1]:02x}" + ("" if version == 5 else " (3.1.1)")
        index = pos + length
    return last


# --- the attacks -----------------------------------------------------------------------------


async def _read_to_end(reader: asyncio.StreamReader, wait: float) -> tuple[bytes, str]:
    """Everything the broker sends until it closes (or ``wait`` seconds of silence)."""
    got = bytearray()
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                return bytes(got), "eof"
            got += chunk
    except TimeoutError:
        return bytes(got), "open"
    except (ConnectionResetError, BrokenPipeError):
        return bytes(got), "reset"


async def _fuzz_one(
    port: int, rng: random.Random, corpus: dict[int, list[bytes]], stats: collections.Counter[str]
) -> None:
    version = rng.choice([5, 4])
    packets = corpus[version]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stats["fuzz connections"] += 1
    try:
        if rng.random() < 0.6:  # after a valid CONNECT: the connected state's parser
            writer.write(
                Connect(f"fz{rng.randrange(10**6)}", protocol_level=version).encode(version)
            )
            stats["packets sent"] += 1
        for _ in range(rng.randint(1, 12)):
            packet = rng.choice(packets)
            data = _mutate(rng, packet, stats) if rng.random() < 0.85 else packet
            if rng.random() < 0.2 and len(data) > 2:  # split across reads
                cut = rng.randrange(1, len(data))
                writer.write(data[:cut])
                await asyncio.sleep(0)
                data = data[cut:]
            writer.write(data)
            stats["packets sent"] += 1
            stats["bytes sent"] += len(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        received, end = await _read_to_end(reader, 0.25)
        outcome = _summary(received, version)
        stats[f"end {outcome}" if end != "open" else "end still open after 0.25 s"] += 1
    except (ConnectionResetError, BrokenPipeError):
        stats["end reset while sending"] += 1
    finally:
        writer.transport.abort()


async def fuzz(port: int, stats: collections.Counter[str]) -> None:
    rng = random.Random(SEED)
    corpus = {v: _valid_packets(v) for v in (5, 4)}
    seeds = [rng.randrange(2**32) for _ in range(FUZZ_CONNECTIONS)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seed in seeds:
        queue.put_nowait(seed)

    async def worker() -> None:
        while not queue.empty():
            await _fuzz_one(port, random.Random(queue.get_nowait()), corpus, stats)

    await asyncio.gather(*(worker() for _ in range(FUZZ_PARALLEL)))


async def slowloris(port: int, stats: collections.Counter[str]) -> list[float]:
    """Connections that trickle a CONNECT and never finish it; returns how long each lived."""
    connect = Connect("slow", keep_alive=0).encode(5)

    async def one() -> float:
        start = time.monotonic()  # before connecting: the broker's clock starts at its accept
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        read = asyncio.ensure_future(reader.read(1))
        try:
            for byte in connect[:-1]:  # never the last byte
                writer.write(bytes([byte]))
                done, _ = await asyncio.wait({read}, timeout=0.3)
                if done:
                    break
            await asyncio.wait_for(read, timeout(10))
            stats["slowloris closed by broker"] += 1
        except (ConnectionResetError, BrokenPipeError):
            stats["slowloris closed by broker"] += 1
        finally:
            read.cancel()
            writer.transport.abort()
        return time.monotonic() - start

    return list(await asyncio.gather(*(one() for _ in range(SLOWLORIS))))


async def flood(port: int, stats: collections.Counter[str]) -> None:
    """FLOOD_CONNECTIONS connections opened at once, each completing CONNECT, then dropped."""
    streams = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(FLOOD_CONNECTIONS)),
        return_exceptions=True,
    )
    opened = [s for s in streams if not isinstance(s, BaseException)]
    stats["flood connections opened"] += len(opened)
    for n, (_, writer) in enumerate(opened):
        writer.write(Connect(f"flood{n}", protocol_level=5 if n % 2 else 4).encode())

    async def connack(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            head = await asyncio.wait_for(reader.readexactly(4), timeout(10))
            if head[0] == 0x20 and head[3] == 0:
                stats["flood connack success"] += 1

    await asyncio.gather(*(connack(r) for r, _ in opened))
    for _, writer in opened:
        writer.transport.abort()


class WellBehaved:
    """A QoS 1 subscriber and a publisher that publishes every 10 ms until stopped."""

    def __init__(self, port: int) -> None:
        self.url = f"mqtt://127.0.0.1:{port}"
        self.sub = MqttClient("good-sub", options=ConnectOptions(keep_alive=5))
        self.pub = MqttClient("good-pub", options=ConnectOptions(keep_alive=5))
        self.sent: list[bytes] = []
        self.got: list[bytes] = []
        self.stop = asyncio.Event()

    async def __aenter__(self) -> WellBehaved:
        await self.sub.connect(self.url)
        await self.sub.subscribe("good/#", qos=1)
        await self.pub.connect(self.url)
        self._tasks = [asyncio.ensure_future(self._receive()), asyncio.ensure_future(self._send())]
        return self

    async def _receive(self) -> None:
        async for message in self.sub.messages():
            self.got.append(message.payload)

    async def _send(self) -> None:
        n = 0
        while not self.stop.is_set():
            payload = b"%d" % n
            assert await self.pub.publish("good/m", payload, qos=1) == ReasonCode.SUCCESS
            self.sent.append(payload)
            n += 1
            await asyncio.sleep(0.01)

    async def finish(self) -> None:
        self.stop.set()
        await self._tasks[1]
        deadline = time.monotonic() + timeout(10)
        while len(self.got) < len(self.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pub.disconnect()
        with contextlib.suppress(Exception):
            await self.sub.disconnect()


# --- the test --------------------------------------------------------------------------------


def test_broker_survives_hostile_input(tmp_path: Path) -> None:
    stats: collections.Counter[str] = collections.Counter()
    with broker_process(tmp_path) as (proc, port, log):

        async def main() -> tuple[list[float], int, int]:
            async with WellBehaved(port) as good:
                await asyncio.sleep(0.5)
                before, _ = rss(proc.pid)
                started = time.monotonic()
                lifetimes, _, _ = await asyncio.gather(
                    slowloris(port, stats), fuzz(port, stats), flood(port, stats)
                )
                stats["attack seconds"] = round(time.monotonic() - started)
                await good.finish()
                assert good.sub.is_connected and good.pub.is_connected
                assert good.got == good.sent, (len(good.got), len(good.sent))
                stats["good QoS 1 messages delivered"] = len(good.got)
            # the broker still serves a newcomer
            async with MqttClient("late", url=f"mqtt://127.0.0.1:{port}") as late:
                await late.subscribe("late/#", qos=1)
                await late.publish("late/x", b"ok", qos=1)
                async with asyncio.timeout(timeout(5)):
                    async for message in late.messages():
                        assert message.payload == b"ok"
                        break
            await asyncio.sleep(0.5)
            after, peak = rss(proc.pid)
            return lifetimes, after - before, peak - before

        lifetimes, growth, peak = asyncio.run(main())
        assert proc.poll() is None, "the broker died"
        text = log.read_text() + (tmp_path / "broker.out").read_text(errors="replace")

    broker_side = {
        "broker: protocol-error closes": text.count("disconnected due to protocol error"),
        "broker: CONNECT timeouts": text.count("did not CONNECT in time"),
        "broker: clients connected": text.count("New client connected"),
    }
    print()
    for key, value in sorted({**stats, **broker_side}.items()):
        print(f"  {key:45} {value}")
    print(f"  {'broker RSS growth (MiB)':45} {growth / 2**20:.1f} (peak +{peak / 2**20:.1f})")
    assert "Traceback" not in text and "Fatal error" not in text
    assert stats["packets sent"] >= 10_000
    assert stats["flood connections opened"] == FLOOD_CONNECTIONS
    assert stats["flood connack success"] == FLOOD_CONNECTIONS
    assert stats["slowloris closed by broker"] == SLOWLORIS
    # closed once connect_timeout passed (the sweep runs every 0.2 s), not before
    assert min(lifetimes) >= CONNECT_TIMEOUT - 0.05, lifetimes
    assert max(lifetimes) <= CONNECT_TIMEOUT + timeout(3.0), lifetimes
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert broker_side["broker: protocol-error closes"] > 100
