"""Tests for mqttv5.broker.acl: Mosquitto's acl_file format and the decisions built on it."""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttv5.broker.acl import (
    ALLOW_ALL,
    Access,
    AclFile,
    AclRule,
    SubscribeAccess,
    filter_covers,
    filters_intersect,
)
from mqttv5.broker.passwords import hash_password
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.topics import matches
from tests.client.mosquitto import Mosquitto, scaled

DENIED, PARTIAL, GRANTED = SubscribeAccess.DENIED, SubscribeAccess.PARTIAL, SubscribeAccess.GRANTED

EXAMPLE = """\
# rules for anonymous clients
topic read public/#
topic deny public/private

user alice
topic readwrite alice/#
topic write inbox/alice
topic read $SYS/broker/#
topic deny alice/secret/#
  topic   read   shared space/x

user bob
topic bob/#

pattern readwrite clients/%c/#
pattern read users/%u/inbox
pattern write dev_%c/status
"""


@pytest.fixture
def acl() -> AclFile:
    return AclFile.parse(EXAMPLE, "acl")


class TestParse:
    def test_rules(self, acl: AclFile) -> None:
        rules = [(r.kind, r.access, r.topic_filter, r.user, r.line) for r in acl.rules]
        assert rules == [
            ("topic", Access.READ, "public/#", None, 2),
            ("topic", Access.DENY, "public/private", None, 3),
            ("topic", Access.READWRITE, "alice/#", "alice", 6),
            ("topic", Access.WRITE, "inbox/alice", "alice", 7),
            ("topic", Access.READ, "$SYS/broker/#", "alice", 8),
            ("topic", Access.DENY, "alice/secret/#", "alice", 9),
            ("topic", Access.READ, "shared space/x", "alice", 10),
            ("topic", Access.READWRITE, "bob/#", "bob", 13),
            ("pattern", Access.READWRITE, "clients/%c/#", None, 15),
            ("pattern", Access.READ, "users/%u/inbox", None, 16),
            ("pattern", Access.WRITE, "dev_%c/status", None, 17),
        ]

    def test_sections_of_one_user_add_up_and_tabs_separate(self) -> None:
        acl = AclFile.parse("user a\ntopic read x\nuser b\ntopic y\nuser a\ntopic\twrite\tz\n")
        assert acl.can_read("c", "a", "x")
        assert acl.can_publish("c", "a", "z")
        assert not acl.can_publish("c", "a", "x")
        assert acl.can_publish("c", "b", "y")

    def test_user_names_may_hold_spaces(self) -> None:
        acl = AclFile.parse("user John Smith  \ntopic js/#\n")
        assert acl.can_publish("c", "John Smith", "js/1")

    def test_topic_named_like_an_access(self) -> None:
        # "topic read" is the topic "read" with readwrite access, as in Mosquitto
        acl = AclFile.parse("topic read\n")
        assert acl.can_publish("c", None, "read")

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("bogus line", "unknown keyword 'bogus'"),
            ("Topic read a", "unknown keyword 'Topic'"),
            ("topic badaccess a", "unknown access 'badaccess'"),
            ("topic a b", "unknown access 'a'.*spaces needs one"),
            ("topic read a/#/b", "invalid topic filter 'a/#/b'"),
            ("pattern write a+/b", "invalid topic filter"),
            ("topic", "'topic' without a topic filter"),
            ("pattern   ", "'pattern' without a topic filter"),
            ("user", "'user' without a user name"),
        ],
    )
    def test_errors_name_file_and_line(self, line: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message) as info:
            AclFile.parse(f"# comment\n\ntopic read ok\n{line}\n", "/etc/mqttv5/acl")
        assert info.value.key == "line 4"
        assert str(info.value).startswith("/etc/mqttv5/acl: line 4: ")

    def test_pattern_without_placeholder_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="mqttv5.broker"):
            acl = AclFile.parse("pattern read everyone/#\n", "acl")
        assert "acl: line 1: pattern 'everyone/#' contains neither %c nor %u" in caplog.text
        assert acl.can_read("c", None, "everyone/x")

    def test_load_errors(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read") as info:
            AclFile.load(str(tmp_path / "missing"))
        assert info.value.key == "acl_file"
        bad = tmp_path / "latin1"
        bad.write_bytes(b"topic caf\xe9\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            AclFile.load(str(bad))


class TestTopicRules:
    def test_access_kinds(self, acl: AclFile) -> None:
        assert acl.can_publish("c", "alice", "alice/x")
        assert acl.can_read("c", "alice", "alice/x")
        assert acl.can_publish("c", "alice", "inbox/alice")
        assert not acl.can_read("c", "alice", "inbox/alice")  # write only
        assert acl.can_read("c", "alice", "shared space/x")
        assert not acl.can_publish("c", "alice", "shared space/x")  # read only
        assert acl.can_publish("c", "bob", "bob/1")  # default readwrite
        assert acl.can_read("c", "bob", "bob/1")

    def test_nothing_listed_is_refused(self, acl: AclFile) -> None:
        assert not acl.can_publish("c", "alice", "elsewhere")
        assert not acl.can_read("c", "alice", "elsewhere")
        assert not acl.can_publish("c", "bob", "alice/x")

    def test_anonymous_section(self, acl: AclFile) -> None:
        assert acl.can_read("c", None, "public/news")
        assert not acl.can_publish("c", None, "public/news")
        # a user with a section, or without one, does not get the anonymous rules
        assert not acl.can_read("c", "alice", "public/news")
        assert not acl.can_read("c", "carol", "public/news")

    def test_user_without_section_gets_patterns_only(self, acl: AclFile) -> None:
        assert acl.can_publish("c9", "carol", "clients/c9/x")
        assert acl.can_read("c9", "carol", "users/carol/inbox")
        assert not acl.can_read("c9", "carol", "alice/x")

    def test_deny_wins(self, acl: AclFile) -> None:
        assert not acl.can_read("c", None, "public/private")
        assert acl.can_read("c", None, "public/private/more")  # deny names one topic only
        assert not acl.can_publish("c", "alice", "alice/secret")
        assert not acl.can_read("c", "alice", "alice/secret/a/b")
        assert acl.can_read("c", "alice", "alice/secrets")

    def test_deny_position_does_not_matter(self) -> None:
        before = AclFile.parse("topic deny a/b\ntopic a/#\n")
        after = AclFile.parse("topic a/#\ntopic deny a/b\n")
        for acl in (before, after):
            assert not acl.can_publish("c", None, "a/b")
            assert acl.can_publish("c", None, "a/c")

    def test_pattern_deny_beats_a_user_grant(self) -> None:
        # Mosquitto 2.0 checks the user's rules first and would allow this; we let deny win.
        acl = AclFile.parse("user bob\ntopic readwrite bob/#\npattern deny bob/%u/private\n")
        assert acl.can_publish("c", "bob", "bob/x")
        assert not acl.can_publish("c", "bob", "bob/bob/private")
        assert not acl.can_read("c", "bob", "bob/bob/private")

    def test_sys_topics_need_a_dollar_rule(self, acl: AclFile) -> None:
        assert acl.can_read("c", "alice", "$SYS/broker/uptime")
        assert not acl.can_read("c", "alice", "$SYS/other")
        everything = AclFile.parse("topic #\ntopic +/x\n")
        assert everything.can_read("c", None, "a/b")
        assert not everything.can_read("c", None, "$SYS/broker/uptime")
        assert not everything.can_read("c", None, "$SYS/x")
        assert not everything.can_publish("c", None, "$SYS/x")


class TestPatterns:
    def test_client_id_and_username(self, acl: AclFile) -> None:
        assert acl.can_publish("dev1", "bob", "clients/dev1/temp")
        assert acl.can_read("dev1", None, "clients/dev1/temp")  # %c applies to anonymous too
        assert not acl.can_publish("dev1", "bob", "clients/dev2/temp")
        assert acl.can_read("dev1", "carol", "users/carol/inbox")
        assert not acl.can_read("dev1", "carol", "users/dave/inbox")

    def test_username_pattern_skipped_without_username(self, acl: AclFile) -> None:
        assert not acl.can_read("c", None, "users//inbox")
        assert not acl.can_read("c", None, "users/%u/inbox")

    def test_substitution_inside_a_level(self, acl: AclFile) -> None:
        # Mosquitto 2.0 substitutes here too (its manual asks for whole levels)
        assert acl.can_publish("dev7", None, "dev_dev7/status")
        assert not acl.can_publish("dev7", None, "dev_dev8/status")

    def test_placeholders_are_substituted_once(self) -> None:
        acl = AclFile.parse("pattern readwrite x/%c/%u\n")
        assert acl.can_publish("%u", "bob", "x/%u/bob")
        assert not acl.can_publish("%u", "bob", "x/bob/bob")

    def test_slash_in_a_value_cannot_widen_a_rule(self) -> None:
        acl = AclFile.parse("pattern readwrite users/%u/data\n")
        assert not acl.can_publish("c", "a/b", "users/a/b/data")
        assert not acl.can_publish("c", "a", "users/a/b/data")
        assert acl.can_publish("c", "a", "users/a/data")

    @pytest.mark.parametrize(("client_id", "username"), [("c#", "bob"), ("c", "b+b"), ("+", "#")])
    def test_wildcards_in_values_grant_nothing(self, client_id: str, username: str) -> None:
        acl = AclFile.parse(
            "pattern readwrite c/%c/#\npattern readwrite u/%u/#\npattern readwrite open/#\n"
        )
        bad_id = "+" in client_id or "#" in client_id
        bad_user = "+" in username or "#" in username
        assert acl.can_publish(client_id, username, f"c/{client_id}/x") is not bad_id
        assert acl.can_publish(client_id, username, f"u/{username}/x") is not bad_user
        assert acl.can_subscribe(client_id, username, "c/+/x") is (DENIED if bad_id else PARTIAL)
        assert not acl.can_publish(client_id, username, "c/anything/x")
        assert not acl.can_publish(client_id, username, "u/anything/x")
        assert acl.can_publish(client_id, username, "open/x")  # no substitution needed

    def test_pattern_denies_apply(self) -> None:
        acl = AclFile.parse("topic #\npattern deny private/%c/#\n")
        assert not acl.can_read("me", None, "private/me/x")
        assert acl.can_read("me", None, "private/you/x")


class TestSubscribe:
    @pytest.mark.parametrize(
        ("username", "topic_filter", "expected"),
        [
            ("alice", "alice/#", PARTIAL),  # alice/secret/# is denied inside it
            ("alice", "alice/public/+", GRANTED),
            ("alice", "alice/secret/#", DENIED),  # wholly covered by a deny
            ("alice", "alice/secret/x", DENIED),
            ("alice", "#", PARTIAL),
            ("alice", "inbox/alice", DENIED),  # write-only
            ("alice", "nowhere/#", DENIED),
            ("alice", "$SYS/#", PARTIAL),  # $SYS/broker/# is readable
            ("alice", "$SYS/broker/#", GRANTED),
            ("alice", "$SYS/broker", GRANTED),  # "a/#" also matches "a"
            ("alice", "$SYS/other/#", DENIED),
            ("alice", "+/x", PARTIAL),
            ("bob", "bob/+/+", GRANTED),
            ("bob", "#", PARTIAL),
            ("bob", "+/#", PARTIAL),
            (None, "public/#", PARTIAL),  # public/private is denied
            (None, "public/+/x", GRANTED),
            (None, "public/private", DENIED),
            (None, "$SYS/#", DENIED),
        ],
    )
    def test_filters(
        self, acl: AclFile, username: str | None, topic_filter: str, expected: SubscribeAccess
    ) -> None:
        assert acl.can_subscribe("cid", username, topic_filter) is expected

    def test_patterns_in_subscriptions(self, acl: AclFile) -> None:
        assert acl.can_subscribe("me", "bob", "clients/me/#") is GRANTED
        assert acl.can_subscribe("me", "bob", "clients/+/#") is PARTIAL
        assert acl.can_subscribe("me", "bob", "clients/you/#") is DENIED
        assert acl.can_subscribe("me", "bob", "users/bob/inbox") is GRANTED
        assert acl.can_subscribe("me", "bob", "dev_me/status") is DENIED  # write only

    def test_shared_subscriptions_check_the_inner_filter(self, acl: AclFile) -> None:
        assert acl.can_subscribe("c", "bob", "$share/group/bob/#") is GRANTED
        assert acl.can_subscribe("c", "bob", "$share/group/alice/#") is DENIED
        assert acl.can_subscribe("c", "bob", "$share/bad") is DENIED

    def test_denied_is_falsy(self) -> None:
        assert not DENIED
        assert PARTIAL
        assert GRANTED

    def test_partial_then_filtered_on_delivery(self, acl: AclFile) -> None:
        assert acl.can_subscribe("c", "alice", "#") is PARTIAL
        delivered = [
            t
            for t in ("alice/a", "alice/secret/b", "bob/c", "shared space/x", "$SYS/broker/load")
            if matches("#", t) and acl.can_read("c", "alice", t)
        ]
        assert delivered == ["alice/a", "shared space/x"]


LEVELS = ("a", "b", "$s", "+", "#")
NAMES = ("a", "b", "$s", "z", "")


def _filters(max_len: int = 3) -> list[str]:
    found = []
    for n in range(1, max_len + 1):
        for levels in itertools.product(LEVELS, repeat=n):
            if "#" in levels[:-1]:
                continue
            found.append("/".join(levels))
    return found


def _topics(max_len: int = 4) -> list[str]:
    return [
        "/".join(levels)
        for n in range(1, max_len + 1)
        for levels in itertools.product(NAMES, repeat=n)
    ]


def test_filter_relations_agree_with_the_reference_matcher() -> None:
    """covers / intersects checked against matches() over every short filter and topic."""
    filters = _filters()
    topics = _topics()
    matched = {f: frozenset(t for t in topics if matches(f, t)) for f in filters}
    for outer, inner in itertools.product(filters, repeat=2):
        assert filter_covers(outer, inner) == (matched[inner] <= matched[outer]), (outer, inner)
        assert filters_intersect(outer, inner) == bool(matched[inner] & matched[outer]), (
            outer,
            inner,
        )


class TestCacheAndReload:
    def test_cache_bounded(self) -> None:
        acl = AclFile.parse("topic a/#\n", cache_size=10)
        for i in range(100):
            assert acl.can_publish("c", None, f"a/{i}")
        assert len(acl._cache) == 10

    def test_client_id_keys_only_when_needed(self) -> None:
        plain = AclFile.parse("topic a/#\n")
        for i in range(5):
            plain.can_publish(f"client{i}", None, "a/1")
        assert len(plain._cache) == 1
        keyed = AclFile.parse("pattern c/%c\n")
        assert keyed.can_publish("x", None, "c/x")
        assert not keyed.can_publish("y", None, "c/x")

    def test_reload(self, tmp_path: Path) -> None:
        path = tmp_path / "acl"
        path.write_text("topic read a/#\n")
        acl = AclFile.load(str(path))
        assert acl.can_read("c", None, "a/1")
        assert acl.generation == 0
        path.write_text("topic read b/#\n")
        acl.reload()
        assert acl.generation == 1
        assert not acl.can_read("c", None, "a/1")  # the cached answer is gone
        assert acl.can_read("c", None, "b/1")
        path.write_text("topic read b/#\nnonsense\n")
        with pytest.raises(ConfigError, match="line 2"):
            acl.reload()
        assert acl.generation == 1
        assert acl.can_read("c", None, "b/1")  # previous rules still in force

    def test_reload_needs_a_path(self) -> None:
        with pytest.raises(ValueError, match="not loaded from a file"):
            AclFile([AclRule("topic", Access.READ, "a")]).reload()

    def test_allow_all(self) -> None:
        assert ALLOW_ALL.can_publish("c", None, "$SYS/x")
        assert ALLOW_ALL.can_read("c", "u", "a")
        assert ALLOW_ALL.can_subscribe("c", None, "#") is GRANTED


# --- against the real Mosquitto -------------------------------------------------------------------

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")

INTEROP_ACL = """\
# anonymous clients may read public/#
topic read public/#

user alice
topic readwrite alice/#
topic write inbox/+
topic read $SYS/broker/version

user admin
topic readwrite #

pattern write devices/%c/status
pattern readwrite users/%u/#
"""


@pytest.fixture(scope="module")
def mosquitto_acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, AclFile]]:
    directory = tmp_path_factory.mktemp("mosquitto-acl")
    acl_path = directory / "acl"
    acl_path.write_text(INTEROP_ACL)
    pw_path = directory / "passwd"
    pw_path.write_text(f"alice:{hash_password(b'alice-pw')}\nadmin:{hash_password(b'admin-pw')}\n")
    extra = f"password_file {pw_path}\nacl_file {acl_path}\n"
    broker = Mosquitto(directory, extra=extra)
    broker.start()  # Mosquitto refuses to start with an ACL file it cannot parse
    yield broker, AclFile.load(str(acl_path))
    broker.stop()


