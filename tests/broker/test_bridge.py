"""Bridges between two of our brokers: directions, prefixes, QoS 1 and 2, properties, retained
state, loop prevention, the remote going away, fallback addresses, notifications, reload; and
the ``[[bridge]]`` configuration."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mqttv5 import MqttClient
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import (
    BridgeSettings,
    BridgeTopic,
    BrokerConfig,
    load_config,
    validate_config,
)
from mqttv5.client import Message
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.properties import Properties
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import timeout


def bridge(url: str | None, *rules: BridgeTopic, **settings: Any) -> BridgeSettings:
    """A bridge to ``url`` that reconnects quickly."""
    settings.setdefault("name", "edge")
    settings.setdefault("client_id", "bridge-edge")
    settings.setdefault("reconnect_delay", 0.05)
    settings.setdefault("reconnect_delay_max", 0.3)
    return BridgeSettings(address=url, topics=list(rules), **settings)


def url_of(broker: MqttBroker) -> str:
    return f"mqtt://127.0.0.1:{broker.ports[0]}"


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(timeout(seconds)):
        while not predicate():
            await asyncio.sleep(0.01)


async def bridge_up(broker: MqttBroker, name: str = "edge") -> None:
    manager = broker.bridges
    assert manager is not None
    await eventually(lambda: name in manager.bridges and manager.bridges[name].up)


class Inbox:
    """A subscriber's received messages.

    Collected from ``messages()``, not with a subscription callback: the client hands a
    retained message that follows SUBACK in the same read to the iterator, before the
    callback is registered (a client race, reported).
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    async def wait(self, count: int, seconds: float = 5.0) -> list[Message]:
        await eventually(lambda: len(self.messages) >= count, seconds)
        return self.messages


