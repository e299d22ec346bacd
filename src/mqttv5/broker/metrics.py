"""Plain integer counters shared by ``$SYS`` and the Prometheus endpoint (``metrics_http``).

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
        "disconnected_rate_limit",
        "dropped_expired",
        "dropped_queue_full",
        "dropped_rate_limited",
        "dropped_slow_consumer",
        "dropped_too_large",
        "messages_received",
        "messages_sent",
        "protocol_errors",
        "publish_received",
        "publish_sent",
        "refused_address_limit",
        "refused_connection_rate",
        "refused_retained_quota",
        "throttled_bandwidth",
        "throttled_publishers",
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
    # resource limits (limits.py)
    refused_address_limit: int  #: connections closed: too many from their address
    refused_connection_rate: int  #: CONNECTs answered 0x9F Connection rate exceeded
    dropped_rate_limited: int  #: QoS 0 PUBLISH dropped over max_publish_rate
    throttled_publishers: int  #: reading paused for max_publish_rate
    throttled_bandwidth: int  #: reading paused for max_inbound_bytes_per_second
    disconnected_rate_limit: int  #: clients disconnected with 0x96 Message rate too high
    refused_retained_quota: int  #: retained PUBLISH refused (0x97, or QoS 0 not stored)

    def snapshot(self) -> dict[str, int]:
        """All counters as a dict."""
        return {name: getattr(self, name) for name in self.__slots__}
