"""Tests for mqttv5.broker.topic_tree: the subscription trie, checked against topics.matches()."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from mqttv5.broker.topic_tree import TopicTree
from mqttv5.protocol.topics import matches, validate_topic_filter, validate_topic_name

# --- helpers ---------------------------------------------------------------------------------


def matched(tree: TopicTree[str, int], name: str) -> list[tuple[str, str, int]]:
    return sorted(tree.match(name))


def matched_filters(tree: TopicTree[str, int], name: str) -> set[str]:
    return {filt for filt, _, _ in tree.match(name)}


def tree_of(*filters: str) -> TopicTree[str, int]:
    tree: TopicTree[str, int] = TopicTree()
    for i, filt in enumerate(filters):
        tree.add(filt, "client", i)
    return tree


def node_count(tree: TopicTree[str, int]) -> int:
    """Count the trie's nodes below the root (white-box: checks pruning)."""
    stack = [tree._root]
    count = -1
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


@contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# The same awkward alphabet as tests/protocol/test_topics.py: '.', '$', empty levels.
LEVEL_TEXT = st.text(alphabet="ab.$", max_size=3)
NAME_LEVEL = st.one_of(
    st.sampled_from(["", "a", "b", "ab", ".", "a.b", "$", "$SYS", "a$"]), LEVEL_TEXT
)
NAMES = st.lists(NAME_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)
KEYS = st.sampled_from(["c1", "c2", "c3"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(NAME_LEVEL, st.just("+")), max_size=5))
    if levels in ([], [""]) or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@st.composite
def name_matching(draw: st.DrawFn, filt: str) -> str:
    """A topic name made from ``filt`` by filling in its wildcards."""
    out: list[str] = []
    for level in filt.split("/"):
        if level == "+":
            out.append(draw(NAME_LEVEL))
        elif level == "#":
            out.extend(draw(st.lists(NAME_LEVEL, max_size=2)))
        else:
            out.append(level)
    return "/".join(out) or "a"


# --- tests -----------------------------------------------------------------------------------


class TestAddGetRemove:
    def test_add_new_and_replace(self) -> None:
        tree: TopicTree[str, int] = TopicTree()
        assert len(tree) == 0
        assert tree.add("a/b", "c1", 1) is True
        assert tree.add("a/b", "c2", 2) is True
        assert tree.add("a/b", "c1", 3) is False
        assert len(tree) == 2
        assert tree.get("a/b", "c1") == 3
        assert tree.get("a/b", "c2") == 2
        assert tree.get("a/b", "c3") is None
        assert tree.get("a", "c1") is None
        assert tree.get("a/b/c", "c1") is None

    def test_remove_returns_old_value(self) -> None:
        tree = tree_of("a/b")
        assert tree.remove("a/b", "other") is None
        assert tree.remove("a", "client") is None
        assert tree.remove("a/b/c", "client") is None
        assert len(tree) == 1
        assert tree.remove("a/b", "client") == 0
        assert tree.remove("a/b", "client") is None
        assert len(tree) == 0
        assert tree.match("a/b") == []

    def test_remove_prunes_empty_nodes(self) -> None:
        tree = tree_of("a/b/c/d", "a/+/#")
        assert node_count(tree) == 6  # a, b, c, d, +, #
        tree.remove("a/b/c/d", "client")
        assert node_count(tree) == 3  # a, +, #
        tree.remove("a/+/#", "client")
        assert node_count(tree) == 0

    def test_remove_keeps_nodes_still_in_use(self) -> None:
        tree = tree_of("a", "a/b", "a/b/c")
        tree.add("a/b", "other", 9)
        tree.remove("a/b", "client")
        assert matched(tree, "a/b") == [("a/b", "other", 9)]
        tree.remove("a/b", "other")
        assert node_count(tree) == 3
        assert matched_filters(tree, "a") == {"a"}
        assert matched_filters(tree, "a/b/c") == {"a/b/c"}
        tree.remove("a/b/c", "client")
        assert node_count(tree) == 1
        tree.remove("a", "client")
        assert node_count(tree) == 0

    def test_match_sees_replace_and_remove(self) -> None:
        # match() caches its tuples per node; every change must invalidate them.
        tree = tree_of("a/+", "a/#")
        assert matched(tree, "a/b") == [("a/#", "client", 1), ("a/+", "client", 0)]
        tree.add("a/+", "client", 7)
        tree.add("a/#", "other", 8)
        assert matched(tree, "a/b") == [
            ("a/#", "client", 1),
            ("a/#", "other", 8),
            ("a/+", "client", 7),
        ]
        tree.remove("a/#", "client")
        assert matched(tree, "a/b") == [("a/#", "other", 8), ("a/+", "client", 7)]
        assert matched(tree, "a") == [("a/#", "other", 8)]

    def test_re_add_after_remove(self) -> None:
        tree = tree_of("a/#")
        tree.remove("a/#", "client")
        assert tree.add("a/#", "client", 5) is True
        assert matched(tree, "a/x") == [("a/#", "client", 5)]

    def test_filters(self) -> None:
        tree = tree_of("a", "a/b", "+/#", "#", "$SYS/x", "/")
        tree.add("a", "other", 1)
        assert sorted(tree.filters()) == sorted(["a", "a/b", "+/#", "#", "$SYS/x", "/"])
        tree.remove("a", "client")
        tree.remove("a", "other")
        assert sorted(tree.filters()) == sorted(["a/b", "+/#", "#", "$SYS/x", "/"])

    def test_values_are_not_interpreted(self) -> None:
        tree: TopicTree[tuple[str, int], object] = TopicTree()
        sentinel = object()
        tree.add("a", ("share", 1), sentinel)
        assert tree.match("a") == [("a", ("share", 1), sentinel)]


