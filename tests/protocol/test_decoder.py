"""Tests for PacketDecoder (the stream decoder) and fuzzing of decode_packet.

The decoder must give the same packets for every chunking of a byte stream, refuse a packet that
is too large as soon as its fixed header is read (2.1.4, 3.1.2.11.4), and never raise anything but
ProtocolError, whatever bytes it is fed.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttv5.protocol.codec import MAX_VARINT, encode_varint
from mqttv5.protocol.errors import ProtocolError, RemoteProtocolError
from mqttv5.protocol.packets import (
    MAX_PACKET_SIZE,
    Connect,
    Packet,
    PacketDecoder,
    Pingreq,
    Publish,
    decode_packet,
    encode_packets,
)
from mqttv5.protocol.reason_codes import ReasonCode
from tests.protocol.strategies import any_packet

MALFORMED = ReasonCode.MALFORMED_PACKET
TOO_LARGE = ReasonCode.PACKET_TOO_LARGE

versions = st.sampled_from([5, 4])


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[Packet], bytes]:
    """(version, packets, their bytes back to back)."""
    version = draw(versions)
    packets = draw(st.lists(any_packet(version), min_size=1, max_size=8))
    return version, packets, encode_packets(packets, version)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def feed_all(decoder: PacketDecoder, chunks: list[bytes]) -> list[Packet]:
    out: list[Packet] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


class TestChunking:
    """The same packets come out however the stream is cut into reads."""

    @given(streams(), st.lists(st.integers(min_value=0), max_size=12))
    def test_random_split_points(
        self, stream: tuple[int, list[Packet], bytes], cuts: list[int]
    ) -> None:
        version, packets, data = stream
        decoder = PacketDecoder(version)
        assert feed_all(decoder, split(data, cuts)) == packets
        assert decoder.buffered == 0

    @settings(max_examples=40)
    @given(streams())
    def test_one_byte_at_a_time(self, stream: tuple[int, list[Packet], bytes]) -> None:
        version, packets, data = stream
        decoder = PacketDecoder(version)
        got = feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
        assert got == packets
        assert decoder.buffered == 0

    @given(streams())
    def test_all_at_once(self, stream: tuple[int, list[Packet], bytes]) -> None:
        version, packets, data = stream
        assert PacketDecoder(version).feed(data) == packets

    def test_empty_feed(self) -> None:
        decoder = PacketDecoder()
        assert decoder.feed(b"") == []
        assert decoder.feed(b"\xc0") == []
        assert decoder.feed(b"") == []
        assert decoder.buffered == 1
        assert decoder.feed(b"\x00\xc0") == [Pingreq()]
        assert decoder.buffered == 1

    def test_packets_do_not_share_the_buffer(self) -> None:
        data = Publish("t", b"payload", qos=1, packet_id=1).encode()
        decoder = PacketDecoder()
        decoder.feed(data[:5])
        (packet,) = decoder.feed(data[5:] + data[:3])
        assert isinstance(packet, Publish)
        decoder.feed(data[3:])
        assert packet.payload == b"payload"
        assert isinstance(packet.payload, bytes)

    def test_connect_switches_the_version(self) -> None:
        # A 3.1.1 PUBLISH has no property block: after a 3.1.1 CONNECT, "\x00\x00" is payload.
        connect = Connect("c", 4, protocol_name="MQTT")
        publish = Publish("t", b"\x00\x00")
        data = connect.encode() + publish.encode(4)
        decoder = PacketDecoder(5)
        assert decoder.feed(data) == [connect, publish]
        assert decoder.version == 4


class TestMaximumPacketSize:
    """2.1.4 / 3.1.2.11.4: a declared length above the maximum is refused before the payload."""

    @pytest.mark.parametrize("max_size", [2, 100, 16_384, 2_097_160, MAX_PACKET_SIZE - 1])
    @pytest.mark.spec("MQTT-3.2.2-15")
    def test_refused_after_the_fixed_header(self, max_size: int) -> None:
        # remaining = max_size - header length + 1: one byte too many, counting the header
        remaining = min(max_size, MAX_VARINT)
        header = b"\x30" + encode_varint(remaining)
        while len(header) + remaining > max_size + 1:
            remaining -= 1
            header = b"\x30" + encode_varint(remaining)
        assert len(header) + remaining == max_size + 1
        decoder = PacketDecoder(5, max_size)
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(header)  # no payload byte has arrived
        assert info.value.reason_code is TOO_LARGE

    @pytest.mark.parametrize("max_size", [2, 100, 16_385, 2_097_160])
    def test_exactly_the_maximum_is_accepted(self, max_size: int) -> None:
        remaining = max_size - 2
        while len(encode_varint(remaining)) + 1 + remaining > max_size:
            remaining -= 1
        pad = max_size - (1 + len(encode_varint(remaining)) + remaining)
        # a QoS 0 PUBLISH with topic "t" and a payload filling the rest
        if remaining < 4:
            data = b"\xc0\x00"
            max_size = 2
        else:
            body = b"\x00\x01t\x00" + b"x" * (remaining - 4 + pad)
            data = b"\x30" + encode_varint(len(body)) + body
        assert len(data) == max_size
        assert len(PacketDecoder(5, max_size).feed(data)) == 1

    def test_header_arriving_in_pieces(self) -> None:
        decoder = PacketDecoder(5, 1000)
        assert decoder.feed(b"\x30") == []
        assert decoder.feed(b"\xff") == []
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(b"\x7f")  # 16,383 declared
        assert info.value.reason_code is TOO_LARGE

    def test_the_largest_declared_length(self) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            PacketDecoder(5, 1 << 20).feed(b"\x30\xff\xff\xff\x7f")
        assert info.value.reason_code is TOO_LARGE

    def test_after_valid_packets_in_the_same_read(self) -> None:
        decoder = PacketDecoder(5, 50)
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(b"\xc0\x00" * 3 + b"\x30\x40")
        assert info.value.reason_code is TOO_LARGE

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(streams(), st.lists(st.integers(1, 64), min_size=1, max_size=30))
    def test_buffer_never_exceeds_one_packet(
        self, stream: tuple[int, list[Packet], bytes], sizes: list[int]
    ) -> None:
        version, packets, data = stream
        largest = max(len(p.encode(version)) for p in packets)
        decoder = PacketDecoder(version, largest)
        pos = 0
        i = 0
        while pos < len(data):
            step = sizes[i % len(sizes)]
            decoder.feed(data[pos : pos + step])
            pos += step
            i += 1
            # whatever is left over is part of one packet, itself no larger than the maximum
            assert decoder.buffered < largest
        assert decoder.buffered == 0

    def test_slow_sender_of_a_big_packet(self) -> None:
        body = b"\x00\x01t\x00" + b"x" * 1000
        data = b"\x30" + encode_varint(len(body)) + body
        decoder = PacketDecoder(5, len(data))
        for i in range(0, len(data) - 1, 7):
            assert decoder.feed(data[i : min(i + 7, len(data) - 1)]) == []
            assert decoder.buffered < len(data)
        assert len(decoder.feed(data[-1:])) == 1
        assert decoder.buffered == 0


class TestRemainingLength:
    """2.1.4 Remaining Length: a Variable Byte Integer of at most four bytes."""

    @pytest.mark.parametrize(
        "header",
        [b"\x30\x80\x80\x80\x80\x01", b"\xc0\xff\xff\xff\xff\x7f", b"\x30\x80\x80\x80\x80"],
    )
    def test_five_bytes_is_malformed(self, header: bytes) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            PacketDecoder(5).feed(header)
        assert info.value.reason_code is MALFORMED

    def test_five_bytes_in_pieces(self) -> None:
        decoder = PacketDecoder(5)
        assert decoder.feed(b"\x30\x80\x80\x80") == []  # may still end in a fourth byte
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(b"\x80")
        assert info.value.reason_code is MALFORMED

    def test_four_bytes_is_fine(self) -> None:
        decoder = PacketDecoder(5)
        assert decoder.feed(b"\xc0\x80\x80\x80\x00") == [Pingreq()]  # non-minimal but 4 bytes


# --- fuzzing ---------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid packet (CONNECT included) with one to four bytes flipped, inserted or deleted."""
    version = draw(versions)
    data = bytearray(draw(any_packet(version, connect_too=True)).encode(version))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        i = draw(st.integers(0, len(data)))
        if op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        elif data and i < len(data):
            if op == "flip":
                data[i] ^= draw(st.integers(1, 255))
            else:
                del data[i]
    return version, bytes(data)


