"""Access control in Mosquitto's ``acl_file`` format.

The file
--------
One rule per line; blank lines and lines whose first non-blank character is ``#`` are ignored::

    # before any "user" line: rules for anonymous clients (no user name)
    topic read public/#

    user alice                      # the rules below apply to the client logged in as alice
    topic readwrite alice/#
    topic deny alice/secret
    topic read $SYS/#

    pattern write devices/%c/status # patterns apply to every client, wherever they appear
    pattern read users/%u/#

``topic [read|write|readwrite|deny] <filter>``: the access (default ``readwrite``) to topics
matching ``<filter>``, which may hold ``+`` and ``#`` and, when an access is given, spaces.
``pattern`` is the same with ``%c`` replaced by the client identifier and ``%u`` by the user
name. ``user <name>`` starts the section of that user (sections of one name add up). A malformed
line refuses the file with a :class:`~mqttv5.protocol.errors.ConfigError` naming the file and
the line, as Mosquitto 2.0 refuses to start.

Which rules apply to a client: the ``topic`` rules of its user's section (the rules before the
first ``user`` line for a client without a user name; none for a user without a section), and
every ``pattern``. A pattern with ``%u`` does not apply to a client without a user name.

The decision
------------
1. Any applicable ``deny`` rule matching the topic refuses, whatever else matches.
2. Otherwise any applicable rule granting the access (``read`` or ``write``) allows.
3. Otherwise access is refused: with an ACL file, only what is listed is allowed.

Topic matching is MQTT's, so a rule starting with a wildcard (``#``, ``+/x``) never matches a
topic starting with ``$`` [MQTT-4.7.2-1]: ``$SYS/#`` is readable only where a rule naming
``$SYS`` allows it.

Substitution is per level and literal: ``%c`` and ``%u`` may be a whole level (as Mosquitto's
manual asks) or part of one (``dev_%c``, which Mosquitto 2.0 accepts too), and the substituted
text is compared as text, so a client id containing ``/``, ``+`` or ``#`` cannot widen a rule
(CVE-2017-7650). Like Mosquitto, a pattern does not *grant* anything when the value it would
substitute contains ``+`` or ``#``.

Subscriptions
-------------
A SUBSCRIBE is checked against the topic filter as a set of topics (for ``$share/{group}/{f}``,
the inner filter ``f``), with :meth:`AclFile.can_subscribe`:

- :attr:`SubscribeAccess.DENIED` when no topic the filter matches can be readable: no readable
  rule overlaps it, or one ``deny`` rule covers all of it. Answer 0x87 Not authorized.
- :attr:`SubscribeAccess.GRANTED` when one readable rule covers the whole filter and no ``deny``
  rule overlaps it: every message the subscription matches may be delivered.
- :attr:`SubscribeAccess.PARTIAL` otherwise (``#`` for a client allowed ``sensors/#``): the
  subscription is granted and each message is checked on delivery with :meth:`AclFile.can_read`.

GRANTED and DENIED are exact; PARTIAL is the safe answer when neither can be shown with one
rule, so a few subscriptions that could be GRANTED cost a check per message instead.

Differences from Mosquitto 2.0, deliberate:

- Mosquitto 2.0 grants every SUBSCRIBE and only filters on delivery; we refuse a subscription
  that can never deliver anything (0x87), which tells the client at once.
- Mosquitto 2.0 checks a user's ``topic`` rules (its denies first) before the ``pattern`` rules,
  so a user's ``topic readwrite a/#`` beats a ``pattern deny a/b``. Its manual says "deny topics
  are handled before topics that grant read/write access"; we apply that to all applicable
  rules: a matching deny always wins.

Decisions are cached per (client id, user name, topic) in a bounded LRU dictionary, cleared by
:meth:`AclFile.reload`; the client id is part of the key only when some pattern uses ``%c``.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Final, Protocol

from mqttv5.protocol.errors import ConfigError, ProtocolError
from mqttv5.protocol.topics import SHARE_PREFIX, parse_shared, validate_topic_filter

__all__ = [
    "ALLOW_ALL",
    "Access",
    "AclFile",
    "AclPolicy",
    "AclRule",
    "AllowAll",
    "SubscribeAccess",
    "filter_covers",
    "filters_intersect",
]

log = logging.getLogger("mqttv5.broker")

Levels = tuple[str, ...]
_Key = tuple[int, str | None, str | None, str]  # (operation, client id or None, user, topic)


class Access(IntFlag):
    """What a rule grants; DENY grants nothing and refuses what it matches."""

    DENY = 0
    READ = 1
    WRITE = 2
    READWRITE = 3


_ACCESS: Final = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.DENY,
}


class SubscribeAccess(IntEnum):
    """The answer to a SUBSCRIBE's topic filter; DENIED is falsy."""

    DENIED = 0  #: nothing the filter matches is readable: refuse (0x87 Not authorized)
    PARTIAL = 1  #: grant, and check each message with ``can_read`` on delivery
    GRANTED = 2  #: grant; everything the filter matches is readable


