"""Fragmentation and the receive side's bounded buffers (mqttv5.transport.udp.fragmentation):
messages cut to the datagram budget and joined again, out-of-order buffering bounded by the
receive window, reassembly bounded by size, count and time; and through the simulated network,
a lost fragment recovered by the reliability layer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttv5.transport.udp import ConnectionTerminated, UdpSettings, wire
from mqttv5.transport.udp.fragmentation import (
    Reassembler,
    ReassemblyError,
    ReceiveBuffer,
    Received,
    SendQueue,
)
from mqttv5.transport.udp.wire import (
    DATA_HEADER_SIZE,
    FIRST,
    LAST,
    TOTAL_SIZE,
    CloseCode,
    parse_untrusted,
)
from tests.transport.udpsim import Link, SimNetwork


def cut(messages: list[bytes], room: int) -> list[tuple[int, int | None, bytes]]:
    queue = SendQueue()
    for m in messages:
        queue.push(m)
    segments = []
    while queue:
        segments.append(queue.next_segment(room))
    assert queue.pending_bytes == 0
    return segments


class TestSendQueue:
    def test_a_message_that_fits_is_one_segment(self) -> None:
        assert cut([b"abc", b""], 3) == [(FIRST | LAST, None, b"abc"), (FIRST | LAST, None, b"")]

    def test_a_larger_message_is_cut_and_the_first_fragment_carries_its_length(self) -> None:
        segments = cut([b"0123456789"], 6)
        assert segments == [
            (FIRST, 10, b"01"),  # 6 - TOTAL_SIZE
            (0, None, b"234567"),
            (LAST, None, b"89"),
        ]

    def test_every_segment_fits_the_budget(self) -> None:
        room = 1472 - DATA_HEADER_SIZE
        for flags, total, payload in cut([bytes(100_000)], room):
            assert len(payload) + (TOTAL_SIZE if total is not None else 0) <= room
            assert flags in (FIRST, 0, LAST)

    def test_pending_bytes(self) -> None:
        queue = SendQueue()
        queue.push(b"x" * 10)
        queue.push(b"y" * 5)
        assert queue.pending_bytes == 15 and len(queue) == 2
        queue.next_segment(8)
        assert queue.pending_bytes == 11
        queue.clear()
        assert not queue and queue.pending_bytes == 0

    @settings(max_examples=300, derandomize=True)
    @given(st.lists(st.binary(max_size=3000), max_size=10), st.integers(TOTAL_SIZE + 1, 1500))
    def test_cut_and_reassemble(self, messages: list[bytes], room: int) -> None:
        reassembler = Reassembler(max_message_size=3000)
        out = []
        for flags, total, payload in cut(messages, room):
            message = reassembler.push(flags, total, payload, 0.0)
            if message is not None:
                out.append(message)
        assert out == messages
        assert reassembler.pending_bytes == 0
        assert reassembler.peak_bytes <= max((len(m) for m in messages), default=0)


class TestReassembler:
    @pytest.mark.parametrize(
        ("segments", "code"),
        [
            ([(LAST, None, b"x")], CloseCode.PROTOCOL_ERROR),  # no first fragment
            ([(0, None, b"x")], CloseCode.PROTOCOL_ERROR),
            ([(FIRST, 5, b"ab"), (FIRST, 5, b"ab")], CloseCode.PROTOCOL_ERROR),
            ([(FIRST, 5, b"ab"), (FIRST | LAST, None, b"x")], CloseCode.PROTOCOL_ERROR),
            ([(FIRST, 5, b"ab"), (LAST, None, b"x")], CloseCode.PROTOCOL_ERROR),  # short
            ([(FIRST, 5, b"ab"), (0, None, b"cdef")], CloseCode.PROTOCOL_ERROR),  # too long
            ([(FIRST, 101, b"ab")], CloseCode.MESSAGE_TOO_LARGE),  # refused before buffering
            ([(FIRST | LAST, None, b"x" * 101)], CloseCode.MESSAGE_TOO_LARGE),
        ],
    )
    def test_violations(self, segments: list[tuple[int, int | None, bytes]], code: int) -> None:
        reassembler = Reassembler(max_message_size=100)
        *before, (flags, total, payload) = segments
        for segment in before:
            reassembler.push(*segment, 0.0)
        with pytest.raises(ReassemblyError) as caught:
            reassembler.push(flags, total, payload, 0.0)
        assert caught.value.code == code
        assert reassembler.peak_bytes <= 100

    def test_progress_time(self) -> None:
        reassembler = Reassembler(max_message_size=100)
        reassembler.push(FIRST, 4, b"ab", 1.0)
        reassembler.push(0, None, b"c", 2.0)
        assert reassembler.last_progress == 2.0
        assert reassembler.push(LAST, None, b"d", 3.0) == b"abcd"
        assert reassembler.last_progress is None


class TestReceiveBuffer:
    def test_out_of_order_duplicates_and_window(self) -> None:
        buffer = ReceiveBuffer(window=4, max_message_size=100)
        whole = FIRST | LAST
        assert buffer.receive(1, whole, None, b"b", 0) is Received.OUT_OF_ORDER
        assert buffer.receive(3, whole, None, b"d", 0) is Received.OUT_OF_ORDER
        assert buffer.receive(3, whole, None, b"d", 0) is Received.DUPLICATE
        assert buffer.receive(4, whole, None, b"e", 0) is Received.BEYOND_WINDOW
        assert buffer.sack_blocks(10) == [(1, 1), (3, 1)]
        assert buffer.sack_blocks(1) == [(1, 1)]
        assert buffer.receive(0, whole, None, b"a", 0) is Received.IN_ORDER
        assert buffer.take_messages() == [b"a", b"b"]
        assert buffer.next_seq == 2 and buffer.held == 1
        assert buffer.sack_blocks(10) == [(1, 1)]
        assert buffer.receive(0, whole, None, b"a", 0) is Received.DUPLICATE
        assert buffer.receive(2, whole, None, b"c", 0) is Received.IN_ORDER
        assert buffer.take_messages() == [b"c", b"d"]
        assert buffer.held == 0 and buffer.peak_held == 2

    @settings(max_examples=200, derandomize=True)
    @given(st.permutations(list(range(40))), st.integers(1, 40))
    def test_any_arrival_order_delivers_in_order_and_stays_bounded(
        self, order: list[int], window: int
    ) -> None:
        buffer = ReceiveBuffer(window=window, max_message_size=100)
        pending = list(order)
        while pending:  # the sender retransmits what was refused, in the same order
            refused = []
            for seq in pending:
                if buffer.receive(seq, FIRST | LAST, None, bytes([seq]), 0) in (
                    Received.BEYOND_WINDOW,
                ):
                    refused.append(seq)
                assert buffer.held < window
            pending = refused
        assert buffer.take_messages() == [bytes([i]) for i in range(40)]


class TestThroughTheNetwork:
    def test_a_lost_fragment_is_retransmitted(self) -> None:
        net = SimNetwork(seed=1)
        net.connect()
        lost: list[int] = []
        original = net._transmit

        def transmit(data: bytes, src: object, dst: object, to_server: bool) -> None:
            d = parse_untrusted(data)
            if to_server and isinstance(d, wire.Data) and d.seq == 5 and not lost:
                lost.append(1)
                return
            original(data, src, dst, to_server)

        net._transmit = transmit  # type: ignore[method-assign]
        payload = bytes(range(256)) * 100  # 18 fragments
        net.client.send(payload)
        net.run(lambda: bool(net.server_messages), 30)
        assert lost and net.server_messages == [payload]
        assert net.client.stats.retransmissions >= 1

    def test_reassembly_is_bounded_in_size_through_the_network(self) -> None:
        net = SimNetwork(
            seed=2, link=Link(loss=0.1), server_settings=UdpSettings(max_message_size=50_000)
        )
        server = net.connect()
        net.client.send(bytes(40_000))
        net.client.send(bytes(50_000))
        net.run(lambda: len(net.server_messages) == 2, 120)
        assert server.stats.max_reassembly_bytes == 50_000
        with pytest.raises(ValueError, match="exceeds"):
            net.client.send(bytes(50_001))  # the server advertised its limit in ACCEPT

    def test_a_stalled_partial_message_times_out(self) -> None:
        """A peer that keeps the connection alive but never finishes a message cannot hold
        the reassembly buffer for longer than the idle timeout."""
        net = SimNetwork(seed=3, server_settings=UdpSettings(idle_timeout=20))
        server = net.connect()
        cid = net.client.connection_id
        assert cid is not None
        start = net.now
        server.receive_datagram(wire.encode_data(cid, 0, FIRST, 10_000, bytes(1000)), net.now)
        for _ in range(10):  # PINGs every 5 s: the connection is not idle
            server.receive_datagram(wire.encode_ping(cid), net.now)
            server.datagrams_to_send(net.now)
            timer = server.get_timer()
            assert timer is not None
            net.now = min(timer, net.now + 5)
            server.handle_timer(net.now)
            if server.events_received()[-1:] == [
                ConnectionTerminated("reassembly timed out", False)
            ]:
                break
        assert net.now - start == pytest.approx(20)
        assert server.stats.max_reassembly_bytes == 1000
        close = parse_untrusted(server.datagrams_to_send(net.now)[-1])
        assert close == wire.Close(cid, CloseCode.PROTOCOL_ERROR)
