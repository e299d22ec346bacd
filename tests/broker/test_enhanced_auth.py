"""Enhanced authentication (section 4.12): the AUTH exchange through the authenticator hook."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.broker.auth import AuthRequest, AuthResult
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig, ListenerSettings
from mqttv5.protocol.packets import Auth, Connack, Connect, Disconnect
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run
from tests.broker.rawclient import RawClient


class ChallengeAuth:
    """A toy method: the server sends a nonce, the client must answer it reversed."""

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, request: AuthRequest) -> AuthResult:
        self.calls += 1
        await asyncio.sleep(0.01)  # answers later: the handler must hold packets meanwhile
        method = request.connect.properties.authentication_method
        if method != "REVERSE":
            return AuthResult(ReasonCode.BAD_AUTHENTICATION_METHOD)
        if request.auth is None or request.auth.reason_code == ReasonCode.RE_AUTHENTICATE:
            return AuthResult(
                ReasonCode.CONTINUE_AUTHENTICATION,
                properties=Properties(authentication_data=b"abc"),
            )
        if request.auth.properties.authentication_data == b"cba":
            return AuthResult(
                ReasonCode.SUCCESS, properties=Properties(authentication_data=b"welcome")
            )
        return AuthResult(ReasonCode.NOT_AUTHORIZED)


async def _broker(auth: ChallengeAuth) -> MqttBroker:
    broker = MqttBroker(
        BrokerConfig(listeners=[ListenerSettings(port=0)], sys_interval=0), authenticator=auth
    )
    await broker.start()
    return broker


def _connect(method: str | None = "REVERSE") -> Connect:
    return Connect("ea", properties=Properties(authentication_method=method))


@pytest.mark.spec("MQTT-4.12.0-2", "MQTT-4.12.0-5")
def test_challenge_response_then_reauthentication() -> None:
    async def main() -> None:
        broker = await _broker(ChallengeAuth())
        try:
            c = await RawClient.open(broker.ports[0])
            c.send(_connect())
            challenge = await c.expect(Auth)
            assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
            assert challenge.properties.authentication_method == "REVERSE"
            assert challenge.properties.authentication_data == b"abc"
            c.send(
                Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(authentication_method="REVERSE", authentication_data=b"cba"),
                )
            )
            connack = await c.expect(Connack)
            assert connack.reason_code == ReasonCode.SUCCESS
            assert connack.properties.authentication_method == "REVERSE"
            assert connack.properties.authentication_data == b"welcome"
            # re-authentication
            c.send(Auth(ReasonCode.RE_AUTHENTICATE, Properties(authentication_method="REVERSE")))
            again = await c.expect(Auth)
            assert again.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
            c.send(
                Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(authentication_method="REVERSE", authentication_data=b"cba"),
                )
            )
            done = await c.expect(Auth)
            assert done.reason_code == ReasonCode.SUCCESS
        finally:
            await broker.stop()

    run(main())


@pytest.mark.spec("MQTT-4.12.0-4")
def test_wrong_answer_refused() -> None:
    async def main() -> None:
        broker = await _broker(ChallengeAuth())
        try:
            c = await RawClient.open(broker.ports[0])
            c.send(_connect())
            await c.expect(Auth)
            c.send(
                Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(authentication_method="REVERSE", authentication_data=b"abc"),
                )
            )
            packets = await c.closed()
            assert isinstance(packets[0], Connack)
            assert packets[0].reason_code == ReasonCode.NOT_AUTHORIZED
        finally:
            await broker.stop()

    run(main())


@pytest.mark.spec("MQTT-4.12.0-1")
def test_unknown_method_refused_with_0x8c() -> None:
    async def main() -> None:
        broker = await _broker(ChallengeAuth())
        try:
            c = await RawClient.open(broker.ports[0])
            c.send(_connect("KERBEROS"))
            packets = await c.closed()
            assert isinstance(packets[0], Connack)
            assert packets[0].reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
        finally:
            await broker.stop()

    run(main())


@pytest.mark.spec("MQTT-4.12.0-7")
def test_auth_without_method_is_protocol_error() -> None:
    async def main() -> None:
        from tests.broker.conftest import started_broker

        async with started_broker() as b:
            c = await RawClient.connect(b.ports[0], "plain")
            c.send(Auth(ReasonCode.RE_AUTHENTICATE, Properties(authentication_method="X")))
            packets = await c.closed()
            assert isinstance(packets[-1], Disconnect)
            assert packets[-1].reason_code == ReasonCode.PROTOCOL_ERROR

    run(main())
