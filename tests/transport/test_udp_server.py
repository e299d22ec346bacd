"""The server side (mqttv5.transport.udp.server): no state before a cookie checks out, no
amplification, per-address and total limits, demultiplexing by connection id, RESET for unknown
connections, and migration to a new address only through CHALLENGE and RESUME with the token."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttv5.transport.udp import (
    AddressMigrated,
    ConnectionMigrated,
    ConnectionState,
    ConnectionTerminated,
    NewConnection,
    PathSuspect,
    ReliableConnection,
    UdpServer,
    UdpSettings,
    wire,
)
from mqttv5.transport.udp.handshake import EPOCH
from mqttv5.transport.udp.wire import DatagramType, parse_untrusted
from tests.transport.udpsim import CLIENT_ADDR, Link, SimNetwork

SECRET = b"s" * 32
T0 = 3000.0


def handshake(server: UdpServer, addr: Hashable, now: float = T0) -> ReliableConnection | None:
    """A fresh client's HELLO, COOKIE, CONNECT against ``server``; the connection, if made."""
    client = ReliableConnection.client(UdpSettings(), now)
    server.datagrams_to_send(now)  # earlier replies
    [hello] = client.datagrams_to_send(now)
    server.datagram_received(hello, addr, now)
    replies = server.datagrams_to_send(now)
    if not replies:
        return None
    client.receive_datagram(replies[0][0], now)
    return server.datagram_received(client.datagrams_to_send(now)[0], addr, now)


