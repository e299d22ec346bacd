"""Plain integer counters shared by ``$SYS`` and (later) the Prometheus endpoint.

One :class:`Counters` object per broker; the hot path increments attributes directly (no locks:
asyncio runs one thread).
"""

from __future__ import annotations

__all__ = ["Counters"]


class Counters:
    """Broker-wide counters. Every attribute is a plain int."""

    __slots__ = (
        "auth_failures",
        "bytes_received",
        "bytes_sent",
        "clients_connected",
        "clients_maximum",
        "connections_total",
        "dropped_expired",
        "dropped_queue_full",
        "dropped_slow_consumer",
        "dropped_too_large",
        "messages_received",
        "messages_sent",
        "protocol_errors",
        "publish_received",
        "publish_sent",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    auth_failures: int
    bytes_received: int
    bytes_sent: int
    clients_connected: int
    clients_maximum: int
    connections_total: int
    dropped_expired: int
    dropped_queue_full: int
    dropped_slow_consumer: int
    dropped_too_large: int
    messages_received: int
    messages_sent: int
    publish_received: int
    publish_sent: int
    protocol_errors: int

    def snapshot(self) -> dict[str, int]:
        """All counters as a dict."""
        return {name: getattr(self, name) for name in self.__slots__}
