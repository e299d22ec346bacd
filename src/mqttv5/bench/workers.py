"""The worker processes of ``mqttv5 bench``: raw MQTT connections that cost the load generator
as little as possible, so that the broker is what gets measured. Publishers send pre-encoded
PUBLISH packets (a template patched with publisher index, sequence number and intended send
time), many per write; subscribers walk fixed headers and read only those fields of a payload.
Only CONNACK, SUBACK and DISCONNECT go through the protocol core's generic decoder. Workers talk
to the coordinator through :class:`~mqttv5.bench.scenarios.Shared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import resource
import select
import signal
import socket
import sys
import time
from array import array
from collections.abc import Callable, Coroutine
from multiprocessing.synchronize import Event
from typing import Final, TypeVar, cast

from ..protocol.errors import MqttError
from ..protocol.packets import (
    Connack,
    Disconnect,
    Packet,
    Suback,
    Subscribe,
    Subscription,
    decode_packet,
)
from .report import WorkerResult
from .scenarios import (
    KEEP_ALIVE,
    STAMP,
    BenchError,
    PublisherSpec,
    Shared,
    SubscriberSpec,
    WorkerSpec,
    connect_packet,
    publish_template,
)

__all__ = ["worker_main"]

PINGREQ: Final = b"\xc0\x00"
STALL_SECONDS: Final = 0.5  # no delivery progress this long: the backlog is written off as lost
HANDSHAKE_SECONDS: Final = 10.0
MAX_SEQ: Final = 1 << 28  # a larger sequence number is not one of ours (bounds the seen maps)
SPIN_NS: Final = 60_000  # the rate publisher spins this close to a send time, sleeps before

_P = TypeVar("_P", bound=Packet)
_C = TypeVar("_C", bound="_Conn")


def _remaining_length(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """The Remaining Length at ``pos`` (after the first byte): (value, fixed header length), or
    (0, 0) when incomplete."""
    value = 0
    for i in range(4):
        if pos + i >= len(buf):
            return 0, 0
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, i + 2
    raise BenchError("malformed remaining length from the broker")


def _packets(buf: bytes | bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """The whole packets at the start of ``buf`` as (first byte, body start, body end), and the
    bytes they take."""
    found: list[tuple[int, int, int]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        remaining, header = _remaining_length(buf, pos + 1)
        if not header or end - pos < header + remaining:
            break
        found.append((buf[pos], pos + header, pos + header + remaining))
        pos += header + remaining
    return found, pos


# --- asyncio connections --------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One connection: framing, handshake packets decoded generically, write flow control."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.v5 = version == 5
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.control: asyncio.Queue[Packet] = asyncio.Queue()
        self.closing = False
        self.error: str | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=1 << 18)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing and self.error is None:
            self.error = f"connection closed by the broker ({exc or 'EOF'})"
        self.control.put_nowait(Disconnect())  # wakes a handshake waiting for its answer
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._writable is not None:
            await self._writable

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if not buf:  # the common case: parse the chunk itself, keep only a partial packet
            pos = self.parse(data)
            if pos < len(data):
                buf += data[pos:]
            return
        buf += data
        pos = self.parse(buf)
        if pos:
            del buf[:pos]

    def parse(self, buf: bytes | bytearray) -> int:
        """Handle the whole packets in ``buf``; return the bytes consumed."""
        found, pos = _packets(buf)
        for first, start, end in found:
            self.other(first, bytes(buf[start:end]))
        return pos

    def other(self, first: int, body: bytes) -> None:
        """A packet the hot path does not handle: PINGRESP, DISCONNECT, handshake packets."""
        kind = first >> 4
        if kind == 13:  # PINGRESP
            return
        try:
            packet = decode_packet(first, body, self.version)
        except MqttError as exc:
            self.error = f"undecodable packet from the broker: {exc}"
            return
        if isinstance(packet, Disconnect):
            self.error = f"DISCONNECT from the broker: {packet.reason_code.name}"
        self.control.put_nowait(packet)

    async def expect(self, kind: type[_P]) -> _P:
        """The next handshake packet, which must be a ``kind``."""
        try:
            async with asyncio.timeout(HANDSHAKE_SECONDS):
                packet = await self.control.get()
        except TimeoutError:
            reason = self.error or f"no {kind.__name__} within {HANDSHAKE_SECONDS:g} s"
            raise BenchError(reason) from None
        if not isinstance(packet, kind):
            got = self.error if isinstance(packet, Disconnect) else type(packet).__name__
            raise BenchError(f"expected {kind.__name__}, got {got}")
        return packet


class _PubConn(_Conn):
    """A publisher: reads PUBACK / PUBREC / PUBCOMP and recycles packet identifiers."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.inflight = 0
        self.free: list[int] = []
        self.slot = asyncio.Event()
        self.acked = 0
        self.rejected = 0

    def set_inflight(self, inflight: int) -> None:
        """Allow ``inflight`` unacknowledged QoS 1/2 PUBLISH packets (the Receive Maximum)."""
        self.inflight = inflight
        self.free = list(range(inflight, 0, -1))

    def parse(self, buf: bytes | bytearray) -> int:
        found, pos = _packets(buf)
        free = self.free
        for first, start, end in found:
            if first not in (0x40, 0x50, 0x70) or end - start < 2:
                self.other(first, bytes(buf[start:end]))
                continue
            hi, lo = buf[start], buf[start + 1]
            failed = end - start > 2 and buf[start + 2] >= 0x80
            if first == 0x50 and not failed:  # PUBREC: release it
                self.write(bytes((0x62, 2, hi, lo)))
                continue
            self.rejected += failed
            self.acked += 1
            free.append((hi << 8) | lo)
        if free:
            self.slot.set()
        return pos