class TestStatelessCookie:
    def test_hello_allocates_nothing(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        for i in range(5000):
            hello = wire.encode_hello(i.to_bytes(8, "big"))
            assert server.datagram_received(hello, ("198.51.100.1", i), T0 + i / 1000) is None
        assert len(server.datagrams_to_send(T0)) == 5000
        assert server.connections() == 0
        assert server.events_received() == []
        assert not server._setup and not server._setup_key and not server._per_host
        assert len(server._issuer._keys) <= 4
        assert server.stats.cookies_sent == 5000

    def test_short_hello_is_dropped_without_an_answer(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        hello = wire.encode_hello(b"n" * 8)
        assert server.datagram_received(hello[:127], CLIENT_ADDR, T0) is None
        assert server.datagrams_to_send(T0) == []
        assert server.stats.drops_by_cause == {"short hello": 1}

    @pytest.mark.parametrize(
        ("cookie_addr", "cookie_time", "connect_time"),
        [
            (("192.0.2.7", 1), T0, T0),  # another address's cookie
            (CLIENT_ADDR, T0, T0 + 2 * EPOCH),  # expired
            (None, T0, T0),  # forged
        ],
    )
    def test_bad_cookies_are_refused(
        self, cookie_addr: Hashable, cookie_time: float, connect_time: float
    ) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        nonce = b"n" * 8
        if cookie_addr is None:
            cookie = b"\x42" * 16
        else:
            server.datagram_received(wire.encode_hello(nonce), cookie_addr, cookie_time)
            [(reply, _)] = server.datagrams_to_send(cookie_time)
            cookie = reply[10:]
        params = wire.PeerParameters(1472, 256, 1 << 20, 90_000)
        connect = wire.encode_connect(nonce, cookie, params)
        assert server.datagram_received(connect, CLIENT_ADDR, connect_time) is None
        assert server.connections() == 0 and server.events_received() == []
        assert server.stats.cookies_rejected == 1
        # the answer is a fresh cookie for the address the CONNECT came from
        [(reply, to)] = server.datagrams_to_send(connect_time)
        assert to == CLIENT_ADDR and len(reply) <= len(connect)
        fresh = wire.encode_connect(nonce, reply[10:], params)
        assert server.datagram_received(fresh, CLIENT_ADDR, connect_time) is not None

    def test_an_expired_cookie_costs_the_client_one_round_trip(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        client = ReliableConnection.client(UdpSettings(handshake_timeout=100), T0)
        server.datagram_received(client.datagrams_to_send(T0)[0], CLIENT_ADDR, T0)
        client.receive_datagram(server.datagrams_to_send(T0)[0][0], T0)
        late = T0 + 2 * EPOCH  # the CONNECT was held up for a minute
        [connect] = client.datagrams_to_send(T0)
        assert server.datagram_received(connect, CLIENT_ADDR, late) is None
        [(fresh, _)] = server.datagrams_to_send(late)
        client.receive_datagram(fresh, late)
        [again] = client.datagrams_to_send(late)  # at once, with the new cookie
        conn = server.datagram_received(again, CLIENT_ADDR, late)
        assert conn is not None
        client.receive_datagram(conn.datagrams_to_send(late)[0], late)
        assert client.state is ConnectionState.ESTABLISHED
        assert server.stats.cookies_rejected == 1


class TestAntiAmplification:
    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(
        kind=st.sampled_from(list(DatagramType)),
        body=st.binary(max_size=300),
        known=st.booleans(),
    )
    def test_no_reply_to_an_unvalidated_address_is_larger_than_its_cause(
        self, kind: int, body: bytes, known: bool
    ) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        conn = handshake(server, CLIENT_ADDR)
        assert conn is not None
        server.datagrams_to_send(T0)
        cid = conn.connection_id
        assert cid is not None
        # a datagram with the right shape, from an address that holds no connection
        data = bytes([wire.MAGIC, kind]) + (cid if known else b"\xee" * 8) + body
        for candidate in (data, data[: 2 + len(body)], wire.encode_hello(body[:8].ljust(8))):
            server.datagram_received(candidate, ("203.0.113.9", 9), T0)
            for reply, _ in server.datagrams_to_send(T0):
                assert len(reply) <= len(candidate)
        assert server.address_of(conn) == CLIENT_ADDR  # and nothing moved

    @pytest.mark.parametrize("seed", range(4))
    def test_answers_through_whole_sessions(self, seed: int) -> None:
        """Every COOKIE, ACCEPT, CHALLENGE and RESET the server sent during lossy sessions with
        duplication, a NAT rebinding and a close is no larger than what it answered."""
        net = SimNetwork(seed=seed, link=Link(loss=0.2, duplicate=0.2, jitter=0.02))
        net.connect()
        for m in range(50):
            net.client.send(bytes(m * 20))
        net.rebind(("10.0.0.99", 555))
        net.run(lambda: len(net.server_messages) == 50, 300)
        assert len(net.server_messages) == 50
        net.client.close(net.now)
        net.run(lambda: net.client_terminated is not None, 300)
        kinds = {size for size, _ in net.answers}
        assert wire.COOKIE_SIZE_TOTAL in kinds and wire.ACCEPT_SIZE in kinds
        assert wire.CHALLENGE_SIZE in kinds
        assert all(reply <= cause for reply, cause in net.answers)


class TestLimits:
    def test_per_address_limit(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET, max_connections_per_address=2)
        assert handshake(server, ("192.0.2.1", 1)) is not None
        assert handshake(server, ("192.0.2.1", 2)) is not None  # same host, other port
        assert handshake(server, ("192.0.2.1", 3)) is None
        [(reset, to)] = [r for r in server.datagrams_to_send(T0) if r[0][1] == DatagramType.RESET]
        assert to == ("192.0.2.1", 3) and len(reset) == wire.RESET_SIZE
        assert handshake(server, ("192.0.2.2", 1)) is not None  # another host
        assert server.connections() == 3
        assert server.stats.connections_refused == 1
        assert server.stats.drops_by_cause["too many connections from address"] == 1

    def test_total_limit_and_forget(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET, max_connections=2)
        first = handshake(server, ("192.0.2.1", 1))
        assert first is not None
        assert handshake(server, ("192.0.2.2", 1)) is not None
        assert handshake(server, ("192.0.2.3", 1)) is None
        server.forget(first)
        server.forget(first)  # idempotent
        assert server.address_of(first) == ("192.0.2.1", 1)  # still answered
        assert handshake(server, ("192.0.2.3", 1)) is not None
        assert server.connections() == 2

    def test_invalid_limits(self) -> None:
        with pytest.raises(ValueError, match="max_connections"):
            UdpServer(UdpSettings(), max_connections=0)
        with pytest.raises(ValueError, match="max_connections_per_address"):
            UdpServer(UdpSettings(), max_connections_per_address=0)


class TestUnknownConnection:
    def test_data_for_an_unknown_connection_gets_a_small_reset(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        cid = b"\x99" * 8
        for data in (
            wire.encode_data(cid, 0, 3, None, b""),
            wire.encode_ping(cid),
            wire.encode_ack(cid, 0, 1, 0, []),
            wire.encode_close(cid, wire.CloseCode.NORMAL),
            wire.encode_resume(cid, bytes(8), bytes(16)),
        ):
            server.datagram_received(data, CLIENT_ADDR, T0)
            [(reset, to)] = server.datagrams_to_send(T0)
            assert parse_untrusted(reset) == wire.Reset(cid)
            assert len(reset) <= len(data) and to == CLIENT_ADDR
        for data in (wire.encode_reset(cid), wire.encode_close_ack(cid)):
            server.datagram_received(data, CLIENT_ADDR, T0)
            assert server.datagrams_to_send(T0) == []  # never RESET a RESET
        assert server.stats.resets_sent == 5

    def test_a_forgotten_connection_resets_its_client(self) -> None:
        net = SimNetwork(seed=1)
        server_conn = net.connect()
        net.server.forget(server_conn)
        net.conns.clear()
        net.client.send(b"anyone there?")
        net.run(lambda: net.client_terminated is not None, 10)
        assert net.client_terminated == ConnectionTerminated("reset", True)

    @settings(max_examples=1000, deadline=None, derandomize=True)
    @given(st.binary(max_size=1600), st.sampled_from([None, *DatagramType]))
    def test_random_bytes_never_raise(self, body: bytes, kind: int | None) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        data = body if kind is None else bytes([wire.MAGIC, kind]) + body
        server.datagram_received(data, CLIENT_ADDR, T0)
        for reply, _ in server.datagrams_to_send(T0):
            assert len(reply) <= len(data)
        assert server.connections() == 0


class TestMigration:
    def test_nat_rebinding_mid_transfer(self) -> None:
        net = SimNetwork(seed=5, link=Link(loss=0.05, jitter=0.01))
        server_conn = net.connect()
        token = server_conn._token
        payloads = [bytes([i % 256]) * (i * 30) for i in range(200)]
        for p in payloads:
            net.client.send(p)
        net.run(lambda: len(net.server_messages) > 50, 60)
        new = ("10.0.0.1", 61000)
        net.rebind(new)
        net.run(lambda: len(net.server_messages) == 200, 300)
        assert net.server_messages == payloads
        assert net.server.address_of(server_conn) == new
        assert AddressMigrated(CLIENT_ADDR, new) in net.server_events
        assert net.server.stats.migrations == 1 and net.server.stats.challenges_sent >= 1
        assert server_conn._token != token and net.client._token == server_conn._token
        assert net.server.connections() == 1 and len(net.conns) == 1
        # and the other way: the server's data reaches the new address
        server_conn.send(b"to the new address")
        net.run(lambda: net.client_messages == [b"to the new address"], 30)

    def test_migration_while_idle_via_keepalive(self) -> None:
        net = SimNetwork(seed=6)
        server_conn = net.connect()
        net.rebind(("10.0.0.1", 62000))
        net.run_for(40)  # the next PING from the new port is challenged, then RESUME
        assert net.server.address_of(server_conn) == ("10.0.0.1", 62000)
        assert net.client_terminated is None and net.server_terminated is None

    def test_path_suspect_then_resume_when_nothing_is_challenged(self) -> None:
        """After a rebinding the client's only datagram is a 1-byte message (16 bytes: too
        small to be answered by an 18-byte CHALLENGE). It times out three times, raises
        PathSuspect and RESUMEs on its own; the RESUME is challenged and the connection moves."""
        net = SimNetwork(seed=7)
        server_conn = net.connect()
        net.rebind(("10.0.0.1", 63000))
        net.client.send(b"x")
        net.run(lambda: net.server_messages == [b"x"], 60)
        assert any(isinstance(e, PathSuspect) for e in net.client_events)
        assert net.client.stats.rto_expiries == net.client.settings.rebind_after_rtos
        assert net.server.address_of(server_conn) == ("10.0.0.1", 63000)
        assert net.server.stats.drops_by_cause["unvalidated address"] >= 3

    def test_a_spoofed_datagram_from_another_address_does_not_migrate(self) -> None:
        net = SimNetwork(seed=8)
        server_conn = net.connect()
        cid = server_conn.connection_id
        assert cid is not None
        attacker = ("203.0.113.66", 6666)
        captured = wire.encode_data(cid, 0, 3, None, b"spoof")  # a copy of a client datagram
        assert net.inject_to_server(captured, attacker) is None
        answers = [size for _, size, dst in net.server_sent if dst == attacker]
        assert answers == [wire.CHALLENGE_SIZE]
        # RESUME without the token, with and without the challenge nonce
        nonce = net.server._issuer.challenge(cid, attacker, net.now)
        for guess in (bytes(16), b"\x01" * 16):
            net.inject_to_server(wire.encode_resume(cid, nonce, guess), attacker)
        # the token is right but the attacker cannot receive the challenge at the victim's
        # address: RESUME from an address without the nonce is challenged, not migrated
        victim = ("198.51.100.200", 1)
        net.inject_to_server(wire.encode_resume(cid, bytes(8), server_conn._token), victim)
        assert net.server.address_of(server_conn) == CLIENT_ADDR
        assert net.server.stats.migrations == 0
        assert net.server.stats.drops_by_cause["bad token"] == 2
        assert net.server_messages == []  # the spoofed DATA was not delivered
        net.client.send(b"still mine")
        net.run(lambda: net.server_messages == [b"still mine"], 10)

    def test_resume_with_the_previous_token_after_a_lost_resumed(self) -> None:
        net = SimNetwork(seed=9)
        server_conn = net.connect()
        cid = server_conn.connection_id
        assert cid is not None
        first = net.client._token
        new = ("10.0.0.1", 64000)
        nonce = net.server._issuer.challenge(cid, new, net.now)
        resume = wire.encode_resume(cid, nonce, first)
        assert net.server.datagram_received(resume, new, net.now) is server_conn
        [resumed] = server_conn.datagrams_to_send(net.now)
        second = parse_untrusted(resumed).token  # type: ignore[union-attr]
        assert second != first
        [event] = net.server.events_received()
        assert event == ConnectionMigrated(server_conn, CLIENT_ADDR, new)
        # RESUMED lost: the client tries again with the token it has
        assert net.server.datagram_received(resume, new, net.now) is server_conn
        [again] = server_conn.datagrams_to_send(net.now)
        assert parse_untrusted(again).token == second  # type: ignore[union-attr]
        assert server_conn.state is ConnectionState.ESTABLISHED

    def test_migration_respects_the_per_address_limit(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET, max_connections_per_address=1)
        a = handshake(server, ("192.0.2.1", 1))
        b = handshake(server, ("192.0.2.2", 1))
        assert a is not None and b is not None
        cid = a.connection_id
        assert cid is not None
        to = ("192.0.2.2", 2)
        nonce = server._issuer.challenge(cid, to, T0)
        assert server.datagram_received(wire.encode_resume(cid, nonce, a._token), to, T0) is None
        assert server.address_of(a) == ("192.0.2.1", 1)
        assert server.stats.drops_by_cause["too many connections from address"] == 1

    def test_new_connection_event(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        conn = handshake(server, CLIENT_ADDR)
        assert server.events_received() == [NewConnection(conn, CLIENT_ADDR)]  # type: ignore[arg-type]
