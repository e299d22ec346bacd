"""The metrics listener: Prometheus ``/metrics`` and ``/health`` over minimal HTTP/1.1.

Served from the broker's event loop (no thread, no lock): a scrape reads the plain integer
counters of :class:`~mqttv5.broker.metrics.Counters` and a few sizes (sessions, subscriptions,
retained messages) as they are at that moment, and renders the Prometheus text exposition
format (version 0.0.4). The HTTP side is deliberately small: ``GET`` and ``HEAD`` only, one
request per connection (``Connection: close``), a request head of at most 8 KiB read within
5 seconds, at most 32 connections at once. See ``docs/metrics.md`` for the metric list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from mqttv5 import __version__

from .config import BrokerConfig, MetricsSettings

if TYPE_CHECKING:
    from .broker import MqttBroker

__all__ = ["CONTENT_TYPE", "MetricsServer", "reload_metrics", "render_metrics"]

log = logging.getLogger("mqttv5.broker")

#: The Content-Type of ``/metrics``: Prometheus text format 0.0.4.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_MAX_REQUEST: Final = 8192  # bytes of request line and headers
_REQUEST_TIMEOUT: Final = 5.0  # seconds to receive them
_MAX_CONNECTIONS: Final = 32
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}

Labels = Mapping[str, str]
Samples = float | Iterable[tuple[Labels, float]]


# --- the exposition format ------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    """Accumulates metric families in the text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Samples) -> None:
        """One family: ``# HELP``, ``# TYPE`` and its samples (a bare number: one sample
        without labels)."""
        lines = self.lines
        lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}")
        lines.append(f"# TYPE {name} {kind}")
        if isinstance(samples, int | float):
            lines.append(f"{name} {_number(samples)}")
            return
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {_number(value)}")

    def gauge(self, name: str, help_text: str, samples: Samples) -> None:
        self.add(name, "gauge", help_text, samples)

    def counter(self, name: str, help_text: str, samples: Samples) -> None:
        self.add(name, "counter", help_text, samples)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(broker: MqttBroker) -> str:
    """Every metric of ``broker`` in the Prometheus text format (read, not computed: the
    counters are plain ints kept by the connection handlers)."""
    out = _Exposition()
    _broker_metrics(out, broker)
    _traffic_metrics(out, broker)
    _bridge_metrics(out, broker)
    _storage_metrics(out, broker)
    _process_metrics(out)
    return out.text()


def _broker_metrics(out: _Exposition, broker: MqttBroker) -> None:
    c = broker.counters
    out.gauge("mqttv5_info", "The broker's version, as a label.", [({"version": __version__}, 1)])
    out.gauge("mqttv5_start_time_seconds", "Unix time the broker started.", broker.started_at)
    out.gauge(
        "mqttv5_connections",
        "Open network connections, all listeners (the local sides of bridges included).",
        len(broker.handlers),
    )
    out.gauge(
        "mqttv5_listener_connections",
        "Open network connections per listener.",
        [({"listener": r.name}, r.connections) for r in broker.listeners],
    )
    out.counter(
        "mqttv5_connections_opened_total",
        "Network connections accepted since the start.",
        c.connections_total,
    )
    out.gauge("mqttv5_clients_connected", "Clients connected (CONNACK sent).", c.clients_connected)
    out.gauge(
        "mqttv5_clients_connected_max",
        "Most clients connected at once since the start.",
        c.clients_maximum,
    )
    sessions = len(broker.sessions)
    out.gauge("mqttv5_sessions", "Sessions, connected or not.", sessions)
    out.gauge(
        "mqttv5_sessions_offline",
        "Sessions without a connection, waiting to be resumed or to expire.",
        max(0, sessions - c.clients_connected),
    )
    out.gauge(
        "mqttv5_subscriptions", "Subscriptions of all sessions.", broker.router.subscription_count
    )
    out.gauge("mqttv5_retained_messages", "Retained messages.", len(broker.router.retained))
    queued = inflight = 0
    for session in broker.sessions:
        queued += len(session.queue)
        inflight += len(session.inflight)
    out.gauge("mqttv5_queued_messages", "QoS 1 and 2 messages waiting in session queues.", queued)
    out.gauge(
        "mqttv5_queued_bytes",
        "Payload bytes waiting in session queues (compared with memory_limit).",
        broker.queued_total,
    )
    out.gauge(
        "mqttv5_inflight_messages",
        "QoS 1 and 2 messages sent to clients and not yet acknowledged.",
        inflight,
    )
    out.gauge(
        "mqttv5_reading_paused",
        "1 while the broker stops reading from publishers (queued bytes over memory_limit).",
        int(broker.reading_paused),
    )