class _SubConn(_Conn):
    """A subscriber: counts PUBLISH packets by publisher and marks their sequence numbers."""

    def __init__(self, version: int, spec: SubscriberSpec, worker: _SubWorker) -> None:
        super().__init__(version)
        self.spec = spec
        self.worker = worker
        n = worker.n_publishers
        self.got = [0] * n
        self.seen = [bytearray() for _ in range(n)]
        self.foreign = 0
        self.latencies: array[int] | None = array("q") if worker.record_latency else None

    def parse(self, buf: bytes | bytearray) -> int:  # the hot loop, in one piece on purpose
        pos, end = 0, len(buf)
        unpack = STAMP.unpack_from
        worker = self.worker
        totals, got, seen, npub = worker.totals, self.got, self.seen, worker.n_publishers
        v5 = self.v5
        acks = bytearray()
        now = time.monotonic_ns()
        latencies = self.latencies
        count = 0
        while end - pos >= 2:
            first = buf[pos]
            remaining = buf[pos + 1]
            header = 2
            if remaining >= 0x80:
                remaining, header = _remaining_length(buf, pos + 1)
                if not header:
                    break
            if end - pos < header + remaining:
                break
            p = pos + header
            pos = p + remaining
            if first >> 4 != 3:
                if first == 0x62:  # PUBREL: complete the QoS 2 exchange
                    acks += bytes((0x70, 2, buf[p], buf[p + 1]))
                else:
                    self.other(first, bytes(buf[p:pos]))
                continue
            p += 2 + ((buf[p] << 8) | buf[p + 1])
            qos = (first >> 1) & 3
            if qos:
                acks += bytes((0x40 if qos == 1 else 0x50, 2, buf[p], buf[p + 1]))
                p += 2
            if v5:
                plen = buf[p]
                if plen < 0x80:
                    p += 1 + plen
                else:
                    plen, skip = _remaining_length(buf, p)
                    p += skip - 1 + plen
            if pos - p < STAMP.size:
                self.foreign += 1
                continue
            pub, seq, stamp = unpack(buf, p)
            if pub >= npub or seq >= MAX_SEQ:
                self.foreign += 1
                continue
            count += 1
            totals[pub] += 1
            got[pub] += 1
            marks = seen[pub]
            if seq >= len(marks):
                marks.extend(bytes(max(seq + 1, 2 * len(marks)) - len(marks)))
            marks[seq] = 1
            if latencies is not None:
                latencies.append(now - stamp)
        if acks:
            self.write(bytes(acks))
        if count:
            worker.publish_counts(now)
        return pos


class _SubWorker:
    """State the subscribers of one worker share: counters mirrored into shared memory."""

    def __init__(self, spec: WorkerSpec, shared: Shared) -> None:
        self.n_publishers = spec.n_publishers
        self.record_latency = spec.record_latency
        self.totals = [0] * spec.n_publishers
        self.base = spec.sub_row * spec.n_publishers
        self.shared = shared
        self.last_receive_ns = 0

    def publish_counts(self, now_ns: int) -> None:
        received, base = self.shared.received, self.base
        for i, value in enumerate(self.totals):
            received[base + i] = value
        self.last_receive_ns = now_ns


