"""Our broker with clients nobody here wrote: paho-mqtt (PyPI) and mosquitto_pub / mosquitto_sub
(Debian mosquitto-clients), MQTT 5.0 and 3.1.1."""

from __future__ import annotations

import asyncio
import shutil
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient, timeout

pytestmark = pytest.mark.interop

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")


def _require_clients() -> None:
    # scripts/test installs Debian's mosquitto-clients; a missing binary is a set-up error.
    assert MOSQUITTO_PUB and MOSQUITTO_SUB, "mosquitto-clients not installed (run scripts/test)"


async def _proc(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout(15))
    assert proc.returncode is not None
    return proc.returncode, out, err


class PahoClient:
    """A paho-mqtt client driven from a thread, with received messages in a list."""

    def __init__(self, client_id: str, protocol: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        self.messages: list[paho.MQTTMessage] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published: set[int] = set()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_publish = lambda c, u, mid, rc, p: self.published.add(mid)

    def start(self, port: int, **kwargs: Any) -> None:
        self.client.connect("127.0.0.1", port, **kwargs)
        self.client.loop_start()
        assert self.connected.wait(timeout(5))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["v5", "v311"])
def test_paho_publish_subscribe_all_qos(protocol: int) -> None:
    async def main() -> None:
        async with started_broker() as b:
            port = b.ports[0]
            sub = PahoClient("paho-sub", protocol)
            pub = PahoClient("paho-pub", protocol)
            await asyncio.to_thread(sub.start, port)
            await asyncio.to_thread(pub.start, port)
            sub.client.subscribe("paho/#", qos=2)
            assert await asyncio.to_thread(sub.subscribed.wait, timeout(5))
            infos = [pub.client.publish(f"paho/{q}", f"qos{q}".encode(), qos=q) for q in (0, 1, 2)]
            for info in infos:
                await asyncio.to_thread(info.wait_for_publish, timeout(5))
            for _ in range(100):
                if len(sub.messages) == 3:
                    break
                await asyncio.sleep(0.05)
            got = sorted((m.topic, m.payload, m.qos) for m in sub.messages)
            assert got == [
                ("paho/0", b"qos0", 0),
                ("paho/1", b"qos1", 1),
                ("paho/2", b"qos2", 2),
            ]
            await asyncio.to_thread(sub.stop)
            await asyncio.to_thread(pub.stop)

    run(main())


def test_paho_v5_properties_and_retained() -> None:
    async def main() -> None:
        async with started_broker() as b:
            port = b.ports[0]
            pub = PahoClient("pp", paho.MQTTv5)
            await asyncio.to_thread(pub.start, port)
            props = PahoProperties(PacketTypes.PUBLISH)
            props.UserProperty = [("a", "1"), ("b", "2")]
            props.ContentType = "application/json"
            props.ResponseTopic = "resp/x"
            props.CorrelationData = b"corr"
            info = pub.client.publish("pr/x", b"{}", qos=1, retain=True, properties=props)
            await asyncio.to_thread(info.wait_for_publish, timeout(5))
            sub = PahoClient("ps", paho.MQTTv5)
            await asyncio.to_thread(sub.start, port)
            sub.client.subscribe("pr/#", qos=1)
            for _ in range(100):
                if sub.messages:
                    break
                await asyncio.sleep(0.05)
            (m,) = sub.messages
            assert m.retain
            assert m.properties.UserProperty == [("a", "1"), ("b", "2")]
            assert m.properties.ContentType == "application/json"
            assert m.properties.ResponseTopic == "resp/x"
            assert m.properties.CorrelationData == b"corr"
            await asyncio.to_thread(sub.stop)
            await asyncio.to_thread(pub.stop)

    run(main())


@pytest.mark.parametrize("version", ["5", "311"])
def test_mosquitto_sub_receives_from_mosquitto_pub(version: str) -> None:
    _require_clients()

    async def main() -> None:
        async with started_broker() as b:
            port = str(b.ports[0])
            assert MOSQUITTO_SUB and MOSQUITTO_PUB
            sub = asyncio.create_task(
                _proc(MOSQUITTO_SUB, "-p", port, "-V", version, "-t", "m/#", "-C", "3", "-v",
                      "-q", "1", "-W", "10")
            )  # fmt: skip
            await asyncio.sleep(0.5)
            for i in range(3):
                rc, _, err = await _proc(
                    MOSQUITTO_PUB, "-p", port, "-V", version, "-t", f"m/{i}", "-m", f"hello {i}",
                    "-q", str(i % 3),
                )  # fmt: skip
                assert rc == 0, err
            rc, out, err = await sub
            assert rc == 0, err
            assert out.decode().splitlines() == ["m/0 hello 0", "m/1 hello 1", "m/2 hello 2"]

    run(main())


def test_mosquitto_pub_v5_properties_reach_raw_subscriber() -> None:
    _require_clients()

    async def main() -> None:
        async with started_broker() as b:
            raw = await RawClient.connect(b.ports[0], "raw")
            await raw.subscribe("mp", qos=1)
            assert MOSQUITTO_PUB
            rc, _, err = await _proc(
                MOSQUITTO_PUB, "-p", str(b.ports[0]), "-V", "5", "-t", "mp", "-m", "body",
                "-q", "1", "-D", "publish", "user-property", "k", "v",
                "-D", "publish", "content-type", "text/plain",
            )  # fmt: skip
            assert rc == 0, err
            from mqttv5.protocol.packets import Publish

            got = await raw.expect(Publish)
            assert got.payload == b"body"
            assert got.properties.user_properties == [("k", "v")]
            assert got.properties.content_type == "text/plain"

    run(main())


def test_mosquitto_sub_retained_and_will() -> None:
    _require_clients()

    async def main() -> None:
        async with started_broker() as b:
            port = str(b.ports[0])
            assert MOSQUITTO_SUB and MOSQUITTO_PUB
            rc, _, err = await _proc(
                MOSQUITTO_PUB, "-p", port, "-t", "ret/a", "-m", "kept", "-r", "-q", "1"
            )
            assert rc == 0, err
            rc, out, err = await _proc(
                MOSQUITTO_SUB, "-p", port, "-t", "ret/#", "-C", "1", "-v", "-W", "5"
            )
            assert rc == 0, err
            assert out.decode().strip() == "ret/a kept"

    run(main())
