"""Tests for mqttv5.protocol.topics: topic names, filters, matching (4.7) and $share (4.8.2)."""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mqttv5.protocol.topics as topics_module
from mqttv5.protocol.errors import ProtocolError, RemoteProtocolError
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.protocol.topics import (
    is_wildcard,
    matches,
    parse_shared,
    topic_levels,
    validate_topic_filter,
    validate_topic_name,
)

# --- helpers ---------------------------------------------------------------------------------


def assert_name_invalid(name: str, max_levels: int = 128) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_name(name, max_levels)
    assert info.value.reason_code is ReasonCode.TOPIC_NAME_INVALID
    return info.value


def assert_filter_invalid(filt: str, max_levels: int = 128) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_filter(filt, max_levels)
    assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID
    return info.value


def oracle(filt: str, name: str) -> bool:
    """An independent matcher for the property tests: an *escaped* regular expression.

    Slow and fine for tests; the point is that it is written differently from matches().
    """
    if filt[:1] in ("+", "#") and name[:1] == "$":
        return False
    levels = filt.split("/")
    tail = ""
    if levels[-1] == "#":
        levels.pop()
        if not levels:
            return True
        tail = "(?:/.*)?"
    pattern = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    return re.fullmatch(pattern + tail, name, re.DOTALL) is not None


# Levels over the alphabet the brief asks for, including the characters a regex matcher mishandles.
LEVEL_TEXT = st.text(alphabet="ab.$", max_size=3)
NAME_LEVEL = st.one_of(
    st.sampled_from(["", "a", "b", "ab", ".", "a.b", "$", "$SYS", "a$"]), LEVEL_TEXT
)
NAMES = st.lists(NAME_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(NAME_LEVEL, st.just("+")), max_size=5))
    if levels in ([], [""]) or draw(st.booleans()):
        levels.append("#")  # a filter is never empty [MQTT-4.7.3-1]
    return "/".join(levels)


@st.composite
def name_matching(draw: st.DrawFn, filt: str) -> str:
    """A topic name built from ``filt`` by filling in its wildcards (it may still not match: $)."""
    out: list[str] = []
    for level in filt.split("/"):
        if level == "+":
            out.append(draw(NAME_LEVEL))
        elif level == "#":
            out.extend(draw(st.lists(NAME_LEVEL, max_size=2)))
        else:
            out.append(level)
    return "/".join(out) if out else draw(NAME_LEVEL)


# --- 4.7.1 Topic wildcards -------------------------------------------------------------------


class TestTopicWildcards:
    """4.7.1: wildcards belong in topic filters, never in topic names."""

    @pytest.mark.spec("MQTT-4.7.0-1", "MQTT-3.3.2-2")
    @pytest.mark.parametrize(
        "name", ["#", "+", "a/#", "a/+", "a/+/b", "a+", "a#b", "sport/tennis#"]
    )
    def test_topic_name_rejects_wildcards(self, name: str) -> None:
        error = assert_name_invalid(name)
        assert "wildcard" in error.message

    @pytest.mark.spec("MQTT-4.7.0-1")
    @pytest.mark.parametrize("filt", ["#", "+", "a/#", "a/+", "+/+/#"])
    def test_topic_filter_accepts_wildcards(self, filt: str) -> None:
        validate_topic_filter(filt)

    @pytest.mark.parametrize(
        ("filt", "expected"),
        [("a/b", False), ("a/+", True), ("#", True), ("$SYS/x", False), ("a.b", False)],
    )
    def test_is_wildcard(self, filt: str, expected: bool) -> None:
        assert is_wildcard(filt) is expected


