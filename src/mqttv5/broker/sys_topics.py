"""``$SYS`` topics with the names Mosquitto publishes, as retained messages.

Published every ``sys_interval`` seconds by one plain task, straight into the router.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from mqttv5 import __version__

from .message import BrokerMessage

if TYPE_CHECKING:
    from .broker import MqttBroker

__all__ = ["SysPublisher"]


class _Load:
    """Exponentially-weighted per-minute rates, as Mosquitto's ``load/.../1min`` topics."""

    def __init__(self) -> None:
        self.rates = {1: 0.0, 5: 0.0, 15: 0.0}
        self.last = 0
        self.initialised = False

    def update(self, total: int, interval: float) -> None:
        if not self.initialised:
            self.last, self.initialised = total, True
            return
        per_min = (total - self.last) * 60.0 / max(interval, 1e-6)
        self.last = total
        for minutes in self.rates:
            k = min(1.0, interval / (60.0 * minutes))
            self.rates[minutes] += k * (per_min - self.rates[minutes])


class SysPublisher:
    """Publishes the broker's statistics under ``$SYS/broker/...``."""

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.loads = {name: _Load() for name in _LOAD_SOURCES}
        self._last: dict[str, bytes] = {}

    def values(self) -> dict[str, str]:
        """Topic suffix (after ``$SYS/broker/``) -> value, for one publication."""
        b = self.broker
        c = b.counters
        sessions = len(b.sessions)
        connected = c.clients_connected
        out = {
            "version": f"mqttv5 version {__version__}",
            "uptime": f"{int(time.time() - b.started_at)} seconds",
            "clients/connected": str(connected),
            "clients/active": str(connected),
            "clients/total": str(sessions),
            "clients/disconnected": str(max(0, sessions - connected)),
            "clients/inactive": str(max(0, sessions - connected)),
            "clients/maximum": str(c.clients_maximum),
            "messages/received": str(c.messages_received),
            "messages/sent": str(c.messages_sent + c.publish_sent),
            "publish/messages/received": str(c.publish_received),
            "publish/messages/sent": str(c.publish_sent),
            "publish/messages/dropped": str(
                c.dropped_queue_full + c.dropped_slow_consumer + c.dropped_too_large
            ),
            "bytes/received": str(c.bytes_received),
            "bytes/sent": str(c.bytes_sent),
            "retained messages/count": str(len(b.router.retained)),
            "subscriptions/count": str(b.router.subscription_count),
            "store/messages/count": str(sum(len(s.queue) + len(s.inflight) for s in b.sessions)),
        }
        for name, load in self.loads.items():
            for minutes, rate in load.rates.items():
                out[f"load/{name}/{minutes}min"] = f"{rate:.2f}"
        return out

    def publish_once(self, interval: float) -> None:
        """Update the load averages and publish every value that changed."""
        b = self.broker
        c = b.counters
        for name, attr in _LOAD_SOURCES.items():
            self.loads[name].update(getattr(c, attr), interval)
        now = b.loop.time()
        for suffix, value in self.values().items():
            payload = value.encode()
            topic = "$SYS/broker/" + suffix
            if self._last.get(topic) == payload:
                continue
            self._last[topic] = payload
            message = BrokerMessage(topic, payload, 0, True, received_at=now)
            b.router.retained.set(message)
            b.router.route(message)

    async def run(self) -> None:
        """Publish every ``sys_interval`` seconds until cancelled."""
        self.publish_once(0.0)
        while True:
            interval = self.broker.config.sys_interval
            if interval <= 0:
                return
            await asyncio.sleep(interval)
            self.publish_once(interval)


_LOAD_SOURCES = {
    "messages/received": "messages_received",
    "messages/sent": "publish_sent",
    "publish/received": "publish_received",
    "publish/sent": "publish_sent",
    "bytes/received": "bytes_received",
    "bytes/sent": "bytes_sent",
    "connections": "connections_total",
}
