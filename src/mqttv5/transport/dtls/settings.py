"""What a DTLS server or client is configured with, and the Mosquitto ``psk_file`` reader."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MTU", "DtlsClientSettings", "DtlsServerSettings", "load_psk_file"]

#: Largest UDP payload on a 1500-byte Ethernet link over IPv4 (1500 - 20 IP - 8 UDP).
DEFAULT_MTU: Final = 1472

_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class DtlsServerSettings:
    """How a DTLS server authenticates itself and its clients.

    Give ``psk``, or ``certfile`` and ``keyfile``, or both.

    Attributes:
        psk: pre-shared keys, identity -> key. A client's PSK identity becomes the identity of
            its :class:`~mqttv5.transport.dtls.HandshakeComplete` (the MQTT user name).
        certfile: the server's certificate chain (PEM, leaf first).
        keyfile: the private key of ``certfile`` (PEM, EC or RSA, not encrypted).
        cafile: CA certificates (PEM) client certificates must chain to. Without it client
            certificates are not asked for.
        require_certificate: a client must present a certificate that chains to ``cafile``
            (mutual authentication); its subject's Common Name becomes the identity.
        handshake_timeout: seconds a handshake may take, from the ClientHello that returned a
            valid cookie to the server's Finished.
        mtu: largest datagram sent, in bytes (UDP payload). Handshake messages are fragmented
            to fit; application records must fit (see ``DtlsServer.overhead``).
        retransmit_timeout: first handshake retransmission timeout, in seconds (RFC 6347
            4.2.4.1 recommends 1 s); it doubles on each retransmission, up to 60 s.
    """

    psk: Mapping[str, bytes] | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    handshake_timeout: float = 30.0
    mtu: int = DEFAULT_MTU
    retransmit_timeout: float = 1.0


@dataclass(frozen=True)
class DtlsClientSettings:
    """How a DTLS client authenticates itself and the server.

    Give ``psk_identity`` and ``psk`` for a pre-shared key handshake, or neither for a
    certificate handshake (``cafile``; ``certfile`` and ``keyfile`` for mutual authentication).

    Attributes:
        psk_identity: our PSK identity (the server makes it our MQTT user name).
        psk: the key shared with the server under ``psk_identity``.
        cafile: CA certificates (PEM) the server's certificate must chain to. None: the CA
            bundle of ``certifi`` (python-mbedtls's system trust store).
        certfile: our certificate chain (PEM, leaf first), for mutual authentication.
        keyfile: the private key of ``certfile``.
        server_hostname: the name the server's certificate must carry (CN or DNS SAN); None:
            the name is not checked (the chain still is).
        verify: verify the server's certificate; False accepts any certificate (tests only).
        mtu: largest datagram sent, in bytes (UDP payload).
        handshake_timeout: seconds the handshake may take, from ``start()``.
        retransmit_timeout: first handshake retransmission timeout, in seconds; it doubles on
            each retransmission, up to 60 s.
    """

    psk_identity: str | None = None
    psk: bytes | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    server_hostname: str | None = None
    verify: bool = True
    mtu: int = DEFAULT_MTU
    handshake_timeout: float = 30.0
    retransmit_timeout: float = 1.0


def load_psk_file(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read pre-shared keys in Mosquitto's ``psk_file`` format.

    One ``identity:hexkey`` per line; blank lines and lines starting with ``#`` are ignored.
    The identity is everything before the first ``:`` (spaces kept, as Mosquitto); the key is
    hexadecimal, of even length.

    Args:
        path: the file.

    Returns:
        identity -> key, in file order; a later line for the same identity wins.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is malformed; the message names ``file:line``.
    """
    keys: dict[str, bytes] = {}
    with open(path, encoding="utf-8") as file:
        for number, raw in enumerate(file, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            identity, key = _parse_psk_line(line, f"{os.fspath(path)}:{number}")
            keys[identity] = key
    return keys


def _parse_psk_line(line: str, where: str) -> tuple[str, bytes]:
    identity, colon, hexkey = line.partition(":")
    if not colon:
        raise ValueError(f"{where}: expected identity:hexkey")
    if not identity:
        raise ValueError(f"{where}: empty identity")
    hexkey = hexkey.strip()
    if not hexkey:
        raise ValueError(f"{where}: empty key for identity {identity!r}")
    if not all(c in _HEX_DIGITS for c in hexkey):
        raise ValueError(f"{where}: key of {identity!r} is not hexadecimal")
    if len(hexkey) % 2:
        raise ValueError(f"{where}: key of {identity!r} has an odd number of hex digits")
    return identity, bytes.fromhex(hexkey)
