"""The reliability layer of MQTT over UDP (mqttv5.transport.udp.reliability / .recovery), driven
through the seeded simulated network of ``udpsim``: delivery exactly once and in order under
loss, duplication and reordering; RFC 6298 timeouts; AIMD congestion control; keep-alive, idle
expiry, retransmission limit; graceful close and abort."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttv5.protocol.errors import InvalidState
from mqttv5.transport.udp import (
    ConnectionState,
    ConnectionTerminated,
    DataReceived,
    PathSuspect,
    ReliableConnection,
    UdpSettings,
)
from mqttv5.transport.udp.recovery import INITIAL_WINDOW, MAX_ACK_DELAY
from mqttv5.transport.udp.wire import DatagramType, parse_untrusted
from tests.transport.udpsim import Gilbert, Link, SimNetwork

RTT = 0.05  # the default Link: 25 ms each way


def messages(count: int, seed: int = 0) -> list[bytes]:
    """Distinct messages of 4 to ~1,200 bytes, each numbered."""
    return [
        i.to_bytes(4, "big") + bytes([(i + seed) % 251]) * ((i * 37) % 1200) for i in range(count)
    ]


def pftk_seconds(segments: int, loss: float, rtt: float = RTT, rto: float = 0.2) -> float:
    """Time TCP Reno needs for ``segments`` at loss rate ``loss`` by the model of Padhye, Firoiu,
    Towsley and Kurose (SIGCOMM '98), with delayed ACKs (b = 2). SACK, RACK and the tail-loss
    probe make us at least as good as Reno, so this bounds our completion time."""
    b = 2
    per_segment = rtt * math.sqrt(2 * b * loss / 3) + rto * min(
        1, 3 * math.sqrt(3 * b * loss / 8)
    ) * loss * (1 + 32 * loss**2)
    return segments * per_segment


def transfer(net: SimNetwork, payloads: list[bytes], limit: float) -> float:
    """Send ``payloads`` from the client; return the simulated seconds until all arrived."""
    target = len(net.server_messages) + len(payloads)
    for payload in payloads:
        net.client.send(payload)
    return net.run(lambda: len(net.server_messages) >= target, limit)


def segments_of(payloads: list[bytes], room: int = 1472 - 15) -> int:
    return sum(max(1, math.ceil((len(p) + 4) / room)) for p in payloads)


class TestDelivery:
    @pytest.mark.parametrize("loss", [0.0, 0.01, 0.10, 0.30])
    def test_thousands_of_messages_and_64k_arrive_once_in_order(self, loss: float) -> None:
        # At 30 % loss each way a round trip fails 51 % of the time, so 11 failures in a row
        # (the default max_retransmits=10 ending the connection, as it should) have p ~ 6e-4
        # per segment: over 2,500 segments that happens. Allow 25 (p ~ 5e-8 per segment).
        patient = UdpSettings(max_retransmits=25)
        net = SimNetwork(
            seed=11,
            link=Link(loss=loss, jitter=0.004),
            client_settings=patient,
            server_settings=patient,
        )
        server = net.connect()
        big = bytes(range(256)) * 256  # 64 KiB: 45 fragments
        payloads = [*messages(2000), big, *messages(500, seed=1)]
        elapsed = transfer(net, payloads, limit=3000)
        assert net.server_messages == payloads  # every byte, exactly once, in order
        # Bound: lossless, slow start to the 256-segment window then 1 window per RTT (+ set-up);
        # lossy, the PFTK model of TCP Reno (we measure ~0.5 of it).
        if loss == 0:
            assert elapsed < (math.log2(256 / INITIAL_WINDOW) + 2 + len(payloads) / 256) * RTT
        else:
            assert elapsed < pftk_seconds(segments_of(payloads), loss) + 5
        assert 0 < server.stats.max_out_of_order < server.settings.receive_window
        assert server.stats.max_reassembly_bytes <= len(big)
        net.run(lambda: net.client.buffered_bytes() == 0, 60)  # the last ACKs
        assert net.client.buffered_bytes() == 0
        assert net.client_terminated is None and net.server_terminated is None

    @pytest.mark.parametrize("loss", [0.0, 0.01])
    def test_one_mebibyte_message(self, loss: float) -> None:
        net = SimNetwork(seed=5, link=Link(loss=loss, jitter=0.002))
        server = net.connect()
        payload = bytes(i * 7 % 256 for i in range(1 << 20))
        elapsed = transfer(net, [payload, b"after"], limit=300)
        assert net.server_messages == [payload, b"after"]
        assert elapsed < (20 if loss == 0 else pftk_seconds(segments_of([payload]), loss) + 5)
        stats = server.stats
        assert stats.max_reassembly_bytes == len(payload)  # one message at a time
        assert stats.max_out_of_order < server.settings.receive_window

    def test_both_directions_at_once(self) -> None:
        net = SimNetwork(seed=3, link=Link(loss=0.05, jitter=0.01))
        server = net.connect()
        up, down = messages(300), messages(300, seed=9)
        for m in up:
            net.client.send(m)
        for m in down:
            server.send(m)
        net.run(lambda: len(net.server_messages) == 300 and len(net.client_messages) == 300, 600)
        assert net.server_messages == up
        assert net.client_messages == down

    def test_a_paused_reader_slows_the_sender_to_probes_and_loses_nothing(self) -> None:
        net = SimNetwork(seed=5, link=Link())
        server = net.connect()
        server.pause_receiving(True)
        payloads = messages(400)
        for m in payloads:
            net.client.send(m)
        server.send(b"our own data still flows")
        net.run_for(3.0)
        arrived = len(net.server_messages)
        # a zero window: what was in flight, then one probe segment per round trip (50 ms)
        assert arrived < 120
        assert net.client_messages == [b"our own data still flows"]
        assert net.client.buffered_bytes() > 0  # the sender holds the rest
        server.pause_receiving(False)
        net.run(lambda: len(net.server_messages) == 400, 300)
        assert net.server_messages == payloads
        assert net.client_terminated is None and net.server_terminated is None

    def test_duplication_and_heavy_reordering(self) -> None:
        net = SimNetwork(seed=8, link=Link(duplicate=0.3, jitter=0.2))  # jitter >> RTT
        server = net.connect()
        payloads = [*messages(500), bytes(50_000)]
        transfer(net, payloads, limit=600)
        assert net.server_messages == payloads
        assert server.stats.duplicates_received > 0

    def test_bursty_loss(self) -> None:
        link = Link(pattern=Gilbert(p=0.02, r=0.3))  # bursts of ~3 losses
        net = SimNetwork(seed=4, link=link, reverse=Link(pattern=Gilbert(p=0.02, r=0.3)))
        net.connect()
        payloads = [*messages(800), bytes(range(256)) * 300]
        transfer(net, payloads, limit=1200)
        assert net.server_messages == payloads

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(
        seed=st.integers(0, 2**32 - 1),
        loss=st.floats(0.0, 0.3),
        duplicate=st.floats(0.0, 0.2),
        jitter=st.floats(0.0, 0.1),
        sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=30),
        burst=st.booleans(),
    )
    def test_any_seed_and_loss_pattern(
        self,
        seed: int,
        loss: float,
        duplicate: float,
        jitter: float,
        sizes: list[int],
        burst: bool,
    ) -> None:
        pattern = Gilbert(p=loss / 3, r=0.4) if burst else None
        link = Link(loss=0 if burst else loss, duplicate=duplicate, jitter=jitter, pattern=pattern)
        settings_ = UdpSettings(mtu=600, receive_window=32, max_retransmits=25)
        net = SimNetwork(seed=seed, link=link, client_settings=settings_, server_settings=settings_)
        server = net.connect(limit=60)
        payloads = [bytes([n % 256]) * n for n in sizes]
        down = payloads[::-1]
        for m in down:
            server.send(m)
        transfer(net, payloads, limit=3000)
        net.run(lambda: len(net.client_messages) == len(down), 3000)
        assert net.server_messages == payloads
        assert net.client_messages == down
        assert server.stats.max_out_of_order < 32
        assert net.client.stats.max_out_of_order < server.settings.receive_window


class TestRetransmissionTimeout:
    def test_srtt_converges_to_the_path_rtt(self) -> None:
        net = SimNetwork(seed=1, link=Link(delay=0.04))
        net.connect()
        transfer(net, messages(400), limit=60)
        stats = net.client.stats
        assert stats.srtt == pytest.approx(0.08, abs=0.004)
        assert stats.min_rtt == pytest.approx(0.08, abs=0.001)
        # RTO = SRTT + 4 RTTVAR + max ACK delay, never below rto_min
        assert stats.rto == pytest.approx(max(0.2, stats.srtt + 4 * stats.rttvar + MAX_ACK_DELAY))

    def test_backoff_doubles_and_clamps_at_rto_max_and_the_window_collapses(self) -> None:
        settings_ = UdpSettings(rto_max=4.0, max_retransmits=12, idle_timeout=1000)
        net = SimNetwork(seed=2, client_settings=settings_)
        net.connect()
        transfer(net, messages(50), limit=10)
        net.run(lambda: net.client.buffered_bytes() == 0, 5)
        cwnd_before = net.client.stats.cwnd
        assert cwnd_before > INITIAL_WINDOW
        net.up.black_hole = True
        for m in messages(20):
            net.client.send(m)
        net.flush()
        flight = net.client.stats.in_flight
        expiries: list[float] = []
        while len(expiries) < 8:
            before = net.client.stats.rto_expiries
            net.step()
            if net.client.stats.rto_expiries > before:
                expiries.append(net.now)
                if len(expiries) == 1:
                    stats = net.client.stats
                    assert stats.cwnd == 1.0  # collapsed
                    assert stats.ssthresh == max(flight / 2, 2)
        gaps = [b - a for a, b in itertools.pairwise(expiries)]
        base = gaps[0] / 2  # the first gap is already doubled once
        assert gaps[:3] == pytest.approx([2 * base, 4 * base, 8 * base], rel=1e-6)
        assert max(gaps) == pytest.approx(4.0)  # clamped at rto_max
        assert gaps[-1] == pytest.approx(4.0)
        # one segment at a time while collapsed
        assert net.client.stats.in_flight == 1

    def test_fast_retransmit_halves_the_window_once(self) -> None:
        net = SimNetwork(seed=3)
        net.connect()
        transfer(net, messages(200), limit=30)
        net.run(lambda: net.client.buffered_bytes() == 0, 5)
        cwnd = net.client.stats.cwnd
        dropped: list[int] = []
        original = net._transmit

        def transmit(data: bytes, src: object, dst: object, to_server: bool) -> None:
            d = parse_untrusted(data)
            if to_server and d is not None and data[1] == DatagramType.DATA and not dropped:
                dropped.append(1)  # lose the first DATA of the next burst, once
                return
            original(data, src, dst, to_server)

        net._transmit = transmit  # type: ignore[method-assign]
        transfer(net, messages(30, seed=2), limit=30)
        stats = net.client.stats
        assert dropped and stats.loss_events == 1
        assert stats.rto_expiries == 0
        assert stats.ssthresh == pytest.approx(cwnd / 2, abs=1)
        assert net.server_messages[-30:] == messages(30, seed=2)

    def test_a_lossy_bottleneck_is_not_flooded(self) -> None:
        """AIMD against a 1 Mbit/s drop-tail bottleneck: the window settles near the path's
        capacity instead of overrunning its queue over and over."""
        bottleneck = Link(bandwidth=125_000, queue_limit=20, loss=0.01)
        net = SimNetwork(seed=6, link=bottleneck, reverse=Link())
        net.connect()
        payloads = [bytes(1400)] * 2000
        elapsed = transfer(net, payloads, limit=600)
        assert net.server_messages == payloads
        goodput = 2000 * 1400 / elapsed
        assert goodput > 0.6 * 125_000
        stats = net.client.stats
        # congestion drops happen (that is how AIMD finds the capacity) but stay a few percent
        assert net.up.congestion_drops < 0.05 * stats.segments_sent
        assert stats.retransmissions < 0.1 * stats.segments_sent


class TestKeepAliveAndExpiry:
    def test_idle_connection_pings_and_stays_up(self) -> None:
        net = SimNetwork(seed=1)
        server = net.connect()
        net.run_for(300)
        assert net.client_terminated is None and net.server_terminated is None
        interval = net.client.settings.keepalive_interval
        assert 300 / interval - 2 <= net.client.stats.pings_sent <= 300 / interval + 1
        assert server.stats.pings_sent <= 300 / interval + 1

    def test_keepalive_follows_a_short_peer_idle_timeout(self) -> None:
        net = SimNetwork(seed=1, server_settings=UdpSettings(idle_timeout=6))
        net.connect()
        net.run_for(60)
        assert net.server_terminated is None
        assert net.client.stats.pings_sent >= 60 / 2 - 2  # every 6 / 3 seconds

    def test_idle_timeout_when_the_path_dies(self) -> None:
        net = SimNetwork(seed=1)
        server = net.connect()
        start = net.now
        net.up.black_hole = net.down.black_hole = True
        net.run(
            lambda: net.client_terminated is not None and net.server_terminated is not None, 200
        )
        assert net.client_terminated == ConnectionTerminated("idle timeout", False)
        assert net.server_terminated == ConnectionTerminated("idle timeout", False)
        assert net.now - start == pytest.approx(90, abs=0.2)
        assert server.state is ConnectionState.CLOSED
        assert net.client.get_timer() is None

    def test_set_idle_timeout(self) -> None:
        net = SimNetwork(seed=1)
        server = net.connect()
        server.set_idle_timeout(150)
        start = net.now
        net.up.black_hole = net.down.black_hole = True
        net.run(lambda: net.server_terminated is not None, 200)
        assert net.now - start == pytest.approx(150, abs=0.2)
        with pytest.raises(ValueError, match="idle timeout"):
            server.set_idle_timeout(0)

    def test_too_many_retransmissions(self) -> None:
        settings_ = UdpSettings(max_retransmits=4, idle_timeout=1000)
        net = SimNetwork(seed=1, client_settings=settings_)
        net.connect()
        net.up.black_hole = True
        net.client.send(b"lost forever")
        net.run(lambda: net.client_terminated is not None, 1000)
        assert net.client_terminated == ConnectionTerminated("too many retransmissions", False)
        assert net.client.stats.retransmissions >= 4
        assert net.client.buffered_bytes() == 0

    def test_path_suspect_after_consecutive_timeouts(self) -> None:
        net = SimNetwork(seed=1)
        net.connect()
        net.up.black_hole = True
        net.client.send(b"x" * 100)
        net.run(lambda: any(isinstance(e, PathSuspect) for e in net.client_events), 60)
        assert net.client.stats.rto_expiries == net.client.settings.rebind_after_rtos
        sent = net.client.datagrams_to_send(net.now)  # nothing more right now
        assert sent == []
        # RESUME went out (into the black hole) with the PathSuspect, and again on later timeouts
        resumes_before = net.up.sent
        net.run(lambda: net.client.stats.rto_expiries == 5, 200)
        assert net.up.sent > resumes_before
        assert sum(isinstance(e, PathSuspect) for e in net.client_events) == 1  # once per episode
        net.up.black_hole = False
        net.run(lambda: net.server_messages == [b"x" * 100], 200)
        net.client.resume(net.now)  # allowed at any time
        assert net.client.state is ConnectionState.ESTABLISHED


class TestClose:
    def test_client_closes_after_delivering_everything(self) -> None:
        net = SimNetwork(seed=2, link=Link(loss=0.2))
        net.connect()
        payloads = messages(100)
        for m in payloads:
            net.client.send(m)
        net.client.close(net.now)
        assert net.client.state is ConnectionState.CLOSING
        with pytest.raises(InvalidState):
            net.client.send(b"too late")
        net.run(
            lambda: net.client_terminated is not None and net.server_terminated is not None, 300
        )
        assert net.server_messages == payloads
        assert net.client_terminated == ConnectionTerminated("closed", False)
        assert net.server_terminated == ConnectionTerminated("closed", True)
        assert net.server.connections() == 0

    def test_server_closes(self) -> None:
        net = SimNetwork(seed=3, link=Link(loss=0.2))
        server = net.connect()
        server.send(b"bye")
        server.close(net.now)
        server.close(net.now)  # idempotent
        net.run(
            lambda: net.client_terminated is not None and net.server_terminated is not None, 300
        )
        assert net.client_messages == [b"bye"]
        assert net.server_terminated == ConnectionTerminated("closed", False)
        assert net.client_terminated == ConnectionTerminated("closed", True)

    def test_close_when_the_peer_is_gone_ends_anyway(self) -> None:
        net = SimNetwork(seed=3, client_settings=UdpSettings(idle_timeout=10_000, rto_max=5))
        net.connect()
        net.up.black_hole = True
        net.client.close(net.now)
        net.run(lambda: net.client_terminated is not None, 600)
        assert net.client_terminated == ConnectionTerminated("closed", False)
        assert net.up.sent >= 1 + net.client.settings.max_retransmits  # CLOSE, retransmitted

    def test_close_during_the_handshake_closes_after_it(self) -> None:
        net = SimNetwork(seed=3)
        net.client.send(b"first")
        net.client.close(net.now)
        net.run(lambda: net.client_terminated is not None and net.server_terminated is not None, 60)
        assert net.server_messages == [b"first"]
        assert net.client_terminated == ConnectionTerminated("closed", False)

    def test_abort(self) -> None:
        net = SimNetwork(seed=3)
        server = net.connect()
        net.client.send(b"discarded" * 1000)
        net.client.abort(net.now)
        assert net.client.events_received()[-1] == ConnectionTerminated("aborted", False)
        sent = net.client.datagrams_to_send(net.now)
        assert [parse_untrusted(d).__class__.__name__ for d in sent] == ["Close"]
        server.receive_datagram(sent[0], net.now)
        assert server.events_received()[-1] == ConnectionTerminated("aborted", True)
        net.client.abort(net.now)  # idempotent
        assert net.client.datagrams_to_send(net.now) == []
        with pytest.raises(InvalidState):
            net.client.send(b"x")


class TestApi:
    def test_settings_are_validated(self) -> None:
        UdpSettings().validate()
        UdpSettings(mtu=1452, overhead=64).validate()
        for field, value in [
            ("mtu", 100),
            ("mtu", 70_000),
            ("overhead", -1),
            ("rto_min", 0),
            ("rto_max", 0.1),
            ("max_retransmits", 0),
            ("idle_timeout", 0),
            ("keepalive_interval", -1),
            ("max_message_size", 0),
            ("receive_window", 0),
            ("receive_window", 70_000),
            ("rebind_after_rtos", 0),
            ("handshake_timeout", 0),
            ("rto_initial", 0),
        ]:
            with pytest.raises(ValueError, match=f"^{field}"):
                UdpSettings(**{field: value}).validate()  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^mtu"):
            ReliableConnection.client(UdpSettings(mtu=300, overhead=200), 0.0)

    def test_send_limits(self) -> None:
        net = SimNetwork(seed=1, server_settings=UdpSettings(max_message_size=1000))
        server = net.connect()
        with pytest.raises(ValueError, match="exceeds"):
            net.client.send(b"x" * 1001)  # the server's limit, learnt from ACCEPT
        with pytest.raises(ValueError, match="exceeds"):
            server.send(b"x" * 1001)  # its own
        net.client.send(b"x" * 1000)
        net.run(lambda: bool(net.server_messages), 5)

    def test_a_message_over_the_receivers_limit_ends_the_connection(self) -> None:
        net = SimNetwork(seed=1, server_settings=UdpSettings(max_message_size=1000))
        net.client.send(b"x" * 5000)  # before ACCEPT the server's limit is not known
        net.run(lambda: net.client_terminated is not None, 30)
        assert net.server_terminated == ConnectionTerminated("message too large", False)
        assert net.client_terminated == ConnectionTerminated("message too large", True)
        assert net.server_messages == []

    def test_empty_message(self) -> None:
        net = SimNetwork(seed=1)
        net.connect()
        transfer(net, [b"", b"a", b""], limit=5)
        assert net.server_messages == [b"", b"a", b""]

    def test_buffered_bytes_counts_queued_and_unacknowledged(self) -> None:
        net = SimNetwork(seed=1)
        net.connect()
        net.client.send(b"x" * 100_000)
        assert net.client.buffered_bytes() == 100_000
        net.flush()
        assert net.client.buffered_bytes() == 100_000  # sent, not acknowledged
        net.run(lambda: net.client.buffered_bytes() == 0, 10)
        assert net.server_messages == [b"x" * 100_000]

    def test_events(self) -> None:
        net = SimNetwork(seed=1)
        server = net.connect()
        assert net.client_events[0].__class__.__name__ == "Connected"
        assert net.server_events[0].__class__.__name__ == "Connected"
        assert net.client.connection_id == server.connection_id
        net.client.send(b"m")
        net.run(lambda: bool(net.server_messages), 5)
        assert DataReceived(b"m") in net.server_events


def _captured() -> tuple[SimNetwork, list[bytes]]:
    """An established pair and real datagrams of every kind the two sides exchanged."""
    net = SimNetwork(seed=21, link=Link(loss=0.2, jitter=0.05))
    seen: list[bytes] = []
    original = net._transmit

    def transmit(data: bytes, src: object, dst: object, to_server: bool) -> None:
        seen.append(data)
        original(data, src, dst, to_server)

    net._transmit = transmit  # type: ignore[method-assign]
    server = net.connect()
    server.send(b"down" * 500)
    transfer(net, messages(40), limit=100)
    return net, seen


class TestRobustness:
    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.binary(max_size=1600), max_size=8))
    def test_random_bytes_never_raise(self, datagrams: list[bytes]) -> None:
        fresh = ReliableConnection.client(UdpSettings(), 0.0, rng=lambda n: b"\x01" * n)
        fresh.datagrams_to_send(0.0)
        for data in datagrams:
            fresh.receive_datagram(data, 0.0)
            fresh.receive_datagram(b"\xd1" + data, 0.0)  # past the version byte
        fresh.datagrams_to_send(0.0)
        assert fresh.state is ConnectionState.HANDSHAKE

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.data())
    def test_mutated_datagrams_never_raise(self, data: st.DataObject) -> None:
        net, seen = CAPTURED
        for conn in (net.client, net.conns[0]):
            for _ in range(5):
                original = bytearray(data.draw(st.sampled_from(seen)))
                if original:
                    at = data.draw(st.integers(0, len(original) - 1))
                    original[at] = data.draw(st.integers(0, 255))
                cut = data.draw(st.integers(0, len(original)))
                conn.receive_datagram(bytes(original[:cut]), net.now)
                conn.datagrams_to_send(net.now)
                conn.events_received()
                conn.handle_timer(net.now)

    def test_replayed_datagrams_are_harmless(self) -> None:
        net, seen = _captured()
        before = list(net.server_messages)
        for data in seen:  # everything again, from the right address
            net.inject_to_server(data, net.client_addr)
            net.client.receive_datagram(data, net.now)
        net.run_for(5)
        assert net.server_messages == before  # duplicates suppressed
        assert net.client_terminated is None and net.server_terminated is None
        transfer(net, [b"still working"], limit=30)
        assert net.server_messages[-1] == b"still working"


CAPTURED = _captured()