class TestMultiLevelWildcard:
    """4.7.1.2: '#' matches any number of levels, including the parent."""

    @pytest.mark.spec("MQTT-4.7.1-1")
    @pytest.mark.parametrize("filt", ["#", "sport/#", "sport/tennis/#", "/#", "+/#", "a//#"])
    def test_valid(self, filt: str) -> None:
        validate_topic_filter(filt)

    @pytest.mark.spec("MQTT-4.7.1-1")
    @pytest.mark.parametrize(
        "filt",
        ["sport/tennis#", "sport/tennis/#/ranking", "#/", "#/a", "a/#/", "##", "a/##", "#a", "a#"],
    )
    def test_invalid(self, filt: str) -> None:
        error = assert_filter_invalid(filt)
        assert "'#'" in error.message

    @pytest.mark.spec("MQTT-4.7.1-1")
    @pytest.mark.parametrize(
        "name",
        [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ],
    )
    def test_spec_example_matches(self, name: str) -> None:
        assert matches("sport/tennis/player1/#", name)

    @pytest.mark.spec("MQTT-4.7.1-1")
    def test_matches_parent_level(self) -> None:
        assert matches("sport/#", "sport")
        assert matches("sport/#", "sport/")
        assert matches("+/#", "sport")

    @pytest.mark.parametrize(
        ("filt", "name"),
        [
            ("a/#", "ab"),  # the regex-matcher bug: '#' must not eat part of a level
            ("a/#", "ab/c"),
            ("sport/tennis/player1/#", "sport/tennis/player2"),
            ("sport/#", "sports"),
            ("a/b/#", "a"),
        ],
    )
    def test_does_not_match(self, filt: str, name: str) -> None:
        assert not matches(filt, name)

    def test_hash_alone_matches_everything_not_dollar(self) -> None:
        for name in ["a", "/", "/finance", "a/b/c", "", "a/$SYS"]:
            assert matches("#", name)


class TestSingleLevelWildcard:
    """4.7.1.3: '+' matches exactly one level, which may be empty."""

    @pytest.mark.spec("MQTT-4.7.1-2")
    @pytest.mark.parametrize(
        "filt", ["+", "+/tennis/#", "sport/+/player1", "+/+", "/+", "a//+", "+/", "+//+"]
    )
    def test_valid(self, filt: str) -> None:
        validate_topic_filter(filt)

    @pytest.mark.spec("MQTT-4.7.1-2")
    @pytest.mark.parametrize(
        "filt", ["sport+", "a/b+", "+a", "++", "a/+b/c", "a/b+/c", "+#", "+/+a"]
    )
    def test_invalid(self, filt: str) -> None:
        assert_filter_invalid(filt)

    @pytest.mark.spec("MQTT-4.7.1-2")
    def test_spec_examples(self) -> None:
        assert matches("sport/tennis/+", "sport/tennis/player1")
        assert matches("sport/tennis/+", "sport/tennis/player2")
        assert not matches("sport/tennis/+", "sport/tennis/player1/ranking")
        assert not matches("sport/+", "sport")
        assert matches("sport/+", "sport/")
        assert matches("+/+", "/finance")
        assert matches("/+", "/finance")
        assert not matches("+", "/finance")

    @pytest.mark.spec("MQTT-4.7.1-2")
    def test_matches_empty_level(self) -> None:
        assert matches("a/+/b", "a//b")
        assert matches("+", "")
        assert matches("+/+/+", "//")
        assert not matches("a/+/b", "a/b")


class TestDollarTopics:
    """4.7.2: topics beginning with '$' are not matched by a leading wildcard."""

    @pytest.mark.spec("MQTT-4.7.2-1")
    @pytest.mark.parametrize(
        ("filt", "name"),
        [
            ("#", "$SYS/monitor/Clients"),
            ("#", "$SYS"),
            ("#", "$"),
            ("+/monitor/Clients", "$SYS/monitor/Clients"),
            ("+", "$SYS"),
            ("+/#", "$SYS/broker"),
            ("+/+", "$share/x"),
        ],
    )
    def test_leading_wildcard_does_not_match_dollar(self, filt: str, name: str) -> None:
        assert not matches(filt, name)

    @pytest.mark.spec("MQTT-4.7.2-1")
    @pytest.mark.parametrize(
        ("filt", "name"),
        [
            ("$SYS/#", "$SYS/monitor/Clients"),
            ("$SYS/#", "$SYS"),
            ("$SYS/monitor/+", "$SYS/monitor/Clients"),
            ("$SYS/+/Clients", "$SYS/monitor/Clients"),
            ("a/+", "a/$SYS"),  # '$' only matters in the first level
            ("a/#", "a/$b/c"),
            ("+/$", "x/$"),
        ],
    )
    def test_dollar_filters_match(self, filt: str, name: str) -> None:
        assert matches(filt, name)

    def test_dollar_names_are_syntactically_valid(self) -> None:
        # Reserved '$' topics are broker policy, not syntax.
        validate_topic_name("$SYS/broker/uptime")
        validate_topic_filter("$SYS/#")


