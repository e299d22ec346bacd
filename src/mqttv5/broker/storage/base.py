"""The storage interface (``SessionStore``) and commit tickets.

Writes are buffered and made durable together by :meth:`SessionStore.commit_soon`, which the
broker calls once per event-loop tick (group commit). :meth:`SessionStore.ticket` returns the
ticket of the writes made so far: the broker defers a PUBACK/PUBREC until the ticket of the
write holding its message is done. Times handed to a store are the broker's loop clock; the
store converts them to wall-clock time with :attr:`SessionStore.clock_offset` so expiry
survives a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mqttv5.protocol.packets import Will

from ..message import BrokerMessage, Delivery
from ..sessions import SubEntry

__all__ = [
    "COMMITTED",
    "CommitTicket",
    "SessionStore",
    "StorageError",
    "StoredDelivery",
    "StoredSession",
    "StoredState",
]


class StorageError(Exception):
    """The store cannot be opened (newer schema, foreign or corrupted file) or written."""


class CommitTicket:
    """Completes when the writes it covers are durable.

    ``add_done_callback`` runs the callback at once if the ticket is already done, so the
    in-memory path costs one call and no event-loop round trip.
    """

    __slots__ = ("_callbacks", "done", "error")

    def __init__(self, done: bool = False) -> None:
        self.done = done
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[CommitTicket], None]] = []

    def add_done_callback(self, callback: Callable[[CommitTicket], None]) -> None:
        """Call ``callback(ticket)`` when the writes are durable (now, if they already are)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def complete(self, error: BaseException | None = None) -> None:
        """Mark the writes durable (or failed with ``error``) and run the callbacks."""
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
class StoredDelivery:
    """A message waiting for (or in flight to) a session."""

    delivery: Delivery
    packet_id: int | None = None  # set once sent (in flight)
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent


@dataclass(slots=True)
class StoredSession:
    """A session as a store keeps it."""

    client_id: str
    expiry_interval: int
    disconnected_at: float | None  # loop clock; None: it was online when the broker stopped
    will: Will | None = None
    username: str | None = None
    subscriptions: list[SubEntry] = field(default_factory=list)
    deliveries: list[StoredDelivery] = field(default_factory=list)
    incoming_qos2: list[int] = field(default_factory=list)


@dataclass(slots=True)
class StoredState:
    """What a store hands the broker at start-up."""

    sessions: list[StoredSession] = field(default_factory=list)
    retained: list[BrokerMessage] = field(default_factory=list)


class SessionStore(Protocol):
    """What the broker mirrors to storage. Implementations: memory, SQLite (durable default).

    The broker writes only what must survive: sessions with a Session Expiry Interval above 0,
    their subscriptions, the messages queued for or in flight to them, the QoS 2 packet
    identifiers they sent, and retained messages.
    """

    durable: bool
    clock_offset: float  # wall clock minus the broker's loop clock
    failed: BaseException | None  # the last commit's error while writes fail, else None

    def load(self) -> StoredState:
        """Everything stored, read once at start-up."""
        ...

    def save_session(self, session: StoredSession) -> None:
        """Create or update a session's record (expiry, will, last connection time)."""
        ...

    def delete_session(self, client_id: str) -> None:
        """Remove a session and everything that belongs to it."""
        ...

    def save_subscription(self, client_id: str, entry: SubEntry) -> None:
        """Create or replace one subscription."""
        ...

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        """Remove one subscription."""
        ...

    def save_retained(self, message: BrokerMessage) -> None:
        """Store (or with an empty payload delete) the retained message of its topic."""
        ...

    def add_delivery(self, client_id: str, delivery: Delivery, packet_id: int | None) -> None:
        """``delivery`` waits for ``client_id`` (``packet_id`` None) or was sent with it."""
        ...

    def delivery_sent(self, client_id: str, message_id: int, packet_id: int, qos: int) -> None:
        """A queued delivery went out with ``packet_id`` at ``qos``."""
        ...

    def delivery_released(self, client_id: str, packet_id: int) -> None:
        """PUBREC received for ``packet_id``: only PUBREL/PUBCOMP remain."""
        ...

    def delivery_done(self, client_id: str, packet_id: int) -> None:
        """PUBACK / PUBCOMP received: the delivery is over."""
        ...

    def delivery_dropped(self, client_id: str, message_id: int) -> None:
        """A queued delivery was dropped (queue full, expired)."""
        ...

    def incoming_qos2(self, client_id: str, packet_id: int, present: bool) -> None:
        """Record (PUBREC sent) or forget (PUBREL received) an incoming QoS 2 identifier."""
        ...

    def writable(self) -> bool:
        """False while writes fail; the broker then refuses (0x97), before routing them, the
        QoS 1/2 messages that would need storage. May retry a commit to find out."""
        ...

    @property
    def pending(self) -> bool:
        """True when writes wait for :meth:`commit`."""
        ...

    def ticket(self) -> CommitTicket:
        """The ticket of every write made so far."""
        ...

    def commit_soon(self) -> CommitTicket:
        """Start committing every pending write (the broker calls it once per loop tick);
        return the ticket of the newest writes not yet durable (COMMITTED if none).

        An inline store commits before returning; a store with a writer process returns at
        once and completes the ticket when the writer reports the commit. The broker holds
        all output until that ticket is done (:class:`~.gate.OutputGate`).
        """
        ...

    def commit(self) -> None:
        """Make every pending write durable in one transaction and complete their tickets,
        waiting for them if need be (shutdown, session takeover)."""
        ...

    def close(self) -> None:
        """Commit and close."""
        ...