class TestTopicWildcards:
    """4.7.1 through the tree: the spec's own examples."""

    @pytest.mark.spec("MQTT-4.7.1-1")
    def test_multi_level_spec_example(self) -> None:
        tree = tree_of("sport/tennis/player1/#")
        for name in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ]:
            assert matched_filters(tree, name) == {"sport/tennis/player1/#"}
        assert tree.match("sport/tennis/player2") == []
        assert tree.match("sport/tennis") == []

    @pytest.mark.spec("MQTT-4.7.1-1")
    def test_multi_level_matches_parent_not_prefix(self) -> None:
        tree = tree_of("sport/#", "a/#")
        assert matched_filters(tree, "sport") == {"sport/#"}
        assert matched_filters(tree, "sport/") == {"sport/#"}
        assert tree.match("sports") == []
        assert tree.match("ab") == []  # the regex-matcher bug
        assert tree.match("ab/c") == []

    @pytest.mark.spec("MQTT-4.7.1-2")
    def test_single_level_spec_examples(self) -> None:
        tree = tree_of("sport/tennis/+", "sport/+", "+/+", "/+", "+")
        assert matched_filters(tree, "sport/tennis/player1") == {"sport/tennis/+"}
        assert matched_filters(tree, "sport/tennis/player1/ranking") == set()
        assert matched_filters(tree, "sport") == {"+"}
        assert matched_filters(tree, "sport/") == {"sport/+", "+/+"}
        assert matched_filters(tree, "/finance") == {"+/+", "/+"}

    @pytest.mark.spec("MQTT-4.7.1-2")
    def test_single_level_matches_empty_level(self) -> None:
        tree = tree_of("a/+/b", "+/+/+")
        assert matched_filters(tree, "a//b") == {"a/+/b", "+/+/+"}
        assert matched_filters(tree, "//") == {"+/+/+"}
        assert tree.match("a/b") == []

    def test_hash_alone_matches_everything_not_dollar(self) -> None:
        tree = tree_of("#")
        for name in ["a", "/", "/finance", "a/b/c", "a/$SYS"]:
            assert matched_filters(tree, name) == {"#"}

    def test_literal_dot_and_dollar(self) -> None:
        tree = tree_of("a.b", "a/$", "$")
        assert tree.match("axb") == []
        assert matched_filters(tree, "a.b") == {"a.b"}
        assert matched_filters(tree, "a/$") == {"a/$"}
        assert matched_filters(tree, "$") == {"$"}


class TestDollarTopics:
    """4.7.2 through the tree."""

    @pytest.mark.spec("MQTT-4.7.2-1")
    def test_leading_wildcards_skip_dollar_topics(self) -> None:
        tree = tree_of("#", "+/monitor/Clients", "+", "+/#", "$SYS/#", "$SYS/monitor/+")
        assert matched_filters(tree, "$SYS/monitor/Clients") == {"$SYS/#", "$SYS/monitor/+"}
        assert matched_filters(tree, "$SYS") == {"$SYS/#"}
        assert matched_filters(tree, "$") == set()
        assert matched_filters(tree, "x/monitor/Clients") == {"#", "+/monitor/Clients", "+/#"}

    @pytest.mark.spec("MQTT-4.7.2-1")
    def test_dollar_rule_is_first_level_only(self) -> None:
        tree = tree_of("a/+", "a/#", "+/+")
        assert matched_filters(tree, "a/$SYS") == {"a/+", "a/#", "+/+"}


