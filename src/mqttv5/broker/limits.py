"""Resource limits: what one address, one client or the retained store may take of the broker.

=================================  ==========================================================
Limit (config key)                 What happens beyond it
=================================  ==========================================================
``max_connections_per_address``    the new connection is closed at once (before CONNECT)
``max_connection_rate``            CONNACK 0x9F Connection rate exceeded (3.1.1: return
(``connection_rate_burst``)        code 3) when its CONNECT arrives, then close
``max_publish_rate``               QoS 0: dropped and counted. QoS 1/2: accepted, then the
(``publish_rate_burst``)           broker stops reading from that client until its bucket
                                   refills (never dropped). A client whose dropped QoS 0
                                   messages exceed 10 times the rate: DISCONNECT 0x96
                                   Message rate too high
``max_inbound_bytes_per_second``   the broker stops reading from that client until its
                                   byte bucket refills
``max_retained_messages``,         a retained PUBLISH for a new topic (or one that grows the
``max_retained_bytes``             store past the byte limit) is refused whole: QoS 1/2 get
                                   PUBACK / PUBREC 0x97 Quota exceeded, QoS 0 is dropped;
                                   neither is stored nor delivered. Replacing or clearing a
                                   retained message within the limits is always allowed
=================================  ==========================================================

Addresses are counted as :func:`~.authn.lockout_key` counts failed logins: an IPv4 address as
is, an IPv6 address by its /64 (one host can use any address of its /64). Connection counts and
rates are per listener, as Mosquitto's ``max_connections`` in a listener block.

Every rate is a :class:`TokenBucket` that takes ``now`` (deterministic tests). Throttling pauses
the transport's reading; the client's keep-alive is not held against it meanwhile (the broker's
sweep treats a paused reader as alive), and what is already read is handled normally.

Cost when a limit is off: :func:`monitor_for` is asked once per new connection; a handler gets a
:class:`ClientLimits` only when a per-client limit applies (``handler.limits`` is None
otherwise, one attribute test per read and per PUBLISH), and the retained quota is checked only
for PUBLISH packets with RETAIN set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mqttv5.protocol.connection import Closed, Event
from mqttv5.protocol.packets import Connect, Publish
from mqttv5.protocol.reason_codes import ReasonCode

from .authn import lockout_key
from .config import BrokerConfig, ListenerSettings

if TYPE_CHECKING:
    from .broker import MqttBroker
    from .handler import ClientHandler
    from .router import RetainedStore

__all__ = [
    "ABUSE_FACTOR",
    "ClientLimits",
    "ResourceMonitor",
    "TokenBucket",
    "monitor_for",
]

log = logging.getLogger("mqttv5.broker")

ABUSE_FACTOR: Final = 10
"""A client whose QoS 0 messages dropped for ``max_publish_rate`` exceed this many times the rate
(and burst) is disconnected with 0x96 Message rate too high."""
MAX_TRACKED_ADDRESSES: Final = 100_000  # connection-rate buckets kept (idle ones go first)
_PRUNE_EVERY: Final = 1024  # connections between sweeps of the per-address tables
_RESYNC_SECONDS: Final = 60.0  # how often the retained byte estimate is checked against the store


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    :meth:`take` succeeds only with a token in hand; :meth:`charge` always succeeds and may
    leave the bucket in debt, returning how long until it is out of debt (the throttle's pause).
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """Add what ``rate`` earned since the last call; return the tokens now held."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if the bucket holds them."""
        if self.refill(now) >= amount:
            self.tokens -= amount
            return True
        return False

    def charge(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens, into debt if need be; return the seconds until the bucket
        is back to zero (0.0 when it is not in debt)."""
        self.tokens = self.refill(now) - amount
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (it holds no state worth keeping)."""
        return self.refill(now) >= self.burst


def _burst(rate: float, burst: int) -> float:
    return float(burst) if burst > 0 else float(max(1, math.ceil(rate)))


@dataclass(slots=True)
class _ListenerState:
    """Connection limits of one listener and what they count."""

    settings: ListenerSettings
    max_per_address: int
    rate: float
    burst: float
    connections: dict[str, weakref.WeakSet[ClientHandler]]
    buckets: OrderedDict[str, TokenBucket]


class ClientLimits:
    """Per-client limits of one connection (``handler.limits``)."""

    __slots__ = ("abuse", "bytes", "publish", "refuse", "timer")

    def __init__(self, config: BrokerConfig, now: float, refuse: bool) -> None:
        rate = config.max_publish_rate
        self.publish: TokenBucket | None = None
        self.abuse: TokenBucket | None = None
        if rate > 0:
            burst = _burst(rate, config.publish_rate_burst)
            self.publish = TokenBucket(rate, burst, now)
            self.abuse = TokenBucket(rate * ABUSE_FACTOR, burst * ABUSE_FACTOR, now)
        byte_rate = config.max_inbound_bytes_per_second
        self.bytes = TokenBucket(byte_rate, byte_rate, now) if byte_rate > 0 else None
        self.refuse = refuse  # over the connection rate: CONNACK 0x9F to its CONNECT
        self.timer: asyncio.TimerHandle | None = None  # the pending resume

    def on_data(
        self, handler: ClientHandler, size: int, events: list[Event], now: float
    ) -> list[Event]:
        """Account for ``size`` bytes read; return the events the handler should act on.

        Pauses reading when the byte bucket is in debt; answers the CONNECT of a connection
        that was over its address's rate with CONNACK 0x9F.
        """
        if self.refuse:
            return self._refuse(handler, events)
        bucket = self.bytes
        if bucket is not None:
            wait = bucket.charge(now, size)
            if wait > 0:
                handler.broker.counters.throttled_bandwidth += 1
                self._pause(handler, wait)
        return events

    def admit_publish(self, handler: ClientHandler, packet: Publish, now: float) -> bool:
        """Whether to handle ``packet``: False for a QoS 0 message over the rate (dropped and
        counted; or the client is disconnected with 0x96 when it keeps far exceeding it). A QoS
        1/2 message is always handled, and reading pauses until the rate allows the next."""
        bucket = self.publish
        if bucket is None:
            return True
        counters = handler.broker.counters
        if packet.qos:
            wait = bucket.charge(now)
            if wait > 0:
                counters.throttled_publishers += 1
                self._pause(handler, wait)
            return True
        if bucket.take(now):
            return True
        counters.dropped_rate_limited += 1
        abuse = self.abuse
        if abuse is not None and not abuse.take(now):
            counters.disconnected_rate_limit += 1
            log.info(
                "Client %s from %s:%d disconnected: message rate far above max_publish_rate.",
                handler.client_id, *handler.peer,
            )  # fmt: skip
            handler.conn.fail(ReasonCode.MESSAGE_RATE_TOO_HIGH, "message rate too high")
            handler.broker.mark_dirty(handler)
        return False

    def _pause(self, handler: ClientHandler, wait: float) -> None:
        handler.pause_reading()
        old = self.timer
        if old is not None:
            old.cancel()
        self.timer = handler.loop.call_later(wait, self._resume, handler)

    def _resume(self, handler: ClientHandler) -> None:
        self.timer = None
        # If the broker's memory limit also wants this reader paused, the next read re-pauses it.
        handler.resume_reading()

    def _refuse(self, handler: ClientHandler, events: list[Event]) -> list[Event]:
        for index, event in enumerate(events):
            if type(event) is Connect:
                self.refuse = False
                handler.version = event.protocol_level
                handler.client_id = event.client_id
                handler.broker.counters.refused_connection_rate += 1
                log.info(
                    "Client %s from %s:%d refused: connection rate exceeded.",
                    event.client_id or "<empty>", *handler.peer,
                )  # fmt: skip
                handler.refuse(ReasonCode.CONNECTION_RATE_EXCEEDED, "connection rate exceeded")
                return [e for e in events[index + 1 :] if type(e) is Closed]
        return events  # no CONNECT yet (or a protocol error, which closes anyway)


class ResourceMonitor:
    """The broker-wide side of the limits: per-address tables and the retained quota.

    One per broker (:func:`monitor_for`); :meth:`update` applies a reloaded configuration
    (new limits apply to new connections; the counts and buckets are kept).
    """

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self._listeners: dict[int, _ListenerState] = {}  # by id() of the ListenerRuntime
        self._opened = 0
        self._sizes: dict[str, int] = {}  # retained topic -> bytes (only with max_retained_bytes)
        self._retained_bytes = 0
        self._resync_at = 0.0
        self.update(broker.config)

    def update(self, config: BrokerConfig) -> None:
        """Take the limits of ``config``."""
        self.config = config
        self.per_client = config.max_publish_rate > 0 or config.max_inbound_bytes_per_second > 0
        for state in self._listeners.values():
            # a listener's own values need a restart to change; the global ones apply now
            self._configure(state)
        if not config.max_retained_bytes:
            self._sizes.clear()
            self._retained_bytes = 0

    @property
    def retained_bytes(self) -> int:
        """Bytes (topic and payload) of the retained messages clients stored, as estimated."""
        return self._retained_bytes

    # --- connections ----------------------------------------------------------------------------

    def admit(self, handler: ClientHandler) -> bool:
        """Decide about a new connection; False means it was aborted (over its address's
        count). Sets ``handler.limits`` when a per-client limit or a rate refusal applies."""
        state = self._state(handler)
        now = handler.loop.time()
        refuse = False
        if state.max_per_address or state.rate:
            key = lockout_key(handler.peer[0])
            self._opened += 1
            if self._opened % _PRUNE_EVERY == 0:
                self._prune(now)
            if state.max_per_address and not self._count(state, key, handler):
                return False
            if state.rate:
                refuse = not self._bucket(state, key, now).take(now)
        if refuse or self.per_client:
            handler.limits = ClientLimits(self.config, now, refuse)
        return True

    def _count(self, state: _ListenerState, key: str, handler: ClientHandler) -> bool:
        handlers = state.connections.get(key)
        if handlers is None:
            handlers = state.connections[key] = weakref.WeakSet()
        live = sum(1 for h in handlers if h.transport is not None)
        if live >= state.max_per_address:
            self.broker.counters.refused_address_limit += 1
            log.info(
                "Refusing connection from %s:%d: %d connections from %s already.",
                *handler.peer, live, key,
            )  # fmt: skip
            handler.abort()
            return False
        handlers.add(handler)
        return True

    def _bucket(self, state: _ListenerState, key: str, now: float) -> TokenBucket:
        buckets = state.buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(state.rate, state.burst, now)
            while len(buckets) > MAX_TRACKED_ADDRESSES:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket

    def _prune(self, now: float) -> None:
        """Forget addresses with no live connection and rate buckets that are full again."""
        for state in self._listeners.values():
            dead = [
                k for k, hs in state.connections.items() if all(h.transport is None for h in hs)
            ]
            for key in dead:
                del state.connections[key]
            buckets = state.buckets
            while buckets and next(iter(buckets.values())).full(now):
                buckets.popitem(last=False)

    def _state(self, handler: ClientHandler) -> _ListenerState:
        # Keyed by the runtime's id: runtimes live as long as the broker, and two listeners
        # may share a name.
        runtime = handler.listener
        state = self._listeners.get(id(runtime))
        if state is None:
            state = _ListenerState(runtime.settings, 0, 0.0, 1.0, {}, OrderedDict())
            self._configure(state)
            self._listeners[id(runtime)] = state
        return state

    def _configure(self, state: _ListenerState) -> None:
        cfg = self.config
        settings = state.settings
        own_count = settings.max_connections_per_address
        own_rate, own_burst = settings.max_connection_rate, settings.connection_rate_burst
        state.max_per_address = cfg.max_connections_per_address if own_count is None else own_count
        state.rate = cfg.max_connection_rate if own_rate is None else own_rate
        state.burst = _burst(
            state.rate, cfg.connection_rate_burst if own_burst is None else own_burst
        )
        for bucket in state.buckets.values():
            bucket.rate, bucket.burst = state.rate, state.burst

    # --- retained messages ----------------------------------------------------------------------

    def retained_allowed(
        self, store: RetainedStore, topic: str, payload: bytes, now: float
    ) -> bool:
        """Whether a retained PUBLISH may be stored (and then is accounted for); counts a
        refusal. An empty payload (it clears the topic) is always allowed."""
        cfg = self.config
        sizes = self._sizes
        if not payload:
            self._retained_bytes -= sizes.pop(topic, 0)
            return True
        present = store.get(topic) is not None
        if cfg.max_retained_messages and not present and len(store) >= cfg.max_retained_messages:
            return self._refuse_retained(topic, "max_retained_messages")
        if cfg.max_retained_bytes:
            if now >= self._resync_at:
                self._resync(store, now)
            if not present and topic in sizes:  # expired since: no longer stored
                self._retained_bytes -= sizes.pop(topic)
            old = sizes.get(topic, 0)  # 0 also for a Will's retained message (not tracked)
            size = len(topic.encode("utf-8")) + len(payload)
            if self._retained_bytes - old + size > cfg.max_retained_bytes:
                return self._refuse_retained(topic, "max_retained_bytes")
            self._retained_bytes += size - old
            sizes[topic] = size
        return True

    def _refuse_retained(self, topic: str, key: str) -> bool:
        self.broker.counters.refused_retained_quota += 1
        log.debug("Retained message on %s refused: %s reached.", topic, key)
        return False

    def _resync(self, store: RetainedStore, now: float) -> None:
        """Forget topics whose retained message expired or was replaced by a Will (the store
        does not tell us), so the estimate does not drift upwards."""
        self._resync_at = now + _RESYNC_SECONDS
        sizes = self._sizes
        for topic in [t for t in sizes if store.get(t) is None]:
            del sizes[topic]
        self._retained_bytes = sum(sizes.values())


_MONITORS: weakref.WeakKeyDictionary[MqttBroker, ResourceMonitor] = weakref.WeakKeyDictionary()


def monitor_for(broker: MqttBroker) -> ResourceMonitor:
    """The broker's :class:`ResourceMonitor`, created on first use and brought up to date
    when the broker's configuration object was replaced (a reload)."""
    monitor = _MONITORS.get(broker)
    if monitor is None:
        monitor = _MONITORS[broker] = ResourceMonitor(broker)
    elif monitor.config is not broker.config:
        monitor.update(broker.config)
    return monitor
