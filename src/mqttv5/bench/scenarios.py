"""The scenarios of ``mqttv5 bench`` and the coordinator that runs one in worker processes.

A run has four phases. The workers connect (and subscribe) and report ``ready``; the coordinator
reads the broker's CPU time, sets the start time and ``go``; the publishers send until the
duration or their count is reached, never more than ``window`` messages ahead of what the
subscribers received (a broker that only buffers must not look fast), and report ``done``; the
coordinator waits until every expected message arrived or the deliveries stop for a second,
reads the broker's CPU time again and sets ``finish``, and the subscribers report what they saw.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import platform
import queue
import secrets
import struct
import time
from array import array
from collections.abc import Iterable, Sequence
from ctypes import c_double, c_int64
from dataclasses import dataclass, field, replace
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Final, TypeAlias, TypeVar

from ..protocol.errors import MqttError
from ..protocol.packets import Connect, Publish
from .report import BrokerProbe, Progress, Result, WorkerResult, percentiles

__all__ = [
    "DEFAULTS",
    "KEEP_ALIVE",
    "SCENARIOS",
    "STAMP",
    "BenchError",
    "BenchOptions",
    "Message",
    "Plan",
    "PublisherSpec",
    "Shared",
    "SubscriberSpec",
    "WorkerSpec",
    "connect_packet",
    "make_plan",
    "publish_template",
    "run",
]

SCENARIOS: Final = ("fanin", "fanout", "pairs", "shared", "latency", "connect", "idle")

DEFAULTS: Final[dict[str, dict[str, float]]] = {
    "fanin": {"publishers": 4},
    "fanout": {"publishers": 1, "subscribers": 8},
    "pairs": {"pairs": 8},
    "shared": {"publishers": 2, "subscribers": 4},
    "latency": {"publishers": 1, "rate": 1000},
    "connect": {"clients": 8},
    "idle": {"clients": 1000},
}
"""The scenario's options and their defaults; an option a scenario does not list is refused."""

DRAIN_SECONDS: Final = 1.0  # no delivery this long after the publishers stopped: the rest is lost
READY_SECONDS: Final = 60.0
IDLE_SETTLE_SECONDS: Final = 1.0

_T = TypeVar("_T")


STAMP: Final = struct.Struct(">IQq")
"""The start of every payload: publisher index, sequence number, intended send time (ns)."""

KEEP_ALIVE: Final = 60  # seconds; every connection sends PINGREQ at half of it

Message: TypeAlias = tuple[str, int, object]
"""What a worker puts on :attr:`Shared.results`: (``ready`` | ``done`` | ``error``, worker
index, payload)."""


class BenchError(MqttError):
    """The benchmark cannot run (connection refused, subscription refused, broker gone)."""