def _publish(broker: Mosquitto, user: str | None, client_id: str, topic: str) -> bool:
    """Whether Mosquitto accepted a QoS 1 PUBLISH (MQTT 5: PUBACK 0x87 when refused)."""
    assert MOSQUITTO_PUB, "mosquitto-clients not installed"
    args = [MOSQUITTO_PUB, "-p", str(broker.port), "-h", "127.0.0.1", "-V", "5", "-q", "1"]
    args += ["-i", client_id, "-t", topic, "-m", "x"]
    if user is not None:
        args += ["-u", user, "-P", f"{user}-pw"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=scaled(10), check=False)
    assert done.returncode == 0, done.stderr  # mosquitto_pub exits 0 even when refused
    return "Not authorized" not in done.stderr


@pytest.mark.interop
@pytest.mark.parametrize(
    ("user", "client_id", "topic"),
    [
        ("alice", "c1", "alice/x"),
        ("alice", "c1", "alice/x/y"),
        ("alice", "c1", "inbox/bob"),
        ("alice", "c1", "inbox/bob/deeper"),
        ("alice", "c1", "public/x"),
        ("alice", "c1", "bob/x"),
        ("alice", "dev9", "devices/dev9/status"),
        ("alice", "dev9", "devices/dev8/status"),
        ("alice", "c1", "users/alice/notes"),
        ("alice", "c1", "users/admin/notes"),
        (None, "dev9", "devices/dev9/status"),
        (None, "c1", "public/x"),
        (None, "c1", "users/x/y"),
        ("admin", "c1", "anything/at/all"),
        ("admin", "c1", "$SYS/broker/version"),
    ],
)
def test_publish_decisions_agree_with_mosquitto(
    mosquitto_acl: tuple[Mosquitto, AclFile], user: str | None, client_id: str, topic: str
) -> None:
    broker, acl = mosquitto_acl
    assert _publish(broker, user, client_id, topic) == acl.can_publish(client_id, user, topic)


@pytest.mark.interop
def test_mosquitto_filters_reads_like_can_read(mosquitto_acl: tuple[Mosquitto, AclFile]) -> None:
    broker, acl = mosquitto_acl
    assert MOSQUITTO_SUB, "mosquitto-clients not installed"
    args = [MOSQUITTO_SUB, "-p", str(broker.port), "-h", "127.0.0.1", "-V", "5", "-q", "1"]
    args += ["-u", "alice", "-P", "alice-pw", "-i", "reader", "-t", "#", "-v", "-W", "3"]
    reader = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(scaled(0.5))  # let the subscription settle
        topics = ["alice/one", "public/two", "inbox/three", "users/alice/four", "other/five"]
        for topic in topics:
            assert _publish(broker, "admin", "writer", topic)
        out, _ = reader.communicate(timeout=scaled(10))
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    received = [line.split(" ", 1)[0] for line in out.splitlines()]
    assert received == [t for t in topics if acl.can_read("reader", "alice", t)]
    assert received == ["alice/one", "users/alice/four"]
    # Mosquitto granted the "#" subscription; we grant it too, filtered on delivery
    assert acl.can_subscribe("reader", "alice", "#") is PARTIAL