def decode_only_protocol_errors(version: int, data: bytes) -> None:
    try:
        PacketDecoder(version, 1 << 16).feed(data)
    except ProtocolError:
        pass
    if data:
        try:
            packet = decode_packet(data[0], data[2:], version)
        except ProtocolError:
            return
        if isinstance(packet, Publish):
            try:
                _ = packet.properties  # the lazy decode must not find anything new
            except ProtocolError:  # pragma: no cover - would mean the two checks disagree
                pytest.fail("PUBLISH properties accepted by the scan but not by the decoder")


class TestFuzz:
    """decode_packet and PacketDecoder.feed raise only ProtocolError on any input."""

    @settings(max_examples=1500)
    @given(versions | st.just(3), st.integers(0, 255), st.binary(max_size=48))
    def test_random_body(self, version: int, first: int, body: bytes) -> None:
        try:
            decode_packet(first, body, version)
        except ProtocolError:
            pass

    @settings(max_examples=800)
    @given(versions, st.binary(max_size=64))
    def test_random_stream(self, version: int, data: bytes) -> None:
        decode_only_protocol_errors(version, data)

    @settings(max_examples=2500, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated())
    def test_mutated_valid_packets(self, case: tuple[int, bytes]) -> None:
        decode_only_protocol_errors(*case)

    @settings(max_examples=300)
    @given(versions, st.sampled_from(range(16)), st.binary(min_size=0, max_size=24))
    def test_type_byte_with_plausible_body(self, version: int, ptype: int, body: bytes) -> None:
        # The fixed header with the correct flags, so the packet decoders themselves are reached.
        flags = {3: 0, 6: 2, 8: 2, 10: 2}.get(ptype, 0)
        for tail in (body, b"\x00\x01" + body, b"\x00\x01\x00" + body):
            try:
                decode_packet(ptype << 4 | flags, tail, version)
            except ProtocolError:
                pass


