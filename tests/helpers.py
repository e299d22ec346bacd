"""Test helpers: two sans-I/O Connections joined in memory (h11's ConnectionPair) and assertions
that parse the bytes a connection wants to send back into packets (websockets' assertFrameSent).

Import as ``from tests.helpers import pair, pump, assert_sent``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqttv5.protocol.connection import CLIENT, SERVER, Closed, Connection, Event
from mqttv5.protocol.packets import MAX_PACKET_SIZE, Connack, Connect, Packet, PacketDecoder
from mqttv5.protocol.properties import Properties

__all__ = [
    "assert_events",
    "assert_sent",
    "closed_event",
    "pair",
    "pump",
    "sent_packets",
]


def pair(
    version: int = 5,
    *,
    connect: Connect | None = None,
    connack: Connack | None = None,
    handshake: bool = True,
    now: float = 0.0,
    client_max_packet_size: int | None = None,
    server_max_packet_size: int | None = None,
) -> tuple[Connection, Connection]:
    """A CLIENT and a SERVER Connection; by default connected by a CONNECT/CONNACK exchange.

    Args:
        version: the protocol level the client speaks (5, 4 or 3).
        connect: the client's CONNECT (default: client id ``"client"``, keep alive 0).
        connack: the server's CONNACK (default: success, no properties).
        handshake: False to return both connections untouched, before CONNECT.
        now: the clock value the connections start at.
        client_max_packet_size: the client's receive limit (``Connection(max_packet_size=)``).
        server_max_packet_size: the server's receive limit.

    Returns:
        ``(client, server)`` with their events and outgoing bytes drained.
    """
    client = Connection(
        CLIENT, version=version, now=now, max_packet_size=client_max_packet_size or MAX_PACKET_SIZE
    )
    server = Connection(SERVER, now=now, max_packet_size=server_max_packet_size or MAX_PACKET_SIZE)
    if not handshake:
        return client, server
    if connect is None:
        name = "MQIsdp" if version == 3 else "MQTT"
        connect = Connect("client", version, keep_alive=0, protocol_name=name)
    client.send(connect)
    pump(client, server, now)
    events = server.events_received()
    assert events == [connect], events
    server.send(connack if connack is not None else Connack(properties=Properties()))
    pump(client, server, now)
    events = client.events_received()
    assert len(events) == 1, events
    assert isinstance(events[0], Connack), events
    return client, server


def pump(a: Connection, b: Connection, now: float = 0.0) -> None:
    """Move bytes both ways between ``a`` and ``b`` until neither has anything to send.

    Events stay queued on each side for the test to collect with ``events_received()``.
    """
    for _ in range(1000):
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(b"".join(data), now)
                moved = True
        if not moved:
            return
    raise AssertionError("pump: the connections never went quiet")


def sent_packets(conn: Connection, version: int = 5) -> list[Packet]:
    """Parse ``conn.data_to_send()`` back into packets (it drains the output)."""
    data = b"".join(conn.data_to_send())
    decoder = PacketDecoder(version)
    packets = decoder.feed(data)
    assert decoder.buffered == 0, f"{decoder.buffered} trailing bytes after {packets}"
    return packets


def assert_sent(conn: Connection, packets: Sequence[Packet], version: int = 5) -> None:
    """Assert that ``conn`` wants to send exactly ``packets``, in order (drains the output)."""
    got = sent_packets(conn, version)
    assert got == list(packets), f"sent {got!r}, expected {list(packets)!r}"


def assert_events(conn: Connection, events: Sequence[Event]) -> None:
    """Assert that ``conn`` received exactly ``events``, in order (drains the events)."""
    got = conn.events_received()
    assert got == list(events), f"received {got!r}, expected {list(events)!r}"


def closed_event(conn: Connection) -> Closed:
    """Drain ``conn``'s events and return the final :class:`Closed` (asserting it is there)."""
    events = conn.events_received()
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, Closed), f"last event is {last!r}, not Closed"
    assert sum(isinstance(e, Closed) for e in events) == 1
    assert conn.close_expected()
    return last