def _traffic_metrics(out: _Exposition, broker: MqttBroker) -> None:
    c = broker.counters
    out.counter(
        "mqttv5_messages_received_total",
        "PUBLISH packets received from clients, all QoS.",
        c.publish_received,
    )
    out.counter(
        "mqttv5_messages_sent_total",
        "PUBLISH packets sent to clients, all QoS (retransmissions not counted).",
        c.publish_sent,
    )
    out.counter(
        "mqttv5_messages_acknowledged_total",
        "QoS 1 and 2 deliveries acknowledged by clients (PUBACK, PUBCOMP, or an error PUBREC).",
        c.messages_sent,
    )
    out.counter("mqttv5_bytes_received_total", "Bytes received from clients.", c.bytes_received)
    out.counter("mqttv5_bytes_sent_total", "Bytes sent to clients.", c.bytes_sent)
    out.counter(
        "mqttv5_messages_dropped_total",
        "Deliveries dropped, by cause: queue_full (a session queue at max_queued_messages or "
        "max_queued_bytes), slow_consumer (QoS 0 to a connection over outbound_high_water), "
        "too_large (over the client's Maximum Packet Size), expired (Message Expiry Interval), "
        "rate_limited (QoS 0 PUBLISH over max_publish_rate).",
        [
            ({"cause": "queue_full"}, c.dropped_queue_full),
            ({"cause": "slow_consumer"}, c.dropped_slow_consumer),
            ({"cause": "too_large"}, c.dropped_too_large),
            ({"cause": "expired"}, c.dropped_expired),
            ({"cause": "rate_limited"}, getattr(c, "dropped_rate_limited", 0)),
        ],
    )
    out.counter(
        "mqttv5_auth_failures_total", "CONNECTs refused by authentication.", c.auth_failures
    )
    out.counter(
        "mqttv5_protocol_errors_total",
        "Connections closed for breaking the protocol.",
        c.protocol_errors,
    )
    _limit_metrics(out, broker)


def _limit_metrics(out: _Exposition, broker: MqttBroker) -> None:
    """What the resource limits (``limits.py``) refused or slowed down."""
    c = broker.counters
    out.counter(
        "mqttv5_connections_refused_total",
        "Connections refused by a limit: address_limit (too many from one address), "
        "connection_rate (CONNACK 0x9F Connection rate exceeded).",
        [
            ({"cause": "address_limit"}, getattr(c, "refused_address_limit", 0)),
            ({"cause": "connection_rate"}, getattr(c, "refused_connection_rate", 0)),
        ],
    )
    out.counter(
        "mqttv5_publishers_throttled_total",
        "Times reading from a publisher was paused: publish_rate (max_publish_rate), "
        "bandwidth (max_inbound_bytes_per_second).",
        [
            ({"cause": "publish_rate"}, getattr(c, "throttled_publishers", 0)),
            ({"cause": "bandwidth"}, getattr(c, "throttled_bandwidth", 0)),
        ],
    )
    out.counter(
        "mqttv5_rate_limit_disconnects_total",
        "Clients disconnected with 0x96 Message rate too high.",
        getattr(c, "disconnected_rate_limit", 0),
    )
    out.counter(
        "mqttv5_retained_refused_total",
        "Retained messages refused by the retained quota (0x97, or not stored for QoS 0).",
        getattr(c, "refused_retained_quota", 0),
    )


def _bridge_metrics(out: _Exposition, broker: MqttBroker) -> None:
    manager = broker.bridges
    bridges = list(manager.bridges.values()) if manager is not None else []
    out.gauge(
        "mqttv5_bridge_up",
        "1 while the bridge is connected to its remote broker.",
        [({"bridge": b.name}, int(b.up)) for b in bridges],
    )
    out.counter(
        "mqttv5_bridge_connections_total",
        "Successful connections of the bridge to its remote broker (1 + reconnections).",
        [({"bridge": b.name}, b.connections) for b in bridges],
    )
    out.counter(
        "mqttv5_bridge_messages_forwarded_total",
        "Messages the bridge forwarded: direction out (to the remote broker) or in (from it).",
        [({"bridge": b.name, "direction": d}, n) for b in bridges for d, n in b.forwarded.items()],
    )
    out.counter(
        "mqttv5_bridge_messages_dropped_total",
        "Messages the bridge could not forward (QoS 0 while disconnected, refused, too large).",
        [({"bridge": b.name, "direction": d}, n) for b in bridges for d, n in b.dropped.items()],
    )


