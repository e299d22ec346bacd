"""SCRAM-SHA-256 enhanced authentication: our client against our broker over real sockets, the
credentials file, ``mqttv5 passwd --scram-file`` and the authenticator's own rules."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import pytest
import scramp

from mqttv5.broker.auth import AuthRequest, AuthResult
from mqttv5.broker.config import BrokerConfig, ListenerSettings, validate_config
from mqttv5.broker.passwords import hash_password
from mqttv5.broker.scram import (
    METHOD,
    ScramAuthenticator,
    ScramFile,
    hash_scram,
    parse_scram,
)
from mqttv5.cli.passwd import main as passwd_main
from mqttv5.client import ConnectOptions, DisconnectedByServer, MqttClient, RefusedByServer
from mqttv5.client.scram import ScramClientAuthenticator, ScramError
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Auth, Connack, Connect, Disconnect
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient

RC = ReasonCode


@pytest.fixture
def scram_file(tmp_path: Path) -> Path:
    """A SCRAM file written by ``mqttv5 passwd`` (alice/wonder, bob/builder)."""
    path = tmp_path / "scram"
    assert (
        passwd_main(["--hash", "scram-sha-256", "--scram-file", str(path), "alice", "wonder"]) == 0
    )
    assert passwd_main(["--scram-file", str(path), "bob", "builder"]) == 0
    return path


def _client(user: str, password: str) -> ConnectOptions:
    return ConnectOptions(authenticator=ScramClientAuthenticator(user, password))


def _url(port: int) -> str:
    return f"mqtt://127.0.0.1:{port}"


class TestOverTheNetwork:
    def test_login_publish_and_reauthenticate(self, scram_file: Path) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                client = MqttClient("s1", url=_url(b.ports[0]), options=_client("alice", "wonder"))
                async with client:
                    assert {h.username for h in b.handlers if h.accepted} == {"alice"}
                    await client.subscribe("t/#", qos=1)
                    await client.publish("t/1", b"hi", qos=1)
                    async with asyncio.timeout(5):
                        async for message in client.messages():
                            assert message.payload == b"hi"
                            break
                    await client.reauthenticate()  # AUTH 0x19, a fresh exchange
                    await client.reauthenticate()
                    assert await client.publish("t/2", b"still", qos=1) == RC.SUCCESS

        run(main())

    @pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nobody", "wonder")])
    def test_wrong_password_or_unknown_user_is_0x86(
        self, scram_file: Path, user: str, password: str
    ) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                client = MqttClient("s2", options=_client(user, password))
                with pytest.raises(RefusedByServer) as info:
                    await client.connect(_url(b.ports[0]))
                assert info.value.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
                assert b.counters.auth_failures == 1

        run(main())

    def test_raw_exchange_carries_method_and_server_signature(self, scram_file: Path) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                c = await RawClient.open(b.ports[0])
                scram = scramp.ScramClient([METHOD], "bob", "builder")
                props = Properties(authentication_method=METHOD)
                props.authentication_data = scram.get_client_first().encode()
                c.send(Connect("raw", properties=props))
                challenge = await c.expect(Auth)
                assert challenge.reason_code == RC.CONTINUE_AUTHENTICATION
                assert challenge.properties.authentication_method == METHOD
                scram.set_server_first(challenge.properties.authentication_data.decode())
                assert int(scram.iterations) == 4096
                final = Properties(authentication_method=METHOD)
                final.authentication_data = scram.get_client_final().encode()
                c.send(Auth(RC.CONTINUE_AUTHENTICATION, final))
                connack = await c.expect(Connack)
                assert connack.reason_code == RC.SUCCESS
                assert connack.properties.authentication_method == METHOD
                scram.set_server_final(connack.properties.authentication_data.decode())

        run(main())

    def test_no_initial_response(self, scram_file: Path) -> None:
        """CONNECT without Authentication Data: an empty challenge, client-first in AUTH."""

        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                c = await RawClient.open(b.ports[0])
                c.send(Connect("raw", properties=Properties(authentication_method=METHOD)))
                empty = await c.expect(Auth)
                assert empty.properties.authentication_data is None
                scram = scramp.ScramClient([METHOD], "bob", "builder")
                first = Properties(authentication_method=METHOD)
                first.authentication_data = scram.get_client_first().encode()
                c.send(Auth(RC.CONTINUE_AUTHENTICATION, first))
                challenge = await c.expect(Auth)
                scram.set_server_first(challenge.properties.authentication_data.decode())
                final = Properties(authentication_method=METHOD)
                final.authentication_data = scram.get_client_final().encode()
                c.send(Auth(RC.CONTINUE_AUTHENTICATION, final))
                assert (await c.expect(Connack)).reason_code == RC.SUCCESS

        run(main())

    def test_reauthentication_as_another_user_closes_with_0x87(self, scram_file: Path) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                client = MqttClient("s3", options=_client("alice", "wonder"))
                await client.connect(_url(b.ports[0]))
                auth = client.options.authenticator
                assert isinstance(auth, ScramClientAuthenticator)
                auth.username, auth.password = "bob", "builder"  # valid, but someone else
                with pytest.raises(DisconnectedByServer) as info:
                    await client.reauthenticate()
                assert info.value.reason_code == RC.NOT_AUTHORIZED
                await client.disconnect()

        run(main())

    def test_failed_reauthentication_closes_the_connection(self, scram_file: Path) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                c = await RawClient.open(b.ports[0])
                scram = scramp.ScramClient([METHOD], "bob", "builder")
                await _raw_login(c, scram)
                again = scramp.ScramClient([METHOD], "bob", "not-his")
                first = Properties(authentication_method=METHOD)
                first.authentication_data = again.get_client_first().encode()
                c.send(Auth(RC.RE_AUTHENTICATE, first))
                challenge = await c.expect(Auth)
                again.set_server_first(challenge.properties.authentication_data.decode())
                final = Properties(authentication_method=METHOD)
                final.authentication_data = again.get_client_final().encode()
                c.send(Auth(RC.CONTINUE_AUTHENTICATION, final))
                packets = await c.closed()
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == RC.NOT_AUTHORIZED  # [MQTT-4.12.1-2]

        run(main())

    def test_password_and_scram_files_together(self, scram_file: Path, tmp_path: Path) -> None:
        passwd = tmp_path / "passwd"
        passwd.write_text(f"carol:{hash_password(b'secret')}\n")

        async def main() -> None:
            async with started_broker(
                scram_file=str(scram_file), password_file=str(passwd), allow_anonymous=False
            ) as b:
                port = b.ports[0]
                await RawClient.connect(port, "p", username="carol", password=b"secret")
                await RawClient.connect(
                    port, "q", username="carol", password=b"bad",
                    expect_code=RC.BAD_USER_NAME_OR_PASSWORD,
                )  # fmt: skip
                # alice is only in the SCRAM file: a plain password login does not reach it
                await RawClient.connect(
                    port, "r", username="alice", password=b"wonder",
                    expect_code=RC.BAD_USER_NAME_OR_PASSWORD,
                )  # fmt: skip
                await RawClient.connect(port, "s", expect_code=RC.NOT_AUTHORIZED)
                await RawClient.connect(
                    port, "t", properties=Properties(authentication_method="KERBEROS"),
                    expect_code=RC.BAD_AUTHENTICATION_METHOD,
                )  # fmt: skip
                async with MqttClient("u", url=_url(port), options=_client("alice", "wonder")):
                    pass

        run(main())

    def test_reload_picks_up_a_new_user(self, scram_file: Path) -> None:
        async def main() -> None:
            async with started_broker(scram_file=str(scram_file), allow_anonymous=False) as b:
                url = _url(b.ports[0])
                with pytest.raises(RefusedByServer):
                    await MqttClient("d1", options=_client("dave", "pw")).connect(url)
                assert passwd_main(["--scram-file", str(scram_file), "dave", "pw"]) == 0
                assert b.reload(dataclasses.replace(b.config)) == []
                async with MqttClient("d2", url=url, options=_client("dave", "pw")):
                    pass

        run(main())

    def test_client_refuses_a_server_without_the_verifier(self) -> None:
        """A server that does not know the user's verifier cannot produce its signature."""

        async def main() -> None:
            auth = ScramClientAuthenticator("alice", "wonder")
            method, first = await auth.start()
            assert method == METHOD and first is not None
            salt, stored, server_key, _ = scramp.ScramMechanism().make_auth_info("other")
            server = scramp.ScramMechanism().make_server(
                lambda _user: (salt, stored, server_key, 4096)
            )
            server.set_client_first(first.decode())
            final = await auth.step(RC.CONTINUE_AUTHENTICATION, server.get_server_first().encode())
            assert final is not None
            with pytest.raises(ScramError):
                await auth.step(RC.SUCCESS, b"v=" + base64.b64encode(b"x" * 32))
            auth2 = ScramClientAuthenticator("alice", "wonder", max_iterations=5000)
            _, first2 = await auth2.start()
            assert first2 is not None
            nonce = first2.decode().split("r=")[1]
            greedy = f"r={nonce}xyz,s={base64.b64encode(b's' * 16).decode()},i=10000"
            with pytest.raises(ScramError, match="iterations"):
                await auth2.step(RC.CONTINUE_AUTHENTICATION, greedy.encode())

        run(main())


async def _raw_login(c: RawClient, scram: scramp.ScramClient) -> None:
    props = Properties(authentication_method=METHOD)
    props.authentication_data = scram.get_client_first().encode()
    c.send(Connect("raw", properties=props))
    challenge = await c.expect(Auth)
    scram.set_server_first(challenge.properties.authentication_data.decode())
    final = Properties(authentication_method=METHOD)
    final.authentication_data = scram.get_client_final().encode()
    c.send(Auth(RC.CONTINUE_AUTHENTICATION, final))
    assert (await c.expect(Connack)).reason_code == RC.SUCCESS


# --- the authenticator without a network ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(connect: Connect, auth: Auth | None = None, port: int = 5000) -> AuthRequest:
    return AuthRequest(connect, "192.0.2.7", port, "l", False, auth)


def _scram_connect(scram: scramp.ScramClient, username: str | None = None) -> Connect:
    props = Properties(authentication_method=METHOD)
    props.authentication_data = scram.get_client_first().encode()
    return Connect("c", username=username, properties=props)


def _finish(auth: ScramAuthenticator, connect: Connect, scram: scramp.ScramClient) -> AuthResult:
    first = auth.check(_request(connect))
    assert first is not None and first.reason_code == RC.CONTINUE_AUTHENTICATION
    scram.set_server_first(first.properties.authentication_data.decode())
    props = Properties(authentication_method=METHOD)
    props.authentication_data = scram.get_client_final().encode()
    answer = auth.check(_request(connect, Auth(RC.CONTINUE_AUTHENTICATION, props)))
    assert answer is not None
    return answer


class TestAuthenticator:
    @pytest.fixture
    def creds(self) -> ScramFile:
        return ScramFile.parse(f"alice:{hash_scram('wonder')}\n# comment\n\n")

    def test_success_names_the_user(self, creds: ScramFile) -> None:
        auth = ScramAuthenticator(creds)
        answer = _finish(
            auth, _scram_connect(c := scramp.ScramClient([METHOD], "alice", "wonder")), c
        )
        assert answer.reason_code == RC.SUCCESS and answer.username == "alice"
        assert auth.pending == 0

    def test_not_mine_without_the_method(self, creds: ScramFile) -> None:
        auth = ScramAuthenticator(creds)
        assert auth.check(_request(Connect("c", username="alice", password=b"x"))) is None
        other = Connect("c", properties=Properties(authentication_method="OTHER"))
        assert auth.check(_request(other)) is None
        assert auth.authenticate(_request(other)).reason_code == RC.BAD_AUTHENTICATION_METHOD
        assert auth.authenticate(_request(Connect("c"))).reason_code == RC.NOT_AUTHORIZED
        assert (
            ScramAuthenticator(creds, True).authenticate(_request(Connect("c"))).reason_code
            == RC.SUCCESS
        )

    def test_connect_user_name_must_match(self, creds: ScramFile) -> None:
        auth = ScramAuthenticator(creds)
        scram = scramp.ScramClient([METHOD], "alice", "wonder")
        answer = auth.check(_request(_scram_connect(scram, username="mallory")))
        assert answer is not None and answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_unknown_user_gets_a_stable_mock_salt(self, creds: ScramFile) -> None:
        auth = ScramAuthenticator(creds)
        salts = []
        for _ in range(2):
            scram = scramp.ScramClient([METHOD], "ghost", "x")
            first = auth.check(_request(_scram_connect(scram)))
            assert first is not None and first.reason_code == RC.CONTINUE_AUTHENTICATION
            scram.set_server_first(first.properties.authentication_data.decode())
            salts.append(scram.salt)
        assert salts[0] == salts[1]

    def test_malformed_messages_are_refused(self, creds: ScramFile) -> None:
        auth = ScramAuthenticator(creds)
        for data in (b"garbage", b"\xff\xfe", b"n,,n=alice"):
            props = Properties(authentication_method=METHOD, authentication_data=data)
            answer = auth.check(_request(Connect("c", properties=props)))
            assert answer is not None and answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
        # an AUTH with no exchange in progress
        props = Properties(authentication_method=METHOD, authentication_data=b"c=biws")
        connect = Connect("c", properties=Properties(authentication_method=METHOD))
        answer = auth.check(_request(connect, Auth(RC.CONTINUE_AUTHENTICATION, props), port=9))
        assert answer is not None and answer.reason_code == RC.NOT_AUTHORIZED

    def test_lockout_after_failures(self, creds: ScramFile) -> None:
        clock = FakeClock()
        auth = ScramAuthenticator(creds, lockout_failures=3, clock=clock)
        for _ in range(3):
            c = scramp.ScramClient([METHOD], "alice", "bad")
            assert _finish(auth, _scram_connect(c), c).reason_code == RC.BAD_USER_NAME_OR_PASSWORD
        c = scramp.ScramClient([METHOD], "alice", "wonder")
        answer = auth.check(_request(_scram_connect(c)))
        assert answer is not None and answer.reason_code == RC.BANNED
        clock.now += 301
        c = scramp.ScramClient([METHOD], "alice", "wonder")
        assert _finish(auth, _scram_connect(c), c).reason_code == RC.SUCCESS
        assert auth.stats.lockouts == 1 and auth.stats.refused_locked == 1

    def test_exchanges_are_bounded_and_expire(self, creds: ScramFile) -> None:
        clock = FakeClock()
        auth = ScramAuthenticator(creds, max_exchanges=2, exchange_timeout=5, clock=clock)
        for port in (1, 2):
            scram = scramp.ScramClient([METHOD], "alice", "wonder")
            assert auth.check(_request(_scram_connect(scram), port=port)) is not None
        scram = scramp.ScramClient([METHOD], "alice", "wonder")
        busy = auth.check(_request(_scram_connect(scram), port=3))
        assert busy is not None and busy.reason_code == RC.SERVER_BUSY
        clock.now += 6
        scram = scramp.ScramClient([METHOD], "alice", "wonder")
        again = auth.check(_request(_scram_connect(scram), port=3))
        assert again is not None and again.reason_code == RC.CONTINUE_AUTHENTICATION
        assert auth.pending == 1


class TestFile:
    def test_round_trip_and_no_password_stored(self) -> None:
        line = hash_scram("s3cret", 5000)
        creds = parse_scram(line)
        assert creds.iterations == 5000 and len(creds.salt) == 16
        assert creds.encode() == line
        assert "s3cret" not in line

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("alice:$7$1000$abc$def", "expected SCRAM-SHA-256$"),
            ("alice:SCRAM-SHA-256$100:" + "A" * 16 + "$" + "A" * 44 + ":" + "A" * 44, "iteration"),
            ("alice:SCRAM-SHA-256$4096:AAAA$" + "A" * 44 + ":" + "A" * 44, "salt"),
            ("alice:SCRAM-SHA-256$4096:" + "A" * 16 + "$AAAA:" + "A" * 44, "32 bytes"),
            ("alice", "no ':'"),
        ],
    )
    def test_bad_lines_name_the_line(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            ScramFile.parse("# header\n" + text + "\n", "creds")
        assert info.value.key == "line 2"
        assert message in str(info.value)

    def test_missing_file_refuses_start(self, tmp_path: Path) -> None:
        async def main() -> None:
            with pytest.raises(ConfigError, match="scram_file"):
                async with started_broker(scram_file=str(tmp_path / "nope")):
                    pass

        run(main())

    def test_public_listener_with_only_a_scram_file_is_an_explicit_choice(self) -> None:
        config = BrokerConfig(listeners=[ListenerSettings(bind="0.0.0.0", scram_file="/x")])
        validate_config(config)  # no ConfigError: SCRAM is an authentication choice
        assert not config.effective_allow_anonymous(config.listeners[0])


class TestPasswd:
    def test_create_update_delete(self, tmp_path: Path) -> None:
        path = tmp_path / "s"
        assert passwd_main(["--scram-file", str(path), "alice", "one"]) == 0
        assert path.stat().st_mode & 0o777 == 0o600
        first = path.read_text()
        assert passwd_main(["-I", "5000", f"--scram-file={path}", "alice", "two"]) == 0
        second = path.read_text()
        assert second != first and second.count("\n") == 1 and "$5000:" in second
        assert ScramFile.load(str(path)).get("alice") is not None
        assert passwd_main(["-D", "--scram-file", str(path), "alice"]) == 0
        assert path.read_text() == ""
        assert passwd_main(["-D", "--scram-file", str(path), "alice"]) == 1

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["-H", "scram-sha-256", "-b", "FILE", "u", "p"], "--scram-file"),
            (["-H", "scram-sha-1", "--scram-file", "FILE", "u", "p"], "only scram-sha-256"),
            (["-H", "bcrypt", "--scram-file", "FILE", "u", "p"], "only --hash scram-sha-256"),
            (["-I", "1000", "--scram-file", "FILE", "u", "p"], "at least 4096"),
            (["-U", "--scram-file", "FILE"], "-U cannot"),
            (["--scram-file", "FILE"], "usage"),
        ],
    )
    def test_errors(
        self, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "f"
        assert passwd_main([str(path) if a == "FILE" else a for a in args]) == 1
        assert message in capsys.readouterr().err
        assert not path.exists()


def test_scram_file_flag_applies_to_every_listener(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mqttv5.broker.config import config_from_args
    from mqttv5.cli.broker import build_parser

    scram = tmp_path / "scram"
    scram.write_text("")
    args = build_parser().parse_args(["--scram-file", str(scram), "--port", "0"])
    config = config_from_args(args)
    assert config.scram_file == str(scram)
    assert all(config.effective_scram_file(x) == str(scram) for x in config.effective_listeners())