# --- worker bodies --------------------------------------------------------------------------------


async def _open(spec: WorkerSpec, client_id: str, factory: Callable[[], _C]) -> tuple[_C, Connack]:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(factory, spec.host, spec.port)
    except OSError as exc:
        raise BenchError(f"cannot connect to {spec.host}:{spec.port}: {exc}") from exc
    conn.write(connect_packet(client_id, spec.version))
    connack = await conn.expect(Connack)
    if connack.reason_code >= 0x80:
        raise BenchError(f"CONNACK {connack.reason_code.name} for {client_id}")
    return conn, connack


async def _subscribe(conn: _Conn, topic_filter: str, qos: int) -> None:
    conn.write(Subscribe(1, [Subscription(topic_filter, qos)]).encode(conn.version))
    suback = await conn.expect(Suback)
    if suback.reason_codes[0] >= 0x80:
        raise BenchError(f"SUBSCRIBE {topic_filter!r} refused: {suback.reason_codes[0].name}")


async def _poll(event: Event, interval: float = 0.005) -> None:
    """Wait for a cross-process event (it cannot be awaited: poll it)."""
    while not event.is_set():  # noqa: ASYNC110 - a multiprocessing Event, not an asyncio one
        await asyncio.sleep(interval)


async def _go(shared: Shared) -> float:
    """Wait for the coordinator's go; return the start time (slept until)."""
    while not shared.go.is_set():
        if shared.finish.is_set():
            raise BenchError("stopped before the start")
        await asyncio.sleep(0.001)
    start = shared.start[0]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    return start


async def _keep_alive(conns: list[_C]) -> None:
    while True:
        await asyncio.sleep(KEEP_ALIVE / 2)
        for conn in conns:
            conn.write(PINGREQ)


class _Publishing:
    """One publisher's send loop (``run``) with its end-to-end backlog bound."""

    def __init__(self, conn: _PubConn, pub: PublisherSpec, spec: WorkerSpec, shared: Shared):
        self.conn, self.pub, self.spec, self.shared = conn, pub, spec, shared
        self.slots = [r * spec.n_publishers + pub.index for r in range(spec.n_sub_rows)]
        self.sent = 0
        self.stalls = 0
        self.written_off = 0
        self.last_send = 0.0

    def delivered(self) -> int:
        received = self.shared.received
        return sum(received[i] for i in self.slots)

    async def run(self, start: float) -> None:
        conn, spec, fan = self.conn, self.spec, self.pub.fan
        template, pid_at, payload_at = publish_template(self.pub.topic, spec)
        size = len(template)
        batch_max = max(1, min(spec.window, 64))
        batch = bytearray(template * batch_max)
        view = memoryview(batch)
        pack, index, qos, free = STAMP.pack_into, self.pub.index, spec.qos, conn.free
        deadline = start + spec.duration
        limit = spec.count or sys.maxsize
        window = spec.window * fan
        progress_at, last_delivered = start, 0
        sent = 0
        checked = start
        while sent < limit and conn.error is None:
            now = time.monotonic()
            if now >= deadline:
                break
            if now - checked > 0.1:  # stopped early (Ctrl+C, a failed worker)?
                checked = now
                if self.shared.finish.is_set():
                    break
            delivered = self.delivered()
            if delivered != last_delivered:
                progress_at, last_delivered = now, delivered
            outstanding = sent * fan - delivered - self.written_off
            room = (window - outstanding) // fan
            if room <= 0:
                if now - progress_at > STALL_SECONDS:  # lost (QoS 0 may be): stop waiting
                    self.written_off += outstanding
                    self.stalls += 1
                    progress_at = now
                else:
                    await asyncio.sleep(0.001)
                continue
            if qos:
                if not free:
                    conn.slot.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await conn.slot.wait()
                    continue
                room = min(room, len(free))
            n = min(room, batch_max, limit - sent)
            for i in range(n):
                at = i * size
                pack(batch, at + payload_at, index, sent + i, 0)
                if qos:
                    pid = free.pop()
                    batch[at + pid_at] = pid >> 8
                    batch[at + pid_at + 1] = pid & 0xFF
            conn.write(bytes(view[: n * size]))
            sent += n
            self.shared.sent[index] = sent
            self.last_send = time.monotonic()
            await conn.drain()
            await asyncio.sleep(0)
        self.sent = sent
        await self._wait_acks()

    async def _wait_acks(self) -> None:
        conn = self.conn
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while len(conn.free) < conn.inflight and conn.error is None:
                    conn.slot.clear()
                    await conn.slot.wait()


