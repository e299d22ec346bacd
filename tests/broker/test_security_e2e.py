"""Password file and ACL file enforced by the running broker, over real sockets."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig, ListenerSettings
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Connect, Publish
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """A password file written by the real mosquitto_passwd (Debian mosquitto)."""
    assert MOSQUITTO_PASSWD, "mosquitto_passwd missing (scripts/test installs mosquitto)"
    path = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "alice", "wonder"], check=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), "bob", "builder"], check=True)
    return path


@pytest.fixture
def acl_file(tmp_path: Path) -> Path:
    path = tmp_path / "acl"
    path.write_text(
        "# anonymous clients: nothing\n"
        "user alice\n"
        "topic readwrite home/#\n"
        "topic read $SYS/#\n"
        "user bob\n"
        "topic write home/bob/#\n"
        "topic read home/+/status\n"
        "pattern readwrite clients/%c/#\n"
    )
    return path


def test_password_file_from_mosquitto_passwd(password_file: Path) -> None:
    async def main() -> None:
        async with started_broker(password_file=str(password_file), allow_anonymous=False) as b:
            port = b.ports[0]
            await RawClient.connect(port, "a", username="alice", password=b"wonder")
            await RawClient.connect(
                port, "x", username="alice", password=b"wrong",
                expect_code=ReasonCode.BAD_USER_NAME_OR_PASSWORD,
            )  # fmt: skip
            await RawClient.connect(port, "n", expect_code=ReasonCode.NOT_AUTHORIZED)
            # 3.1.1: return code 4 for bad credentials
            c = await RawClient.open(port, version=4)
            c.send(Connect("o", protocol_level=4, username="bob", password=b"nope"))
            assert (await c.recv()).encode(4) == b"\x20\x02\x00\x04"

    run(main())


def test_acl_file_enforced(password_file: Path, acl_file: Path) -> None:
    async def main() -> None:
        async with started_broker(
            password_file=str(password_file), acl_file=str(acl_file), allow_anonymous=False
        ) as b:
            port = b.ports[0]
            alice = await RawClient.connect(port, "alice-1", username="alice", password=b"wonder")
            bob = await RawClient.connect(port, "bob-1", username="bob", password=b"builder")
            suback = await bob.subscribe("home/#", "home/+/status", "secret/x", "clients/bob-1/in")
            assert suback.reason_codes == [
                ReasonCode.GRANTED_QOS_0,  # partly readable: granted, filtered on delivery
                ReasonCode.GRANTED_QOS_0,
                ReasonCode.NOT_AUTHORIZED,
                ReasonCode.GRANTED_QOS_0,  # pattern with %c
            ]
            await alice.publish("home/kitchen/temp", b"21")  # not readable by bob
            await alice.publish("home/kitchen/status", b"on")  # readable by bob
            got = await bob.expect(Publish)
            assert (got.topic, got.payload) == ("home/kitchen/status", b"on")
            await bob.nothing()
            ack = await bob.publish("home/alice/x", b"no", qos=1)
            assert ack is not None
            assert ack.reason_code == ReasonCode.NOT_AUTHORIZED  # type: ignore[union-attr]
            ack = await bob.publish("home/bob/x", b"yes", qos=1, packet_id=2)
            assert ack.reason_code == ReasonCode.SUCCESS  # type: ignore[union-attr]

    run(main())


def test_sighup_reload_of_password_file_keeps_connections(
    password_file: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with started_broker(password_file=str(password_file), allow_anonymous=False) as b:
            port = b.ports[0]
            alice = await RawClient.connect(port, "a", username="alice", password=b"wonder")
            assert MOSQUITTO_PASSWD
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(password_file), "carol", "singer"], check=True
            )
            assert b.reload(dataclasses.replace(b.config)) == []
            await RawClient.connect(port, "c", username="carol", password=b"singer")
            await alice.subscribe("still/here")  # the old connection survived

    run(main())


def test_bad_password_file_refuses_start(tmp_path: Path) -> None:
    bad = tmp_path / "passwd"
    bad.write_text("alice:$7$notvalid\n")
    config = BrokerConfig(
        listeners=[ListenerSettings(port=0)], password_file=str(bad), sys_interval=0
    )

    async def main() -> None:
        broker = MqttBroker(config)
        with pytest.raises(ConfigError) as info:
            await broker.start()
        assert "line 1" in str(info.value)

    run(main())
