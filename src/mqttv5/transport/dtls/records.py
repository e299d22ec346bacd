"""DTLS 1.2 record framing (RFC 6347 4.1, 4.2.2), without a TLS library.

Two jobs that python-mbedtls leaves to us:

* look at a datagram from an unknown address *before* any state is kept for it
  (:func:`parse_client_hello_untrusted`), so the server can answer a cookieless ClientHello
  statelessly and bound the handshakes it keeps;
* cut the byte stream mbedtls writes into datagrams again (:func:`pack_datagrams`): its
  in-memory output buffer loses datagram boundaries, but records never span datagrams, so
  records are re-packed, one application record per datagram.

It also turns a peer's DER certificate into the dictionary shape of
:meth:`ssl.SSLSocket.getpeercert` (:func:`describe_certificate_der`), so the broker reads TLS and
DTLS certificates alike.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RECORD_HEADER_SIZE",
    "ClientHelloInfo",
    "common_name",
    "describe_certificate_der",
    "pack_datagrams",
    "next_epoch0_sequence",
    "parse_client_hello_untrusted",
    "plaintext_alert",
    "split_records",
]

RECORD_HEADER_SIZE: Final = 13  # type, version, epoch, sequence number (48 bits), length
HANDSHAKE_HEADER_SIZE: Final = 12  # type, length, message_seq, fragment offset and length
CONTENT_ALERT: Final = 21
CONTENT_HANDSHAKE: Final = 22
CONTENT_APPLICATION_DATA: Final = 23
HANDSHAKE_CLIENT_HELLO: Final = 1
# DTLS 1.0 (0xFEFF) may appear in a ClientHello's record layer even when 1.2 is offered.
DTLS_1_2: Final = 0xFEFD
_DTLS_RECORD_VERSIONS: Final = frozenset({0xFEFF, DTLS_1_2})
_RANDOM_SIZE: Final = 32
_MAX_SESSION_ID: Final = 32


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What the server needs from a ClientHello before keeping any state.

    Attributes:
        random: the client's 32-byte random; the same in the ClientHello that answers a
            HelloVerifyRequest (RFC 6347 4.2.1), fresh in a new handshake.
        cookie: the cookie echoed from a HelloVerifyRequest (empty at first).
    """

    random: bytes
    cookie: bytes


def parse_client_hello_untrusted(datagram: bytes) -> ClientHelloInfo | None:
    """The random and cookie of a ClientHello in the datagram's first record, or None.

    Only a complete (unfragmented) ClientHello in an epoch-0 handshake record counts; mbedtls
    does not accept a fragmented ClientHello either. Nothing else is checked here: mbedtls
    parses the whole message afterwards.

    Args:
        datagram: bytes from an unauthenticated address.
    """
    view = memoryview(datagram)
    if len(view) < RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE:
        return None
    version = int.from_bytes(view[1:3])
    epoch = int.from_bytes(view[3:5])
    length = int.from_bytes(view[11:13])
    if view[0] != CONTENT_HANDSHAKE or version not in _DTLS_RECORD_VERSIONS or epoch != 0:
        return None
    body = view[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + length]
    if len(body) != length or length < HANDSHAKE_HEADER_SIZE:
        return None
    message_length = int.from_bytes(body[1:4])
    fragment_offset = int.from_bytes(body[6:9])
    fragment_length = int.from_bytes(body[9:12])
    if body[0] != HANDSHAKE_CLIENT_HELLO or fragment_offset != 0:
        return None
    if fragment_length != message_length or HANDSHAKE_HEADER_SIZE + message_length > length:
        return None
    return _parse_hello_body_untrusted(body[HANDSHAKE_HEADER_SIZE:][:message_length])


def _parse_hello_body_untrusted(hello: memoryview) -> ClientHelloInfo | None:
    # client_version(2) random(32) session_id<0..32> cookie<0..2^8-1> ...
    pos = 2 + _RANDOM_SIZE
    if len(hello) <= pos:
        return None
    session_id_length = hello[pos]
    pos += 1 + session_id_length
    if session_id_length > _MAX_SESSION_ID or len(hello) <= pos:
        return None
    cookie_length = hello[pos]
    pos += 1
    if len(hello) < pos + cookie_length:
        return None
    return ClientHelloInfo(
        bytes(hello[2 : 2 + _RANDOM_SIZE]), bytes(hello[pos : pos + cookie_length])
    )