class TestRepeatedPublishShortcut:
    """The decoder reuses the validation of a byte-identical topic name or property block."""

    def test_repeated_and_changed_properties_decode_exactly(self) -> None:
        from mqttv5.protocol.packets import PacketDecoder, Publish
        from mqttv5.protocol.properties import Properties

        a = Properties(message_expiry_interval=5, topic_alias=2, user_properties=[("k", "v")])
        b = Properties(content_type="x", subscription_identifiers=[3, 4])
        packets = [
            Publish("t/1", b"1", properties=a),
            Publish("t/1", b"2", properties=a),
            Publish("t/2", b"3", properties=b),
            Publish("t/2", b"4", properties=b),
            Publish("t/2", b"5"),
            Publish("t/1", b"6", properties=a),
        ]
        decoder = PacketDecoder(5)
        got = decoder.feed(b"".join(p.encode(5) for p in packets))
        assert got == packets
        assert [p.topic_alias for p in got] == [2, 2, None, None, None, 2]  # type: ignore[union-attr]
        assert [p.subscription_identifiers for p in got] == [[], [], [3, 4], [3, 4], [], []]  # type: ignore[union-attr]
        got[2].subscription_identifiers.append(9)  # type: ignore[union-attr]
        assert decoder.feed(packets[3].encode(5))[0].subscription_identifiers == [3, 4]  # type: ignore[union-attr]

    def test_invalid_input_after_valid_input_is_still_rejected(self) -> None:
        import pytest

        from mqttv5.protocol.errors import RemoteProtocolError
        from mqttv5.protocol.packets import PacketDecoder, Publish
        from mqttv5.protocol.properties import Properties

        decoder = PacketDecoder(5)
        good = Publish("t", b"x", properties=Properties(content_type="ok")).encode(5)
        decoder.feed(good)
        bad = bytearray(good)
        bad[bad.index(b"ok")] = 0x00  # same length, a NUL inside the string
        with pytest.raises(RemoteProtocolError):
            PacketDecoder(5).feed(good + bytes(bad))
