"""Tests for mqttv5.protocol.codec: the data representations of section 1.5."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttv5.protocol.codec import (
    MAX_VARINT,
    decode_binary,
    decode_string,
    decode_u16,
    decode_u32,
    decode_varint,
    encode_binary,
    encode_string,
    encode_u16,
    encode_u32,
    encode_varint,
    varint_size,
)
from mqttv5.protocol.errors import LocalProtocolError, RemoteProtocolError
from mqttv5.protocol.reason_codes import ReasonCode
from tests.protocol.strategies import strings

MALFORMED = ReasonCode.MALFORMED_PACKET


def assert_malformed(func: object, *args: object) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        func(*args)  # type: ignore[operator]
    assert info.value.reason_code is MALFORMED
    return info.value


class TestTwoAndFourByteIntegers:
    """1.5.2 Two Byte Integer, 1.5.3 Four Byte Integer: big-endian."""

    @given(st.integers(0, 0xFFFF))
    def test_u16_round_trip(self, value: int) -> None:
        data = encode_u16(value)
        assert data == value.to_bytes(2, "big")
        assert decode_u16(b"\xaa" + data, 1) == (value, 3)

    @given(st.integers(0, 0xFFFFFFFF))
    def test_u32_round_trip(self, value: int) -> None:
        data = encode_u32(value)
        assert data == value.to_bytes(4, "big")
        assert decode_u32(memoryview(data + b"\xbb"), 0) == (value, 4)

    @pytest.mark.parametrize("data", [b"", b"\x01"])
    def test_u16_truncated(self, data: bytes) -> None:
        assert "keep alive" in str(assert_malformed(decode_u16, data, 0, "keep alive"))

    @pytest.mark.parametrize("data", [b"", b"\x01\x02\x03"])
    def test_u32_truncated(self, data: bytes) -> None:
        assert_malformed(decode_u32, data, 0)


class TestVariableByteInteger:
    """1.5.5 Variable Byte Integer: at most four bytes, shortest form."""

    @pytest.mark.parametrize(
        ("value", "encoded"),
        [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (16_383, b"\xff\x7f"),
            (16_384, b"\x80\x80\x01"),
            (2_097_151, b"\xff\xff\x7f"),
            (2_097_152, b"\x80\x80\x80\x01"),
            (MAX_VARINT, b"\xff\xff\xff\x7f"),
        ],
    )
    @pytest.mark.spec("MQTT-1.5.5-1")
    def test_boundaries(self, value: int, encoded: bytes) -> None:
        # The table of section 1.5.5, both edges of every size.
        assert encode_varint(value) == encoded
        assert varint_size(value) == len(encoded)
        assert decode_varint(encoded, 0) == (value, len(encoded))

    @given(st.integers(0, MAX_VARINT))
    @pytest.mark.spec("MQTT-1.5.5-1")
    def test_round_trip_shortest_form(self, value: int) -> None:
        data = encode_varint(value)
        assert len(data) == varint_size(value)
        # shortest form: the last byte is the only one without a continuation bit, and it is
        # not a redundant zero (except for the value 0 itself)
        assert all(b & 0x80 for b in data[:-1])
        assert not data[-1] & 0x80
        assert data[-1] != 0 or value == 0
        assert decode_varint(data + b"\xff", 0) == (value, len(data))

    @pytest.mark.parametrize("value", [-1, MAX_VARINT + 1, 2**40])
    def test_encode_out_of_range(self, value: int) -> None:
        with pytest.raises(LocalProtocolError) as info:
            encode_varint(value)
        assert info.value.reason_code is MALFORMED

    @pytest.mark.parametrize(
        "data", [b"\x80\x80\x80\x80\x01", b"\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x00"]
    )
    def test_five_bytes_is_malformed(self, data: bytes) -> None:
        err = assert_malformed(decode_varint, data, 0, "remaining length")
        assert "remaining length" in str(err)

    @pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\x80\x80\x80"])
    def test_truncated(self, data: bytes) -> None:
        assert_malformed(decode_varint, data, 0)

    def test_reads_from_position(self) -> None:
        assert decode_varint(b"\x00\x00\xc1\x02", 2) == (321, 4)


class TestUTF8String:
    """1.5.4 UTF-8 Encoded String."""

    @given(strings(max_size=40))
    def test_round_trip(self, text: str) -> None:
        data = encode_string(text)
        raw = text.encode("utf-8")
        assert data == len(raw).to_bytes(2, "big") + raw
        assert decode_string(b"\x00" + data, 1) == (text, 1 + len(data))

    def test_longest_string(self) -> None:
        text = "a" * 65535
        assert decode_string(encode_string(text), 0) == (text, 65537)
        with pytest.raises(LocalProtocolError):
            encode_string(text + "a")
        with pytest.raises(LocalProtocolError):
            encode_string("é" * 32768)  # 65,536 bytes once encoded

    def test_multibyte_length_is_bytes_not_code_points(self) -> None:
        assert encode_string("é€😀") == b"\x00\x09" + "é€😀".encode()

    @pytest.mark.parametrize(
        ("raw", "why"),
        [
            (b"\xc3", "truncated sequence"),
            (b"\xff", "byte that never appears in UTF-8"),
            (b"\x80", "continuation byte without a lead byte"),
            (b"\xc0\x80", "overlong U+0000"),
            (b"\xe0\x80\xaf", "overlong '/'"),
            (b"\xf4\x90\x80\x80", "above U+10FFFF"),
            (b"a\xed\xa0\x80", "encoded surrogate U+D800"),
            (b"\xed\xbf\xbf", "encoded surrogate U+DFFF"),
        ],
    )
    @pytest.mark.spec("MQTT-1.5.4-1")
    def test_ill_formed_is_malformed(self, raw: bytes, why: str) -> None:
        data = len(raw).to_bytes(2, "big") + raw
        assert "client id" in str(assert_malformed(decode_string, data, 0, "client id")), why

    @pytest.mark.parametrize("raw", [b"\x00", b"a\x00b", b"ab\x00"])
    @pytest.mark.spec("MQTT-1.5.4-2")
    def test_null_character_is_malformed(self, raw: bytes) -> None:
        assert_malformed(decode_string, len(raw).to_bytes(2, "big") + raw, 0)

    @pytest.mark.spec("MQTT-1.5.4-1")
    @pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
    def test_encode_refuses_surrogates(self, text: str) -> None:
        with pytest.raises(LocalProtocolError) as info:
            encode_string(text)
        assert info.value.reason_code is MALFORMED

    @pytest.mark.spec("MQTT-1.5.4-2")
    def test_encode_refuses_null_character(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_string("a\x00")

    @pytest.mark.spec("MQTT-1.5.4-3")
    @pytest.mark.parametrize("text", ["\ufeff", "\ufeffa/b", "a\ufeff"])
    def test_byte_order_mark_is_kept(self, text: str) -> None:
        # EF BB BF is U+FEFF ZERO WIDTH NO-BREAK SPACE; it must not be skipped or stripped.
        data = encode_string(text)
        assert b"\xef\xbb\xbf" in data
        assert decode_string(data, 0) == (text, len(data))

    def test_non_characters_and_controls_are_accepted(self) -> None:
        # 1.5.4: U+0001..U+001F, U+007F..U+009F and non-characters are allowed (MAY reject).
        text = "\x01\x1f\x7f\x9f\ufffe\uffff\U0010ffff"
        assert decode_string(encode_string(text), 0)[0] == text

    @pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x02a", b"\xff\xff" + b"a" * 100])
    def test_truncated(self, data: bytes) -> None:
        assert_malformed(decode_string, data, 0)


class TestBinaryData:
    """1.5.6 Binary Data."""

    @given(st.binary(max_size=300))
    def test_round_trip(self, value: bytes) -> None:
        data = encode_binary(value)
        assert data == len(value).to_bytes(2, "big") + value
        assert decode_binary(memoryview(data), 0) == (value, len(data))

    def test_too_long(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_binary(b"\x00" * 65536)

    @pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x03ab"])
    def test_truncated(self, data: bytes) -> None:
        assert_malformed(decode_binary, data, 0)

    def test_zero_bytes_allowed_in_binary(self) -> None:
        assert decode_binary(b"\x00\x02\x00\x00", 0) == (b"\x00\x00", 4)