def split_records(stream: bytes) -> list[tuple[int, bytes]]:
    """Cut bytes written by our own DTLS engine into ``(content type, record)`` pairs.

    A truncated tail (which our engine never writes) is returned as one last pair.
    """
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 11 : pos + 13])
        end = pos + RECORD_HEADER_SIZE + length
        records.append((stream[pos], stream[pos:end]))
        pos = end
    return records


def plaintext_alert(sequence_number: int, description: int) -> bytes:
    """A fatal alert record in epoch 0 (before ChangeCipherSpec alerts travel in clear).

    Args:
        sequence_number: the next epoch-0 record sequence number of the sender.
        description: the AlertDescription (RFC 5246 7.2), e.g. 40 handshake_failure.
    """
    header = bytes([CONTENT_ALERT]) + DTLS_1_2.to_bytes(2) + (0).to_bytes(2)
    return header + sequence_number.to_bytes(6) + (2).to_bytes(2) + bytes([2, description])


def next_epoch0_sequence(stream: bytes, current: int) -> int:
    """The sequence number after the last epoch-0 record in ``stream`` (ours), or
    ``current``; -1 once a record of a later epoch was sent (clear alerts no longer fit)."""
    for _, record in split_records(stream):
        if current < 0 or int.from_bytes(record[3:5]) != 0:
            current = -1
        else:
            current = int.from_bytes(record[5:11]) + 1
    return current


def pack_datagrams(stream: bytes, mtu: int) -> list[bytes]:
    """Datagrams to send for the records our engine wrote.

    Handshake, ChangeCipherSpec and alert records are packed together up to ``mtu`` bytes
    (a flight usually fits in one or two datagrams); every application record goes alone, so
    one plaintext datagram of the layer above is one UDP datagram.

    Args:
        stream: the engine's output, whole records.
        mtu: largest datagram, in bytes.
    """
    datagrams: list[bytes] = []
    current = bytearray()
    for content_type, record in split_records(stream):
        if content_type == CONTENT_APPLICATION_DATA:
            if current:
                datagrams.append(bytes(current))
                current.clear()
            datagrams.append(record)
            continue
        if current and len(current) + len(record) > mtu:
            datagrams.append(bytes(current))
            current.clear()
        current += record
    if current:
        datagrams.append(bytes(current))
    return datagrams


# --- certificates (DER, RFC 5280), already verified by mbedtls ---------------------------------

_ATTRIBUTE_NAMES: Final = {
    "2.5.4.3": "commonName",
    "2.5.4.4": "surname",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.9": "streetAddress",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "2.5.4.12": "title",
    "2.5.4.42": "givenName",
    "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.1": "userId",
    "0.9.2342.19200300.100.1.25": "domainComponent",
}
_STRING_CODECS: Final = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (commonly Latin-1 in practice)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}
_SAN_OID: Final = "2.5.29.17"
_SAN_KINDS: Final = {0x81: "email", 0x82: "DNS", 0x86: "URI"}
_SAN_IP: Final = 0x87
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)

_Name = tuple[tuple[tuple[str, str], ...], ...]


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(tag, content start, content end)`` of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or pos + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + size])
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _der(data, start)
        items.append(item)
        start = item[2]
    return items


