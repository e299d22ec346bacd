"""The router: the subscription index, shared subscriptions, retained messages, and routing.

``Router.route(message)`` finds every matching subscription in the topic trie, merges the
overlapping subscriptions of one session into one delivery at the highest granted QoS carrying
every matching Subscription Identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3] (the spec's preferred form;
Mosquitto instead delivers once per subscription), picks one member per shared-subscription
group round-robin, preferring online members, and hands each :class:`Delivery` to the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from mqttv5.protocol.topics import matches

from .message import BrokerMessage, Delivery
from .sessions import Session, SubEntry
from .topic_tree import TopicTree

__all__ = ["RetainedStore", "Router"]

GroupKey: TypeAlias = tuple[str, str]  # (share name, topic filter)
_MATCH_CACHE_SIZE = 4096  # topic names whose matches are remembered between subscription changes
_Key: TypeAlias = str | tuple[str, str]


class RetainedStore:
    """Retained messages by topic name (section 3.3.1.3).

    Lookups by filter are a dict hit for a filter without wildcards and a scan otherwise.
    """

    def __init__(self) -> None:
        self._by_topic: dict[str, BrokerMessage] = {}

    def set(self, message: BrokerMessage) -> None:
        """Store, replace, or with an empty payload delete the topic's retained message
        [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7]."""
        if message.payload:
            self._by_topic[message.topic] = message
        else:
            self._by_topic.pop(message.topic, None)

    def match_now(self, topic_filter: str, now: float) -> list[BrokerMessage]:
        """The live retained messages matching ``topic_filter``; expired ones are dropped."""
        if "+" not in topic_filter and "#" not in topic_filter:
            found = self._by_topic.get(topic_filter)
            candidates = [found] if found is not None else []
        else:
            candidates = [m for t, m in self._by_topic.items() if matches(topic_filter, t)]
        live = []
        for msg in candidates:
            if msg.expired(now):
                self._by_topic.pop(msg.topic, None)  # [MQTT-3.3.2-5]
            else:
                live.append(msg)
        return live

    async def match(self, topic_filter: str, now: float) -> list[BrokerMessage]:
        """Awaitable form of :meth:`match_now` (the interface a distributed store implements)."""
        return self.match_now(topic_filter, now)

    def get(self, topic: str) -> BrokerMessage | None:
        """The retained message of ``topic``."""
        return self._by_topic.get(topic)

    def purge_expired(self, now: float) -> int:
        """Drop expired retained messages; return how many."""
        dead = [t for t, m in self._by_topic.items() if m.expired(now)]
        for t in dead:
            del self._by_topic[t]
        return len(dead)

    def __len__(self) -> int:
        return len(self._by_topic)


class Router:
    """Subscription index and message routing.

    Args:
        deliver: called with each session and delivery chosen for a message.
    """

    def __init__(self, deliver: Callable[[Session, Delivery], None]) -> None:
        self._deliver = deliver
        self.tree: TopicTree[_Key, tuple[Session, SubEntry]] = TopicTree()
        self.groups: dict[GroupKey, dict[str, tuple[Session, SubEntry]]] = {}
        self._rr: dict[GroupKey, int] = {}
        self.retained = RetainedStore()
        # Called as listener(session, entry, added) on every subscribe and unsubscribe: the hook
        # a multi-node backend uses to share the subscription index.
        self.subscription_listeners: list[Callable[[Session, SubEntry, bool], None]] = []
        # topic name -> what the trie matched; cleared whenever a subscription changes
        self._match_cache: dict[str, list[tuple[str, _Key, tuple[Session, SubEntry]]]] = {}

    def subscribe(self, session: Session, entry: SubEntry) -> bool:
        """Add or replace ``session``'s subscription; True if it is new [MQTT-3.8.4-3]."""
        is_new = entry.topic_filter not in session.subscriptions
        session.subscriptions[entry.topic_filter] = entry
        if entry.group is None:
            self.tree.add(entry.match_filter, session.client_id, (session, entry))
        else:
            key = (entry.group, session.client_id)
            self.tree.add(entry.match_filter, key, (session, entry))
            gkey = (entry.group, entry.match_filter)
            self.groups.setdefault(gkey, {})[session.client_id] = (session, entry)
        self._match_cache.clear()
        for listener in self.subscription_listeners:
            listener(session, entry, True)
        return is_new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        """Remove one subscription; False if it did not exist."""
        entry = session.subscriptions.pop(topic_filter, None)
        if entry is None:
            return False
        self._unindex(session, entry)
        return True

    def _unindex(self, session: Session, entry: SubEntry) -> None:
        self._match_cache.clear()
        for listener in self.subscription_listeners:
            listener(session, entry, False)
        if entry.group is None:
            self.tree.remove(entry.match_filter, session.client_id)
            return
        self.tree.remove(entry.match_filter, (entry.group, session.client_id))
        gkey = (entry.group, entry.match_filter)
        members = self.groups.get(gkey)
        if members is not None:
            members.pop(session.client_id, None)
            if not members:
                del self.groups[gkey]
                self._rr.pop(gkey, None)

    def remove_session(self, session: Session) -> None:
        """Remove every subscription of ``session`` from the index."""
        for entry in session.subscriptions.values():
            self._unindex(session, entry)
        session.subscriptions.clear()

    @property
    def subscription_count(self) -> int:
        """Number of subscriptions in the index."""
        return len(self.tree)

    def route(self, message: BrokerMessage) -> int:
        """Deliver ``message`` to every matching session; return how many were chosen."""
        cache = self._match_cache
        found = cache.get(message.topic)
        if found is None:
            found = self.tree.match(message.topic)
            if len(cache) >= _MATCH_CACHE_SIZE:
                cache.clear()
            cache[message.topic] = found
        if not found:
            return 0
        origin = message.origin
        mqos = message.qos
        if len(found) == 1:
            session, entry = found[0][2]
            if entry.group is None:
                if entry.no_local and session.client_id == origin:
                    return 0  # [MQTT-3.8.3-3]
                sid = entry.sub_id
                self._deliver(
                    session,
                    Delivery(
                        message,
                        entry.qos if entry.qos < mqos else mqos,
                        message.retain and entry.retain_as_published,  # [MQTT-3.3.1-12/13]
                        (sid,) if sid else (),
                    ),
                )
                return 1
        merged: dict[str, list[object]] = {}
        matched_groups: set[GroupKey] = set()
        for _filt, _key, (session, entry) in found:
            if entry.group is not None:
                matched_groups.add((entry.group, entry.match_filter))
                continue
            if entry.no_local and session.client_id == origin:
                continue
            cur = merged.get(session.client_id)
            if cur is None:
                merged[session.client_id] = [
                    session,
                    entry.qos,
                    entry.retain_as_published,
                    [entry.sub_id] if entry.sub_id else [],
                ]
            else:
                if entry.qos > cur[1]:  # type: ignore[operator]
                    cur[1] = entry.qos
                cur[2] = cur[2] or entry.retain_as_published
                if entry.sub_id:
                    cur[3].append(entry.sub_id)  # type: ignore[attr-defined]
        count = 0
        for session_o, qos_o, rap_o, sids_o in merged.values():
            assert isinstance(session_o, Session)
            assert isinstance(qos_o, int)
            assert isinstance(sids_o, list)
            self._deliver(
                session_o,
                Delivery(
                    message,
                    qos_o if qos_o < mqos else mqos,
                    message.retain and bool(rap_o),
                    tuple(sorted(sids_o)),
                ),
            )
            count += 1
        for gkey in matched_groups:
            if self.deliver_shared(message, gkey, None):
                count += 1
        return count

    def deliver_shared(
        self, message: BrokerMessage, gkey: GroupKey, exclude: Session | None
    ) -> bool:
        """Give ``message`` to one member of a shared-subscription group (section 4.8.2):
        round-robin over online members, or an offline one if none is online."""
        members = self.groups.get(gkey)
        if not members:
            return False
        pool = [m for m in members.values() if m[0] is not exclude]
        if not pool:
            return False
        start = self._rr.get(gkey, 0)
        n = len(pool)
        chosen = pool[start % n]
        for i in range(n):
            candidate = pool[(start + i) % n]
            if candidate[0].online:
                chosen = candidate
                start = start + i
                break
        self._rr[gkey] = start + 1
        session, entry = chosen
        sid = entry.sub_id
        self._deliver(
            session,
            Delivery(
                message,
                min(entry.qos, message.qos),
                message.retain and entry.retain_as_published,
                (sid,) if sid else (),
                gkey,
            ),
        )
        return True
