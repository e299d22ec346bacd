"""The broker's subscription index: a trie of topic filters keyed by topic level.

Each node stands for one topic-filter prefix and holds the entries of subscriptions whose filter
ends there, keyed by ``K`` (typically a client id). :meth:`TopicTree.match` walks the trie level by
level with an explicit frontier (never recursion, so a 1,000-level topic is safe), visiting only
the nodes that can match: the exact level, ``+`` and ``#`` at each step. Its cost depends on the
depth of the name and the number of matching wildcard branches, not on the number of
subscriptions.

The tree does not validate filters or names (validate them with :mod:`mqttv5.protocol.topics`
first) and does not interpret keys or values. Shared subscriptions are stored by the router under
their inner filter with a key of its own choosing. The matching rules mirror
:func:`mqttv5.protocol.topics.matches`, against which this module is property-tested.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["TopicTree"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Node(Generic[K, V]):
    """One topic-filter prefix: its children by next level and the entries that end here."""

    __slots__ = ("children", "entries", "filter", "results")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.entries: dict[K, V] = {}
        # The full filter of the entries stored here; set when the first entry is added, so
        # interior nodes of a deep filter do not each hold a copy of their prefix.
        self.filter = ""
        # match()'s answer for this node, built on first use after a change. Subscriptions change
        # far less often than messages are published, so match() then allocates no tuple per
        # entry; building lazily keeps a burst of N subscriptions to one filter O(N), not O(N^2).
        self.results: tuple[tuple[str, K, V], ...] | None = None

    def build_results(self) -> tuple[tuple[str, K, V], ...]:
        """Build, cache and return the ``(filter, key, value)`` tuples of this node's entries."""
        f = self.filter
        results = self.results = tuple([(f, k, v) for k, v in self.entries.items()])
        return results


class TopicTree(Generic[K, V]):
    """A subscription index: ``(topic filter, key) -> value``, searchable by topic name.

    Not thread-safe; the broker uses it from its event loop only.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """Return the number of ``(filter, key)`` entries."""
        return self._count

    def add(self, filt: str, key: K, value: V) -> bool:
        """Store ``value`` for ``(filt, key)``, replacing any value already stored.

        Args:
            filt: a valid, non-shared topic filter.
            key: who subscribes (typically a client id).
            value: what to return from :meth:`match` (typically a subscription object).

        Returns:
            True if the entry is new, False if it replaced an existing one.
        """
        node = self._root
        for level in filt.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        entries = node.entries
        new = key not in entries
        entries[key] = value
        node.results = None
        if new:
            node.filter = filt
            self._count += 1
        return new

    def _find(self, filt: str) -> _Node[K, V] | None:
        node = self._root
        for level in filt.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node

    def get(self, filt: str, key: K) -> V | None:
        """Return the value stored for ``(filt, key)``, or None if there is none."""
        node = self._find(filt)
        return None if node is None else node.entries.get(key)

    def remove(self, filt: str, key: K) -> V | None:
        """Remove the entry for ``(filt, key)`` and prune the nodes left empty.

        Returns:
            The value that was stored, or None if there was no such entry.
        """
        levels = filt.split("/")
        path = [self._root]
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                return None
            path.append(child)
            node = child
        if key not in node.entries:
            return None
        value = node.entries.pop(key)
        node.results = None
        self._count -= 1
        # Prune bottom-up: path[i + 1] is the child of path[i] reached through levels[i].
        for i in range(len(levels) - 1, -1, -1):
            child = path[i + 1]
            if child.entries or child.children:
                break
            del path[i].children[levels[i]]
        return value

    def match(self, name: str) -> list[tuple[str, K, V]]:
        """Return every ``(filter, key, value)`` whose filter matches the topic name ``name``.

        Args:
            name: a valid topic name (no wildcards).

        Returns:
            A new list with one tuple per matching entry, in no particular order; each entry
            appears once. The tuples themselves are cached and shared between calls.
        """
        out: list[tuple[str, K, V]] = []
        levels = name.split("/")
        root_children = self._root.children
        frontier: list[_Node[K, V]] = []
        first = levels[0]
        # Level 0 on its own, for the '$' rule: [MQTT-4.7.2-1] filters starting with '+' or '#'
        # do not match names starting with '$'.
        if first[:1] == "$":
            child = root_children.get(first)
            if child is not None:
                frontier.append(child)
        else:
            hash_node = root_children.get("#")
            if hash_node is not None:
                out.extend(hash_node.results or hash_node.build_results())
            child = root_children.get(first)
            if child is not None:
                frontier.append(child)
            child = root_children.get("+")
            if child is not None:
                frontier.append(child)
        for i in range(1, len(levels)):
            if not frontier:
                return out
            level = levels[i]
            nxt: list[_Node[K, V]] = []
            for node in frontier:
                children = node.children
                if not children:
                    continue
                # '#' matches this level and all that follow.
                hash_node = children.get("#")
                if hash_node is not None:
                    out.extend(hash_node.results or hash_node.build_results())
                child = children.get(level)
                if child is not None:
                    nxt.append(child)
                # '+' matches exactly this level, even when it is empty.
                child = children.get("+")
                if child is not None:
                    nxt.append(child)
            frontier = nxt
        for node in frontier:
            if node.entries:
                out.extend(node.results or node.build_results())
            # '#' also matches the parent level: "sport/#" matches "sport".
            hash_node = node.children.get("#")
            if hash_node is not None:
                out.extend(hash_node.results or hash_node.build_results())
        return out

    def filters(self) -> Iterator[str]:
        """Yield each topic filter that has at least one entry, once, in no particular order.

        Do not modify the tree while iterating.
        """
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.entries:
                yield node.filter
            stack.extend(node.children.values())