@dataclass(frozen=True, slots=True)
class PublisherSpec:
    """One publishing connection."""

    index: int  # global: the first field of every payload, the slot in Shared.sent
    topic: str
    fan: int  # deliveries each message should produce


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """One subscribing connection."""

    index: int
    topic_filter: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process does. ``role`` is ``pub``, ``sub``, ``rate`` (fixed-rate
    publisher), ``connect`` (CONNECT/CONNACK/DISCONNECT cycles) or ``idle``."""

    index: int
    role: str
    host: str
    port: int
    version: int
    qos: int
    payload_bytes: int
    run_id: str
    publishers: tuple[PublisherSpec, ...] = ()
    subscribers: tuple[SubscriberSpec, ...] = ()
    n_publishers: int = 0  # width of a row of Shared.received
    n_sub_rows: int = 0  # rows of Shared.received (one per subscriber worker)
    sub_row: int = -1  # this worker's row
    duration: float = 5.0
    count: int = 0  # messages per publisher, cycles per connect loop; 0 = until duration
    window: int = 500  # end-to-end backlog per publisher, in messages
    rate: float = 0.0  # rate workers: messages per second over all their publishers
    clients: int = 0  # connect: concurrent loops; idle: connections
    record_latency: bool = False
    inflight: int = 20  # QoS 1/2 pipeline without a Receive Maximum (MQTT 3.1.1)


@dataclass
class Shared:
    """What the coordinator and the workers share: counters in shared memory (the publishers
    read ``received`` to stay within ``window`` messages of their subscribers), the ``go`` and
    ``finish`` events, and the queue of ``ready`` / ``done`` / ``error`` messages."""

    sent: ctypes.Array[c_int64]  # [publisher] PUBLISH packets written
    received: ctypes.Array[c_int64]  # [sub_row * n_publishers + publisher] deliveries
    start: ctypes.Array[c_double]  # [0]: the start time (time.monotonic()), set before go
    go: Event
    finish: Event
    results: Queue[Message]


def publish_template(topic: str, spec: WorkerSpec) -> tuple[bytes, int, int]:
    """The PUBLISH packet a publisher of ``spec`` sends, to be patched for each message:
    (bytes, packet identifier offset or -1, payload offset)."""
    qos = spec.qos
    packet = Publish(topic, bytes(spec.payload_bytes), qos, packet_id=1 if qos else None)
    data = packet.encode(spec.version)
    header = 2
    while data[header - 1] & 0x80:
        header += 1
    pid_offset = header + 2 + len(topic.encode()) if qos else -1
    return data, pid_offset, len(data) - spec.payload_bytes


def connect_packet(client_id: str, version: int) -> bytes:
    """CONNECT with a clean start and no session to keep."""
    return Connect(client_id=client_id, protocol_level=version, keep_alive=KEEP_ALIVE).encode()


@dataclass(frozen=True)
class BenchOptions:
    """Everything one run needs (the command line, parsed)."""

    scenario: str
    host: str = "localhost"
    port: int = 1883
    url: str = "mqtt://localhost:1883"
    qos: int = 0
    payload_bytes: int = 64
    duration: float = 5.0
    count: int = 0
    publishers: int | None = None
    subscribers: int | None = None
    pairs: int | None = None
    rate: float | None = None
    clients: int | None = None
    broker_pid: int | None = None
    version: int = 5
    window: int = 500
    inflight: int = 20
    workers: int | None = None
    progress: bool = True

    def setting(self, name: str) -> int:
        """An option of the scenario: the value given, or its default."""
        given = getattr(self, name)
        return int(given if given is not None else DEFAULTS[self.scenario][name])


@dataclass(frozen=True)
class Group:
    """Subscribers that together should receive each message of ``publishers`` exactly once (one
    subscriber, or the members of a shared subscription)."""

    members: tuple[int, ...]
    publishers: tuple[int, ...]


@dataclass
class Plan:
    """The worker processes of a run and how to check what they received."""

    specs: list[WorkerSpec]
    groups: list[Group] = field(default_factory=list)
    n_publishers: int = 0
    n_subscribers: int = 0
    clients: int = 0
    window: int = 0


def _split(items: Sequence[_T], parts: int) -> list[list[_T]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def _publish_subscribe(
    opts: BenchOptions,
    pubs: list[PublisherSpec],
    subs: list[SubscriberSpec],
    groups: list[Group],
    window: int,
) -> Plan:
    """Subscribers in half of the worker processes, publishers in the other half (the latency
    scenario: one fixed-rate publishing process, one subscribing)."""
    workers = opts.workers or max(2, min(8, os.cpu_count() or 2))
    latency = opts.scenario == "latency"
    pub_parts = 1 if latency else max(1, workers // 2)
    sub_parts = 1 if latency else max(1, workers - pub_parts)
    sub_chunks = _split(subs, sub_parts)
    pub_chunks = _split(pubs, pub_parts)
    base = WorkerSpec(
        0,
        "sub",
        opts.host,
        opts.port,
        opts.version,
        opts.qos,
        opts.payload_bytes,
        run_id="",
        n_publishers=len(pubs),
        n_sub_rows=len(sub_chunks),
        duration=opts.duration,
        count=opts.count,
        window=window,
        inflight=opts.inflight,
        record_latency=latency,
        rate=float(opts.setting("rate")) if latency else 0.0,
    )
    specs = [
        replace(base, index=row, subscribers=tuple(chunk), sub_row=row)
        for row, chunk in enumerate(sub_chunks)
    ]
    role = "rate" if latency else "pub"
    specs += [
        replace(base, index=len(sub_chunks) + k, role=role, publishers=tuple(chunk))
        for k, chunk in enumerate(pub_chunks)
    ]
    return Plan(specs, groups, len(pubs), len(subs), window=window)


def make_plan(opts: BenchOptions, run_id: str | None = None) -> Plan:
    """The workers and delivery groups of ``opts.scenario``."""
    run_id = run_id or secrets.token_hex(3)
    base = f"bench/{run_id}/{opts.scenario}"
    scenario, window = opts.scenario, opts.window
    if scenario in ("connect", "idle"):
        return _client_plan(opts, run_id)
    if scenario == "pairs":
        n = opts.setting("pairs")
        pubs = [PublisherSpec(i, f"{base}/{i}", 1) for i in range(n)]
        subs = [SubscriberSpec(i, f"{base}/{i}") for i in range(n)]
        groups = [Group((i,), (i,)) for i in range(n)]
    elif scenario == "fanout":
        n, s = opts.setting("publishers"), opts.setting("subscribers")
        pubs = [PublisherSpec(i, base, s) for i in range(n)]
        subs = [SubscriberSpec(i, base) for i in range(s)]
        groups = [Group((i,), tuple(range(n))) for i in range(s)]
    elif scenario == "shared":
        n, s = opts.setting("publishers"), opts.setting("subscribers")
        pubs = [PublisherSpec(i, f"{base}/{i}", 1) for i in range(n)]
        subs = [SubscriberSpec(i, f"$share/bench-{run_id}/{base}/+") for i in range(s)]
        groups = [Group(tuple(range(s)), tuple(range(n)))]
        window = max(1, window * s // n)
    else:  # fanin, latency: publishers on their own topics, one wildcard subscriber
        n = opts.setting("publishers")
        pubs = [PublisherSpec(i, f"{base}/{i}", 1) for i in range(n)]
        subs = [SubscriberSpec(0, f"{base}/+")]
        groups = [Group((0,), tuple(range(n)))]
        window = max(1, window // n)
    plan = _publish_subscribe(opts, pubs, subs, groups, window)
    plan.specs = [replace(spec, run_id=run_id) for spec in plan.specs]
    return plan


def _client_plan(opts: BenchOptions, run_id: str) -> Plan:
    clients = opts.setting("clients")
    cpus = os.cpu_count() or 2
    if opts.scenario == "connect":
        parts = opts.workers or max(1, min(cpus, 8))
    else:
        parts = opts.workers or max(1, min(cpus, math.ceil(clients / 2000)))
    parts = max(1, min(parts, clients))
    specs = [
        WorkerSpec(
            i,
            opts.scenario,
            opts.host,
            opts.port,
            opts.version,
            opts.qos,
            opts.payload_bytes,
            run_id,
            duration=opts.duration,
            count=opts.count,
            clients=clients // parts + (1 if i < clients % parts else 0),
        )
        for i in range(parts)
    ]
    return Plan(specs, clients=clients)


# --- the coordinator ------------------------------------------------------------------------------


def _context() -> ForkContext | SpawnContext:
    if platform.system() == "Linux":
        # fork starts workers in milliseconds; the coordinator has no threads or event loop
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _Mailbox:
    """The workers' messages, with a check that they are still alive."""

    def __init__(self, shared: Shared, procs: Sequence[BaseProcess]) -> None:
        self.queue = shared.results
        self.procs = procs
        self.ready: dict[int, dict[str, int]] = {}
        self.done: dict[int, WorkerResult] = {}

    def handle(self, message: Message) -> None:
        """File one message; a worker's error stops the run."""
        kind, index, payload = message
        if kind == "error":
            raise BenchError(f"worker {index}: {payload}")
        if kind == "ready" and isinstance(payload, dict):
            self.ready[index] = payload
        elif kind == "done" and isinstance(payload, WorkerResult):
            self.done[index] = payload

    def poll(self, timeout: float) -> None:
        """Take one message if one comes within ``timeout``; raise if a worker died silently."""
        try:
            self.handle(self.queue.get(timeout=timeout))
            return
        except queue.Empty:
            pass
        for i, proc in enumerate(self.procs):
            if proc.exitcode is not None and i not in self.done:
                try:  # a worker flushes its messages before it exits: they may be in the pipe
                    self.handle(self.queue.get(timeout=1.0))
                except queue.Empty:
                    raise BenchError(
                        f"worker {i} ended unexpectedly (exit code {proc.exitcode})"
                    ) from None
                return

    def wait(self, kind: str, indexes: Iterable[int], timeout: float) -> None:
        """Wait until every worker in ``indexes`` has sent a ``kind`` message."""
        box = self.ready if kind == "ready" else self.done
        wanted = set(indexes)
        limit = time.monotonic() + timeout
        while not wanted <= box.keys():
            if time.monotonic() > limit:
                raise BenchError(f"workers {sorted(wanted - box.keys())} did not answer in time")
            self.poll(0.05)

    def drain(self) -> None:
        """Take what is left in the queue (so the workers can exit), ignoring errors."""
        with contextlib.suppress(queue.Empty, BenchError, OSError, ValueError):
            while True:
                self.handle(self.queue.get_nowait())


