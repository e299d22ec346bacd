"""``MemoryStore``: no storage beyond the broker's own memory (``--storage memory``)."""

from __future__ import annotations

from ..message import BrokerMessage, Delivery
from ..sessions import SubEntry
from .base import COMMITTED, CommitTicket, StoredSession, StoredState

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps nothing: the broker's memory is the only copy, lost on restart. Every ticket is
    already done, so acknowledgements never wait."""

    durable = False
    clock_offset = 0.0
    pending = False
    failed: BaseException | None = None

    def writable(self) -> bool:
        """Always."""
        return True

    def load(self) -> StoredState:
        """Nothing survives a restart."""
        return StoredState()

    def save_session(self, session: StoredSession) -> None:
        """No-op."""

    def delete_session(self, client_id: str) -> None:
        """No-op."""

    def save_subscription(self, client_id: str, entry: SubEntry) -> None:
        """No-op."""

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        """No-op."""

    def save_retained(self, message: BrokerMessage) -> None:
        """No-op."""

    def add_delivery(self, client_id: str, delivery: Delivery, packet_id: int | None) -> None:
        """No-op."""

    def delivery_sent(self, client_id: str, message_id: int, packet_id: int, qos: int) -> None:
        """No-op."""

    def delivery_released(self, client_id: str, packet_id: int) -> None:
        """No-op."""

    def delivery_done(self, client_id: str, packet_id: int) -> None:
        """No-op."""

    def delivery_dropped(self, client_id: str, message_id: int) -> None:
        """No-op."""

    def incoming_qos2(self, client_id: str, packet_id: int, present: bool) -> None:
        """No-op."""

    def ticket(self) -> CommitTicket:
        """Always done."""
        return COMMITTED

    def commit_soon(self) -> CommitTicket:
        """Nothing to commit."""
        return COMMITTED

    def commit(self) -> None:
        """No-op."""

    def close(self) -> None:
        """No-op."""