_Decider = Callable[[int, str, str | None, str], bool | SubscribeAccess]


class AclPolicy(Protocol):
    """Topic access decisions, asked by the broker on PUBLISH, SUBSCRIBE and delivery."""

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """May this client publish to ``topic`` (a topic name)?"""
        ...

    def can_subscribe(
        self, client_id: str, username: str | None, topic_filter: str
    ) -> SubscribeAccess:
        """May this client subscribe to ``topic_filter``, and must deliveries be checked?"""
        ...

    def can_read(self, client_id: str, username: str | None, topic: str) -> bool:
        """May this client receive a message published to ``topic``?"""
        ...


class AllowAll:
    """The policy without an ACL file: everything is allowed (as Mosquitto without acl_file)."""

    generation = 0

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """Always True."""
        return True

    def can_subscribe(
        self, client_id: str, username: str | None, topic_filter: str
    ) -> SubscribeAccess:
        """Always GRANTED."""
        return SubscribeAccess.GRANTED

    def can_read(self, client_id: str, username: str | None, topic: str) -> bool:
        """Always True."""
        return True


ALLOW_ALL: Final = AllowAll()


# --- filters as sets of topics ------------------------------------------------------------------


def _dollar_mismatch(a: Levels, b: Levels) -> bool:
    """[MQTT-4.7.2-1] a filter starting with a wildcard matches no topic starting with '$'."""
    a0, b0 = a[0], b[0]
    if a0 in ("+", "#"):
        return b0.startswith("$")
    return b0 in ("+", "#") and a0.startswith("$")


def _matches(rule: Levels, topic: Levels) -> bool:
    """Whether the filter ``rule`` matches the topic name ``topic`` (both split into levels)."""
    if rule[0] in ("+", "#") and topic[0].startswith("$"):
        return False
    n = len(topic)
    for i, level in enumerate(rule):
        if level == "#":
            return True  # the rest, including nothing ("a/#" matches "a")
        if i >= n or (level != "+" and level != topic[i]):
            return False
    return len(rule) == n


def _covers(a: Levels, f: Levels) -> bool:
    """Whether every topic the filter ``f`` matches is matched by the filter ``a``."""
    if _dollar_mismatch(a, f):
        return False
    for i, level in enumerate(a):
        if level == "#":
            return True  # f matched a[:i] level by level, so its topics are at least i long
        if i >= len(f):
            return False  # f matches a topic shorter than anything a matches
        other = f[i]
        if other == "#":
            # f matches f[:i] plus any number of levels: zero of them when i > 0, which a (not
            # ending here) misses, one or more when i == 0, which only "+/#" covers.
            return i == 0 and level == "+" and a[1:] == ("#",)
        if level != "+" and level != other:
            return False  # a literal covers only the same literal
    return len(a) == len(f)