class _Run:
    """One run of a plan."""

    def __init__(self, opts: BenchOptions, plan: Plan) -> None:
        self.opts, self.plan = opts, plan
        ctx = _context()
        rows = max(1, sum(1 for s in plan.specs if s.role == "sub"))
        width = max(1, plan.n_publishers)
        self.shared = Shared(
            sent=ctx.RawArray(c_int64, width),
            received=ctx.RawArray(c_int64, rows * width),
            start=ctx.RawArray(c_double, 1),
            go=ctx.Event(),
            finish=ctx.Event(),
            results=ctx.Queue(),
        )
        from .workers import worker_main  # the workers import this module's data model

        self.procs = [
            ctx.Process(target=worker_main, args=(spec, self.shared), daemon=True)
            for spec in plan.specs
        ]
        self.mail = _Mailbox(self.shared, self.procs)
        self.probe = BrokerProbe(opts.broker_pid) if opts.broker_pid else None
        shows = opts.progress and bool(plan.n_publishers)  # message scenarios only
        self.progress = Progress(opts.scenario) if shows else None
        self.start = self.end = 0.0
        self.cpu = 0.0
        self.rss = (0, 0)

    def totals(self) -> tuple[int, int]:
        return sum(self.shared.sent), sum(self.shared.received)

    def show(self) -> None:
        if self.progress is not None:
            self.progress.update(time.monotonic() - self.start, *self.totals())

    def execute(self) -> None:
        opts, plan, mail = self.opts, self.plan, self.mail
        rss_before = self.probe.rss_kib() if self.probe else 0
        for proc in self.procs:
            proc.start()
        mail.wait("ready", range(len(self.procs)), READY_SECONDS)
        cpu_before = self.probe.cpu_seconds() if self.probe else 0.0
        self.start = time.monotonic() + 0.05
        self.shared.start[0] = self.start
        self.shared.go.set()
        if opts.scenario == "idle":  # hold the connections, then measure
            hold = min(opts.duration, IDLE_SETTLE_SECONDS)
            time.sleep(max(0.05, self.start + hold - time.monotonic()))
            self.rss = (rss_before, self.probe.rss_kib() if self.probe else 0)
        else:
            self._wait_senders()
            if plan.n_subscribers:
                self._drain()
        self.end = time.monotonic()
        self.cpu = (self.probe.cpu_seconds() - cpu_before) if self.probe else 0.0
        self.shared.finish.set()
        mail.wait("done", range(len(self.procs)), 30.0)

    def _wait_senders(self) -> None:
        senders = [s.index for s in self.plan.specs if s.role in ("pub", "rate", "connect")]
        shown = 0.0
        while not set(senders) <= self.mail.done.keys():
            self.mail.poll(0.05)
            if time.monotonic() - shown > 0.25:
                shown = time.monotonic()
                self.show()

    def _drain(self) -> None:
        """Wait for the deliveries still on their way, or until they stop coming."""
        fan = {p.index: p.fan for s in self.plan.specs for p in s.publishers}
        expected = sum(sent * fan.get(i, 1) for i, sent in enumerate(self.shared.sent))
        last, moved = -1, time.monotonic()
        while True:
            received = sum(self.shared.received)
            now = time.monotonic()
            if received >= expected:
                return
            if received != last:
                last, moved = received, now
            elif now - moved > DRAIN_SECONDS:
                return
            time.sleep(0.005)

    def stop(self) -> None:
        """Let the workers end (they are daemons: a stuck one is terminated)."""
        self.shared.finish.set()
        if self.progress is not None:
            self.progress.clear()
        limit = time.monotonic() + 5.0
        for proc in self.procs:
            while proc.is_alive() and time.monotonic() < limit:
                self.mail.drain()
                proc.join(0.05)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)


