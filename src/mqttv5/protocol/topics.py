"""Topic names, topic filters and shared subscriptions (sections 4.7 and 4.8.2).

The validators and :func:`matches` run once per PUBLISH or subscription, so they use plain
string operations (``in``, ``find``, ``count``, ``split``): no regular expression, no recursion,
linear time in the length of their arguments. :func:`matches` is the reference matcher: the
broker's trie (:mod:`mqttv5.broker.topic_tree`) is property-tested against it.

Names and filters are compared exactly as received, with no normalization [MQTT-4.7.3-4]. Topics
beginning with ``$`` are syntactically ordinary here; whether a client may publish to one (``$SYS``)
is broker policy.
"""

from __future__ import annotations

from typing import Final

from .errors import RemoteProtocolError
from .reason_codes import ReasonCode

__all__ = [
    "DEFAULT_MAX_LEVELS",
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "is_wildcard",
    "matches",
    "parse_shared",
    "topic_levels",
    "validate_topic_filter",
    "validate_topic_name",
]

MAX_TOPIC_BYTES: Final = 65535
"""[MQTT-4.7.3-3] A topic name or filter encodes to at most 65,535 bytes of UTF-8."""

DEFAULT_MAX_LEVELS: Final = 128
"""Our limit on the number of levels; the specification sets none. It bounds trie depth."""

SHARE_PREFIX: Final = "$share/"
"""The prefix of a shared-subscription topic filter [MQTT-4.8.2-1]."""

_SHARE_PREFIX_LEN: Final = len(SHARE_PREFIX)

# A str of n code points encodes to at most 4n bytes, so strings this short need no encoding to
# prove they fit in MAX_TOPIC_BYTES (lone surrogates, which UTF-8 cannot encode, are the codec's
# business: [MQTT-1.5.4-1]).
_SURELY_SHORT: Final = MAX_TOPIC_BYTES // 4

_NAME_INVALID: Final = ReasonCode.TOPIC_NAME_INVALID
_FILTER_INVALID: Final = ReasonCode.TOPIC_FILTER_INVALID


def _utf8_length(text: str) -> int:
    # "surrogatepass" so that an unencodable string still gets a length instead of an exception.
    return len(text.encode("utf-8", "surrogatepass"))


