"""The broker's UDP and DTLS listeners: settings from the listener table, the DTLS server, and
the socket (``transport.udp.endpoint.UdpServerEndpoint``) whose connections are ordinary
``ClientHandler`` protocols on reliable transports."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..protocol.errors import ConfigError
from ..transport.udp.endpoint import IPV4_MTU, IPV6_MTU, UdpServerEndpoint
from ..transport.udp.reliability import UdpSettings
from .config import ListenerSettings

if TYPE_CHECKING:
    from ..transport.dtls import DtlsServer

__all__ = ["open_udp_listener", "udp_settings"]


def udp_settings(settings: ListenerSettings) -> UdpSettings:
    """The reliability settings of a ``udp``/``dtls`` listener (``mtu`` by address family when
    unset)."""
    mtu = settings.mtu
    if mtu is None:
        try:
            ipv6 = ipaddress.ip_address(settings.bind).version == 6
        except ValueError:
            ipv6 = False
        mtu = IPV6_MTU if ipv6 else IPV4_MTU
    return UdpSettings(
        mtu=mtu,
        rto_min=settings.rto_min,
        rto_max=settings.rto_max,
        max_retransmits=settings.max_retransmits,
        idle_timeout=settings.idle_timeout,
    )


def _dtls_server(settings: ListenerSettings, mtu: int) -> DtlsServer:
    """The listener's DTLS server: its PSK file and certificate loaded.

    Raises:
        ConfigError: python-mbedtls missing, or a PSK, certificate or key file that cannot be read.
    """
    from ..transport.dtls import DtlsServer, DtlsServerSettings, DtlsUnavailable, load_psk_file

    psk = None
    if settings.psk_file is not None:
        try:
            psk = load_psk_file(settings.psk_file)
        except (OSError, ValueError) as exc:
            raise ConfigError("psk_file", str(exc), settings.label) from exc
    dtls_settings = DtlsServerSettings(
        psk=psk,
        certfile=settings.certfile,
        keyfile=settings.keyfile,
        cafile=settings.cafile,
        require_certificate=settings.require_certificate,
        mtu=mtu,
    )
    try:
        return DtlsServer(dtls_settings)
    except DtlsUnavailable as exc:
        raise ConfigError("type", str(exc), settings.label) from exc
    except ConfigError as exc:  # a key or certificate file it could not load
        raise ConfigError(exc.key, exc.message, settings.label) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError("certfile", f"cannot load the DTLS keys: {exc}", settings.label) from exc


async def open_udp_listener(
    settings: ListenerSettings,
    protocol_factory: Callable[[], asyncio.Protocol],
    name: str,
    max_connections_per_address: int,
) -> UdpServerEndpoint:
    """Bind a ``udp``/``dtls`` listener.

    Raises:
        OSError: the address cannot be bound (the message names it).
        ConfigError: DTLS keys that cannot be loaded.
    """
    loop = asyncio.get_running_loop()
    reliable = udp_settings(settings)
    dtls = None
    if settings.type == "dtls":
        dtls = _dtls_server(settings, reliable.mtu)
        reliable = replace(reliable, overhead=dtls.overhead)
    try:
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: UdpServerEndpoint(
                reliable,
                protocol_factory,
                dtls=dtls,
                max_connections_per_address=max_connections_per_address,
                name=name,
            ),
            local_addr=(settings.bind, settings.port),
        )
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot listen on {settings.address} (udp): {exc.strerror}"
        ) from exc
    return endpoint