def _oid(raw: bytes) -> str:
    if not raw:
        raise ValueError("empty OID")
    parts = [min(raw[0] // 40, 2), raw[0] - 40 * min(raw[0] // 40, 2)]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _name(data: bytes, start: int, end: int) -> _Name:
    rdns = []
    for _, set_start, set_end in _children(data, start, end):
        pairs = []
        for _, attr_start, attr_end in _children(data, set_start, set_end):
            (_, oid_start, oid_end), (tag, value_start, value_end) = _children(
                data, attr_start, attr_end
            )[:2]
            oid = _oid(data[oid_start:oid_end])
            raw = data[value_start:value_end]
            codec = _STRING_CODECS.get(tag)
            value = raw.decode(codec, "replace") if codec else "#" + raw.hex()
            pairs.append((_ATTRIBUTE_NAMES.get(oid, oid), value))
        rdns.append(tuple(pairs))
    return tuple(rdns)


def _time(data: bytes, start: int, end: int, tag: int) -> str:
    text = data[start:end].decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSS, years 1950-2049 (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + text[2:]
    when = datetime.datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    return f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S} {when.year} GMT"


def _subject_alt_names(data: bytes, start: int, end: int) -> tuple[tuple[str, str], ...]:
    names = []
    for tag, name_start, name_end in _children(data, start, end):
        raw = data[name_start:name_end]
        if tag in _SAN_KINDS:
            names.append((_SAN_KINDS[tag], raw.decode("ascii", "replace")))
        elif tag == _SAN_IP and len(raw) == 4:
            names.append(("IP Address", ".".join(map(str, raw))))
        elif tag == _SAN_IP and len(raw) == 16:
            groups = (raw[i : i + 2].hex().upper().lstrip("0") or "0" for i in range(0, 16, 2))
            names.append(("IP Address", ":".join(groups)))
    return tuple(names)


def _extensions(data: bytes, start: int, end: int) -> dict[str, object]:
    found: dict[str, object] = {}
    (_, seq_start, seq_end) = _der(data, start)
    for _, ext_start, ext_end in _children(data, seq_start, seq_end):
        parts = _children(data, ext_start, ext_end)
        if _oid(data[parts[0][1] : parts[0][2]]) != _SAN_OID:
            continue
        _, octets_start, _ = parts[-1]
        _, names_start, names_end = _der(data, octets_start)
        found["subjectAltName"] = _subject_alt_names(data, names_start, names_end)
    return found


def describe_certificate_der(der: bytes) -> dict[str, object]:
    """A certificate in the shape of :meth:`ssl.SSLSocket.getpeercert`.

    Keys: ``subject``, ``issuer`` (tuples of RDNs of ``(name, value)`` pairs), ``version``,
    ``serialNumber`` (upper-case hex), ``notBefore``, ``notAfter`` (``"Jan  1 00:00:00 2030
    GMT"``) and ``subjectAltName`` when present. ``der`` is kept under ``"der"``.

    Raises:
        ValueError: the DER is malformed.
    """
    try:
        return _describe(der)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed certificate: {exc}") from exc


def _describe(der: bytes) -> dict[str, object]:
    _, cert_start, _ = _der(der, 0)
    _, tbs_start, tbs_end = _der(der, cert_start)
    fields = _children(der, tbs_start, tbs_end)
    version = 1
    if fields[0][0] == 0xA0:  # [0] EXPLICIT Version
        _, v_start, v_end = _der(der, fields[0][1])
        version = int.from_bytes(der[v_start:v_end]) + 1
        fields = fields[1:]
    serial, _, issuer, validity, subject = fields[:5]
    serial_hex = der[serial[1] : serial[2]].hex().upper().lstrip("0") or "0"
    (nb_tag, nb_start, nb_end), (na_tag, na_start, na_end) = _children(der, *validity[1:])[:2]
    described: dict[str, object] = {
        "subject": _name(der, subject[1], subject[2]),
        "issuer": _name(der, issuer[1], issuer[2]),
        "version": version,
        "serialNumber": serial_hex.zfill(len(serial_hex) + len(serial_hex) % 2),
        "notBefore": _time(der, nb_start, nb_end, nb_tag),
        "notAfter": _time(der, na_start, na_end, na_tag),
    }
    for tag, start, end in fields[5:]:
        if tag == 0xA3:  # [3] EXPLICIT Extensions
            described.update(_extensions(der, start, end))
    described["der"] = der
    return described


def common_name(certificate: dict[str, object]) -> str | None:
    """The last (most specific) Common Name of a described certificate's subject."""
    subject = certificate.get("subject")
    if not isinstance(subject, tuple):
        return None
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    return names[-1] if names else None