def _intersects(a: Levels, f: Levels) -> bool:
    """Whether some topic is matched by both filters."""
    if _dollar_mismatch(a, f):
        return False
    for i in range(max(len(a), len(f))):
        x = a[i] if i < len(a) else None
        y = f[i] if i < len(f) else None
        if x == "#" or y == "#":
            return True  # '#' takes the other's remaining levels (or none, past level 0)
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic the filter ``inner`` matches is matched by the filter ``outer``."""
    return _covers(tuple(outer.split("/")), tuple(inner.split("/")))


def filters_intersect(a: str, b: str) -> bool:
    """Whether some topic name is matched by both topic filters."""
    return _intersects(tuple(a.split("/")), tuple(b.split("/")))


# --- rules --------------------------------------------------------------------------------------

_PLACEHOLDER: Final = re.compile(r"%[cu]")


def _has_wildcard(value: str) -> bool:
    return "+" in value or "#" in value


@dataclass(frozen=True, slots=True)
class AclRule:
    """One ``topic`` or ``pattern`` line.

    Attributes:
        kind: ``"topic"`` or ``"pattern"``.
        access: what it grants (DENY: refuses).
        topic_filter: the filter as written (``%c`` / ``%u`` unsubstituted in a pattern).
        user: the section a ``topic`` rule is in (None: anonymous clients); None for patterns.
        line: its line number in the file.
    """

    kind: str
    access: Access
    topic_filter: str
    user: str | None = None
    line: int = 0
    levels: Levels = field(init=False, repr=False, compare=False)
    uses_client_id: bool = field(init=False, repr=False, compare=False)
    uses_username: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = self.kind == "pattern"
        object.__setattr__(self, "levels", tuple(self.topic_filter.split("/")))
        object.__setattr__(self, "uses_client_id", pattern and "%c" in self.topic_filter)
        object.__setattr__(self, "uses_username", pattern and "%u" in self.topic_filter)

    def levels_for(self, client_id: str, username: str | None) -> Levels | None:
        """The rule's levels for one client: a pattern's placeholders substituted; None when
        the rule cannot apply (``%u`` without a user name; a grant that would substitute ``+``
        or ``#``)."""
        if not (self.uses_client_id or self.uses_username):
            return self.levels
        if self.uses_username and username is None:
            return None
        user = username or ""
        if self.access and (
            (self.uses_client_id and _has_wildcard(client_id))
            or (self.uses_username and _has_wildcard(user))
        ):
            return None  # as Mosquitto: such a client gets nothing from patterns
        values = {"%c": client_id, "%u": user}
        return tuple(
            _PLACEHOLDER.sub(lambda m: values[m[0]], level) if "%" in level else level
            for level in self.levels
        )


@dataclass(slots=True)
class _Applicable:
    denies: list[Levels]
    grants: list[tuple[Levels, Access]]


def _parse_rule(keyword: str, rest: str, user: str | None, number: int) -> AclRule:
    fields = rest.split(None, 1)
    if not fields:
        raise ValueError(f"'{keyword}' without a topic filter")
    if len(fields) == 2:
        access = _ACCESS.get(fields[0])
        if access is None:
            raise ValueError(
                f"unknown access {fields[0]!r} (read, write, readwrite or deny; a topic filter "
                "with spaces needs one)"
            )
        topic_filter = fields[1].strip()
    else:
        access, topic_filter = Access.READWRITE, fields[0]
    try:
        validate_topic_filter(topic_filter)
    except ProtocolError as exc:
        raise ValueError(f"invalid topic filter {topic_filter!r}: {exc}") from None
    if keyword == "topic":
        return AclRule("topic", access, topic_filter, user, number)
    return AclRule("pattern", access, topic_filter, None, number)


def parse_rules(text: str, source: str | None = None) -> list[AclRule]:
    """Read ACL file text into rules (see the module docstring for the format).

    Raises:
        ConfigError: a malformed line, with key ``line N`` and ``source`` as its file.
    """
    rules: list[AclRule] = []
    user: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip(" \t\r\n")
        if not line or line.startswith("#"):
            continue
        keyword, *others = line.split(None, 1)
        rest = others[0] if others else ""
        try:
            if keyword == "user":
                if not rest:
                    raise ValueError("'user' without a user name")
                user = rest
                continue
            if keyword not in ("topic", "pattern"):
                raise ValueError(f"unknown keyword {keyword!r} (expected topic, pattern or user)")
            rule = _parse_rule(keyword, rest, user, number)
        except ValueError as exc:
            raise ConfigError(f"line {number}", str(exc), source) from exc
        rules.append(rule)
        if rule.kind == "pattern" and not (rule.uses_client_id or rule.uses_username):
            log.warning(
                "%s: line %d: pattern %r contains neither %%c nor %%u: it applies to everyone",
                source or "acl file", number, rule.topic_filter,
            )  # fmt: skip
    return rules


class AclFile:
    """The rules of one ACL file, and the decisions the broker asks for.

    One object per ACL file; listeners sharing a file share it. Every ``can_*`` method is
    synchronous, cheap after the first call for a (client, user, topic) and safe to call on the
    event loop.

    Args:
        rules: the parsed rules, in file order.
        path: the file, for :meth:`reload`.
        cache_size: most decisions remembered.
    """

    def __init__(
        self, rules: Iterable[AclRule], path: str | None = None, *, cache_size: int = 65_536
    ) -> None:
        self.path = path
        self.cache_size = cache_size
        self.generation = 0
        self._cache: OrderedDict[_Key, bool | SubscribeAccess] = OrderedDict()
        self._install(list(rules))

    @classmethod
    def load(cls, path: str, *, cache_size: int = 65_536) -> AclFile:
        """Read and check an ACL file.

        Raises:
            ConfigError: the file cannot be read or is not UTF-8 (key ``acl_file``), or a line is
                malformed (key ``line N``).
        """
        return cls(_read_rules(path), path, cache_size=cache_size)

    @classmethod
    def parse(cls, text: str, source: str | None = None, *, cache_size: int = 65_536) -> AclFile:
        """Rules from text (see the module docstring); ``source`` names it in errors."""
        return cls(parse_rules(text, source), source, cache_size=cache_size)

    def reload(self) -> None:
        """Re-read the file (on SIGHUP) and forget cached decisions; ``generation`` goes up.

        On error the previous rules stay in force. Subscriptions made under the old rules keep
        their SubscribeAccess: a broker that wants them re-checked compares ``generation``.

        Raises:
            ConfigError: the file cannot be read or is malformed.
        """
        if self.path is None:
            raise ValueError("these rules were not loaded from a file")
        self._install(_read_rules(self.path))
        self.generation += 1

    @property
    def rules(self) -> tuple[AclRule, ...]:
        """Every rule, in file order."""
        return self._rules

    # --- decisions ------------------------------------------------------------------------------

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """May this client publish to the topic name ``topic``? Call on PUBLISH (and for a
        Will Message, at CONNECT or when it is sent); refuse with 0x87 Not authorized."""
        return bool(self._cached(0, client_id, username, topic, self._decide_topic))

    def can_read(self, client_id: str, username: str | None, topic: str) -> bool:
        """May this client receive a message published to ``topic``? Call on delivery for
        subscriptions that were PARTIAL (retained messages included)."""
        return bool(self._cached(1, client_id, username, topic, self._decide_topic))

    def can_subscribe(
        self, client_id: str, username: str | None, topic_filter: str
    ) -> SubscribeAccess:
        """Check a SUBSCRIBE's topic filter (see the module docstring, *Subscriptions*)."""
        answer = self._cached(2, client_id, username, topic_filter, self._decide_filter)
        assert isinstance(answer, SubscribeAccess)
        return answer

    # --- internals ------------------------------------------------------------------------------

    def _install(self, rules: Sequence[AclRule]) -> None:
        self._rules = tuple(rules)
        self._sections: dict[str | None, list[AclRule]] = {}
        for rule in rules:
            if rule.kind == "topic":
                self._sections.setdefault(rule.user, []).append(rule)
        self._patterns = [r for r in rules if r.kind == "pattern"]
        self._keyed_by_client = any(r.uses_client_id for r in self._patterns)
        self._cache.clear()

    def _cached(
        self, op: int, client_id: str, username: str | None, subject: str, decide: _Decider
    ) -> bool | SubscribeAccess:
        key = (op, client_id if self._keyed_by_client else None, username, subject)
        cache = self._cache
        try:
            answer = cache[key]
        except KeyError:
            pass
        else:
            cache.move_to_end(key)
            return answer
        answer = decide(op, client_id, username, subject)
        cache[key] = answer
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return answer

    def _applicable(self, client_id: str, username: str | None) -> _Applicable:
        found = _Applicable([], [])
        for rule in (*self._sections.get(username, ()), *self._patterns):
            levels = rule.levels_for(client_id, username)
            if levels is None:
                continue
            if rule.access:
                found.grants.append((levels, rule.access))
            else:
                found.denies.append(levels)
        return found

    def _decide_topic(self, op: int, client_id: str, username: str | None, topic: str) -> bool:
        need = Access.WRITE if op == 0 else Access.READ
        rules = self._applicable(client_id, username)
        levels = tuple(topic.split("/"))
        if any(_matches(deny, levels) for deny in rules.denies):
            return False
        return any(
            bool(access & need) and _matches(grant, levels) for grant, access in rules.grants
        )

    def _decide_filter(
        self, op: int, client_id: str, username: str | None, topic_filter: str
    ) -> SubscribeAccess:
        if topic_filter.startswith(SHARE_PREFIX):
            try:
                topic_filter = parse_shared(topic_filter)[1]
            except ProtocolError:
                return SubscribeAccess.DENIED
        rules = self._applicable(client_id, username)
        f = tuple(topic_filter.split("/"))
        if any(_covers(deny, f) for deny in rules.denies):
            return SubscribeAccess.DENIED
        readable = [grant for grant, access in rules.grants if access & Access.READ]
        if not any(_intersects(grant, f) for grant in readable):
            return SubscribeAccess.DENIED
        if any(_covers(grant, f) for grant in readable) and not any(
            _intersects(deny, f) for deny in rules.denies
        ):
            return SubscribeAccess.GRANTED
        return SubscribeAccess.PARTIAL


def _read_rules(path: str) -> Sequence[AclRule]:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("acl_file", f"cannot read {path}: {reason}", path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("acl_file", f"{path} is not UTF-8 text: {exc.reason}", path) from exc
    return parse_rules(text, path)
