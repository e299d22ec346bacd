"""Bridges with a real Mosquitto (Debian's 2.0) on either side: ours -> Mosquitto over MQTT 5.0
and 3.1.1 (with the bridge flag), Mosquitto -> ours with Mosquitto's own bridge configuration,
and a Mosquitto that restarts (persistence on) while our bridge forwards QoS 1 messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mqttv5 import MqttClient
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BridgeSettings, BridgeTopic
from mqttv5.client import ConnectOptions, Message, ReconnectPolicy
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import timeout
from tests.client.mosquitto import MOSQUITTO, Mosquitto

pytestmark = pytest.mark.interop


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    """``mosquitto(extra=..., persistence=...)`` starts one; all are stopped at teardown."""
    assert Path(MOSQUITTO).exists(), "mosquitto not installed (run scripts/test)"
    started: list[Mosquitto] = []

    def factory(*, extra: str = "", persistence: bool = False) -> Mosquitto:
        directory = tmp_path / f"mosquitto{len(started)}"
        directory.mkdir()
        mosq = Mosquitto(directory, extra=extra, persistence=persistence)
        mosq.start()
        started.append(mosq)
        return mosq

    yield factory
    for mosq in started:
        mosq.stop()


def our_bridge(url: str, *rules: BridgeTopic, **settings: Any) -> BridgeSettings:
    settings.setdefault("reconnect_delay", 0.05)
    settings.setdefault("reconnect_delay_max", 0.5)
    return BridgeSettings(
        name="edge", address=url, client_id="bridge-edge", topics=list(rules), **settings
    )


async def eventually(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(timeout(seconds)):
        while not predicate():
            await asyncio.sleep(0.01)


async def bridge_up(broker: MqttBroker) -> None:
    manager = broker.bridges
    assert manager is not None
    await eventually(lambda: "edge" in manager.bridges and manager.bridges["edge"].up)


@contextlib.asynccontextmanager
async def collecting(
    url: str, topic_filter: str, client_id: str, **kwargs: Any
) -> AsyncIterator[list[Message]]:
    """A subscriber whose received messages accumulate in the yielded list."""
    received: list[Message] = []
    client = MqttClient(client_id, url=url, **kwargs)
    await client.connect()

    async def collect() -> None:
        async for message in client.messages():
            received.append(message)  # noqa: PERF401 - the test reads the list meanwhile

    task = asyncio.ensure_future(collect())
    try:
        await client.subscribe(topic_filter, 1)
        yield received
    finally:
        await client.disconnect()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def exchange_once_each_way(ours: str, theirs: str) -> None:
    """Publish once on each side; each side's subscriber gets both messages exactly once, and
    nothing ping-pongs between the brokers for a second."""
    async with (
        collecting(ours, "#", "ours-sub") as at_ours,
        collecting(theirs, "#", "theirs-sub") as at_theirs,
        MqttClient("ours-pub", url=ours) as ours_pub,
        MqttClient("theirs-pub", url=theirs) as theirs_pub,
    ):
        await ours_pub.publish("from/ours", b"1", 1)
        await theirs_pub.publish("from/mosquitto", b"2", 1)
        await eventually(lambda: len(at_ours) >= 2 and len(at_theirs) >= 2)
        await asyncio.sleep(timeout(1.0))
        assert sorted(m.topic for m in at_ours) == ["from/mosquitto", "from/ours"]
        assert sorted(m.topic for m in at_theirs) == ["from/mosquitto", "from/ours"]


@pytest.mark.parametrize("version", [5, 4])
def test_ours_to_mosquitto_both_ways_without_loops(mosquitto: Any, version: int) -> None:
    """Over 5.0, No Local; over 3.1.1, Mosquitto honours the bridge flag (try_private)."""
    mosq = mosquitto()

    async def main() -> None:
        settings = our_bridge(mosq.url, BridgeTopic("#", "both", 1), protocol_version=version)
        async with started_broker(bridges=[settings]) as edge:
            await bridge_up(edge)
            await exchange_once_each_way(f"mqtt://127.0.0.1:{edge.ports[0]}", mosq.url)
            b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
            assert b.forwarded == {"out": 1, "in": 1}

    run(main())
    assert "bridge-edge" in mosq.log()


def test_ours_to_mosquitto_with_prefixes_and_qos_2(mosquitto: Any) -> None:
    mosq = mosquitto()

    async def main() -> None:
        rules = [
            BridgeTopic("sensors/#", "out", 2, remote_prefix="site1/"),
            BridgeTopic("cmd/#", "in", 2, local_prefix="remote/", remote_prefix="site1/"),
        ]
        async with started_broker(bridges=[our_bridge(mosq.url, *rules)]) as edge:
            ours = f"mqtt://127.0.0.1:{edge.ports[0]}"
            await bridge_up(edge)
            async with (
                collecting(ours, "remote/#", "ours-sub") as at_ours,
                collecting(mosq.url, "site1/sensors/#", "theirs-sub") as at_theirs,
                MqttClient("ours-pub", url=ours) as ours_pub,
                MqttClient("theirs-pub", url=mosq.url) as theirs_pub,
            ):
                await ours_pub.publish("sensors/t", b"21", 2)
                await theirs_pub.publish("site1/cmd/go", b"now", 2)
                await eventually(lambda: len(at_ours) == 1 and len(at_theirs) == 1)
                assert (at_theirs[0].topic, at_theirs[0].payload) == ("site1/sensors/t", b"21")
                assert (at_ours[0].topic, at_ours[0].payload) == ("remote/cmd/go", b"now")

    run(main())


def mosquitto_bridge(port: int, topics: str, version: str) -> str:
    """Mosquitto's own bridge configuration towards our broker."""
    return f"""
connection to-ours
address 127.0.0.1:{port}
remote_clientid mosquitto-bridge
{topics}
bridge_protocol_version {version}
try_private true
cleansession true
notifications false
restart_timeout 1
"""