class TestOverlappingSubscriptions:
    def test_every_entry_once(self) -> None:
        tree: TopicTree[str, int] = TopicTree()
        tree.add("a/b", "c1", 1)
        tree.add("a/+", "c1", 2)
        tree.add("#", "c1", 3)
        tree.add("a/#", "c2", 4)
        tree.add("+/b", "c2", 5)
        assert matched(tree, "a/b") == [
            ("#", "c1", 3),
            ("+/b", "c2", 5),
            ("a/#", "c2", 4),
            ("a/+", "c1", 2),
            ("a/b", "c1", 1),
        ]


class TestDeepTopics:
    DEPTH = 1000

    def test_deep_match_does_not_recurse(self) -> None:
        levels = ["a"] * self.DEPTH
        name = "/".join(levels)
        validate_topic_name(name, max_levels=self.DEPTH)
        exact = name
        plus = "/".join(["+"] * self.DEPTH)
        hash_ = "/".join(levels[:-1]) + "/#"
        mixed = "/".join("+" if i % 2 else "a" for i in range(self.DEPTH))
        tree = tree_of(exact, plus, hash_, mixed)
        for filt in (exact, plus, hash_, mixed):
            validate_topic_filter(filt, max_levels=self.DEPTH)
        # A limit far below the depth: any recursion per level would raise RecursionError.
        with recursion_limit(200):
            assert matched_filters(tree, name) == {exact, plus, hash_, mixed}
            assert matched_filters(tree, name + "/b") == {hash_}
            assert matched_filters(tree, "b/" + name) == set()
            assert matched_filters(tree, "/".join(levels[:-1])) == {hash_}
            assert sorted(tree.filters()) == sorted([exact, plus, hash_, mixed])
            for filt in (exact, plus, hash_, mixed):
                assert tree.remove(filt, "client") is not None
        assert node_count(tree) == 0
        assert len(tree) == 0


class TestAgreesWithReferenceMatcher:
    """The trie and topics.matches() give the same answers (catches regex-style matcher bugs)."""

    @pytest.mark.spec("MQTT-4.7.1-1", "MQTT-4.7.1-2", "MQTT-4.7.2-1", "MQTT-4.7.3-4")
    @settings(max_examples=300)
    @given(
        data=st.data(),
        subscriptions=st.lists(st.tuples(filters(), KEYS), max_size=30),
        names=st.lists(NAMES, max_size=10),
    )
    def test_match_agrees(
        self, data: st.DataObject, subscriptions: list[tuple[str, str]], names: list[str]
    ) -> None:
        tree: TopicTree[str, int] = TopicTree()
        expected_entries: dict[tuple[str, str], int] = {}
        for i, (filt, key) in enumerate(subscriptions):
            validate_topic_filter(filt)
            tree.add(filt, key, i)
            expected_entries[filt, key] = i
        assert len(tree) == len(expected_entries)
        # Names that match some subscriptions, so that hits are not rare.
        for filt, _ in subscriptions[:5]:
            names.append(data.draw(name_matching(filt)))
        for name in names:
            validate_topic_name(name)
            expected = sorted(
                (filt, key, value)
                for (filt, key), value in expected_entries.items()
                if matches(filt, name)
            )
            assert matched(tree, name) == expected


class TopicTreeMachine(RuleBasedStateMachine):
    """Random add / remove / match sequences against a dict model."""

    subscriptions = Bundle("subscriptions")

    def __init__(self) -> None:
        super().__init__()
        self.tree: TopicTree[str, int] = TopicTree()
        self.model: dict[tuple[str, str], int] = {}
        self.counter = 0

    @rule(target=subscriptions, filt=filters(), key=KEYS)
    def add(self, filt: str, key: str) -> tuple[str, str]:
        self.counter += 1
        new = (filt, key) not in self.model
        assert self.tree.add(filt, key, self.counter) is new
        self.model[filt, key] = self.counter
        return filt, key

    @rule(sub=subscriptions)
    def remove(self, sub: tuple[str, str]) -> None:
        assert self.tree.remove(*sub) == self.model.pop(sub, None)

    @rule(sub=subscriptions)
    def get(self, sub: tuple[str, str]) -> None:
        assert self.tree.get(*sub) == self.model.get(sub)

    @rule(name=NAMES)
    def match(self, name: str) -> None:
        expected = sorted((f, k, v) for (f, k), v in self.model.items() if matches(f, name))
        assert sorted(self.tree.match(name)) == expected

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.tree) == len(self.model)
        assert sorted(self.tree.filters()) == sorted({f for f, _ in self.model})
        if not self.model:
            assert node_count(self.tree) == 0


TestTopicTreeStateful = TopicTreeMachine.TestCase
