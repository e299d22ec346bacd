"""Transports: every one presents the :class:`Stream` interface (read / write / close / peer).

:func:`open_url` opens a stream for a broker URL (``mqtt://host:1883``); :class:`SimNetwork` is the
in-process simulated network used by fault tests.
"""

from __future__ import annotations

from .base import PeerInfo, Stream, TransportError
from .memory import MemoryStream, SimNetwork
from .tcp import TcpStream, open_tcp
from .url import Endpoint, open_url, parse_url, register_scheme

__all__ = [
    "Endpoint",
    "MemoryStream",
    "PeerInfo",
    "SimNetwork",
    "Stream",
    "TcpStream",
    "TransportError",
    "open_tcp",
    "open_url",
    "parse_url",
    "register_scheme",
]
