"""DTLS 1.2 (``mqttv5.transport.dtls``) in memory: client and server objects joined by a test
network that can drop, replay and corrupt datagrams, with no sockets.

Certificates are made at test time with trustme (EC keys; RSA where a suite needs one).
Retransmission tests use a 20 ms first retransmission timeout and real time, because mbedtls
times its retransmissions with the wall clock (see docs/dtls.md).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttv5.protocol.errors import InvalidState
from mqttv5.transport.dtls import (
    MISSING_MBEDTLS,
    RECORD_OVERHEAD,
    DtlsClient,
    DtlsClientSettings,
    DtlsError,
    DtlsServer,
    DtlsServerSettings,
    DtlsUnavailable,
    HandshakeComplete,
    HandshakeFailed,
    PeerClosed,
    engine,
    load_psk_file,
)
from mqttv5.transport.dtls.records import (
    describe_certificate_der,
    parse_client_hello_untrusted,
    split_records,
)

ADDR = ("192.0.2.1", 40001)
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
FAST = 0.02  # first retransmission timeout in the retransmission tests, seconds


# --- certificates ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by other_ca
    stranger_key: Path
    rsa_server_cert: Path
    rsa_server_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("dtls-pki")
    ca, other = trustme.CA(), trustme.CA()
    files: dict[str, Path] = {}

    def save(name: str, cert: trustme.LeafCert) -> None:
        files[name + "_cert"] = d / f"{name}.pem"
        files[name + "_key"] = d / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(files[name + "_cert"])
        cert.private_key_pem.write_to_path(files[name + "_key"])

    save("server", ca.issue_cert("localhost", "127.0.0.1"))
    save("client", ca.issue_cert("client-7.example", common_name="client-7"))
    save("stranger", other.issue_cert("stranger.example", common_name="stranger"))
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    save("rsa_server", rsa_ca.issue_cert("localhost", key_type=trustme.KeyType.RSA))
    ca.cert_pem.write_to_path(d / "ca.pem")
    other.cert_pem.write_to_path(d / "other-ca.pem")
    rsa_ca.cert_pem.write_to_path(d / "rsa-ca.pem")
    return Pki(ca=d / "ca.pem", other_ca=d / "other-ca.pem", **files)


# --- an in-memory network -------------------------------------------------------------------------


class Net:
    """Moves datagrams between one server and some clients; ``drop`` decides losses."""

    def __init__(self, server: DtlsServer) -> None:
        self.server = server
        self.clients: dict[Hashable, DtlsClient] = {}
        self.received: dict[Hashable, list[bytes]] = {}  # plaintexts, by receiver
        self.wire: list[tuple[str, Hashable, bytes]] = []  # ("c2s"|"s2c", client addr, datagram)
        self.drop: Callable[[str, Hashable, bytes], bool] = lambda direction, addr, data: False

    def add(self, settings: DtlsClientSettings, addr: Hashable = ADDR) -> DtlsClient:
        client = DtlsClient(settings)
        self.clients[addr] = client
        client.start(time.monotonic())
        return client

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for addr, client in self.clients.items():
                for data in client.datagrams_to_send():
                    moved = True
                    self.wire.append(("c2s", addr, data))
                    if not self.drop("c2s", addr, data):
                        got = self.server.datagram_received(data, addr, time.monotonic())
                        self.received.setdefault("server", []).extend(got)
            for data, addr in self.server.datagrams_to_send():
                moved = True
                self.wire.append(("s2c", addr, data))
                if not self.drop("s2c", addr, data) and addr in self.clients:
                    got = self.clients[addr].datagram_received(data, time.monotonic())
                    self.received.setdefault(addr, []).extend(got)
            if not moved:
                return

    def run_timers(self, until: Callable[[], bool], limit: float = 3.0) -> None:
        """Let real time pass, firing every timer, until ``until()`` or ``limit`` seconds."""
        end = time.monotonic() + limit
        while not until() and time.monotonic() < end:
            timers = [t for c in self.clients.values() if (t := c.get_timer()) is not None]
            if (t := self.server.get_timer()) is not None:
                timers.append(t)
            if timers:
                time.sleep(max(0.0, min(min(timers), end) - time.monotonic()))
            now = time.monotonic()
            for client in self.clients.values():
                client.handle_timer(now)
            self.server.handle_timer(now)
            self.pump()


def psk_server(**kwargs: Any) -> DtlsServer:
    max_handshakes = kwargs.pop("max_handshakes", 1000)
    settings = DtlsServerSettings(psk={"alice": KEY, "bob": b"bob-key-16-bytes"}, **kwargs)
    return DtlsServer(settings, max_handshakes=max_handshakes)


def psk_client(identity: str = "alice", key: bytes = KEY, **kwargs: Any) -> DtlsClientSettings:
    return DtlsClientSettings(psk_identity=identity, psk=key, **kwargs)


def events(obj: DtlsServer | DtlsClient) -> list[Any]:
    return list(obj.events_received())


def connected_psk_pair() -> tuple[Net, DtlsClient]:
    net = Net(psk_server())
    client = net.add(psk_client())
    net.pump()
    assert client.established and net.server.is_established(ADDR)
    events(net.server), events(client)
    return net, client


# --- handshakes -----------------------------------------------------------------------------------


class TestPsk:
    def test_server_learns_the_identity(self) -> None:
        net = Net(psk_server())
        client = net.add(psk_client("alice"))
        net.pump()
        assert events(net.server) == [HandshakeComplete(ADDR, "alice", None)]
        assert events(client) == [HandshakeComplete(None, None, None)]
        assert client.established and net.server.is_established(ADDR)
        assert net.server.handshakes == 0

    def test_interleaved_handshakes_get_their_own_identities(self) -> None:
        net = Net(psk_server())
        a, b = ("192.0.2.1", 1), ("192.0.2.2", 2)
        net.add(psk_client("alice"), a)
        net.add(psk_client("bob", b"bob-key-16-bytes"), b)
        net.pump()  # both flights advance in the same rounds
        got = {e.addr: e.identity for e in events(net.server)}
        assert got == {a: "alice", b: "bob"}

    def test_wrong_key_fails_on_both_sides(self) -> None:
        net = Net(psk_server())
        client = net.add(psk_client("alice", b"not-the-right-key"))
        net.pump()
        (server_event,) = events(net.server)
        (client_event,) = events(client)
        assert isinstance(server_event, HandshakeFailed) and server_event.addr == ADDR
        assert "pre-shared key" in server_event.reason
        assert isinstance(client_event, HandshakeFailed)
        assert not client.established and not net.server.is_established(ADDR)
        assert net.server.handshakes == 0 and client.get_timer() is None

    def test_unknown_identity_fails_on_both_sides(self) -> None:
        net = Net(psk_server())
        client = net.add(psk_client("mallory"))
        net.pump()
        (server_event,) = events(net.server)
        assert server_event == HandshakeFailed(ADDR, "unknown PSK identity")
        (client_event,) = events(client)
        assert isinstance(client_event, HandshakeFailed)
        assert "refused" in client_event.reason


def _requiring_client_certificates(pki: Pki) -> DtlsServer:
    """A certificate server that requires (and checks) a client certificate from ``pki.ca``."""
    return DtlsServer(
        DtlsServerSettings(
            certfile=str(pki.server_cert),
            keyfile=str(pki.server_key),
            cafile=str(pki.ca),
            require_certificate=True,
        )
    )


class TestCertificates:
    def test_server_authentication(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(certfile=str(pki.server_cert), keyfile=str(pki.server_key))
        )
        net = Net(server)
        client = net.add(DtlsClientSettings(cafile=str(pki.ca), server_hostname="localhost"))
        net.pump()
        assert events(server) == [HandshakeComplete(ADDR, None, None)]
        (done,) = events(client)
        assert isinstance(done, HandshakeComplete) and done.peer_certificate is not None
        assert done.peer_certificate["subjectAltName"] == (
            ("DNS", "localhost"),
            ("IP Address", "127.0.0.1"),
        )

    def test_mutual_authentication_identity_is_the_common_name(self, pki: Pki) -> None:
        server = _requiring_client_certificates(pki)
        net = Net(server)
        net.add(
            DtlsClientSettings(
                cafile=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key)
            )
        )
        net.pump()
        (done,) = events(server)
        assert isinstance(done, HandshakeComplete)
        assert done.identity == "client-7"
        assert done.peer_certificate is not None
        subject = cast(tuple[tuple[tuple[str, str], ...], ...], done.peer_certificate["subject"])
        assert ("commonName", "client-7") in [p for rdn in subject for p in rdn]

    def test_wrong_ca_fails_on_the_client(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(certfile=str(pki.server_cert), keyfile=str(pki.server_key))
        )
        net = Net(server)
        client = net.add(DtlsClientSettings(cafile=str(pki.other_ca)))
        net.pump()
        (failed,) = events(client)
        assert failed == HandshakeFailed(None, "server certificate not trusted")
        assert not client.established
        assert not server.is_established(ADDR)

    def test_wrong_host_name_fails_on_the_client(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(certfile=str(pki.server_cert), keyfile=str(pki.server_key))
        )
        net = Net(server)
        client = net.add(DtlsClientSettings(cafile=str(pki.ca), server_hostname="elsewhere"))
        net.pump()
        assert events(client) == [HandshakeFailed(None, "server certificate not trusted")]

    def test_missing_client_certificate_when_required(self, pki: Pki) -> None:
        server = _requiring_client_certificates(pki)
        net = Net(server)
        client = net.add(DtlsClientSettings(cafile=str(pki.ca)))
        net.pump()
        (failed,) = events(server)
        assert isinstance(failed, HandshakeFailed)
        assert failed.reason == "the client sent no certificate, and one is required"
        assert isinstance(events(client)[0], HandshakeFailed)
        assert not server.is_established(ADDR)

    def test_untrusted_client_certificate_refused_even_when_optional(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(
                certfile=str(pki.server_cert), keyfile=str(pki.server_key), cafile=str(pki.ca)
            )
        )
        net = Net(server)
        client = net.add(
            DtlsClientSettings(
                cafile=str(pki.ca),
                certfile=str(pki.stranger_cert),
                keyfile=str(pki.stranger_key),
            )
        )
        net.pump()
        assert events(server) == [HandshakeFailed(ADDR, "client certificate not trusted")]
        assert not server.is_established(ADDR)
        assert PeerClosed(None) in events(client)  # it saw our close_notify

    def test_optional_client_certificate_may_be_absent(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(
                certfile=str(pki.server_cert), keyfile=str(pki.server_key), cafile=str(pki.ca)
            )
        )
        net = Net(server)
        net.add(DtlsClientSettings(cafile=str(pki.ca)))
        net.pump()
        assert events(server) == [HandshakeComplete(ADDR, None, None)]

    def test_psk_and_certificates_on_one_server(self, pki: Pki) -> None:
        server = DtlsServer(
            DtlsServerSettings(
                psk={"alice": KEY}, certfile=str(pki.server_cert), keyfile=str(pki.server_key)
            )
        )
        net = Net(server)
        net.add(psk_client(), ("192.0.2.1", 1))
        net.add(DtlsClientSettings(cafile=str(pki.ca)), ("192.0.2.2", 2))
        net.pump()
        got = {e.addr: e.identity for e in events(server)}
        assert got == {("192.0.2.1", 1): "alice", ("192.0.2.2", 2): None}

    def test_intermediate_chain_with_the_key_in_certfile(self, tmp_path: Path) -> None:
        root = trustme.CA()
        leaf = root.create_child_ca().issue_cert("localhost")
        combined = tmp_path / "server.pem"  # key, leaf, intermediate: one file
        leaf.private_key_and_cert_chain_pem.write_to_path(combined)
        root.cert_pem.write_to_path(tmp_path / "root.pem")
        server = DtlsServer(DtlsServerSettings(certfile=str(combined)))
        net = Net(server)
        client = net.add(
            DtlsClientSettings(cafile=str(tmp_path / "root.pem"), server_hostname="localhost")
        )
        net.pump()
        assert client.established

    def test_peer_certificate_has_the_shape_of_getpeercert(self, pki: Pki) -> None:
        der = ssl.PEM_cert_to_DER_cert(pki.client_cert.read_text())
        ours = describe_certificate_der(der)
        theirs = ssl._ssl._test_decode_cert(str(pki.client_cert))  # type: ignore[attr-defined]
        for key in ("subject", "issuer", "version", "serialNumber", "notBefore", "notAfter"):
            assert ours[key] == theirs[key], key
        assert ours["subjectAltName"] == theirs["subjectAltName"]
        assert ours["der"] == der

    def test_bad_credentials_are_config_errors(self, pki: Pki, tmp_path: Path) -> None:
        from mqttv5.protocol.errors import ConfigError

        with pytest.raises(ConfigError, match="psk"):
            DtlsServer(DtlsServerSettings())
        with pytest.raises(ConfigError, match="cafile"):
            DtlsServer(DtlsServerSettings(psk={"a": KEY}, require_certificate=True))
        with pytest.raises(ConfigError, match="certfile"):
            DtlsServer(DtlsServerSettings(certfile=str(tmp_path / "missing.pem")))
        (tmp_path / "junk.key").write_text("not a key")
        with pytest.raises(ConfigError, match="keyfile"):
            DtlsServer(
                DtlsServerSettings(
                    certfile=str(pki.server_cert), keyfile=str(tmp_path / "junk.key")
                )
            )
        with pytest.raises(ConfigError, match="psk"):
            DtlsClient(DtlsClientSettings(psk=KEY))


# --- application records --------------------------------------------------------------------------


class TestRecords:
    def test_both_ways_one_record_per_datagram(self) -> None:
        net, client = connected_psk_pair()
        net.wire.clear()
        for i in range(5):
            client.send(b"up %d" % i)
            net.server.send(ADDR, b"down %d" % i)
        net.pump()
        assert net.received["server"] == [b"up %d" % i for i in range(5)]
        assert net.received[ADDR] == [b"down %d" % i for i in range(5)]
        assert len(net.wire) == 10
        for _, _, data in net.wire:
            assert [t for t, _ in split_records(data)] == [23]

    def test_largest_plaintext_fits_the_mtu(self) -> None:
        net, client = connected_psk_pair()
        largest = b"x" * (client.settings.mtu - client.overhead)
        client.send(largest)
        (datagram,) = client.datagrams_to_send()
        assert len(datagram) <= client.settings.mtu
        assert net.server.datagram_received(datagram, ADDR, time.monotonic()) == [largest]
        with pytest.raises(DtlsError):
            client.send(largest + b"x")
        with pytest.raises(DtlsError):
            net.server.send(ADDR, largest + b"x")
        assert client.established  # a refused send leaves the association alone

    def test_send_before_established(self) -> None:
        server = psk_server()
        client = DtlsClient(psk_client())
        with pytest.raises(InvalidState):
            client.send(b"x")
        with pytest.raises(InvalidState):
            server.send(ADDR, b"x")
        client.start(time.monotonic())
        with pytest.raises(InvalidState):
            client.send(b"x")
        with pytest.raises(InvalidState):
            client.start(time.monotonic())

    @pytest.mark.parametrize("suite", engine.PSK_CIPHERS + engine.CERTIFICATE_CIPHERS)
    def test_overhead_is_honest(
        self, suite: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rsa = "-RSA-" in suite
        if "PSK" in suite:
            server = psk_server()
            settings = psk_client()
            monkeypatch.setattr(engine, "PSK_CIPHERS", (suite,))
        else:
            cert, key = (
                (pki.rsa_server_cert, pki.rsa_server_key)
                if rsa
                else (pki.server_cert, pki.server_key)
            )
            server = DtlsServer(DtlsServerSettings(certfile=str(cert), keyfile=str(key)))
            settings = DtlsClientSettings(verify=False)
            monkeypatch.setattr(engine, "CERTIFICATE_CIPHERS", (suite,))
        net = Net(server)
        client = net.add(settings)
        net.pump()
        assert client.established
        for size in (0, 1, 100, client.settings.mtu - client.overhead):
            client.send(b"y" * size)
            for datagram in client.datagrams_to_send():
                assert len(datagram) - size <= RECORD_OVERHEAD
                if "GCM" in suite or suite.endswith("CCM"):
                    assert len(datagram) - size == RECORD_OVERHEAD

    def test_close_notify_both_ways(self) -> None:
        net, client = connected_psk_pair()
        client.close()
        net.pump()
        assert events(net.server) == [PeerClosed(ADDR)]
        assert not net.server.is_established(ADDR)

        net, client = connected_psk_pair()
        net.server.close(ADDR)
        net.pump()
        assert events(client) == [PeerClosed(None)]
        assert not client.established
        assert events(net.server) == []  # close() and forget() make no event


# --- loss, garbage, replay ------------------------------------------------------------------------


def _drop_nth(direction: str, n: int) -> Callable[[str, Hashable, bytes], bool]:
    seen = {"c2s": 0, "s2c": 0}

    def drop(d: str, addr: Hashable, data: bytes) -> bool:
        seen[d] += 1
        return d == direction and seen[d] == n

    return drop


class TestRetransmission:
    @pytest.mark.parametrize(
        ("direction", "n", "what"),
        [
            ("c2s", 1, "first ClientHello"),
            ("s2c", 1, "HelloVerifyRequest"),
            ("c2s", 2, "ClientHello with cookie"),
            ("s2c", 2, "ServerHello flight"),
            ("c2s", 3, "client's last flight"),
            ("s2c", 3, "server's last flight"),
        ],
    )
    def test_a_lost_flight_is_retransmitted(self, direction: str, n: int, what: str) -> None:
        net = Net(psk_server(retransmit_timeout=FAST))
        client = net.add(psk_client(retransmit_timeout=FAST))
        net.drop = _drop_nth(direction, n)
        net.pump()
        stalled = not client.established
        assert stalled, what
        net.run_timers(lambda: client.established and net.server.is_established(ADDR))
        assert client.established and net.server.is_established(ADDR), what
        assert [type(e) for e in events(net.server)] == [HandshakeComplete]
        client.send(b"after loss")
        net.pump()
        assert net.received["server"] == [b"after loss"]

    def test_timer_mirrors_the_retransmission_timeout(self) -> None:
        server = psk_server()
        client = DtlsClient(psk_client())
        assert client.get_timer() is None and server.get_timer() is None
        start = time.monotonic()
        client.start(start)
        timer = client.get_timer()
        assert timer is not None and start + 0.9 < timer < start + 1.1  # RFC 6347: 1 s first
        assert len(client.datagrams_to_send()) == 1  # the ClientHello
        client.handle_timer(start + 0.5)  # not due: nothing happens
        assert client.datagrams_to_send() == []

    def test_mbedtls_retransmits_by_the_wall_clock(self) -> None:
        # Why ``now`` must advance with real time: our clock alone does not make mbedtls resend.
        client = DtlsClient(psk_client(retransmit_timeout=FAST))
        start = time.monotonic()
        client.start(start)
        client.datagrams_to_send()
        client.handle_timer(start + 2 * FAST)  # our clock says due, the wall clock does not
        assert client.datagrams_to_send() == []
        client = DtlsClient(psk_client(retransmit_timeout=FAST))
        client.start(time.monotonic())
        client.datagrams_to_send()
        time.sleep(2 * FAST)
        client.handle_timer(time.monotonic())
        assert len(client.datagrams_to_send()) == 1  # the ClientHello again
        timer = client.get_timer()
        assert timer is not None and timer - time.monotonic() <= 2 * FAST  # doubled

    def test_client_handshake_timeout(self) -> None:
        client = DtlsClient(psk_client(handshake_timeout=5.0))
        start = time.monotonic()
        client.start(start)
        now = start
        while (timer := client.get_timer()) is not None and timer < start + 10:
            now = timer
            client.handle_timer(now)
        assert events(client) == [HandshakeFailed(None, "handshake timed out")]
        assert start + 5.0 <= now < start + 5.5

    def test_server_handshake_timeout(self) -> None:
        net = Net(psk_server(handshake_timeout=5.0))
        net.add(psk_client())
        net.drop = lambda d, addr, data: d == "c2s" and net.server.handshakes == 1
        net.pump()
        assert net.server.handshakes == 1
        timer = net.server.get_timer()
        assert timer is not None
        now = time.monotonic()
        while (timer := net.server.get_timer()) is not None and timer < now + 10:
            net.server.handle_timer(timer)
        assert events(net.server) == [HandshakeFailed(ADDR, "handshake timed out")]
        assert net.server.handshakes == 0


class TestGarbage:
    def test_garbage_truncated_and_replayed_datagrams(self) -> None:
        net, client = connected_psk_pair()
        server = net.server
        client.send(b"genuine")
        (record,) = client.datagrams_to_send()
        now = time.monotonic()
        assert server.datagram_received(record, ADDR, now) == [b"genuine"]
        junk = [
            b"",
            b"\x00",
            os.urandom(13),
            os.urandom(200),
            b"\x17\xfe\xfd" + os.urandom(100),  # application data header, random body
            b"\x16\xfe\xfd\x00\x00" + os.urandom(60),  # epoch-0 handshake, random body
            b"\x15\xfe\xfd\x00\x00\x00\x00\x00\x00\x00\x09\x00\x02\x02\x28",  # forged alert
            record,  # replayed
            record[:-1],  # truncated
            record[:20],
            record[:-1] + bytes([record[-1] ^ 1]),  # tampered
            b"\x17" * 70000,  # larger than any record
        ]
        for data in junk:
            assert server.datagram_received(data, ADDR, now) == []
            assert server.datagram_received(data, ("192.0.2.99", 9), now) == []
            assert client.datagram_received(data, now) == []
        assert events(server) == [] and events(client) == []
        assert server.is_established(ADDR) and client.established
        assert server.handshakes == 0
        client.send(b"still here")
        server.send(ADDR, b"me too")
        net.pump()
        assert net.received["server"] == [b"still here"]
        assert net.received[ADDR] == [b"me too"]

    def test_replayed_client_hello_does_not_disturb_an_established_peer(self) -> None:
        net, client = connected_psk_pair()
        hellos = [data for d, _, data in net.wire if d == "c2s"][:2]
        for hello in hellos:
            net.server.datagram_received(hello, ADDR, time.monotonic())
        assert net.server.is_established(ADDR) and events(net.server) == []
        client.send(b"ok")
        net.pump()
        assert net.received["server"] == [b"ok"]

    def test_a_restarted_client_replaces_its_association_after_the_cookie(self) -> None:
        net, _ = connected_psk_pair()
        fresh = net.add(psk_client("bob", b"bob-key-16-bytes"))  # same address, new random
        (hello,) = fresh.datagrams_to_send()
        net.server.datagram_received(hello, ADDR, time.monotonic())
        ((hvr, _),) = net.server.datagrams_to_send()
        # Until the new ClientHello returns a cookie, the old association stands.
        assert net.server.is_established(ADDR) and events(net.server) == []
        fresh.datagram_received(hvr, time.monotonic())
        net.pump()
        assert events(net.server) == [PeerClosed(ADDR), HandshakeComplete(ADDR, "bob", None)]
        assert fresh.established and net.server.is_established(ADDR)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300), st.integers(0, 3))
    def test_random_datagrams_never_raise(
        self, shared_server: DtlsServer, data: bytes, prefix: int
    ) -> None:
        server = shared_server
        headers = [b"", b"\x16\xfe\xfd\x00\x00", b"\x16\xfe\xff\x00\x00", b"\x17\xfe\xfd\x00\x01"]
        datagram = headers[prefix] + data
        assert server.datagram_received(datagram, ("192.0.2.7", 7), time.monotonic()) == []
        assert server.handshakes == 0
        server.datagrams_to_send()
        server.events_received()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutated_client_hellos_never_raise(
        self, shared_server: DtlsServer, hellos: list[bytes], data: st.DataObject
    ) -> None:
        hello = bytearray(data.draw(st.sampled_from(hellos)))
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(hello) - 1))
            hello[at] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(hello)))
        addr = ("192.0.2.8", 8)
        before = shared_server.handshakes
        shared_server.datagram_received(bytes(hello[:cut]), addr, time.monotonic())
        verified = shared_server.handshakes > before  # the mutation left the cookie valid
        for reply, _ in shared_server.datagrams_to_send():
            # no reply larger than its request until the cookie proved the address: then the
            # server's flight (ServerHello ...) may be, as in any DTLS handshake
            assert verified or len(reply) <= cut
        shared_server.forget(addr)  # a real handshake if the cookie held: start over
        shared_server.events_received()


@pytest.fixture(scope="module")
def hellos(shared_server: DtlsServer) -> list[bytes]:
    """A cookieless ClientHello and the ClientHello with its cookie, for address 192.0.2.8:8."""
    server = shared_server
    client = DtlsClient(psk_client())
    client.start(time.monotonic())
    (first,) = client.datagrams_to_send()
    server.datagram_received(first, ("192.0.2.8", 8), time.monotonic())
    ((hvr, _),) = server.datagrams_to_send()
    client.datagram_received(hvr, time.monotonic())
    (second,) = client.datagrams_to_send()
    return [first, second]


@pytest.fixture(scope="module")
def shared_server() -> DtlsServer:
    return DtlsServer(DtlsServerSettings(psk={"alice": KEY}))


# --- the cookie exchange and its limits -----------------------------------------------------------


class TestCookie:
    def test_cookieless_client_hello_leaves_no_state_and_a_small_reply(self) -> None:
        server = psk_server()
        client = DtlsClient(psk_client())
        client.start(time.monotonic())
        (hello,) = client.datagrams_to_send()
        info = parse_client_hello_untrusted(hello)
        assert info is not None and info.cookie == b""
        for port in range(200):
            server.datagram_received(hello, ("192.0.2.50", port), time.monotonic())
        replies = server.datagrams_to_send()
        assert len(replies) == 200
        for reply, _ in replies:
            assert len(reply) <= len(hello)
            ((content_type, record),) = split_records(reply)
            assert content_type == 22 and record[13] == 3  # HelloVerifyRequest
        assert server.handshakes == 0 and server.get_timer() is None
        assert server._handshakes == {} and server._established == {}
        assert server.hello_verify_requests == 200
        assert events(server) == []

    def test_truncated_client_hellos_are_parsed_safely(self) -> None:
        client = DtlsClient(psk_client())
        client.start(time.monotonic())
        (hello,) = client.datagrams_to_send()
        server = psk_server()
        for end in range(len(hello)):
            assert parse_client_hello_untrusted(hello[:end]) is None
            server.datagram_received(hello[:end], ADDR, time.monotonic())
        assert server.datagrams_to_send() == [] and server.handshakes == 0
        assert server.dropped == len(hello)

    def test_a_cookie_is_bound_to_the_address(self) -> None:
        server = psk_server()
        client = DtlsClient(psk_client())
        client.start(time.monotonic())
        server.datagram_received(client.datagrams_to_send()[0], ADDR, time.monotonic())
        ((hvr, _),) = server.datagrams_to_send()
        client.datagram_received(hvr, time.monotonic())
        (hello_with_cookie,) = client.datagrams_to_send()
        elsewhere = ("192.0.2.66", 1)
        server.datagram_received(hello_with_cookie, elsewhere, time.monotonic())
        assert server.handshakes == 0  # answered with a fresh HelloVerifyRequest instead
        server.datagram_received(hello_with_cookie, ADDR, time.monotonic())
        assert server.handshakes == 1

    def test_max_handshakes(self) -> None:
        net = Net(psk_server(max_handshakes=2, retransmit_timeout=FAST))
        addrs = [("192.0.2.10", p) for p in range(3)]
        clients = [net.add(psk_client(retransmit_timeout=FAST), a) for a in addrs]
        # Hold every client's last flight so that the handshakes stay open.
        net.drop = lambda d, addr, data: (
            d == "c2s"
            and net.server.handshakes >= 1
            and (parse_client_hello_untrusted(data) is None)
        )
        net.pump()
        assert net.server.handshakes == 2
        assert net.server.dropped >= 1  # the third ClientHello with cookie
        net.drop = lambda d, addr, data: False
        net.run_timers(lambda: all(c.established for c in clients))
        assert all(c.established for c in clients)
        assert {e.addr for e in events(net.server)} == set(addrs)


# --- psk_file and the missing library -------------------------------------------------------------


class TestPskFile:
    def test_good_file(self, tmp_path: Path) -> None:
        path = tmp_path / "psk.txt"
        path.write_text(
            "# Mosquitto psk_file\n\nalice:00112233445566778899aabbccddeeff\n"
            "  # indented comment\nbob:DEADBEEF\r\nwith space:00\nalice:ff\n"
        )
        assert load_psk_file(path) == {
            "alice": b"\xff",
            "bob": b"\xde\xad\xbe\xef",
            "with space": b"\x00",
        }

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("alice", "expected identity:hexkey"),
            (":00ff", "empty identity"),
            ("alice:", "empty key"),
            ("alice:abc", "odd number"),
            ("alice:zz", "not hexadecimal"),
            ("alice:00 ff", "not hexadecimal"),
        ],
    )
    def test_bad_line_names_file_and_line(self, tmp_path: Path, line: str, message: str) -> None:
        path = tmp_path / "psk.txt"
        path.write_text(f"# keys\ngood:00\n{line}\n")
        with pytest.raises(ValueError, match=message) as info:
            load_psk_file(path)
        assert str(info.value).startswith(f"{path}:3: ")

    def test_keys_are_not_shown(self) -> None:
        assert KEY.hex() not in repr(engine.PskStore({"alice": KEY}))


class TestWithoutMbedtls:
    def test_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "mbedtls.tls", None)
        with pytest.raises(DtlsUnavailable, match=r"pip install 'mqttv5\[dtls\]'") as info:
            DtlsServer(DtlsServerSettings(psk={"a": KEY}))
        assert str(info.value) == MISSING_MBEDTLS
        assert isinstance(info.value, ImportError)
        with pytest.raises(DtlsUnavailable):
            DtlsClient(psk_client())

    def test_importing_the_module_does_not_import_mbedtls(self) -> None:
        code = (
            "import sys; sys.modules['mbedtls'] = None\n"
            "import mqttv5.transport.dtls as d\n"
            "assert d.load_psk_file and d.DtlsServerSettings()\n"
            "assert sys.modules['mbedtls'] is None\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
