"""The storage interface (``SessionStore``) and commit tickets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mqttv5.protocol.packets import Will

from ..message import BrokerMessage
from ..sessions import SubEntry

__all__ = ["COMMITTED", "CommitTicket", "SessionStore", "StoredSession", "StoredState"]


class CommitTicket:
    """Completes when the write that returned it is durable.

    ``add_done_callback`` runs the callback at once if the ticket is already done, so the
    in-memory path costs one call and no event-loop round trip.
    """

    __slots__ = ("_callbacks", "done", "error")

    def __init__(self, done: bool = False) -> None:
        self.done = done
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[CommitTicket], None]] = []

    def add_done_callback(self, callback: Callable[[CommitTicket], None]) -> None:
        """Call ``callback(ticket)`` when the write is durable (now, if it already is)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def complete(self, error: BaseException | None = None) -> None:
        """Mark the write durable (or failed with ``error``) and run the callbacks."""
        if self.done:
            return
        self.done = True
        self.error = error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


COMMITTED = CommitTicket(done=True)
"""A ticket that is already done (writes that need no disk)."""


@dataclass(slots=True)
class StoredSession:
    """A session as a store keeps it."""

    client_id: str
    expiry_interval: int
    disconnected_at: float | None
    will: Will | None = None
    subscriptions: list[SubEntry] = field(default_factory=list)
    queued: list[tuple[BrokerMessage, int, bool, tuple[int, ...]]] = field(default_factory=list)


@dataclass(slots=True)
class StoredState:
    """What a store hands the broker at start-up."""

    sessions: list[StoredSession] = field(default_factory=list)
    retained: list[BrokerMessage] = field(default_factory=list)


class SessionStore(Protocol):
    """What the broker mirrors to storage. Implementations: memory, SQLite (durable default).

    ``durable`` tells the broker whether writes can be skipped on the hot path (False for the
    in-memory store, whose tickets are always done).
    """

    durable: bool

    def load(self) -> StoredState:
        """Everything stored, read once at start-up."""
        ...

    def save_session(self, session: StoredSession) -> CommitTicket:
        """Create or update a session's record (expiry, will, last connection time)."""
        ...

    def delete_session(self, client_id: str) -> CommitTicket:
        """Remove a session and everything that belongs to it."""
        ...

    def save_subscription(self, client_id: str, entry: SubEntry) -> CommitTicket:
        """Create or replace one subscription."""
        ...

    def delete_subscription(self, client_id: str, topic_filter: str) -> CommitTicket:
        """Remove one subscription."""
        ...

    def save_retained(self, message: BrokerMessage) -> CommitTicket:
        """Store (or with an empty payload delete) the retained message of its topic."""
        ...

    def enqueue(self, client_id: str, message: BrokerMessage, qos: int) -> CommitTicket:
        """Record that ``message`` waits for (or is in flight to) ``client_id``."""
        ...

    def dequeue(self, client_id: str, message_id: int) -> CommitTicket:
        """The message was acknowledged by (or dropped for) ``client_id``."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...
