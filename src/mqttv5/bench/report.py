"""What ``mqttv5 bench`` prints: the result of one run as a table or as JSON, the live progress
line, and the broker readings taken from ``/proc`` (CPU time and resident memory)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from array import array
from dataclasses import dataclass, field
from typing import Final, TextIO

__all__ = ["BrokerProbe", "Progress", "Result", "WorkerResult", "format_table", "percentiles"]

_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class WorkerResult:
    """What a worker reports at the end (pickled through the queue)."""

    index: int
    role: str
    sent: dict[int, int] = field(default_factory=dict)  # publisher -> PUBLISH written
    acked: int = 0
    rejected: int = 0  # PUBACK/PUBREC with a reason code >= 0x80
    stalls: int = 0
    got: dict[tuple[int, int], int] = field(default_factory=dict)  # (sub, pub) -> deliveries
    seen: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (sub, pub) -> 0/1 by seq
    foreign: int = 0  # PUBLISH packets that are not ours
    latencies: bytes = b""  # array('q') of ns, receive time - intended send time
    send_lags: bytes = b""  # array('q') of ns, actual - intended send time (rate workers)
    last_send: float = 0.0
    last_receive: float = 0.0
    cycles: int = 0
    failures: int = 0
    connected: int = 0
    cpu: float = 0.0  # process CPU seconds over the measured interval
    errors: list[str] = field(default_factory=list)

    def fail(self, what: str, exc: object) -> None:
        """Count a failed connection attempt; keep the first few reasons."""
        self.failures += 1
        if len(self.errors) < 5:
            self.errors.append(f"{what}: {exc}")

    def add_publisher(
        self, index: int, sent: int, acked: int, rejected: int, error: str | None
    ) -> None:
        """Add one publisher's counts."""
        self.sent[index] = sent
        self.acked += acked
        self.rejected += rejected
        if error:
            self.errors.append(f"publisher {index}: {error}")