async def _pub_worker(spec: WorkerSpec, shared: Shared) -> None:
    conns: list[_PubConn] = []
    for pub in spec.publishers:
        client_id = f"bench-{spec.run_id}-p{pub.index}"
        conn, connack = await _open(spec, client_id, functools.partial(_PubConn, spec.version))
        receive_maximum = connack.properties.receive_maximum if spec.version == 5 else None
        conn.set_inflight(receive_maximum or spec.inflight)
        conns.append(conn)
    shared.results.put(("ready", spec.index, {"inflight": min(c.inflight for c in conns)}))
    pinger = asyncio.create_task(_keep_alive(conns))
    start = await _go(shared)
    cpu = time.process_time()
    runs = [_Publishing(c, p, spec, shared) for c, p in zip(conns, spec.publishers, strict=True)]
    await asyncio.gather(*(r.run(start) for r in runs))
    result = WorkerResult(spec.index, spec.role, cpu=time.process_time() - cpu)
    for run in runs:
        c = run.conn
        result.add_publisher(run.pub.index, run.sent, c.acked, c.rejected, c.error)
        result.stalls += run.stalls
        result.last_send = max(result.last_send, run.last_send)
    shared.results.put(("done", spec.index, result))
    await _poll(shared.finish)
    pinger.cancel()
    await _close(conns, spec.version)


async def _close(conns: list[_C], version: int) -> None:
    for conn in conns:
        conn.write(Disconnect().encode(version))
        conn.close()
    await asyncio.sleep(0)


async def _sub_worker(spec: WorkerSpec, shared: Shared) -> None:
    worker = _SubWorker(spec, shared)
    conns: list[_SubConn] = []
    for sub in spec.subscribers:
        client_id = f"bench-{spec.run_id}-s{sub.index}"
        factory = functools.partial(_SubConn, spec.version, sub, worker)
        conn, _ = await _open(spec, client_id, factory)
        await _subscribe(conn, sub.topic_filter, spec.qos)
        conns.append(conn)
    shared.results.put(("ready", spec.index, {}))
    pinger = asyncio.create_task(_keep_alive(conns))
    await _go(shared)
    cpu = time.process_time()
    await _poll(shared.finish)
    result = WorkerResult(spec.index, spec.role, cpu=time.process_time() - cpu)
    result.last_receive = worker.last_receive_ns / 1e9
    latencies: array[int] = array("q")
    for conn in conns:
        for pub, count in enumerate(conn.got):
            if count:
                result.got[conn.spec.index, pub] = count
                result.seen[conn.spec.index, pub] = bytes(conn.seen[pub])
        result.foreign += conn.foreign
        if conn.latencies is not None:
            latencies.extend(conn.latencies)
        if conn.error:
            result.errors.append(f"subscriber {conn.spec.index}: {conn.error}")
    result.latencies = latencies.tobytes()
    shared.results.put(("done", spec.index, result))
    pinger.cancel()
    await _close(conns, spec.version)


async def _connect_worker(spec: WorkerSpec, shared: Shared) -> None:
    result = WorkerResult(spec.index, spec.role)
    await _cycle(spec, f"bench-{spec.run_id}-c{spec.index}-probe")  # fail fast
    shared.results.put(("ready", spec.index, {}))
    start = await _go(shared)
    cpu = time.process_time()
    deadline = start + spec.duration
    limit = spec.count or sys.maxsize

    async def loop(k: int) -> None:
        n = 0
        while n < limit and time.monotonic() < deadline:
            try:
                await _cycle(spec, f"bench-{spec.run_id}-c{spec.index}-{k}-{n}")
                result.cycles += 1
            except (OSError, MqttError, TimeoutError) as exc:
                result.fail("connect", exc)
                await asyncio.sleep(0.01)
            n += 1

    await asyncio.gather(*(loop(k) for k in range(spec.clients)))
    result.cpu = time.process_time() - cpu
    result.last_send = time.monotonic()
    shared.results.put(("done", spec.index, result))


async def _cycle(spec: WorkerSpec, client_id: str) -> None:
    """One CONNECT, CONNACK, DISCONNECT; the client closes ([MQTT-3.14.4-2] the sender of
    DISCONNECT closes the network connection)."""
    conn, _ = await _open(spec, client_id, lambda: _Conn(spec.version))
    conn.write(Disconnect().encode(spec.version))
    conn.close()


