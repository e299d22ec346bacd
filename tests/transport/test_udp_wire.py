"""The wire format of MQTT over UDP (mqttv5.transport.udp.wire), byte for byte as docs/udp.md
gives it: round trips, exact layouts, malformed input, sequence number expansion, and the size
relations the anti-amplification rules rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttv5.transport.udp import wire
from mqttv5.transport.udp.wire import (
    FIRST,
    HANDSHAKE_MIN_SIZE,
    LAST,
    MAGIC,
    Accept,
    Ack,
    Challenge,
    Close,
    CloseAck,
    CloseCode,
    Connect,
    Cookie,
    Data,
    DatagramType,
    Hello,
    PeerParameters,
    Ping,
    Reset,
    Resume,
    Resumed,
    expand_seq,
    parse_untrusted,
)
from tests.test_no_io_imports import forbidden_imports

CID = bytes.fromhex("0102030405060708")
NONCE = bytes.fromhex("a1a2a3a4a5a6a7a8")
TOKEN = bytes(range(16))
COOKIE = bytes(range(100, 116))
PARAMS = PeerParameters(1472, 256, 1_048_592, 90_000)

DATAGRAMS = (
    Hello,
    Cookie,
    Connect,
    Accept,
    Data,
    Ack,
    Ping,
    Challenge,
    Resume,
    Resumed,
    Close,
    CloseAck,
    Reset,
)
UDP = Path(__file__).resolve().parents[2] / "src" / "mqttv5" / "transport" / "udp"


@pytest.mark.parametrize(
    "module", ["wire", "reliability", "recovery", "fragmentation", "handshake", "server"]
)
def test_sans_io_modules_import_no_io(module: str) -> None:
    path = UDP / f"{module}.py"
    assert forbidden_imports(path.read_text(encoding="utf-8"), str(path)) == []


class TestLayout:
    """Exact bytes: these pin docs/udp.md."""

    def test_hello_is_padded(self) -> None:
        data = wire.encode_hello(NONCE)
        assert data[:10] == b"\xd1\x01" + NONCE
        assert len(data) == HANDSHAKE_MIN_SIZE == 128
        assert data[10:] == bytes(118)
        assert len(wire.encode_hello(NONCE, 1000)) == 1000

    def test_cookie(self) -> None:
        assert wire.encode_cookie(NONCE, COOKIE) == b"\xd1\x02" + NONCE + COOKIE
        assert len(wire.encode_cookie(NONCE, COOKIE)) == wire.COOKIE_SIZE_TOTAL == 26

    def test_connect_and_accept(self) -> None:
        params = bytes.fromhex("05c0 0100 00100010 00015f90")
        connect = wire.encode_connect(NONCE, COOKIE, PARAMS)
        assert connect[: wire.CONNECT_SIZE] == b"\xd1\x03" + NONCE + COOKIE + params
        assert len(connect) == 128 and wire.CONNECT_SIZE == 38
        accept = wire.encode_accept(NONCE, CID, TOKEN, PARAMS)
        assert accept == b"\xd1\x04" + NONCE + CID + TOKEN + params
        assert len(accept) == wire.ACCEPT_SIZE == 46

    def test_data(self) -> None:
        whole = wire.encode_data(CID, 0x1_0000_0005, FIRST | LAST, None, b"mqtt")
        assert whole == b"\xd1\x10" + CID + bytes.fromhex("00000005 03") + b"mqtt"
        first = wire.encode_data(CID, 7, FIRST, 3000, b"ab")
        assert first == b"\xd1\x10" + CID + bytes.fromhex("00000007 01 00000bb8") + b"ab"
        middle = wire.encode_data(CID, 8, 0, None, b"cd")
        assert middle[wire.DATA_HEADER_SIZE - 1] == 0 and len(middle) == 15 + 2

    def test_ack(self) -> None:
        ack = wire.encode_ack(CID, 100, 256, 0.0123, [(2, 3), (9, 1)])
        expected = bytes.fromhex("00000064 0100 007b 02 0002 0003 0009 0001")
        assert ack == b"\xd1\x11" + CID + expected
        assert len(wire.encode_ack(CID, 0, 1, 0, [])) == wire.ACK_HEADER_SIZE == 19
        assert wire.encode_ack(CID, 0, 1, 99.0, [])[16:18] == b"\xff\xff"  # delay saturates

    def test_control(self) -> None:
        assert wire.encode_ping(CID) == b"\xd1\x12" + CID + bytes(8)
        assert wire.encode_challenge(CID, NONCE) == b"\xd1\x20" + CID + NONCE
        assert wire.encode_resume(CID, NONCE, TOKEN) == b"\xd1\x21" + CID + NONCE + TOKEN
        assert wire.encode_resumed(CID, TOKEN) == b"\xd1\x22" + CID + TOKEN
        assert wire.encode_close(CID, CloseCode.ABORTED) == b"\xd1\x30" + CID + b"\x01"
        assert wire.encode_close_ack(CID) == b"\xd1\x31" + CID
        assert wire.encode_reset(CID) == b"\xd1\x32" + CID

    def test_size_relations_behind_anti_amplification(self) -> None:
        # the server's answers to an unvalidated address are never larger than their cause
        assert wire.COOKIE_SIZE_TOTAL <= HANDSHAKE_MIN_SIZE  # COOKIE <= HELLO
        assert wire.ACCEPT_SIZE <= HANDSHAKE_MIN_SIZE  # ACCEPT <= CONNECT
        smallest_challenged = min(wire.PING_SIZE, wire.ACK_HEADER_SIZE, wire.RESUME_SIZE)
        smallest_reset = min(wire.DATA_HEADER_SIZE, wire.PING_SIZE, wire.CLOSE_SIZE)
        assert smallest_reset >= wire.RESET_SIZE
        assert smallest_challenged >= wire.CHALLENGE_SIZE
        assert wire.MAGIC == 0xD1 and not 20 <= MAGIC <= 63  # not a DTLS content type


class TestParse:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (wire.encode_hello(NONCE), Hello(NONCE)),
            (wire.encode_cookie(NONCE, COOKIE), Cookie(NONCE, COOKIE)),
            (wire.encode_connect(NONCE, COOKIE, PARAMS), Connect(NONCE, COOKIE, PARAMS)),
            (wire.encode_accept(NONCE, CID, TOKEN, PARAMS), Accept(NONCE, CID, TOKEN, PARAMS)),
            (wire.encode_data(CID, 9, FIRST | LAST, None, b"x"), Data(CID, 9, 3, None, b"x")),
            (wire.encode_data(CID, 9, FIRST, 5, b"xy"), Data(CID, 9, FIRST, 5, b"xy")),
            (wire.encode_data(CID, 9, LAST, None, b""), Data(CID, 9, LAST, None, b"")),
            (wire.encode_ack(CID, 5, 7, 0.001, [(1, 2)]), Ack(CID, 5, 7, 0.001, ((1, 2),))),
            (wire.encode_ping(CID), Ping(CID)),
            (wire.encode_challenge(CID, NONCE), Challenge(CID, NONCE)),
            (wire.encode_resume(CID, NONCE, TOKEN), Resume(CID, NONCE, TOKEN)),
            (wire.encode_resumed(CID, TOKEN), Resumed(CID, TOKEN)),
            (wire.encode_close(CID, CloseCode.NORMAL), Close(CID, 0)),
            (wire.encode_close_ack(CID), CloseAck(CID)),
            (wire.encode_reset(CID), Reset(CID)),
        ],
    )
    def test_round_trip(self, data: bytes, expected: object) -> None:
        parsed = parse_untrusted(data)
        if isinstance(expected, Ack):
            assert isinstance(parsed, Ack)
            assert parsed.ack_delay == pytest.approx(expected.ack_delay)
            assert (parsed.cumulative, parsed.window, parsed.blocks) == (5, 7, ((1, 2),))
        else:
            assert parsed == expected

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\xd1",
            b"\xd0\x10" + CID + bytes(5),  # another version
            b"\xd1\x99" + CID,  # unknown type
            b"\xd1\x01" + NONCE[:4],  # HELLO without its nonce
            wire.encode_cookie(NONCE, COOKIE)[:-1],
            wire.encode_connect(NONCE, COOKIE, PARAMS)[:30],
            wire.encode_accept(NONCE, CID, TOKEN, PARAMS) + b"\x00",
            wire.encode_accept(NONCE, CID, TOKEN, PeerParameters(100, 1, 1, 1)),  # < 128
            wire.encode_accept(NONCE, CID, TOKEN, PeerParameters(1472, 0, 1, 1)),  # no window
            wire.encode_data(CID, 1, 0x04, None, b"x"),  # unknown flag
            wire.encode_data(CID, 1, FIRST, None, b"abcd")[:16],  # FIRST without length
            wire.encode_data(CID, 1, FIRST, 2, b"abcd"),  # length <= this fragment
            b"\xd1\x10" + CID + b"\x00\x00",  # truncated header
            wire.encode_ack(CID, 0, 1, 0, [(1, 1)])[:-1],
            wire.encode_ack(CID, 0, 1, 0, [(3, 1), (2, 1)]),  # not ascending
            wire.encode_ack(CID, 0, 1, 0, [(1, 2), (3, 1)]),  # touching: no gap
            wire.encode_ack(CID, 0, 1, 0, [(0, 1)]),  # covers the cumulative point
            wire.encode_ack(CID, 0, 1, 0, [(1, 0)]),  # empty
            wire.encode_ping(CID)[:-1],
            wire.encode_challenge(CID, NONCE) + b"\x00",
            wire.encode_resume(CID, NONCE, TOKEN)[:-1],
            wire.encode_resumed(CID, TOKEN)[:-1],
            wire.encode_close(CID, CloseCode.NORMAL) + b"\x00",
            wire.encode_close_ack(CID)[:-1],
            wire.encode_reset(CID) + b"\x00",
        ],
    )
    def test_malformed_is_none(self, data: bytes) -> None:
        assert parse_untrusted(data) is None

    @settings(max_examples=2000, deadline=None, derandomize=True)
    @given(st.binary(max_size=200), st.sampled_from([*DatagramType, 0x00, 0x13, 0xFF]))
    def test_random_bytes_parse_or_none(self, body: bytes, kind: int) -> None:
        for data in (body, bytes([MAGIC, kind]) + body):
            parsed = parse_untrusted(data)
            assert parsed is None or isinstance(parsed, DATAGRAMS)

    def test_close_codes_name_their_reasons(self) -> None:
        assert [c.reason for c in CloseCode] == [
            "closed",
            "aborted",
            "protocol error",
            "message too large",
        ]
        assert parse_untrusted(b"\xd1\x30" + CID + b"\x77") == Close(CID, 0x77)  # kept: unknown


class TestSequenceNumbers:
    @settings(max_examples=500, derandomize=True)
    @given(st.integers(0, 2**62), st.integers(-(2**31) + 1, 2**31 - 1))
    def test_expansion_recovers_numbers_within_half_the_space(
        self, expected: int, delta: int
    ) -> None:
        actual = expected + delta
        if actual < 0:
            return
        assert expand_seq(actual % 2**32, expected) == actual

    def test_wraparound(self) -> None:
        assert expand_seq(0x0000_0002, 0xFFFF_FFF0) == 0x1_0000_0002
        assert expand_seq(0xFFFF_FFF0, 0x1_0000_0002) == 0xFFFF_FFF0
        assert expand_seq(5, 3) == 5