@contextlib.asynccontextmanager
async def subscriber(
    url: str, topic_filter: str, qos: int = 2, client_id: str = "sub", rap: bool = False
) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    async with MqttClient(client_id, url=url) as client:

        async def collect() -> None:
            async for message in client.messages():
                inbox(message)

        task = asyncio.ensure_future(collect())
        await client.subscribe(topic_filter, qos, retain_as_published=rap)
        try:
            yield inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CuttableProxy:
    """A TCP relay to a broker whose connections can be cut (and new ones refused) at will:
    the remote broker "goes away" while it keeps its sessions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.is_cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.is_cut = True
        for writer in list(self.writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.is_cut = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()


# --- forwarding ----------------------------------------------------------------------------------


def test_out_and_in_rules_with_prefixes() -> None:
    async def main() -> None:
        async with started_broker() as core:
            rules = [
                BridgeTopic("sensors/#", "out", 1, local_prefix="", remote_prefix="site1/"),
                BridgeTopic("cmd/#", "in", 1, local_prefix="remote/", remote_prefix="site1/"),
                BridgeTopic("", "out", 1, local_prefix="status", remote_prefix="site1/alive"),
            ]
            async with (
                started_broker(bridges=[bridge(url_of(core), *rules)]) as edge,
                subscriber(url_of(core), "#", client_id="core-sub") as at_core,
                subscriber(url_of(edge), "#", client_id="edge-sub") as at_edge,
                MqttClient("edge-pub", url=url_of(edge)) as edge_pub,
                MqttClient("core-pub", url=url_of(core)) as core_pub,
            ):
                await bridge_up(edge)
                await edge_pub.publish("sensors/t1", b"21.5", 1)
                await edge_pub.publish("status", b"up", 1)
                await edge_pub.publish("other/x", b"not bridged", 1)
                await core_pub.publish("site1/cmd/reboot", b"now", 1)
                await core_pub.publish("cmd/reboot", b"not for us", 1)
                await at_core.wait(4)
                await at_edge.wait(4)
                await asyncio.sleep(0.2)
                assert sorted(at_core.topics) == [
                    "cmd/reboot", "site1/alive", "site1/cmd/reboot", "site1/sensors/t1",
                ]  # fmt: skip
                assert sorted(at_edge.topics) == [
                    "other/x", "remote/cmd/reboot", "sensors/t1", "status",
                ]  # fmt: skip
                by_topic = {m.topic: m for m in at_core.messages}
                assert by_topic["site1/sensors/t1"].payload == b"21.5"
                assert by_topic["site1/sensors/t1"].qos == 1
                b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
                assert b.forwarded == {"out": 2, "in": 1}

    run(main())


@pytest.mark.parametrize("qos", [1, 2])
def test_qos_and_properties_cross_intact(qos: int) -> None:
    async def main() -> None:
        async with started_broker() as core:
            rules = [BridgeTopic("data/#", "both", 2)]
            async with (
                started_broker(bridges=[bridge(url_of(core), *rules)]) as edge,
                subscriber(url_of(core), "data/#", client_id="core-sub") as at_core,
                MqttClient("pub", url=url_of(edge)) as pub,
            ):
                await bridge_up(edge)
                props = Properties(
                    content_type="application/json",
                    response_topic="replies/1",
                    correlation_data=b"\x01\x02",
                    user_properties=[("a", "1"), ("b", "2"), ("a", "3")],
                    payload_format_indicator=1,
                )
                rc = await pub.publish("data/1", b'{"v": 1}', qos, properties=props)
                assert not rc.is_error
                (message,) = await at_core.wait(1)
                assert message.qos == qos
                assert message.payload == b'{"v": 1}'
                got = message.properties
                assert got.content_type == "application/json"
                assert got.response_topic == "replies/1"
                assert got.correlation_data == b"\x01\x02"
                assert got.user_properties == [("a", "1"), ("b", "2"), ("a", "3")]
                assert got.payload_format_indicator == 1
                assert message.subscription_identifiers == []  # none crosses the bridge

    run(main())


def test_both_ways_on_every_topic_delivers_once_and_never_loops() -> None:
    async def main() -> None:
        async with started_broker() as core:
            rules = [BridgeTopic("#", "both", 1)]
            async with (
                started_broker(bridges=[bridge(url_of(core), *rules)]) as edge,
                subscriber(url_of(core), "#", client_id="core-sub") as at_core,
                subscriber(url_of(edge), "#", client_id="edge-sub") as at_edge,
                MqttClient("edge-pub", url=url_of(edge)) as edge_pub,
                MqttClient("core-pub", url=url_of(core)) as core_pub,
            ):
                await bridge_up(edge)
                await edge_pub.publish("from/edge", b"1", 1)
                await core_pub.publish("from/core", b"2", 1)
                await at_core.wait(2)
                await at_edge.wait(2)
                received = core.counters.publish_received, edge.counters.publish_received
                await asyncio.sleep(timeout(1.0))  # anything ping-ponging would show by now
                assert sorted(at_core.topics) == ["from/core", "from/edge"]
                assert sorted(at_edge.topics) == ["from/core", "from/edge"]
                # each broker got the original once and the bridged copy once, nothing more
                assert (core.counters.publish_received, edge.counters.publish_received) == (2, 2)
                assert received == (2, 2)
                b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
                assert b.forwarded == {"out": 1, "in": 1}

    run(main())


def test_many_messages_of_mixed_qos_keep_their_order() -> None:
    async def main() -> None:
        async with started_broker() as core:
            settings = bridge(url_of(core), BridgeTopic("n", "out", 2))
            async with (
                started_broker(bridges=[settings]) as edge,
                subscriber(url_of(core), "n", client_id="core-sub") as at_core,
                MqttClient("pub", url=url_of(edge)) as pub,
            ):
                await bridge_up(edge)
                count = 1500
                sends = [pub.publish("n", str(i).encode(), i % 3) for i in range(count)]
                await asyncio.gather(*sends)
                await at_core.wait(count, 20)
                got = [int(m.payload) for m in at_core.messages]
                assert sorted(got) == list(range(count))
                # [MQTT-4.6.0-6] in order per topic and QoS (the QoS levels may interleave:
                # QoS 0 is not held back by the Receive Maximum)
                for qos in (0, 1, 2):
                    same = [int(m.payload) for m in at_core.messages if m.qos == qos]
                    assert same == [i for i in range(count) if i % 3 == qos]

    run(main())


def test_retained_messages_cross_with_their_flag() -> None:
    async def main() -> None:
        async with started_broker() as core:
            rules = [BridgeTopic("state/#", "out", 1), BridgeTopic("config/#", "in", 1)]
            async with MqttClient("core-pub", url=url_of(core)) as core_pub:
                await core_pub.publish("config/mode", b"eco", 1, retain=True)
                async with (
                    started_broker(bridges=[bridge(url_of(core), *rules)]) as edge,
                    subscriber(url_of(core), "state/#", client_id="live", rap=True) as live,
                    MqttClient("edge-pub", url=url_of(edge)) as edge_pub,
                ):
                    await bridge_up(edge)
                    await edge_pub.publish("state/door", b"open", 1, retain=True)
                    (message,) = await live.wait(1)
                    # Retain As Published on both of the bridge's subscriptions: the flag
                    # crosses, and a subscriber asking for it (RAP) sees it live
                    assert message.retain
                    async with subscriber(url_of(core), "state/#", client_id="late") as late:
                        (kept,) = await late.wait(1)
                        assert (kept.topic, kept.payload, kept.retain) == (
                            "state/door", b"open", True,
                        )  # fmt: skip
                    # the remote's retained message came in when the bridge subscribed
                    async with subscriber(url_of(edge), "config/#", client_id="edge") as here:
                        (config,) = await here.wait(1)
                        assert (config.payload, config.retain) == (b"eco", True)

    run(main())


def test_a_bridge_to_mqtt_3_1_1() -> None:
    async def main() -> None:
        async with started_broker() as core:
            rules = [BridgeTopic("up/#", "out", 1), BridgeTopic("down/#", "in", 1)]
            settings = bridge(url_of(core), *rules, protocol_version=4)
            async with (
                started_broker(bridges=[settings]) as edge,
                subscriber(url_of(core), "up/#", client_id="core-sub") as at_core,
                subscriber(url_of(edge), "down/#", client_id="edge-sub") as at_edge,
                MqttClient("edge-pub", url=url_of(edge)) as edge_pub,
                MqttClient("core-pub", url=url_of(core)) as core_pub,
            ):
                await bridge_up(edge)
                assert core.sessions.get("bridge-edge").version == 4  # type: ignore[union-attr]
                await edge_pub.publish("up/1", b"a", 1)
                await core_pub.publish("down/1", b"b", 1)
                assert [m.payload for m in await at_core.wait(1)] == [b"a"]
                assert [m.payload for m in await at_edge.wait(1)] == [b"b"]

    run(main())


def test_local_side_needs_no_listener_credentials() -> None:
    """The bridge reaches its broker through a private socket pair: a listener that refuses
    anonymous clients (or has an ACL, a mount point ...) does not concern it."""

    async def main() -> None:
        async with started_broker() as core:
            settings = bridge(url_of(core), BridgeTopic("#", "in", 1))
            async with (
                started_broker(bridges=[settings], allow_anonymous=False) as edge,
                subscriber(url_of(core), "#", client_id="core-sub"),
                MqttClient("core-pub", url=url_of(core)) as core_pub,
            ):
                await bridge_up(edge)
                await core_pub.publish("a", b"1", 1)
                b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
                await eventually(lambda: b.forwarded["in"] == 1)
                assert edge.sessions.get("local.bridge-edge") is not None
                assert edge.listeners[0].connections == 0  # not through the listener

    run(main())


# --- the remote going away ---------------------------------------------------------------------


def test_messages_wait_while_the_remote_is_unreachable_and_none_is_lost() -> None:
    async def main() -> None:
        async with started_broker() as core, CuttableProxy(core.ports[0]) as proxy:
            rules = [BridgeTopic("out/#", "out", 1), BridgeTopic("in/#", "in", 2)]
            async with (
                started_broker(bridges=[bridge(proxy.url, *rules)]) as edge,
                subscriber(url_of(core), "out/#", client_id="core-sub") as at_core,
                subscriber(url_of(edge), "in/#", client_id="edge-sub") as at_edge,
                MqttClient("edge-pub", url=url_of(edge)) as edge_pub,
                MqttClient("core-pub", url=url_of(core)) as core_pub,
            ):
                await bridge_up(edge)
                b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
                proxy.cut()
                await eventually(lambda: not b.up)
                for i in range(30):
                    await edge_pub.publish(f"out/{i}", str(i).encode(), 1)
                    await core_pub.publish(f"in/{i}", str(i).encode(), 2)
                await asyncio.sleep(0.3)
                assert not at_core.messages
                assert not at_edge.messages
                proxy.restore()
                await bridge_up(edge)
                await at_core.wait(30)
                await at_edge.wait(30)
                await asyncio.sleep(0.2)
                assert [m.payload for m in at_core.messages] == [str(i).encode() for i in range(30)]
                assert [m.payload for m in at_edge.messages] == [str(i).encode() for i in range(30)]
                assert b.connections == 2

    run(main())


def test_fallback_addresses_are_tried_in_order(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with started_broker() as dead:
            dead_url = url_of(dead)  # a port nobody listens on once it has stopped
        async with started_broker() as core:
            settings = bridge(None, BridgeTopic("#", "out", 1), addresses=[dead_url, url_of(core)])
            async with (
                started_broker(bridges=[settings]) as edge,
                subscriber(url_of(core), "#", client_id="core-sub") as at_core,
                MqttClient("pub", url=url_of(edge)) as pub,
            ):
                await bridge_up(edge)
                assert edge.bridges.bridges["edge"].address == url_of(core)  # type: ignore[union-attr]
                await pub.publish("x", b"1", 1)
                await at_core.wait(1)

    with caplog.at_level(logging.INFO, logger="mqttv5.broker"):
        run(main())
    connecting = [r.getMessage() for r in caplog.records if "Connecting bridge" in r.getMessage()]
    assert len(connecting) == 2
    assert connecting[0].startswith("Connecting bridge edge (127.0.0.1:")


def test_notifications_publish_the_bridge_state_retained() -> None:
    async def main() -> None:
        async with started_broker() as core, CuttableProxy(core.ports[0]) as proxy:
            settings = bridge(proxy.url, BridgeTopic("#", "out", 0))
            async with started_broker(bridges=[settings]) as edge:
                await bridge_up(edge)
                state = "$SYS/broker/connection/edge/state"
                async with subscriber(url_of(edge), state, client_id="watch") as watch:
                    await watch.wait(1)
                    proxy.cut()
                    await watch.wait(2)
                    proxy.restore()
                    await watch.wait(3)
                    assert [(m.payload, m.retain) for m in watch.messages] == [
                        (b"1", True), (b"0", False), (b"1", False),
                    ]  # fmt: skip
                assert edge.router.retained.get(state).payload == b"1"  # type: ignore[union-attr]
            async with subscriber(url_of(core), "$SYS/#", client_id="remote") as remote_side:
                await asyncio.sleep(0.1)
                assert not remote_side.messages  # notifications_local_only by default

    run(main())


def test_try_private_sets_the_bridge_bit() -> None:
    async def main() -> None:
        seen: list[bytes] = []

        async def fake_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.read(1024))
            writer.transport.abort()

        server = await asyncio.start_server(fake_broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for private, version in ((True, 4), (False, 4), (True, 5), (False, 5)):
                seen.clear()
                settings = bridge(
                    f"mqtt://127.0.0.1:{port}",
                    BridgeTopic("#", "out"),
                    try_private=private,
                    protocol_version=version,
                )
                async with started_broker(bridges=[settings]):
                    await eventually(lambda: bool(seen))
                level = seen[0][seen[0].index(b"\x00\x04MQTT") + 6]
                # over 3.1.1 only: Mosquitto refuses the flag with 5.0, and sends it only
                # over 3.1.1 itself
                assert level == version | (0x80 if private and version == 4 else 0)
        finally:
            server.close()
            await server.wait_closed()

    run(main())


# --- reload ---------------------------------------------------------------------------------------


def test_reload_adds_changes_and_removes_bridges() -> None:
    async def main() -> None:
        async with (
            started_broker() as core,
            started_broker() as edge,
            subscriber(url_of(core), "#", client_id="core-sub") as at_core,
            MqttClient("pub", url=url_of(edge)) as pub,
        ):
            first = bridge(url_of(core), BridgeTopic("a/#", "out", 1))
            assert edge.reload(dataclasses.replace(edge.config, bridges=[first])) == []
            await bridge_up(edge)
            await pub.publish("a/1", b"1", 1)
            await pub.publish("b/1", b"1", 1)
            await at_core.wait(1)

            changed = dataclasses.replace(first, topics=[BridgeTopic("b/#", "out", 1)])
            edge.reload(dataclasses.replace(edge.config, bridges=[changed]))
            manager = edge.bridges
            assert manager is not None
            await eventually(lambda: manager.bridges["edge"].settings == changed)
            await bridge_up(edge)
            await pub.publish("a/2", b"2", 1)
            await pub.publish("b/2", b"2", 1)
            await at_core.wait(2)
            await asyncio.sleep(0.1)
            assert at_core.topics == ["a/1", "b/2"]
            # the resumed local session no longer holds the old rule's subscription
            local = edge.sessions.get("local.bridge-edge")
            assert local is not None
            assert list(local.subscriptions) == ["b/#"]

            edge.reload(dataclasses.replace(edge.config, bridges=[]))
            await eventually(lambda: not manager.bridges)
            await eventually(lambda: edge.sessions.get("local.bridge-edge") is None)
            state = edge.router.retained.get("$SYS/broker/connection/edge/state")
            assert state is not None
            assert state.payload == b"0"

    run(main())


# --- configuration --------------------------------------------------------------------------------


@pytest.fixture
def write(tmp_path: Any) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "broker.toml"
        path.write_text(text)
        return str(path)

    return write


BRIDGE = """
[[bridge]]
name = "edge-to-core"
address = "mqtt://127.0.0.1:1884"
"""


class TestBridgeConfig:
    def test_the_documented_example_loads(self, write: Callable[[str], str]) -> None:
        config = load_config(
            write(
                """
                [[bridge]]
                name = "edge-to-core"
                address = "mqtt://127.0.0.1:1884"
                addresses = ["mqtt://10.0.0.2:1883", "core.example.com"]
                client_id = "bridge-edge"
                username = "edge"
                password = "secret"
                protocol_version = 4
                keepalive = 30
                clean_start = true
                topics = [
                    { pattern = "sensors/#", direction = "out", qos = 1, remote_prefix = "site1/" },
                    { pattern = "cmd/#", direction = "in", qos = 2 },
                ]

                [metrics]
                bind = "127.0.0.1"
                port = 9234
                """
            )
        )
        (b,) = config.bridges
        assert b.urls == ["mqtt://127.0.0.1:1884", "mqtt://10.0.0.2:1883", "core.example.com"]
        assert b.topics[0] == BridgeTopic("sensors/#", "out", 1, "", "site1/")
        assert b.topics[1].direction == "in"
        assert b.topics[1].qos == 2
        assert b.effective_local_client_id == "local.bridge-edge"
        assert b.state_topic == "$SYS/broker/connection/edge-to-core/state"
        assert config.metrics is not None
        assert config.metrics.port == 9234

    def test_defaults_follow_mosquitto(self, write: Callable[[str], str]) -> None:
        (b,) = load_config(write(BRIDGE + 'topics = [{ pattern = "#" }]')).bridges
        assert (b.topics[0].direction, b.topics[0].qos) == ("out", 0)
        assert (b.try_private, b.notifications, b.clean_start, b.keepalive) == (
            True, True, False, 60,
        )  # fmt: skip
        assert b.remote_client_id.endswith(".edge-to-core")

    @pytest.mark.parametrize(
        ("text", "key", "words"),
        [
            (BRIDGE + "topics = [{ pattern = '#' }]\nport = 1", "bridge[0].port", "unknown key"),
            (
                BRIDGE + "topics = [{ pattern = 'a' }, { pattern = 'b', direction = 'sideways' }]",
                "bridge[0].topics[1].direction",
                'must be one of "out", "in", "both"',
            ),
            (
                BRIDGE + "topics = [{ pattern = 'a' }, { pattern = 'b', directon = 'in' }]",
                "bridge[0].topics[1].directon",
                "did you mean 'direction'",
            ),
            (BRIDGE + "topics = [{ pattern = 'a', qos = 3 }]", "bridge[0].topics[0].qos", "0..2"),
            (BRIDGE + "topics = ['#']", "bridge[0].topics[0]", "must be a table"),
            (BRIDGE + "topics = '#'", "bridge[0].topics", "must be an array of tables"),
            (BRIDGE, "bridge[0].topics", "at least one topic rule"),
            (BRIDGE + "topics = [{ direction = 'in' }]", "bridge[0].topics[0].pattern", "required"),
            (
                BRIDGE + "topics = [{ pattern = 'a/#/b' }]",
                "bridge[0].topics[0].pattern",
                "not a valid topic filter",
            ),
            (
                BRIDGE + "topics = [{ pattern = '#', local_prefix = 'a/+/' }]",
                "bridge[0].topics[0].local_prefix",
                "wildcards",
            ),
            (
                BRIDGE + "topics = [{ pattern = '$share/g/#' }]",
                "bridge[0].topics[0].pattern",
                "shared subscription",
            ),
            (
                "[[bridge]]\naddress = 'mqtt://h'\ntopics = [{ pattern = '#' }]",
                "bridge[0].name",
                "required",
            ),
            ("[[bridge]]\nname = 'x'\ntopics = [{ pattern = '#' }]", "bridge[0].address", "URL"),
            (
                "[[bridge]]\nname = 'x'\naddress = 'gopher://h'\ntopics = [{ pattern = '#' }]",
                "bridge[0].address",
                "unknown URL scheme",
            ),
            (
                BRIDGE + "topics = [{ pattern = '#' }]\nprotocol_version = 3",
                "bridge[0].protocol_version",
                "5 (MQTT 5.0) or 4",
            ),
            (
                BRIDGE + "topics = [{ pattern = '#' }]\nkeepalive_interval = 30",
                "bridge[0].keepalive_interval",
                "Mosquitto's keepalive_interval is 'keepalive' here",
            ),
            (
                BRIDGE + "topics = [{ pattern = '#' }]\n" + BRIDGE + "topics = [{ pattern = '#' }]",
                "bridge[1].name",
                "bridge[0] already has the name 'edge-to-core'",
            ),
            (
                BRIDGE + "topics = [{ pattern = '#' }]\nreconnect_delay = 40.0",
                "bridge[0].reconnect_delay_max",
                "at least reconnect_delay",
            ),
            ("bridge = 3", "bridge", "write [[bridge]]"),
            ("[bridge]\nname = 'x'", "bridge", "write [[bridge]]"),
        ],
    )
    def test_errors_name_the_key(
        self, write: Callable[[str], str], text: str, key: str, words: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            load_config(write(text))
        assert info.value.key == key
        assert words in info.value.message

    def test_two_bridges_cannot_share_a_local_client_id(self) -> None:
        a = bridge("mqtt://a", BridgeTopic("#"), name="a", client_id="same")
        b = bridge("mqtt://b", BridgeTopic("#"), name="b", client_id="same")
        with pytest.raises(ConfigError) as info:
            validate_config(BrokerConfig(bridges=[a, b]))
        assert info.value.key == "bridge[1].local_client_id"

    @pytest.mark.parametrize(
        ("rules", "refused"),
        [
            ([BridgeTopic("#", "both")], "bridge[0].topics[0].direction"),
            (
                [BridgeTopic("a/#", "in"), BridgeTopic("a/b", "out")],
                "bridge[0].topics[1].direction",
            ),
            (
                [BridgeTopic("+/x", "out"), BridgeTopic("a/#", "in")],
                "bridge[0].topics[0].direction",
            ),
            ([BridgeTopic("a/#", "in", remote_prefix="r/"), BridgeTopic("a/#", "out")], None),
            ([BridgeTopic("a/#", "in"), BridgeTopic("b/#", "out")], None),
        ],
    )
    def test_a_3_1_1_bridge_without_try_private_refuses_loops(
        self, rules: list[BridgeTopic], refused: str | None
    ) -> None:
        settings = bridge("mqtt://h", *rules, protocol_version=4, try_private=False)
        config = BrokerConfig(bridges=[settings])
        if refused is None:
            validate_config(config)
            return
        with pytest.raises(ConfigError) as info:
            validate_config(config)
        assert info.value.key == refused
        assert "loop" in info.value.message
        # the same rules are fine with the bridge flag, or over MQTT 5.0 (No Local)
        validate_config(BrokerConfig(bridges=[dataclasses.replace(settings, try_private=True)]))
        validate_config(BrokerConfig(bridges=[dataclasses.replace(settings, protocol_version=5)]))

    def test_single_topic_remapping_needs_both_prefixes(self) -> None:
        ok = BridgeTopic("", "both", 1, local_prefix="here", remote_prefix="there")
        validate_config(BrokerConfig(bridges=[bridge("mqtt://h", ok)]))
        assert (ok.to_remote("here"), ok.to_local("there")) == ("there", "here")
        half = BridgeTopic("", "out", 1, local_prefix="here")
        with pytest.raises(ConfigError) as info:
            validate_config(BrokerConfig(bridges=[bridge("mqtt://h", half)]))
        assert info.value.key == "bridge[0].topics[0].pattern"

    def test_prefixes_map_topics(self) -> None:
        rule = BridgeTopic("#", "both", 2, local_prefix="local/", remote_prefix="remote/")
        assert (rule.local_filter, rule.remote_filter) == ("local/#", "remote/#")
        assert rule.to_remote("local/a/b") == "remote/a/b"
        assert rule.to_local("remote/a/b") == "local/a/b"
