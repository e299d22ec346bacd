"""``MemoryStore``: no storage beyond the broker's own memory (``--storage memory``)."""

from __future__ import annotations

from ..message import BrokerMessage
from ..sessions import SubEntry
from .base import COMMITTED, CommitTicket, StoredSession, StoredState

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps nothing: the broker's memory is the only copy, lost on restart. Every ticket is
    already done, so acknowledgements never wait."""

    durable = False

    def load(self) -> StoredState:
        """Nothing survives a restart."""
        return StoredState()

    def save_session(self, session: StoredSession) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def delete_session(self, client_id: str) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def save_subscription(self, client_id: str, entry: SubEntry) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def delete_subscription(self, client_id: str, topic_filter: str) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def save_retained(self, message: BrokerMessage) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def enqueue(self, client_id: str, message: BrokerMessage, qos: int) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def dequeue(self, client_id: str, message_id: int) -> CommitTicket:
        """No-op."""
        return COMMITTED

    def close(self) -> None:
        """No-op."""