async def _idle_worker(spec: WorkerSpec, shared: Shared) -> None:
    result = WorkerResult(spec.index, spec.role)
    gate = asyncio.Semaphore(32)  # connections opened at once: stays below the listen backlog

    async def one(k: int) -> _Conn | None:
        async with gate:
            try:
                client_id = f"bench-{spec.run_id}-i{spec.index}-{k}"
                conn, _ = await _open(spec, client_id, lambda: _Conn(spec.version))
                await _subscribe(conn, f"bench/{spec.run_id}/idle/{spec.index}/{k}", spec.qos)
            except (OSError, MqttError, TimeoutError) as exc:
                result.fail("idle connection", exc)
                return None
            return conn

    opened = await asyncio.gather(*(one(k) for k in range(spec.clients)))
    conns = [c for c in opened if c is not None]
    result.connected = len(conns)
    shared.results.put(("ready", spec.index, {"connected": len(conns)}))
    pinger = asyncio.create_task(_keep_alive(conns))
    await _go(shared)
    await _poll(shared.finish, 0.02)
    result.errors += [f"idle connection: {c.error}" for c in conns if c.error][:5]
    shared.results.put(("done", spec.index, result))
    pinger.cancel()
    await _close(conns, spec.version)


# --- the fixed-rate publisher (latency) -----------------------------------------------------------