def test_mosquitto_to_ours_over_5_0_both_ways_without_loops(mosquitto: Any) -> None:
    async def main() -> None:
        async with started_broker() as ours:
            extra = mosquitto_bridge(ours.ports[0], "topic # both 1", "mqttv50")
            mosq = await asyncio.to_thread(mosquitto, extra=extra)
            await eventually(lambda: ours.sessions.get("mosquitto-bridge") is not None)
            await eventually(lambda: ours.router.subscription_count == 1)
            await exchange_once_each_way(f"mqtt://127.0.0.1:{ours.ports[0]}", mosq.url)

    run(main())


def test_mosquitto_to_ours_over_3_1_1(mosquitto: Any) -> None:
    async def main() -> None:
        async with started_broker() as ours:
            topics = "topic up/# out 1\ntopic down/# in 1 local/ remote/"
            extra = mosquitto_bridge(ours.ports[0], topics, "mqttv311")
            mosq = await asyncio.to_thread(mosquitto, extra=extra)
            await eventually(lambda: ours.router.subscription_count == 1)
            session = ours.sessions.get("mosquitto-bridge")
            assert session is not None
            assert session.version == 4
            ours_url = f"mqtt://127.0.0.1:{ours.ports[0]}"
            async with (
                collecting(ours_url, "up/#", "ours-sub") as at_ours,
                collecting(mosq.url, "local/#", "theirs-sub") as at_theirs,
                MqttClient("ours-pub", url=ours_url) as ours_pub,
                MqttClient("theirs-pub", url=mosq.url) as theirs_pub,
            ):
                await theirs_pub.publish("up/1", b"a", 1)
                await ours_pub.publish("remote/down/1", b"b", 1)
                await eventually(lambda: len(at_ours) == 1 and len(at_theirs) == 1)
                assert (at_ours[0].topic, at_theirs[0].topic) == ("up/1", "local/down/1")

    run(main())


def test_a_restarting_mosquitto_loses_no_qos_1_message(mosquitto: Any) -> None:
    mosq = mosquitto(persistence=True)

    async def main() -> None:
        settings = our_bridge(mosq.url, BridgeTopic("data/#", "out", 1), session_expiry=600)
        async with started_broker(bridges=[settings]) as edge:
            await bridge_up(edge)
            b = edge.bridges.bridges["edge"]  # type: ignore[union-attr]
            collector = MqttClient(
                "collector",
                url=mosq.url,
                options=ConnectOptions(clean_start=False, session_expiry_interval=600),
                reconnect=ReconnectPolicy(enabled=True, initial_delay=0.05, max_delay=0.3),
            )
            received: list[bytes] = []
            await collector.connect()
            await collector.subscribe("data/#", 1)

            async def collect() -> None:
                async for message in collector.messages():
                    received.append(message.payload)  # noqa: PERF401 - read meanwhile

            task = asyncio.ensure_future(collect())
            try:
                async with MqttClient("pub", url=f"mqtt://127.0.0.1:{edge.ports[0]}") as pub:
                    for i in range(20):
                        await pub.publish(f"data/{i}", str(i).encode(), 1)
                    await asyncio.to_thread(mosq.stop)  # saves its sessions (persistence)
                    await eventually(lambda: not b.up)
                    for i in range(20, 40):
                        await pub.publish(f"data/{i}", str(i).encode(), 1)
                    await asyncio.to_thread(mosq.start)
                    await bridge_up(edge)
                    expected = {str(i).encode() for i in range(40)}
                    await eventually(lambda: expected <= set(received), 20)
                    assert b.connections == 2
            finally:
                await collector.disconnect()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    run(main(), 60)