def _storage_metrics(out: _Exposition, broker: MqttBroker) -> None:
    store = broker.store
    commits = getattr(store, "commits", None)
    if isinstance(commits, int):
        out.counter(
            "mqttv5_storage_commits_total",
            "Group commits written to storage (journal records, or writer transactions).",
            commits,
        )
        out.counter(
            "mqttv5_storage_commit_seconds_total",
            "Time spent committing (divide by commits for the mean commit latency).",
            float(getattr(store, "commit_seconds", 0.0)),
        )
        out.gauge(
            "mqttv5_storage_commit_seconds_max",
            "The longest commit since the broker started.",
            float(getattr(store, "commit_seconds_max", 0.0)),
        )
        journal = getattr(store, "journal_bytes", None)
        if isinstance(journal, int):
            out.gauge(
                "mqttv5_storage_journal_bytes",
                "Size of the journal segments on disk: it falls as they are folded into the "
                "database; one that keeps growing means the folder process falls behind.",
                journal,
            )
        failing = getattr(store, "failed", None) is not None
        out.gauge(
            "mqttv5_storage_failing", "1 while storage writes fail (disk full ...).", int(failing)
        )


def _process_metrics(out: _Exposition) -> None:
    """The standard ``process_*`` metrics (as Prometheus client libraries name them)."""
    times = os.times()
    out.counter(
        "process_cpu_seconds_total", "User and system CPU time spent.", times.user + times.system
    )
    memory = _memory()
    if memory is not None:
        out.gauge("process_resident_memory_bytes", "Resident memory size.", memory[1])
        if memory[0]:
            out.gauge("process_virtual_memory_bytes", "Virtual memory size.", memory[0])
    with contextlib.suppress(OSError):
        out.gauge("process_open_fds", "Open file descriptors.", len(os.listdir("/proc/self/fd")))
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft >= 0:
            out.gauge("process_max_fds", "Most open file descriptors allowed.", soft)
    start = _process_start_time()
    if start is not None:
        out.gauge("process_start_time_seconds", "Unix time the process started.", start)


def _memory() -> tuple[int, int] | None:
    """(virtual, resident) bytes from /proc (Linux); elsewhere (0, peak resident) from
    getrusage."""
    try:
        with open("/proc/self/statm", "rb") as file:
            fields = file.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[0]) * page, int(fields[1]) * page
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
        import sys
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return 0, peak


def _process_start_time() -> float | None:
    try:
        with open("/proc/self/stat", "rb") as file:
            stat = file.read()
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
        # the fields after the command name (which may contain spaces) start with field 3
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


# --- the HTTP listener ----------------------------------------------------------------------------


class MetricsServer:
    """The HTTP listener of ``[metrics]``.

    Args:
        broker: whose metrics are served.
        settings: where to listen.
    """

    def __init__(self, broker: MqttBroker, settings: MetricsSettings) -> None:
        self.broker = broker
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Open the listening socket.

        Raises:
            OSError: it cannot bind (the message names the address).
        """
        settings = self.settings
        try:
            self._server = await asyncio.start_server(
                self._serve, settings.bind, settings.port, limit=_MAX_REQUEST, reuse_address=True
            )
        except OSError as exc:
            message = f"cannot listen on {settings.address} (metrics): {exc.strerror or exc}"
            raise OSError(exc.errno, message) from exc
        host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
        log.info("Metrics on http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "metrics server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listener and any connection still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= _MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            response = await self._respond(reader)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    await writer.drain()
                await _linger(reader, writer)
        except (OSError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        """The whole response to one request, or None when the client went away."""
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            return _response(431, b"request too large\n")
        except TimeoutError:
            return _response(408, b"request timeout\n")
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, b"bad request\n")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return _response(505, b"HTTP/1.1 only\n")
        if method not in ("GET", "HEAD"):
            return _response(405, b"GET or HEAD only\n", {"Allow": "GET, HEAD"})
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            body = render_metrics(self.broker).encode()
            return _response(200, body, {"Content-Type": CONTENT_TYPE}, head_only)
        if path == "/health":
            return _response(200, b"ok\n", head_only=head_only)
        if path == "/":
            return _response(200, b"mqttv5 broker: /metrics /health\n", head_only=head_only)
        return _response(404, b"not found: try /metrics or /health\n", head_only=head_only)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends (a bounded amount, for a bounded
    time) until it closes too: closing a socket with unread input resets the connection, and
    the client could lose the response (a 431 after an oversized request)."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    left = 8 * _MAX_REQUEST
    with contextlib.suppress(TimeoutError, asyncio.LimitOverrunError, ValueError):
        async with asyncio.timeout(1.0):
            while left > 0:
                data = await reader.read(_MAX_REQUEST)
                if not data:
                    return
                left -= len(data)


def _response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    head_only: bool = False,
) -> bytes:
    fields = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    fields["Content-Length"] = str(len(body))
    fields["Connection"] = "close"
    fields["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in fields.items())]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def reload_metrics(old: BrokerConfig, new: BrokerConfig) -> list[str]:
    """Reload applier: the metrics listener cannot move while running. A changed ``[metrics]``
    is reported as needing a restart, and the running settings are kept in ``new`` so the
    broker's configuration keeps describing what runs."""
    if old.metrics == new.metrics:
        return []
    new.metrics = old.metrics
    return ["metrics"]