@dataclass
class Result:
    """One run. Counts of messages for the message scenarios; for ``connect``, ``sent`` is the
    CONNECT attempts and ``received`` the CONNACKs; for ``idle``, the connections attempted and
    subscribed."""

    scenario: str
    url: str
    protocol: str
    qos: int
    payload_bytes: int
    publishers: int = 0
    subscribers: int = 0
    clients: int = 0
    workers: int = 0
    window: int = 0
    inflight: int | None = None
    rate: float | None = None
    seconds: float = 0.0  # the measured interval
    sent: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0  # PUBLISH packets that are not ours, or sequence numbers never sent
    rejected: int = 0  # PUBACK/PUBREC with an error reason code
    stalls: int = 0  # times a publisher stopped waiting for a lost backlog
    throughput: float = 0.0  # delivered messages (or connects) per second
    publish_rate: float = 0.0
    latency_us: dict[str, float] | None = None
    send_lag_us: dict[str, float] | None = None  # how late the fixed-rate sends were written
    broker_cpu_s: float | None = None
    broker_cpu_percent: float | None = None
    broker_cpu_us_per_msg: float | None = None
    broker_cpu_ms_per_1000_connects: float | None = None
    broker_rss_before_kib: int | None = None
    broker_rss_after_kib: int | None = None
    broker_rss_bytes_per_connection: float | None = None
    bench_cpu_percent: float = 0.0  # the busiest worker process, % of one core
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything sent arrived exactly once and nothing failed."""
        return not (self.errors or self.lost or self.duplicated or self.unexpected)

    def to_json(self) -> dict[str, object]:
        """The JSON object of ``--json``."""
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        return data


def percentiles(latencies_ns: array[int]) -> dict[str, float]:
    """p50, p99, p99.9 and max in µs (nearest rank), and the sample count."""
    values = sorted(latencies_ns)
    if not values:
        return {}
    n = len(values)

    def rank(q: float) -> float:
        return values[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000

    return {
        "p50": rank(0.50),
        "p99": rank(0.99),
        "p99.9": rank(0.999),
        "max": values[-1] / 1000,
        "samples": float(n),
    }


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _message_rows(r: Result) -> list[tuple[str, str]]:
    rows = [
        ("sent", _n(r.sent)),
        ("received", f"{_n(r.received)} (expected {_n(r.expected)})"),
        (
            "lost",
            _n(r.lost) + ("  (QoS 0: allowed by the protocol)" if r.lost and not r.qos else ""),
        ),
        ("duplicated", _n(r.duplicated)),
    ]
    if r.unexpected:
        rows.append(("unexpected", _n(r.unexpected)))
    if r.rejected:
        rows.append(("rejected", f"{_n(r.rejected)} (PUBACK/PUBREC reason code >= 0x80)"))
    if r.stalls:
        rows.append(("stalls", f"{r.stalls} (publishers gave up waiting for lost messages)"))
    megabytes = r.throughput * r.payload_bytes / 1e6
    rows.append(
        ("throughput", f"{_n(r.throughput)} msg/s delivered ({megabytes:.1f} MB/s payload)")
    )
    rows.append(("publish rate", f"{_n(r.publish_rate)} msg/s"))
    if r.latency_us:
        lat = r.latency_us
        rows.append(
            (
                "latency",
                f"p50 {lat['p50']:.0f} µs  p99 {lat['p99']:.0f} µs  p99.9 {lat['p99.9']:.0f} µs  "
                f"max {lat['max']:.0f} µs  ({lat['samples']:.0f} samples, from intended send time)",
            )
        )
    if r.send_lag_us:
        lag = r.send_lag_us
        rows.append(
            (
                "send lag",
                f"p50 {lag['p50']:.0f} µs  p99 {lag['p99']:.0f} µs  p99.9 {lag['p99.9']:.0f} µs  "
                f"max {lag['max']:.0f} µs  (sends written late by this machine: part of latency)",
            )
        )
    if r.broker_cpu_us_per_msg is not None:
        rows.append(
            (
                "broker CPU",
                f"{r.broker_cpu_us_per_msg:.1f} µs/msg ({r.broker_cpu_percent:.0f}% of a core)",
            )
        )
    return rows


def _connect_rows(r: Result) -> list[tuple[str, str]]:
    rows = [
        ("connects", f"{_n(r.received)} ok, {_n(r.lost)} failed"),
        ("rate", f"{_n(r.throughput)} connects/s ({r.clients} concurrent)"),
    ]
    if r.broker_cpu_ms_per_1000_connects is not None:
        rows.append(
            (
                "broker CPU",
                f"{r.broker_cpu_ms_per_1000_connects:.0f} ms per 1,000 connects "
                f"({r.broker_cpu_percent:.0f}% of a core)",
            )
        )
    return rows


def _idle_rows(r: Result) -> list[tuple[str, str]]:
    rows = [("connections", f"{_n(r.received)} subscribed of {_n(r.sent)}")]
    if r.broker_rss_bytes_per_connection is not None:
        rows.append(
            (
                "broker RSS",
                f"{r.broker_rss_before_kib:,} KiB -> {r.broker_rss_after_kib:,} KiB: "
                f"{r.broker_rss_bytes_per_connection / 1024:.1f} KiB per connection",
            )
        )
    if r.broker_cpu_percent is not None:
        rows.append(("broker CPU", f"{r.broker_cpu_percent:.1f}% of a core while idle"))
    return rows


def _title(r: Result) -> str:
    shape = {
        "fanin": f"{r.publishers} publishers -> 1 subscriber (wildcard)",
        "fanout": f"{r.publishers} publisher(s) -> {r.subscribers} subscribers",
        "pairs": f"{r.publishers} publisher/subscriber pairs",
        "shared": f"{r.publishers} publishers -> $share group of {r.subscribers}",
        "latency": f"{r.publishers} publisher(s) at {_n(r.rate or 0)} msg/s -> 1 subscriber",
        "connect": f"{r.clients} concurrent CONNECT/CONNACK/DISCONNECT loops",
        "idle": f"{r.clients} idle connections, one subscription each",
    }[r.scenario]
    extra = "" if r.scenario in ("connect", "idle") else f", {r.payload_bytes}-byte payloads"
    return (
        f"mqttv5 bench {r.scenario}: {shape}; QoS {r.qos}, MQTT {r.protocol}{extra}, "
        f"{r.url}, {r.seconds:.1f} s"
    )


def format_table(r: Result) -> str:
    """The human-readable summary of a run."""
    if r.scenario == "connect":
        rows = _connect_rows(r)
    elif r.scenario == "idle":
        rows = _idle_rows(r)
    else:
        rows = _message_rows(r)
    rows.append(("bench CPU", f"{r.bench_cpu_percent:.0f}% of a core (busiest worker)"))
    if r.bench_cpu_percent > 90:
        rows.append(("warning", "a worker was saturated: the load generator may be the limit"))
    rows += [("error", e) for e in r.errors[:10]]
    rows.append(("result", "OK" if r.ok else "FAILED: " + _verdict(r)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([_title(r), *(f"  {k:<{width}}  {v}" for k, v in rows)])


def _verdict(r: Result) -> str:
    parts = []
    if r.lost:
        parts.append(f"{r.lost:,} lost")
    if r.duplicated:
        parts.append(f"{r.duplicated:,} duplicated")
    if r.unexpected:
        parts.append(f"{r.unexpected:,} unexpected")
    if r.errors:
        parts.append(f"{len(r.errors)} error(s)")
    return ", ".join(parts)


class BrokerProbe:
    """CPU time and resident memory of the broker process, from ``/proc/PID``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of proc(5)

    def rss_kib(self) -> int:
        """VmRSS in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise OSError(f"no VmRSS in /proc/{self.pid}/status")


class Progress:
    """A one-line live display on a terminal (stderr), rewritten in place."""

    def __init__(self, scenario: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.scenario = scenario
        self.last = (0.0, 0)
        self.shown = False

    def update(self, elapsed: float, sent: int, received: int) -> None:
        """Show counts and the delivered rate since the previous update."""
        if not self.enabled:
            return
        then, before = self.last
        rate = (received - before) / (elapsed - then) if elapsed > then else 0.0
        self.last = (elapsed, received)
        self.stream.write(
            f"\r{self.scenario} {elapsed:5.1f} s  sent {sent:>12,}  received {received:>12,}  "
            f"{rate:>10,.0f}/s "
        )
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the line before the summary is printed."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
