"""Storage behind one interface: the broker's memory is the source of truth at run time and a
store is its mirror, read at start-up.

Every write returns a :class:`CommitTicket`; the broker sends a PUBACK/PUBREC for a message that
must be kept only once its ticket is done. :class:`MemoryStore` keeps nothing beyond the broker's
own memory, so its tickets are done at once (``--storage memory``).
"""

from .base import (
    COMMITTED,
    CommitTicket,
    SessionStore,
    StorageError,
    StoredDelivery,
    StoredSession,
    StoredState,
)
from .memory import MemoryStore

__all__ = [
    "COMMITTED",
    "CommitTicket",
    "MemoryStore",
    "SessionStore",
    "StorageError",
    "StoredDelivery",
    "StoredSession",
    "StoredState",
]