def run(opts: BenchOptions) -> Result:
    """Run one scenario and return its result.

    Raises:
        BenchError: the run could not happen (connection refused, a worker failed).
    """
    if opts.payload_bytes < STAMP.size and opts.scenario not in ("connect", "idle"):
        raise BenchError(f"--payload-bytes must be at least {STAMP.size}")
    plan = make_plan(opts)
    bench = _Run(opts, plan)
    try:
        bench.execute()
    finally:
        bench.stop()
    return _result(opts, plan, bench)


# --- results --------------------------------------------------------------------------------------


def _result(opts: BenchOptions, plan: Plan, bench: _Run) -> Result:
    done = bench.mail.done
    results = [done[i] for i in sorted(done)]
    result = Result(
        scenario=opts.scenario,
        url=opts.url,
        protocol="5" if opts.version == 5 else "3.1.1",
        qos=opts.qos,
        payload_bytes=opts.payload_bytes,
        publishers=plan.n_publishers,
        subscribers=plan.n_subscribers,
        clients=plan.clients,
        workers=len(plan.specs),
        window=plan.window,
        rate=float(opts.setting("rate")) if opts.scenario == "latency" else None,
    )
    inflight = [r.get("inflight") for r in bench.mail.ready.values() if "inflight" in r]
    result.inflight = (
        min((i for i in inflight if i is not None), default=None) if opts.qos else None
    )
    for r in results:
        result.errors += r.errors
        result.rejected += r.rejected
        result.stalls += r.stalls
    elapsed = bench.end - bench.start
    busiest = max((r.cpu for r in results), default=0.0)
    result.bench_cpu_percent = 100 * busiest / elapsed if elapsed > 0 else 0.0
    if opts.scenario == "connect":
        _connect_result(result, results, bench)
    elif opts.scenario == "idle":
        _idle_result(result, results, bench)
    else:
        _message_result(result, plan, results, bench)
    if bench.probe is not None:
        result.broker_cpu_s = bench.cpu
        result.broker_cpu_percent = 100 * bench.cpu / elapsed if elapsed > 0 else 0.0
    return result