class TestTopicSemantics:
    """4.7.3: length, U+0000, exact comparison."""

    @pytest.mark.spec("MQTT-4.7.3-1")
    def test_empty_rejected(self) -> None:
        assert "empty" in assert_name_invalid("").message
        assert "empty" in assert_filter_invalid("").message

    @pytest.mark.spec("MQTT-4.7.3-1")
    @pytest.mark.parametrize("topic", ["/", "//", "a", " "])
    def test_one_character_is_enough(self, topic: str) -> None:
        validate_topic_name(topic)
        validate_topic_filter(topic)

    @pytest.mark.spec("MQTT-4.7.3-2")
    @pytest.mark.parametrize("topic", ["\x00", "a\x00", "a/\x00/b", "\x00/#"])
    def test_nul_rejected(self, topic: str) -> None:
        assert_filter_invalid(topic)
        if not is_wildcard(topic):
            assert_name_invalid(topic)

    @pytest.mark.spec("MQTT-4.7.3-3")
    def test_length_limit_in_bytes(self) -> None:
        validate_topic_name("a" * 65535)
        validate_topic_filter("a" * 65533 + "/#")
        assert_name_invalid("a" * 65536)
        assert_filter_invalid("a" * 65534 + "/#")
        # Counted in UTF-8 bytes, not characters: 'é' is two bytes, '€' three, '😀' four.
        validate_topic_name("é" * 32767 + "a")
        assert_name_invalid("é" * 32768)
        assert_name_invalid("€" * 21846)
        assert_filter_invalid("😀" * 16384)
        validate_topic_name("😀" * 16383 + "abc")

    def test_level_limit(self) -> None:
        validate_topic_name("/".join("a" * 128))
        validate_topic_filter("/".join("+" * 127) + "/#")
        assert "levels" in assert_name_invalid("/".join("a" * 129)).message
        assert "levels" in assert_filter_invalid("/".join("+" * 128) + "/#").message
        assert_name_invalid("a/b/c", max_levels=2)
        validate_topic_name("/" * 999, max_levels=1000)
        assert_name_invalid("/" * 1000, max_levels=1000)

    @pytest.mark.spec("MQTT-4.7.3-4")
    def test_no_normalization(self) -> None:
        assert not matches("ACCOUNTS", "Accounts")
        assert not matches("Accounts/+", "accounts/x")
        assert matches("Accounts payable", "Accounts payable")
        assert not matches("/finance", "finance")
        assert not matches("a/b", "a/b/")
        composed = "caf\u00e9"
        decomposed = unicodedata.normalize("NFD", composed)
        assert composed != decomposed
        assert not matches(composed, decomposed)
        assert not matches(composed + "/#", decomposed + "/x")

    def test_topic_levels(self) -> None:
        assert topic_levels("/finance") == ["", "finance"]
        assert topic_levels("a//b/") == ["a", "", "b", ""]
        assert topic_levels("a") == ["a"]