class _RateConn:
    """A blocking publisher socket; acknowledgements are read between sends."""

    def __init__(self, spec: WorkerSpec, pub: PublisherSpec) -> None:
        try:
            self.sock = socket.create_connection((spec.host, spec.port), HANDSHAKE_SECONDS)
        except OSError as exc:
            raise BenchError(f"cannot connect to {spec.host}:{spec.port}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.version = spec.version
        self.buf = bytearray()
        self.free: list[int] = []
        self.acked = self.rejected = 0
        self.error: str | None = None
        self.sock.sendall(connect_packet(f"bench-{spec.run_id}-p{pub.index}", spec.version))
        connack = self._read_connack()
        if connack.reason_code >= 0x80:
            raise BenchError(f"CONNACK {connack.reason_code.name}")
        inflight = spec.inflight
        if spec.version == 5:
            inflight = connack.properties.receive_maximum or 65535
        self.free = list(range(inflight, 0, -1))
        self.inflight = inflight
        self.sock.setblocking(False)

    def _read_connack(self) -> Connack:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("connection closed before CONNACK")
            self.buf += data
            found, _ = _packets(self.buf)
            if found:
                first, start, end = found[0]
                packet = decode_packet(first, bytes(self.buf[start:end]), self.version)
                if not isinstance(packet, Connack):
                    raise BenchError(f"expected CONNACK, got {type(packet).__name__}")
                del self.buf[:end]
                return packet

    def read(self) -> None:
        """Read what is there; handle acknowledgements."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.error = "connection closed by the broker"
            return
        buf = self.buf
        buf += data
        found, pos = _packets(buf)
        for first, start, end in found:
            failed = end - start > 2 and buf[start + 2] >= 0x80
            if first == 0x50 and not failed:
                self.sock.sendall(bytes((0x62, 2, buf[start], buf[start + 1])))
            elif first in (0x40, 0x50, 0x70):
                self.acked += 1
                self.rejected += failed
                self.free.append((buf[start] << 8) | buf[start + 1])
            elif first == 0xE0:
                self.error = "DISCONNECT from the broker"
        del buf[:pos]


def _set_timer_slack() -> None:
    """Make sleeps precise to a few microseconds (Linux: 50 µs by default)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns


def _rate_worker(spec: WorkerSpec, shared: Shared) -> None:
    conns = [_RateConn(spec, pub) for pub in spec.publishers]
    shared.results.put(("ready", spec.index, {"inflight": min(c.inflight for c in conns)}))
    while not shared.go.wait(0.1):
        if shared.finish.is_set():
            raise BenchError("stopped before the start")
    _set_timer_slack()
    start = shared.start[0]
    cpu = time.process_time()
    result = WorkerResult(spec.index, spec.role)
    lags: array[int] = array("q")
    sent = _send_at_rate(conns, spec, shared, start, lags)
    result.send_lags = lags.tobytes()
    result.cpu = time.process_time() - cpu
    result.last_send = time.monotonic()
    for conn, pub in zip(conns, spec.publishers, strict=True):
        result.add_publisher(pub.index, sent[pub.index], conn.acked, conn.rejected, conn.error)
    shared.results.put(("done", spec.index, result))
    shared.finish.wait()
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.sock.sendall(Disconnect().encode(spec.version))
        conn.sock.close()


def _send_at_rate(
    conns: list[_RateConn], spec: WorkerSpec, shared: Shared, start: float, lags: array[int]
) -> dict[int, int]:
    """Send message i at start + i / rate, stamped with that *intended* time, so a stall on our
    side or the broker's counts in the latency (no coordinated omission). ``lags`` gets how late
    each one was written: the floor this machine puts under the latencies."""
    templates = [publish_template(pub.topic, spec) for pub in spec.publishers]
    socks = [c.sock for c in conns]
    npub = len(conns)
    interval = 1e9 / spec.rate
    start_ns = int(start * 1e9)
    deadline_ns = start_ns + int(min(spec.duration, 1e7) * 1e9)
    total = spec.count * npub if spec.count else sys.maxsize
    sent = dict.fromkeys((p.index for p in spec.publishers), 0)
    ping_at = time.monotonic() + KEEP_ALIVE / 2
    i = 0
    while i < total:
        due = start_ns + int(i * interval)
        if due >= deadline_ns or any(c.error for c in conns) or shared.finish.is_set():
            break
        k = i % npub
        conn, pub = conns[k], spec.publishers[k]
        _wait_until(due, conns, socks, need=conn if spec.qos else None)
        if spec.qos and not conn.free:
            break  # the connection failed
        data, pid_at, payload_at = templates[k]
        packet = bytearray(data)
        STAMP.pack_into(packet, payload_at, pub.index, i // npub, due)
        if spec.qos:
            pid = conn.free.pop()
            packet[pid_at : pid_at + 2] = pid.to_bytes(2, "big")
        lags.append(time.monotonic_ns() - due)
        _send_all(conn, packet)
        sent[pub.index] += 1
        shared.sent[pub.index] = sent[pub.index]
        i += 1
        if time.monotonic() > ping_at:
            ping_at += KEEP_ALIVE / 2
            for c in conns:
                _send_all(c, PINGREQ)
    limit = time.monotonic() + 5.0
    while spec.qos and any(len(c.free) < c.inflight for c in conns) and time.monotonic() < limit:
        _wait_until(time.monotonic_ns() + 10_000_000, conns, socks, need=None)
    return sent


def _send_all(conn: _RateConn, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view and conn.error is None:
        try:
            view = view[conn.sock.send(view) :]
        except BlockingIOError:
            select.select([], [conn.sock], [], 1.0)
        except OSError as exc:
            conn.error = str(exc)


def _wait_until(
    due_ns: int, conns: list[_RateConn], socks: list[socket.socket], need: _RateConn | None
) -> None:
    """Read acknowledgements until ``due_ns`` and until ``need`` has a free packet identifier:
    in select() until close to the time, then spinning (a sleep wakes up tens of µs late)."""
    while True:
        left = due_ns - time.monotonic_ns()
        blocked = need is not None and not need.free and need.error is None
        if left <= SPIN_NS and not blocked:
            break
        timeout = (left - SPIN_NS) / 1e9 if left > SPIN_NS else 1.0
        readable, _, _ = select.select(socks, [], [], timeout)
        for conn in conns:
            if conn.sock in readable:
                conn.read()
    while time.monotonic_ns() < due_ns:
        pass


# --- entry point ----------------------------------------------------------------------------------

_BODIES: Final[dict[str, Callable[[WorkerSpec, Shared], Coroutine[object, object, None]]]] = {
    "pub": _pub_worker,
    "sub": _sub_worker,
    "connect": _connect_worker,
    "idle": _idle_worker,
}


def _raise_fd_limit() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def worker_main(spec: WorkerSpec, shared: Shared) -> None:
    """Body of a worker process: run ``spec`` and report through ``shared``; an exception is
    reported as an ``error`` message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl+C
    _raise_fd_limit()
    try:
        if spec.role == "rate":
            _rate_worker(spec, shared)
        else:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(_BODIES[spec.role](spec, shared))
    except BaseException as exc:  # reported; the coordinator stops the run
        message = str(exc) if isinstance(exc, MqttError | OSError) else repr(exc)
        shared.results.put(("error", spec.index, message or type(exc).__name__))
    finally:
        shared.results.close()
        shared.results.join_thread()  # flush what was put before the process ends
