"""Sessions: MQTT state that outlives a network connection, and the registry that holds them.

A :class:`Session` owns its subscriptions, its in-flight QoS 1/2 state (``protocol.Inflight``),
its queue of messages waiting for a connection or for send quota, and its Will Message. The
handler currently attached (if any) is ``session.handler``; ``session.generation`` increases on
every attach so a handler that was taken over can tell it must no longer touch the session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from mqttv5.protocol.connection import Inflight
from mqttv5.protocol.packets import Will

from .acl import ALLOW_ALL, AclPolicy
from .message import Delivery

if TYPE_CHECKING:
    from .handler import ClientHandler

__all__ = ["EXPIRY_NEVER", "Session", "SessionRegistry", "SubEntry"]

EXPIRY_NEVER: Final = 0xFFFFFFFF


class SubEntry:
    """One subscription of a session.

    ``topic_filter`` is the filter as subscribed (``$share/g/f`` for shared ones); ``match_filter``
    is what the trie matches (``f``); ``group`` the share name or None.
    """

    __slots__ = (
        "group",
        "match_filter",
        "no_local",
        "qos",
        "retain_as_published",
        "retain_handling",
        "sub_id",
        "topic_filter",
    )

    def __init__(
        self,
        topic_filter: str,
        match_filter: str,
        group: str | None,
        qos: int,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
    ) -> None:
        self.topic_filter = topic_filter
        self.match_filter = match_filter
        self.group = group
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.sub_id = sub_id

    def __repr__(self) -> str:
        return f"SubEntry({self.topic_filter!r}, qos={self.qos}, sub_id={self.sub_id})"


class Session:
    """The state of one client identifier (section 4.1)."""

    __slots__ = (
        "acl",
        "client_id",
        "disconnected_at",
        "expiry_interval",
        "generation",
        "handler",
        "inflight",
        "queue",
        "queued_bytes",
        "read_checked",
        "subscriptions",
        "username",
        "version",
        "will",
        "will_handle",
    )

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subscriptions: dict[str, SubEntry] = {}
        self.inflight = Inflight()
        self.queue: deque[Delivery] = deque()
        self.queued_bytes = 0
        self.expiry_interval = 0
        self.will: Will | None = None
        self.will_handle: asyncio.TimerHandle | None = None
        self.handler: ClientHandler | None = None
        self.generation = 0
        self.disconnected_at: float | None = None
        self.version = 5
        self.username: str | None = None
        self.acl: AclPolicy = ALLOW_ALL
        self.read_checked = False  # a subscription is only partly readable: check deliveries

    @property
    def online(self) -> bool:
        """True while a network connection is attached."""
        return self.handler is not None

    def cancel_will(self) -> None:
        """Forget the Will Message and any pending delayed publication of it."""
        self.will = None
        if self.will_handle is not None:
            self.will_handle.cancel()
            self.will_handle = None

    def __repr__(self) -> str:
        return f"Session({self.client_id!r}, online={self.online}, subs={len(self.subscriptions)})"


class SessionRegistry:
    """All sessions of the broker, by client identifier.

    ``claim`` and ``release`` are awaitables so that a multi-node backend can implement them over
    the network later; the in-process registry completes them at once.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def get(self, client_id: str) -> Session | None:
        """The session of ``client_id``, if any."""
        return self._sessions.get(client_id)

    async def claim(self, client_id: str) -> Session | None:
        """Take ``client_id``'s session for a new connection (None if it has none)."""
        return self._sessions.get(client_id)

    def create(self, client_id: str) -> Session:
        """Create (or replace) the session of ``client_id``."""
        session = Session(client_id)
        self._sessions[client_id] = session
        return session

    def remove(self, session: Session) -> None:
        """Remove ``session`` if it is still the registered one."""
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions
