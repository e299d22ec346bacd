"""TLS listeners (``type = "tls"``) and the ``mqtts://`` client: verification both ways, mutual
TLS, certificate user names, CRL and certificate reload on SIGHUP, clear errors and logs.

Certificates are made at test time with trustme (never committed keys); the expired ones and
the CRL with ``cryptography``, which trustme uses. Other test modules import the helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mqttv5 import MqttClient
from mqttv5.broker.auth import AuthRequest, AuthResult
from mqttv5.broker.authn import CompositeAuthenticator
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import (
    BrokerConfig,
    ListenerSettings,
    config_from_args,
    load_config,
    validate_config,
)
from mqttv5.broker.tls import CertificateAuthenticator, certificate_username, subject_rfc2253
from mqttv5.client import ConnectOptions
from mqttv5.protocol.errors import ConfigError, MqttError
from mqttv5.protocol.packets import Connect
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.transport.base import TlsError
from mqttv5.transport.tls import TlsConfig, describe_ssl_error, open_tls
from tests.broker.conftest import run
from tests.broker.rawclient import timeout

# --- certificates ---------------------------------------------------------------------------------

_NOW = datetime.datetime.now(datetime.UTC)
_LONG_AGO = _NOW - datetime.timedelta(days=30)


@dataclasses.dataclass
class Certs:
    """Files of one test PKI: a CA, the broker's certificate, clients' certificates."""

    directory: Path
    ca: trustme.CA
    ca_file: Path
    server: Path  # key and chain in one PEM file (localhost, 127.0.0.1)
    client: Path  # CN client-one
    client_two: Path  # CN client-two
    expired_client: Path
    expired_server: Path
    other_ca_file: Path  # a CA nobody here trusts
    other_client: Path  # signed by it

    def path(self, name: str) -> Path:
        return self.directory / name


def _write(leaf: trustme.LeafCert, path: Path) -> Path:
    """Key and chain in ``path``; also apart, in ``.key`` and ``.crt`` files beside it."""
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    leaf.private_key_pem.write_to_path(str(path.with_suffix(".key")))
    crt = str(path.with_suffix(".crt"))
    for number, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(crt, append=number > 0)
    return path


def make_certs(directory: Path) -> Certs:
    """A fresh PKI under ``directory``."""
    ca, other = trustme.CA(), trustme.CA()
    old: dict[str, Any] = {
        "not_before": _LONG_AGO,
        "not_after": _LONG_AGO + datetime.timedelta(days=1),
    }
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    return Certs(
        directory,
        ca,
        directory / "ca.pem",
        _write(ca.issue_cert("localhost", "127.0.0.1"), directory / "server.pem"),
        _write(ca.issue_cert("client-one", common_name="client-one"), directory / "client.pem"),
        _write(ca.issue_cert("client-two", common_name="client-two"), directory / "client2.pem"),
        _write(ca.issue_cert("old", common_name="old", **old), directory / "expired.pem"),
        _write(ca.issue_cert("localhost", "127.0.0.1", **old), directory / "expired-server.pem"),
        directory / "other-ca.pem",
        _write(other.issue_cert("x", common_name="client-one"), directory / "other-client.pem"),
    )


def serial_of(pem_file: Path) -> int:
    """Serial number of the first certificate in ``pem_file``."""
    for cert in x509.load_pem_x509_certificates(pem_file.read_bytes()):
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return cert.serial_number
    raise AssertionError(f"no leaf certificate in {pem_file}")


def write_crl(ca: trustme.CA, revoked: list[Path], path: Path) -> Path:
    """A CRL signed by ``ca`` revoking the leaf certificates of ``revoked``."""
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(_NOW - datetime.timedelta(hours=1))
        .next_update(_NOW + datetime.timedelta(days=1))
    )
    for pem in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial_of(pem))
        builder = builder.add_revoked_certificate(entry.revocation_date(_NOW).build())
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


# --- brokers and clients --------------------------------------------------------------------------


def tls_listener(certs: Certs, **settings: Any) -> ListenerSettings:
    """A ``tls`` listener on 127.0.0.1 and a free port, with the broker's certificate."""
    settings.setdefault("port", 0)
    settings.setdefault("certfile", str(certs.server))
    settings.setdefault("keyfile", str(certs.server))
    return ListenerSettings(type="tls", **settings)


@contextlib.asynccontextmanager
async def broker_with(*listeners: ListenerSettings, **config: Any) -> AsyncIterator[MqttBroker]:
    """A broker with these listeners (checked as a configuration file would be)."""
    authenticator = config.pop("authenticator", None)
    cfg = BrokerConfig(
        listeners=list(listeners), sys_interval=0, keepalive_sweep_interval=0.1, **config
    )
    validate_config(cfg)
    broker = MqttBroker(cfg, authenticator=authenticator)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def connect(url: str, client_id: str = "", **tls: Any) -> MqttClient:
    """A connected client (TLS settings as ``set_tls_config`` takes them)."""
    client = MqttClient(client_id, options=ConnectOptions(connect_timeout=timeout(5)))
    if tls:
        client.set_tls_config(**tls)
    await client.connect(url)
    return client


async def logged(caplog: pytest.LogCaptureFixture, *parts: str, wait: float = 3.0) -> str:
    """The first log line containing every one of ``parts`` (waits for it)."""
    async with asyncio.timeout(timeout(wait)):
        while True:
            for record in caplog.records:
                text = record.getMessage()
                if all(part in text for part in parts):
                    return text
            await asyncio.sleep(0.02)


async def until_closed(reader: asyncio.StreamReader, wait: float = 5.0) -> bytes:
    """What the peer sent before it closed the connection (closed or reset)."""
    got = b""
    async with asyncio.timeout(timeout(wait)):
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                got += data
    return got


@pytest.fixture
def broker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mqttv5.broker")
    return caplog


# --- the basics -----------------------------------------------------------------------------------


def test_publish_subscribe_over_tls_with_ca_verification(certs: Certs) -> None:
    async def main() -> None:
        listeners = (ListenerSettings(port=0), tls_listener(certs))
        async with broker_with(*listeners) as broker:
            tcp, tls = broker.ports
            sub = await connect(f"mqtts://localhost:{tls}", "sub", ca_file=str(certs.ca_file))
            await sub.subscribe("tls/#", qos=1)
            pub = await connect(f"mqtt://127.0.0.1:{tcp}", "pub")
            await pub.publish("tls/a", b"over tcp", qos=1)
            pub_tls = await connect(f"mqtts://localhost:{tls}", "pub2", ca_file=str(certs.ca_file))
            await pub_tls.publish("tls/b", b"over tls", qos=1)
            messages = sub.messages()
            got = {(await anext(messages)).payload for _ in range(2)}
            assert got == {b"over tcp", b"over tls"}
            for client in (sub, pub, pub_tls):
                await client.disconnect()

    run(main())


def test_stream_reports_certificate_alpn_and_transport(certs: Certs) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs)) as broker:
            port = broker.ports[0]
            stream = await open_tls("localhost", port, tls=TlsConfig(ca_file=str(certs.ca_file)))
            try:
                assert stream.peer.transport == "tls"
                assert stream.peer.tls is not None
                names = stream.peer.tls["subjectAltName"]
                assert isinstance(names, tuple) and ("DNS", "localhost") in names
                ssl_object = stream._transport.get_extra_info("ssl_object")
                assert ssl_object.selected_alpn_protocol() == "mqtt"  # the listener's default
            finally:
                stream.abort()

    run(main())


def test_sni_name_and_insecure(certs: Certs) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs)) as broker:
            url = f"mqtts://127.0.0.1:{broker.ports[0]}"
            ca = str(certs.ca_file)
            client = await connect(url, ca_file=ca, server_hostname="localhost")  # SNI + check
            await client.disconnect()
            with pytest.raises(TlsError, match="Hostname mismatch") as info:
                await connect(url, ca_file=ca, server_hostname="wrong.example")
            assert "server certificate not trusted" in info.value.message
            # --insecure skips the host name check, not the chain
            client = await connect(url, ca_file=ca, server_hostname="wrong.example", insecure=True)
            await client.disconnect()
            with pytest.raises(TlsError, match="not trusted"):
                await connect(url, ca_file=str(certs.other_ca_file), insecure=True)

    run(main())


# --- failures: the client gets a TlsError, the broker logs peer and cause -------------------------


def test_untrusted_server_certificate(certs: Certs, broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs)) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            with pytest.raises(TlsError) as info:
                await connect(url, ca_file=str(certs.other_ca_file))
            assert info.value.message.startswith("server certificate not trusted: unable to get")
            assert info.value.address == f"localhost:{broker.ports[0]}"
            await logged(broker_log, "TLS handshake with 127.0.0.1:", "closed the connection")

    run(main())


def test_expired_server_certificate(certs: Certs) -> None:
    async def main() -> None:
        expired = str(certs.expired_server)
        listener = ListenerSettings(type="tls", port=0, certfile=expired, keyfile=expired)
        async with broker_with(listener) as broker:
            with pytest.raises(TlsError, match=r"server certificate not trusted: .*expired"):
                await connect(f"mqtts://localhost:{broker.ports[0]}", ca_file=str(certs.ca_file))

    run(main())


@pytest.mark.parametrize(
    ("client_file", "client_sees", "broker_logs"),
    [
        (None, "the server requires a client certificate", "sent no certificate"),
        ("expired_client", "our certificate has expired", "certificate has expired"),
        ("other_client", "does not trust our certificate", "unable to get local issuer"),
    ],
    ids=["missing", "expired", "wrong-ca"],
)
def test_mutual_tls_refusals(
    certs: Certs,
    broker_log: pytest.LogCaptureFixture,
    client_file: str | None,
    client_sees: str,
    broker_logs: str,
) -> None:
    async def main() -> None:
        listener = tls_listener(certs, cafile=str(certs.ca_file), require_certificate=True)
        async with broker_with(listener) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            ok = await connect(url, "good", ca_file=str(certs.ca_file), cert_file=str(certs.client))
            await ok.subscribe("still/here")
            cert = str(getattr(certs, client_file)) if client_file else None
            with pytest.raises(TlsError, match=client_sees):
                await connect(url, ca_file=str(certs.ca_file), cert_file=cert)
            line = await logged(broker_log, "TLS handshake with 127.0.0.1:", broker_logs)
            assert "failed" in line
            await ok.publish("still/here", b"fine", qos=1)  # bystanders are unaffected
            assert (await anext(ok.messages())).payload == b"fine"
            await ok.disconnect()

    run(main())


def test_plain_tcp_to_the_tls_port(certs: Certs, broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs)) as broker:
            port = broker.ports[0]
            sub = await connect(f"mqtts://localhost:{port}", "sub", ca_file=str(certs.ca_file))
            await sub.subscribe("up/#")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(Connect("plain").encode(5))
            await until_closed(reader)
            writer.close()
            await logged(broker_log, "TLS handshake with 127.0.0.1:", "not TLS: plain MQTT")
            client = MqttClient("c", options=ConnectOptions(connect_timeout=timeout(3)))
            with pytest.raises((MqttError, TimeoutError)):
                await client.connect(f"mqtt://127.0.0.1:{port}")
            pub = await connect(f"mqtts://localhost:{port}", "pub", ca_file=str(certs.ca_file))
            await pub.publish("up/x", b"still up", qos=1)
            assert (await anext(sub.messages())).payload == b"still up"
            await pub.disconnect()
            await sub.disconnect()

    run(main())


def test_handshake_timeout(certs: Certs, broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs), connect_timeout=0.3) as broker:
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.ports[0])
            assert await until_closed(reader) == b""  # connected, never said hello
            writer.close()
            await logged(broker_log, "TLS handshake with", "no handshake started")

    run(main())


def test_minimum_tls_version(certs: Certs, broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs, tls_version="tlsv1.3")) as broker:
            ctx = ssl.create_default_context(cafile=str(certs.ca_file))
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(TlsError, match="TLS version"):
                await open_tls("localhost", broker.ports[0], tls=TlsConfig(context=ctx))
            await logged(broker_log, "TLS handshake with", "no TLS version in common")

    run(main())


def test_shutdown_drops_pending_handshakes(certs: Certs) -> None:
    async def main() -> None:
        broker = MqttBroker(BrokerConfig(listeners=[tls_listener(certs)], sys_interval=0))
        await broker.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.ports[0])
        await asyncio.sleep(0.05)
        await broker.stop()
        await until_closed(reader)
        writer.close()

    run(main())


# --- certificate user names -----------------------------------------------------------------------


def test_use_identity_as_username_applies_to_the_acl(certs: Certs, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite users/%u/#\n")

    async def main() -> None:
        listener = tls_listener(
            certs,
            cafile=str(certs.ca_file),
            require_certificate=True,
            use_identity_as_username=True,
            acl_file=str(acl),
            allow_anonymous=False,
        )
        async with broker_with(listener) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            client = MqttClient("one", options=ConnectOptions(username="mallory", password="x"))
            client.set_tls_config(ca_file=str(certs.ca_file), cert_file=str(certs.client))
            await client.connect(url)  # no password file: the certificate is the credential
            await client.subscribe("users/client-one/#", qos=1)
            assert await client.publish("users/client-one/a", b"mine", qos=1) == ReasonCode.SUCCESS
            refused = await client.publish("users/mallory/a", b"not mine", qos=1)
            assert refused == ReasonCode.NOT_AUTHORIZED  # the CONNECT user name does not count
            assert (await anext(client.messages())).payload == b"mine"
            await client.disconnect()

    run(main())


def test_use_subject_as_username_matches_rfc4514(certs: Certs, tmp_path: Path) -> None:
    leaf = certs.ca.issue_cert(
        "sensor", common_name="sensor 1", organization_name="Example", organization_unit_name="Lab"
    )
    cert_file = _write(leaf, tmp_path / "sensor.pem")
    subject = x509.load_pem_x509_certificates(cert_file.read_bytes())[0].subject.rfc4514_string()
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite users/%u/#\n")

    async def main() -> None:
        listener = tls_listener(
            certs,
            cafile=str(certs.ca_file),
            require_certificate=True,
            use_subject_as_username=True,
            acl_file=str(acl),
        )
        async with broker_with(listener) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            client = await connect(url, ca_file=str(certs.ca_file), cert_file=str(cert_file))
            assert subject == "CN=sensor 1,OU=Lab,O=Example"
            code = await client.publish(f"users/{subject}/a", b"", qos=1)
            assert code == ReasonCode.NO_MATCHING_SUBSCRIBERS  # allowed: the name matched
            code = await client.publish("users/sensor 1/a", b"", qos=1)
            assert code == ReasonCode.NOT_AUTHORIZED
            await client.disconnect()

    run(main())


def test_optional_certificate_falls_back_to_the_other_rules(certs: Certs) -> None:
    seen: list[AuthRequest] = []

    class Anyone:
        def authenticate(self, request: AuthRequest) -> AuthResult:
            seen.append(request)
            return AuthResult(ReasonCode.SUCCESS, username=request.connect.username)

    async def main() -> None:
        listener = tls_listener(certs, cafile=str(certs.ca_file), use_identity_as_username=True)
        async with broker_with(listener, authenticator=Anyone()) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            with_cert = await connect(url, ca_file=str(certs.ca_file), cert_file=str(certs.client))
            assert seen == []  # the certificate decided
            without = await connect(url, ca_file=str(certs.ca_file))
            (request,) = seen
            assert request.peer_certificate is None
            for client in (with_cert, without):
                await client.disconnect()

    run(main())


def _request(cert: dict[str, Any] | None, **connect: Any) -> AuthRequest:
    return AuthRequest(Connect("c", **connect), "192.0.2.1", 1, "l", False, peer_certificate=cert)


CERT = {
    "subject": (
        (("countryName", "FR"),),
        (("organizationName", "Example, Inc."),),
        (("commonName", "device-7"),),
    )
}


def test_certificate_authenticator_alone_and_composed() -> None:
    alone = CertificateAuthenticator()
    assert alone.authenticate(_request(CERT)) == AuthResult(ReasonCode.SUCCESS, "device-7")
    refused = alone.authenticate(_request(None))
    assert refused.reason_code == ReasonCode.NOT_AUTHORIZED
    assert alone.check(_request(None)) is None  # "no opinion" inside a CompositeAuthenticator
    subject = CertificateAuthenticator(use_subject=True).check(_request(CERT))
    assert subject is not None
    assert subject.username == "CN=device-7,O=Example\\, Inc.,C=FR"

    composite = CompositeAuthenticator([alone], allow_anonymous=True)
    answer = composite.authenticate(_request(None))
    assert isinstance(answer, AuthResult)
    assert answer.reason_code == ReasonCode.SUCCESS and answer.username is None
    answer = composite.authenticate(_request(CERT, username="someone"))
    assert isinstance(answer, AuthResult)
    assert answer.username == "device-7"


def test_certificate_user_names() -> None:
    assert certificate_username(CERT) == "device-7"
    assert certificate_username({"subject": ()}) is None
    assert certificate_username({}, use_subject=True) is None
    odd = {"subject": ((("commonName", " #lead"), ("organizationalUnitName", "a+b")),)}
    assert subject_rfc2253(odd) == "CN=\\ #lead+OU=a\\+b"


# --- reload on SIGHUP: CRL and certificate --------------------------------------------------------


def test_crl_is_checked_and_reloaded(certs: Certs, tmp_path: Path) -> None:
    crl = write_crl(certs.ca, [], tmp_path / "crl.pem")

    async def main() -> None:
        listener = tls_listener(
            certs, cafile=str(certs.ca_file), require_certificate=True, crlfile=str(crl)
        )
        async with broker_with(listener) as broker:
            url = f"mqtts://localhost:{broker.ports[0]}"
            two = {"ca_file": str(certs.ca_file), "cert_file": str(certs.client_two)}
            await (await connect(url, **two)).disconnect()
            write_crl(certs.ca, [certs.client_two], crl)
            assert broker.reload(dataclasses.replace(broker.config)) == []
            with pytest.raises(TlsError, match="revoked"):
                await connect(url, **two)
            one = await connect(url, ca_file=str(certs.ca_file), cert_file=str(certs.client))
            await one.disconnect()

    run(main())


def test_certificate_reload_affects_new_connections_only(
    certs: Certs, tmp_path: Path, broker_log: pytest.LogCaptureFixture
) -> None:
    server = tmp_path / "server.pem"
    server.write_bytes(certs.server.read_bytes())

    async def main() -> None:
        listener = ListenerSettings(type="tls", port=0, certfile=str(server), keyfile=str(server))
        async with broker_with(listener) as broker:
            port = broker.ports[0]
            config = TlsConfig(ca_file=str(certs.ca_file))
            before = await connect(f"mqtts://localhost:{port}", "before", ca_file=config.ca_file)
            renewed = certs.ca.issue_cert("localhost", "127.0.0.1")
            _write(renewed, server)
            assert broker.reload(dataclasses.replace(broker.config)) == []
            await logged(broker_log, "Reloaded the TLS certificate")
            stream = await open_tls("localhost", port, tls=config)
            serial = stream._transport.get_extra_info("ssl_object").getpeercert(True)
            stream.abort()
            assert x509.load_der_x509_certificate(serial).serial_number == serial_of(server)
            await before.subscribe("still/connected")  # the old connection is untouched
            server.write_text("garbage\n")
            broker.reload(dataclasses.replace(broker.config))
            await logged(broker_log, "not reloaded, the previous ones stay in force")
            again = await connect(f"mqtts://localhost:{port}", "again", ca_file=config.ca_file)
            await again.disconnect()
            await before.disconnect()

    run(main())


# --- configuration and command line ---------------------------------------------------------------


_S = {"certfile": "S", "keyfile": "S"}  # "S": the test's server certificate


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"type": "tls"}, "listener[0].certfile", "needs certfile and keyfile"),
        ({"type": "wss", "certfile": "S"}, "listener[0].keyfile", "needs certfile and keyfile"),
        ({"type": "tls", "certfile": "/nope", "keyfile": "S"}, "listener[0].certfile", "no such"),
        ({"type": "tls", "require_certificate": True, **_S}, "listener[0].require_certificate",
         "cafile"),
        ({"type": "tls", "crlfile": "S", **_S}, "listener[0].crlfile", "cafile"),
        ({"type": "tls", "capath": "/nope", **_S}, "listener[0].capath", "no such directory"),
        ({"type": "tls", "alpn": [""], **_S}, "listener[0].alpn", "1 to 255 bytes"),
        ({"type": "tls", "ws_path": "/m", **_S}, "listener[0].ws_path", "ws and wss listeners"),
        ({"type": "tcp", "certfile": "S"}, "listener[0].certfile", "tls and wss listeners only"),
        ({"type": "udp", "certfile": "S"}, "listener[0].certfile", "tls and wss listeners only"),
        ({"type": "dtls", "alpn": ["mqtt"]}, "listener[0].alpn", "tls and wss listeners only"),
        ({"type": "ws", "trusted_proxies": ["x"]}, "listener[0].trusted_proxies", "not an IP"),
        ({"type": "ws", "ws_subprotocols": []}, "listener[0].ws_subprotocols", "at least one"),
        ({"type": "ws", "ws_path": "mqtt"}, "listener[0].ws_path", 'start with "/"'),
    ],
)  # fmt: skip
def test_listener_validation(
    certs: Certs, settings: dict[str, Any], key: str, message: str
) -> None:
    values: dict[str, Any] = {k: str(certs.server) if v == "S" else v for k, v in settings.items()}
    config = BrokerConfig(listeners=[ListenerSettings(port=1, allow_anonymous=True, **values)])
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert info.value.key == key
    assert message in info.value.message


def test_both_certificate_names_is_an_error(certs: Certs) -> None:
    listener = tls_listener(
        certs,
        cafile=str(certs.ca_file),
        use_identity_as_username=True,
        use_subject_as_username=True,
    )
    with pytest.raises(ConfigError, match="choose one"):
        validate_config(BrokerConfig(listeners=[listener]))


def test_unloadable_files_stop_start_up_naming_the_key(certs: Certs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")

    async def start(**settings: Any) -> None:
        async with broker_with(tls_listener(certs, **settings)):
            raise AssertionError("started")

    cases = [
        ({"certfile": str(bad)}, "certfile"),
        ({"cafile": str(bad)}, "cafile"),
        ({"cafile": str(certs.ca_file), "crlfile": str(bad)}, "crlfile"),
        ({"ciphers": "NO-SUCH-CIPHER"}, "ciphers"),
    ]
    for settings, key in cases:
        with pytest.raises(ConfigError) as info:
            run(start(**settings))
        assert info.value.key == key
        assert info.value.source == "tls 127.0.0.1:0"


def test_toml_listener_keys(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        f"""
        [[listener]]
        type = "tls"
        port = 8883
        certfile = "{certs.server}"
        keyfile = "{certs.server}"
        cafile = "{certs.ca_file}"
        require_certificate = true
        use_identity_as_username = true
        tls_version = "tlsv1.3"
        ciphers = "ECDHE+AESGCM"
        alpn = ["mqtt", "x-amzn-mqtt-ca"]

        [[listener]]
        type = "ws"
        port = 8080
        allow_anonymous = true
        ws_path = "/mqtt"
        ws_subprotocols = ["mqtt"]
        allowed_origins = ["https://app.example.com"]
        trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]
        ws_compression = true
        """
    )
    tls, ws = load_config(str(path)).listeners
    assert (tls.require_certificate, tls.use_identity_as_username, tls.alpn) == (
        True, True, ["mqtt", "x-amzn-mqtt-ca"],
    )  # fmt: skip
    assert ws.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"] and ws.ws_compression
    path.write_text('[[listener]]\ntype = "ws"\nallowed_origins = "https://a"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.key == "listener[0].allowed_origins"
    assert "must be an array of strings" in info.value.message


def _flags(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**values)


def test_command_line_adds_tls_and_websocket_listeners(certs: Certs) -> None:
    server, ca = str(certs.server), str(certs.ca_file)
    config = config_from_args(
        _flags(
            tls_port=18883, certfile=server, keyfile=server, cafile=ca, require_certificate=True,
            ws_port=18080, wss_port=18443, allow_anonymous=True,
        )
    )  # fmt: skip
    kinds = [(lis.type, lis.bind, lis.port) for lis in config.listeners]
    assert kinds == [
        ("tcp", "127.0.0.1", 1883), ("tcp", "::1", 1883), ("tls", "127.0.0.1", 18883),
        ("ws", "127.0.0.1", 18080), ("wss", "127.0.0.1", 18443),
    ]  # fmt: skip
    tls = config.listeners[2]
    assert (tls.certfile, tls.cafile, tls.require_certificate) == (server, ca, True)
    assert config.listeners[3].certfile is None  # TLS flags go to TLS listeners only
    assert config.listeners[4].keyfile == server
    with_port = config_from_args(_flags(port=1999, tls_port=0, certfile=server, keyfile=server))
    assert [lis.type for lis in with_port.listeners] == ["tcp", "tcp", "tls"]


@pytest.mark.parametrize(
    ("values", "key", "source", "message"),
    [
        (
            {"certfile": "x"},
            "certfile",
            "--certfile",
            "needs --tls-port, --wss-port or --dtls-port",
        ),
        ({"tls_port": 70000}, "port", "--tls-port", "0..65535"),
        ({"tls_port": 1}, "listener[2].certfile", None, "needs certfile and keyfile"),
        ({"ws_port": 1}, "allow_anonymous", None, "WebSocket listener"),
    ],
)
def test_command_line_errors(values: dict[str, Any], key: str, source: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_args(_flags(**values))
    assert info.value.key == key
    assert info.value.source == source
    assert message in info.value.message


def test_describe_ssl_error() -> None:
    verify = ssl.SSLCertVerificationError(1, "x")
    verify.verify_message = "certificate has expired"
    assert describe_ssl_error(verify, "client") == "client certificate not trusted: " + (
        "certificate has expired"
    )
    error = ssl.SSLError(1, "x")
    error.reason = "NO_SHARED_CIPHER"
    assert describe_ssl_error(error, "client") == (
        "no cipher in common with the client (no_shared_cipher)"
    )
    assert describe_ssl_error(TimeoutError()) == "handshake timed out"


def test_tls_settings_need_a_tls_url() -> None:
    async def main() -> None:
        client = MqttClient("x")
        client.set_tls_config(ca_file="ca.pem")
        with pytest.raises(Exception, match="does not use TLS"):
            await client.connect("mqtt://127.0.0.1:1")

    run(main())


def test_missing_client_files_are_a_tls_error(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(TlsError, match="cannot load CA certificates"):
            await open_tls("127.0.0.1", 1, tls=TlsConfig(ca_file=str(tmp_path / "none.pem")))

    run(main())


def test_pub_sub_tls_options(certs: Certs) -> None:
    from mqttv5.cli.common import CliError, add_common_options, parse

    def common(*argv: str) -> Any:
        parser = argparse.ArgumentParser(add_help=False)
        add_common_options(parser, sub=False)
        return parse(parser, ["-t", "x", *argv], sub=False)

    ca = str(certs.ca_file)
    tls = common("--cafile", ca, "--cert", str(certs.client), "--key", str(certs.client))
    assert tls.url == "mqtts://localhost:8883"  # a TLS option means TLS, on 8883
    assert tls.options.tls == TlsConfig(
        ca_file=ca, cert_file=str(certs.client), key_file=str(certs.client)
    )
    assert common("--cafile", ca, "-p", "1").url == "mqtts://localhost:1"
    assert common("-L", "ws://h:1/mqtt").url == "ws://h:1/mqtt"  # the path is not a topic
    assert common("-L", "ws://h:1/mqtt", "--insecure").url == "wss://h:1/mqtt"
    assert common("-L", "mqtts://h").options.tls is None  # the system's CAs
    with pytest.raises(CliError, match="--cert and --key"):
        common("--cert", str(certs.client))
    with pytest.raises(CliError, match="cannot read"):
        common("--cafile", "/nope.pem")


def test_broker_command_line_serves_tls_and_websocket(certs: Certs) -> None:
    """``mqttv5 broker --tls-port --ws-port``, as a process (uvloop when installed)."""
    import signal
    import socket
    import sys

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    async def main() -> None:
        tcp, tls, ws = free_port(), free_port(), free_port()
        server = str(certs.server)
        cli = "import sys; from mqttv5.cli import main; sys.exit(main())"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", cli, "broker", "--bind", "127.0.0.1", "--port", str(tcp),
            "--tls-port", str(tls), "--certfile", server, "--keyfile", server,
            "--ws-port", str(ws), "--allow-anonymous", "true",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout(10)):
                while True:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", ws)
                        writer.close()
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
            sub = await connect(f"mqtts://localhost:{tls}", "sub", ca_file=str(certs.ca_file))
            await sub.subscribe("cli/#", qos=1)
            pub = await connect(f"ws://127.0.0.1:{ws}/mqtt", "pub")
            await pub.publish("cli/x", b"through the command line", qos=1)
            assert (await anext(sub.messages())).payload == b"through the command line"
            await pub.disconnect()
            await sub.disconnect()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert f"listening on 127.0.0.1:{tls} (tls)" in err.decode()

    run(main())