def _message_result(result: Result, plan: Plan, results: list[WorkerResult], bench: _Run) -> None:
    sent: dict[int, int] = {}
    got: dict[tuple[int, int], int] = {}
    seen: dict[tuple[int, int], bytes] = {}
    last_send = last_receive = 0.0
    latencies: array[int] = array("q")
    lags: array[int] = array("q")
    for r in results:
        sent.update(r.sent)
        got.update(r.got)
        seen.update(r.seen)
        result.unexpected += r.foreign
        last_send = max(last_send, r.last_send)
        last_receive = max(last_receive, r.last_receive)
        latencies.frombytes(r.latencies)
        lags.frombytes(r.send_lags)
    result.sent = sum(sent.values())
    result.received = sum(got.values())
    for group in plan.groups:
        for pub in group.publishers:
            _check_group(result, group, pub, sent.get(pub, 0), got, seen)
    start = bench.start
    result.seconds = max(last_receive, last_send) - start if result.received else 0.0
    if last_receive > start:
        result.throughput = result.received / (last_receive - start)
    if last_send > start:
        result.publish_rate = result.sent / (last_send - start)
    if latencies:
        result.latency_us = percentiles(latencies)
    if lags:
        result.send_lag_us = percentiles(lags)
    if bench.probe is not None and result.received:
        result.broker_cpu_us_per_msg = 1e6 * bench.cpu / result.received


def _check_group(
    result: Result,
    group: Group,
    pub: int,
    sent: int,
    got: dict[tuple[int, int], int],
    seen: dict[tuple[int, int], bytes],
) -> None:
    """Add one (group, publisher)'s expected, lost, duplicated and unexpected messages.

    Each member's map has a 1 at every sequence number it received: their union is the set of
    distinct messages the group received, and a message received more than once is a duplicate.
    """
    union = received = extra = 0
    for member in group.members:
        marks = seen.get((member, pub), b"")
        received += got.get((member, pub), 0)
        union |= int.from_bytes(marks[:sent], "little")
        extra += len(marks[sent:]) - marks[sent:].count(0)
    distinct = union.bit_count()
    result.expected += sent
    result.lost += sent - distinct
    result.unexpected += extra
    result.duplicated += max(0, received - distinct - extra)


def _connect_result(result: Result, results: list[WorkerResult], bench: _Run) -> None:
    result.received = sum(r.cycles for r in results)
    result.lost = sum(r.failures for r in results)
    result.sent = result.expected = result.received + result.lost
    elapsed = max((r.last_send for r in results), default=bench.start) - bench.start
    result.seconds = elapsed
    if elapsed > 0:
        result.throughput = result.received / elapsed
    if bench.probe is not None and result.received:
        result.broker_cpu_ms_per_1000_connects = 1e6 * bench.cpu / result.received


def _idle_result(result: Result, results: list[WorkerResult], bench: _Run) -> None:
    result.received = sum(r.connected for r in results)
    result.sent = result.expected = result.clients
    result.lost = result.sent - result.received
    result.seconds = bench.end - bench.start
    if bench.probe is not None:
        before, after = bench.rss
        result.broker_rss_before_kib, result.broker_rss_after_kib = before, after
        if result.received:
            result.broker_rss_bytes_per_connection = (after - before) * 1024 / result.received