def validate_topic_name(name: str, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
    """Check that ``name`` is a valid topic name, as in a PUBLISH or a Will Topic.

    Args:
        name: the topic name, already decoded from UTF-8.
        max_levels: the largest number of ``/``-separated levels accepted.

    Raises:
        RemoteProtocolError: with Topic Name invalid (0x90) if the name is empty, contains a
            wildcard or U+0000, is longer than 65,535 UTF-8 bytes or has too many levels.
    """
    if not name:
        # [MQTT-4.7.3-1] A topic name is at least one character long.
        raise RemoteProtocolError(_NAME_INVALID, "topic name is empty")
    if "+" in name or "#" in name:
        # [MQTT-4.7.0-1] [MQTT-3.3.2-2] Wildcards may appear in topic filters, never in names.
        raise RemoteProtocolError(_NAME_INVALID, f"topic name contains a wildcard: {name!r}")
    if "\x00" in name:
        # [MQTT-4.7.3-2] No U+0000 in a topic name.
        raise RemoteProtocolError(_NAME_INVALID, "topic name contains U+0000")
    if len(name) > _SURELY_SHORT and _utf8_length(name) > MAX_TOPIC_BYTES:
        # [MQTT-4.7.3-3] At most 65,535 bytes once encoded.
        raise RemoteProtocolError(_NAME_INVALID, "topic name is longer than 65535 bytes")
    if name.count("/") >= max_levels:
        raise RemoteProtocolError(_NAME_INVALID, f"topic name has more than {max_levels} levels")


def validate_topic_filter(filt: str, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
    """Check that ``filt`` is a valid topic filter, as in a SUBSCRIBE or an UNSUBSCRIBE.

    A shared-subscription filter (``$share/{ShareName}/{filter}``) is checked with
    :func:`parse_shared`; ``max_levels`` then applies to its inner filter.

    Args:
        filt: the topic filter, already decoded from UTF-8.
        max_levels: the largest number of ``/``-separated levels accepted.

    Raises:
        RemoteProtocolError: with Topic Filter invalid (0x8F) if the filter is empty, misplaces a
            wildcard, contains U+0000, is longer than 65,535 UTF-8 bytes, has too many levels, or is
            a malformed shared-subscription filter.
    """
    if filt.startswith(SHARE_PREFIX):
        parse_shared(filt, max_levels)
    else:
        _check_filter(filt, max_levels)


def _check_filter(filt: str, max_levels: int) -> None:
    """Validate a topic filter that is not split as a shared subscription."""
    if not filt:
        # [MQTT-4.7.3-1] A topic filter is at least one character long.
        raise RemoteProtocolError(_FILTER_INVALID, "topic filter is empty")
    last = len(filt) - 1
    hash_at = filt.find("#")
    # [MQTT-4.7.1-1] '#' stands alone in its level and is the filter's last character. The first
    # '#' being the last character also proves that there is only one.
    if hash_at != -1 and (hash_at != last or (hash_at > 0 and filt[hash_at - 1] != "/")):
        raise RemoteProtocolError(
            _FILTER_INVALID, f"'#' must be the last level, alone in it: {filt!r}"
        )
    plus_at = filt.find("+")
    while plus_at != -1:
        # [MQTT-4.7.1-2] '+' occupies a whole level: '/' or an end on either side.
        if (plus_at > 0 and filt[plus_at - 1] != "/") or (
            plus_at < last and filt[plus_at + 1] != "/"
        ):
            raise RemoteProtocolError(_FILTER_INVALID, f"'+' must be alone in its level: {filt!r}")
        plus_at = filt.find("+", plus_at + 1)
    if "\x00" in filt:
        # [MQTT-4.7.3-2] No U+0000 in a topic filter.
        raise RemoteProtocolError(_FILTER_INVALID, "topic filter contains U+0000")
    if len(filt) > _SURELY_SHORT and _utf8_length(filt) > MAX_TOPIC_BYTES:
        # [MQTT-4.7.3-3] At most 65,535 bytes once encoded.
        raise RemoteProtocolError(_FILTER_INVALID, "topic filter is longer than 65535 bytes")
    if filt.count("/") >= max_levels:
        raise RemoteProtocolError(
            _FILTER_INVALID, f"topic filter has more than {max_levels} levels"
        )


def parse_shared(filt: str, max_levels: int = DEFAULT_MAX_LEVELS) -> tuple[str | None, str]:
    """Split a shared-subscription filter into its ShareName and inner topic filter.

    The inner filter is validated too. It is taken literally even when it begins with
    ``$share/`` itself: ``$share/a/$share/b/c`` is the group ``a`` subscribed to the filter
    ``$share/b/c``, which no topic a client can publish to is likely to match.

    Args:
        filt: a topic filter as received in a SUBSCRIBE or UNSUBSCRIBE.
        max_levels: the largest number of levels accepted in the inner filter.

    Returns:
        ``(share_name, inner_filter)``, or ``(None, filt)`` if ``filt`` does not begin with
        ``$share/`` (the prefix is case-sensitive); ``filt`` is not validated in that case.

    Raises:
        RemoteProtocolError: with Topic Filter invalid (0x8F), naming the problem, if the ShareName
            is empty or contains ``+`` or ``#``, or if no valid topic filter follows it.
    """
    if not filt.startswith(SHARE_PREFIX):
        return None, filt
    group, slash, inner = filt[_SHARE_PREFIX_LEN:].partition("/")
    if not group:
        # [MQTT-4.8.2-1] "$share/" is followed by a ShareName of at least one character.
        raise RemoteProtocolError(_FILTER_INVALID, f"empty ShareName in {filt!r}")
    if "+" in group or "#" in group:
        # [MQTT-4.8.2-2] The ShareName contains no '/', '+' or '#' ('/' ends it, by construction).
        raise RemoteProtocolError(
            _FILTER_INVALID, f"ShareName {group!r} contains a wildcard character"
        )
    if not slash or not inner:
        # [MQTT-4.8.2-2] The ShareName is followed by '/' and then a topic filter.
        raise RemoteProtocolError(
            _FILTER_INVALID, f"no topic filter after ShareName {group!r} in {filt!r}"
        )
    _check_filter(inner, max_levels)
    return group, inner


def is_wildcard(filt: str) -> bool:
    """Return True if the topic filter contains a ``+`` or ``#`` wildcard."""
    return "+" in filt or "#" in filt


def topic_levels(name: str) -> list[str]:
    """Split a topic name or filter into levels, keeping empty ones (``/a`` -> ``["", "a"]``)."""
    return name.split("/")


def matches(filt: str, name: str) -> bool:
    """Return True if the topic filter ``filt`` matches the topic name ``name``.

    This is the reference matcher: linear in the lengths of its arguments, with no regular
    expression and no recursion.

    Args:
        filt: a valid topic filter that is not a shared-subscription filter (pass the inner
            filter from :func:`parse_shared`).
        name: a valid topic name.

    Returns:
        Whether a subscription to ``filt`` receives messages published to ``name``.
    """
    first = filt[:1]
    if (first == "+" or first == "#") and name[:1] == "$":
        # [MQTT-4.7.2-1] A filter starting with a wildcard never matches a name starting with '$'.
        return False
    if "+" not in filt and "#" not in filt:
        return filt == name  # [MQTT-4.7.3-4] exact comparison, no normalization.
    filter_levels = filt.split("/")
    name_levels = name.split("/")
    n_name = len(name_levels)
    for i, level in enumerate(filter_levels):
        if level == "#":
            # '#' matches the remaining levels, including none: "sport/#" matches "sport".
            return True
        if i >= n_name:
            return False
        # '+' matches exactly one level, which may be empty.
        if level != "+" and level != name_levels[i]:
            return False
    return len(filter_levels) == n_name