class TestSharedSubscriptions:
    """4.8.2: $share/{ShareName}/{filter}."""

    @pytest.mark.spec("MQTT-4.8.2-1", "MQTT-4.8.2-2")
    @pytest.mark.parametrize(
        ("filt", "group", "inner"),
        [
            ("$share/consumer1/sport/tennis/+", "consumer1", "sport/tennis/+"),
            ("$share/consumer2/sport/tennis/+", "consumer2", "sport/tennis/+"),
            ("$share/g/#", "g", "#"),
            ("$share/g//", "g", "/"),
            ("$share/g/$SYS/#", "g", "$SYS/#"),
            ("$share/$share/a", "$share", "a"),
            ("$share/g/$share/h/x", "g", "$share/h/x"),  # the inner filter is taken literally
        ],
    )
    def test_parse(self, filt: str, group: str, inner: str) -> None:
        assert parse_shared(filt) == (group, inner)
        validate_topic_filter(filt)

    @pytest.mark.parametrize("filt", ["a/b", "$SYS/#", "$share", "$SHARE/g/a", "$sharex/g/a", "#"])
    def test_not_shared(self, filt: str) -> None:
        assert parse_shared(filt) == (None, filt)
        validate_topic_filter(filt)

    @pytest.mark.spec("MQTT-4.8.2-1")
    @pytest.mark.parametrize("filt", ["$share/", "$share//a", "$share//#"])
    def test_empty_share_name(self, filt: str) -> None:
        assert "empty ShareName" in assert_filter_invalid(filt).message
        with pytest.raises(RemoteProtocolError):
            parse_shared(filt)

    @pytest.mark.spec("MQTT-4.8.2-2")
    @pytest.mark.parametrize(
        "filt", ["$share/g+/a", "$share/+/a", "$share/#/a", "$share/a#", "$share/#"]
    )
    def test_wildcard_in_share_name(self, filt: str) -> None:
        assert "wildcard" in assert_filter_invalid(filt).message

    @pytest.mark.spec("MQTT-4.8.2-2")
    @pytest.mark.parametrize("filt", ["$share/grp", "$share/grp/"])
    def test_missing_topic_filter(self, filt: str) -> None:
        assert "no topic filter" in assert_filter_invalid(filt).message

    @pytest.mark.spec("MQTT-4.8.2-2", "MQTT-4.7.1-1", "MQTT-4.7.1-2", "MQTT-4.7.3-2")
    @pytest.mark.parametrize(
        "filt", ["$share/g/a#", "$share/g/#/a", "$share/g/a+", "$share/g/a\x00"]
    )
    def test_invalid_inner_filter(self, filt: str) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            parse_shared(filt)
        assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID
        assert_filter_invalid(filt)

    def test_level_limit_applies_to_inner_filter(self) -> None:
        validate_topic_filter("$share/g/a/b", max_levels=2)
        assert_filter_invalid("$share/g/a/b/c", max_levels=2)
        assert parse_shared("$share/g/a/b", max_levels=2) == ("g", "a/b")


class TestErrors:
    def test_remote_protocol_error_is_protocol_error(self) -> None:
        error = assert_name_invalid("a/#")
        assert isinstance(error, ProtocolError)
        error = assert_filter_invalid("a#")
        assert isinstance(error, ProtocolError)
        assert "0x8F" in str(error)

    def test_module_is_sans_io(self) -> None:
        tree = ast.parse(Path(topics_module.__file__).read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        assert not imported & {"asyncio", "socket", "ssl", "time", "re"}


class TestReferenceMatcherProperties:
    """matches() against an independent (escaped-regex) oracle over awkward alphabets."""

    @pytest.mark.spec("MQTT-4.7.1-1", "MQTT-4.7.1-2", "MQTT-4.7.2-1", "MQTT-4.7.3-4")
    @given(filt=filters(), name=NAMES)
    def test_agrees_with_oracle(self, filt: str, name: str) -> None:
        validate_topic_filter(filt)
        validate_topic_name(name)
        assert matches(filt, name) is oracle(filt, name)

    @given(data=st.data(), filt=filters())
    def test_filled_in_filter_matches(self, data: st.DataObject, filt: str) -> None:
        name = data.draw(name_matching(filt))
        expected = not (filt[:1] in ("+", "#") and name[:1] == "$")
        assert matches(filt, name) is expected
        assert oracle(filt, name) is expected

    @given(name=NAMES)
    def test_name_is_a_filter_matching_itself(self, name: str) -> None:
        validate_topic_filter(name)
        assert matches(name, name)

    @given(filt=filters())
    def test_generated_filters_are_valid(self, filt: str) -> None:
        validate_topic_filter(filt)
        assert parse_shared(filt) == (None, filt)
