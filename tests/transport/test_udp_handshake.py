"""Connection set-up (mqttv5.transport.udp.handshake): stateless cookies bound to the address
and the epoch, challenge nonces, and the client's HELLO -> COOKIE -> CONNECT -> ACCEPT ->
confirmed walk with retransmission, timeout and refusal."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mqttv5.transport.udp import (
    Connected,
    ConnectionState,
    ConnectionTerminated,
    ReliableConnection,
    UdpServer,
    UdpSettings,
    wire,
)
from mqttv5.transport.udp.handshake import EPOCH, CookieIssuer, HandshakePhase
from mqttv5.transport.udp.wire import HANDSHAKE_MIN_SIZE, parse_untrusted
from tests.transport.udpsim import Link, SimNetwork

SECRET = b"k" * 32
NONCE = b"n" * 8
ADDR = ("192.0.2.1", 5000)
T0 = 3000.0  # the start of an epoch


def counter_rng() -> Callable[[int], bytes]:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(4, "big") * (n // 4) + bytes(n % 4)

    return rng


class TestCookieIssuer:
    def test_valid_in_this_and_the_next_epoch_only(self) -> None:
        issuer = CookieIssuer(SECRET)
        cookie = issuer.cookie(NONCE, ADDR, T0)
        assert len(cookie) == 16
        assert issuer.check_cookie(cookie, NONCE, ADDR, T0)
        assert issuer.check_cookie(cookie, NONCE, ADDR, T0 + EPOCH - 0.001)
        assert issuer.check_cookie(cookie, NONCE, ADDR, T0 + 2 * EPOCH - 0.001)
        assert not issuer.check_cookie(cookie, NONCE, ADDR, T0 + 2 * EPOCH)  # expired
        assert not issuer.check_cookie(cookie, NONCE, ADDR, T0 - 1)  # from the future

    def test_bound_to_address_nonce_and_secret(self) -> None:
        issuer = CookieIssuer(SECRET)
        cookie = issuer.cookie(NONCE, ADDR, T0)
        assert not issuer.check_cookie(cookie, NONCE, ("192.0.2.1", 5001), T0)
        assert not issuer.check_cookie(cookie, NONCE, ("192.0.2.2", 5000), T0)
        assert not issuer.check_cookie(cookie, b"m" * 8, ADDR, T0)
        assert not CookieIssuer(b"x" * 32).check_cookie(cookie, NONCE, ADDR, T0)
        assert not issuer.check_cookie(bytes(16), NONCE, ADDR, T0)
        assert not issuer.check_cookie(cookie[:15], NONCE, ADDR, T0)
        # the same inputs give the same cookie: nothing was stored
        assert CookieIssuer(SECRET).cookie(NONCE, ADDR, T0) == cookie

    def test_the_key_rotates_every_epoch(self) -> None:
        issuer = CookieIssuer(SECRET)
        assert issuer.cookie(NONCE, ADDR, T0) != issuer.cookie(NONCE, ADDR, T0 + EPOCH)
        for epoch in range(100):
            issuer.cookie(NONCE, ADDR, T0 + epoch * EPOCH)
        assert len(issuer._keys) <= 4  # a few epoch keys cached, not one per epoch

    def test_challenges(self) -> None:
        issuer = CookieIssuer(SECRET)
        cid = b"c" * 8
        nonce = issuer.challenge(cid, ADDR, T0)
        assert len(nonce) == 8
        assert issuer.check_challenge(nonce, cid, ADDR, T0 + EPOCH)
        assert not issuer.check_challenge(nonce, cid, ADDR, T0 + 2 * EPOCH)
        assert not issuer.check_challenge(nonce, b"d" * 8, ADDR, T0)
        assert not issuer.check_challenge(nonce, cid, ("192.0.2.9", 5000), T0)
        assert not issuer.check_challenge(bytes(8), cid, ADDR, T0)

    def test_short_secret_refused(self) -> None:
        with pytest.raises(ValueError, match="secret"):
            CookieIssuer(b"short")


class TestClientHandshake:
    def test_step_by_step(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET, rng=counter_rng())
        client = ReliableConnection.client(UdpSettings(), T0, rng=lambda n: b"\x07" * n)
        assert client.state.name == "HANDSHAKE"
        [hello] = client.datagrams_to_send(T0)
        assert parse_untrusted(hello) == wire.Hello(b"\x07" * 8)
        assert len(hello) == HANDSHAKE_MIN_SIZE
        assert client.datagrams_to_send(T0) == []  # not again until the timer
        assert server.datagram_received(hello, ADDR, T0) is None
        [(cookie, to)] = server.datagrams_to_send(T0)
        assert to == ADDR and len(cookie) <= len(hello)
        client.receive_datagram(cookie, T0 + 0.1)
        [connect] = client.datagrams_to_send(T0 + 0.1)
        assert isinstance(parse_untrusted(connect), wire.Connect)
        assert len(connect) >= HANDSHAKE_MIN_SIZE
        assert client.stats.srtt == pytest.approx(0.1)  # HELLO -> COOKIE, sent once
        conn = server.datagram_received(connect, ADDR, T0 + 0.1)
        assert conn is not None and server.connections() == 1
        [accept] = conn.datagrams_to_send(T0 + 0.1)
        assert len(accept) <= len(connect)
        assert conn.events_received() == [Connected(conn.connection_id or b"")]
        client.receive_datagram(accept, T0 + 0.2)
        assert client.state is ConnectionState.ESTABLISHED
        assert client.connection_id == conn.connection_id
        assert client.events_received() == [Connected(conn.connection_id or b"")]
        [ping] = client.datagrams_to_send(T0 + 0.2)  # confirms to the server
        assert isinstance(parse_untrusted(ping), wire.Ping)
        assert server.datagram_received(ping, ADDR, T0 + 0.3) is conn
        assert conn.stats.srtt == pytest.approx(0.2)  # ACCEPT -> first datagram back
        [ack] = conn.datagrams_to_send(T0 + 0.3)  # a PING is answered at once
        client.receive_datagram(ack, T0 + 0.4)
        assert client._handshake is not None
        assert client._handshake.phase is HandshakePhase.DONE

    def test_retransmission_backs_off_then_the_handshake_times_out(self) -> None:
        client = ReliableConnection.client(UdpSettings(handshake_timeout=10), 0.0)
        sent = []
        now = 0.0
        while client.state is not ConnectionState.CLOSED:
            if client.datagrams_to_send(now):
                sent.append(now)
            timer = client.get_timer()
            assert timer is not None
            now = timer
            client.handle_timer(now)
        assert sent == [0.0, 1.0, 3.0, 7.0]  # RTO 1 s, doubling
        assert now == 10.0
        assert client.events_received() == [ConnectionTerminated("handshake timed out", False)]
        assert client.get_timer() is None

    def test_lossy_handshakes_complete(self) -> None:
        done = 0

        def attempt(seed: int) -> SimNetwork:
            net = SimNetwork(seed=seed, link=Link(loss=0.3, duplicate=0.1, jitter=0.05))
            net.run(lambda: net.client.connection_id is not None and bool(net.conns), 10)
            return net

        for seed in range(40):
            net = attempt(seed)
            if net.client.state is ConnectionState.ESTABLISHED:
                assert len(net.conns) == 1  # duplicated CONNECTs made one connection
                done += 1
        assert done >= 36  # 4 tries in 10 s at a 51 % round-trip failure rate: ~95 %

    def test_duplicate_connect_gets_the_same_connection(self) -> None:
        server = UdpServer(UdpSettings(), secret=SECRET)
        client = ReliableConnection.client(UdpSettings(), T0)
        [hello] = client.datagrams_to_send(T0)
        server.datagram_received(hello, ADDR, T0)
        [(cookie, _)] = server.datagrams_to_send(T0)
        client.receive_datagram(cookie, T0)
        [connect] = client.datagrams_to_send(T0)
        first = server.datagram_received(connect, ADDR, T0)
        assert first is not None
        [accept] = first.datagrams_to_send(T0)
        again = server.datagram_received(connect, ADDR, T0 + 1)  # ACCEPT was lost
        assert again is first and server.connections() == 1
        assert first.datagrams_to_send(T0 + 1) == [accept]
        assert server.events_received().__len__() == 1

    def test_server_connection_never_confirmed_times_out(self) -> None:
        server = UdpServer(UdpSettings(handshake_timeout=5), secret=SECRET)
        client = ReliableConnection.client(UdpSettings(), T0)
        [hello] = client.datagrams_to_send(T0)
        server.datagram_received(hello, ADDR, T0)
        client.receive_datagram(server.datagrams_to_send(T0)[0][0], T0)
        conn = server.datagram_received(client.datagrams_to_send(T0)[0], ADDR, T0)
        assert conn is not None
        conn.datagrams_to_send(T0)
        assert conn.get_timer() == T0 + 5
        conn.handle_timer(T0 + 5)
        assert conn.events_received()[-1] == ConnectionTerminated("handshake timed out", False)

    def test_refused_connection(self) -> None:
        net = SimNetwork(seed=1, max_connections=1)
        server, now, elsewhere = net.server, net.now, ("192.0.2.50", 1)
        other = ReliableConnection.client(UdpSettings(), now)  # takes the only slot
        server.datagram_received(other.datagrams_to_send(now)[0], elsewhere, now)
        other.receive_datagram(server.datagrams_to_send(now)[0][0], now)
        taken = server.datagram_received(other.datagrams_to_send(now)[0], elsewhere, now)
        assert taken is not None
        server.events_received()
        net.run(lambda: net.client_terminated is not None, 30)
        assert net.client_terminated == ConnectionTerminated("refused", True)
        assert server.stats.connections_refused >= 1
        assert server.connections() == 1

    def test_a_client_ignores_set_up_datagrams_for_another_nonce(self) -> None:
        client = ReliableConnection.client(UdpSettings(), T0, rng=lambda n: b"\x01" * n)
        client.datagrams_to_send(T0)
        client.receive_datagram(wire.encode_cookie(b"\x02" * 8, bytes(16)), T0)
        client.receive_datagram(wire.encode_reset(b"\x02" * 8), T0)
        client.receive_datagram(wire.encode_hello(b"\x01" * 8), T0)
        assert client.datagrams_to_send(T0) == []
        assert client.state is ConnectionState.HANDSHAKE
        assert client.stats.datagrams_dropped == 3
