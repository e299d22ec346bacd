"""A seeded, simulated lossy network between one UDP client and a :class:`UdpServer`.

Time is simulated: the driver jumps ``now`` to the earliest of every connection's timer and
every datagram's arrival, so a run is deterministic for a seed and takes no wall-clock time.
Each direction of the path has its own :class:`Link`: random or bursty loss, duplication,
delay with jitter (which reorders), and optionally a bottleneck of limited bandwidth with a
drop-tail queue (so a sender that floods it loses datagrams, as on a real path). The client
can change address mid-run (NAT rebinding): datagrams still in flight to its old address are
lost, and the server sees its datagrams come from the new one.

Use::

    net = SimNetwork(seed=1, link=Link(loss=0.1))
    net.connect()
    net.client.send(b"hello")
    net.run(lambda: net.server_messages == [b"hello"], limit=30)
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from mqttv5.transport.udp import (
    ConnectionTerminated,
    DataReceived,
    NewConnection,
    ReliableConnection,
    UdpServer,
    UdpSettings,
)
from mqttv5.transport.udp.wire import DatagramType

__all__ = ["Gilbert", "Link", "SimNetwork"]

_ANSWERS = frozenset(
    {DatagramType.COOKIE, DatagramType.ACCEPT, DatagramType.CHALLENGE, DatagramType.RESET}
)
CLIENT_ADDR = ("10.0.0.1", 40000)
SERVER_ADDR = ("10.0.0.2", 1884)


class Gilbert:
    """Bursty loss (Gilbert-Elliott): a good state without loss and a bad state with
    ``bad_loss``; ``p`` = P(good -> bad), ``r`` = P(bad -> good) per datagram."""

    def __init__(self, p: float, r: float, bad_loss: float = 1.0) -> None:
        self.p, self.r, self.bad_loss = p, r, bad_loss
        self.bad = False

    def __call__(self, rng: random.Random) -> bool:
        self.bad = rng.random() >= self.r if self.bad else rng.random() < self.p
        return self.bad and rng.random() < self.bad_loss


@dataclass
class Link:
    """One direction of the simulated path."""

    loss: float = 0.0  # independent loss probability
    duplicate: float = 0.0  # probability a datagram arrives twice
    delay: float = 0.025  # one-way propagation delay, seconds
    jitter: float = 0.0  # extra uniform delay in [0, jitter): reorders datagrams
    pattern: Callable[[random.Random], bool] | None = None  # True: lose it (e.g. Gilbert)
    bandwidth: float | None = None  # bytes per second of a bottleneck (None: unlimited)
    queue_limit: int = 50  # datagrams the bottleneck queues before dropping
    black_hole: bool = False  # lose everything
    # bookkeeping
    busy_until: float = 0.0
    departures: deque[float] = field(default_factory=deque)
    sent: int = 0
    lost: int = 0
    congestion_drops: int = 0


class SimNetwork:
    """One client connection, one server, and the simulated path between them."""

    def __init__(
        self,
        seed: int,
        *,
        link: Link | None = None,
        reverse: Link | None = None,
        client_settings: UdpSettings | None = None,
        server_settings: UdpSettings | None = None,
        secret: bytes = b"simulated-network-secret-0123456",
        start: float = 1000.0,
        **server_options: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.up = link or Link()  # client -> server
        self.down = reverse or _copy(self.up)  # server -> client
        self.client_addr: Hashable = CLIENT_ADDR
        self.server = UdpServer(
            server_settings or UdpSettings(), secret=secret, rng=self._bytes, **server_options
        )
        self.client = ReliableConnection.client(
            client_settings or UdpSettings(), self.now, rng=self._bytes
        )
        self.conns: list[ReliableConnection] = []
        self.client_events: list[object] = []
        self.server_events: list[object] = []  # every server connection's, in order
        self.server_messages: list[bytes] = []
        self.client_messages: list[bytes] = []
        self.client_terminated: ConnectionTerminated | None = None
        self.server_terminated: ConnectionTerminated | None = None
        self.forget_on_termination = True
        self._arrivals: list[tuple[float, int, bool, bytes, Hashable, Hashable]] = []
        self._counter = 0
        self.delivered_to_server: list[tuple[float, int, Hashable]] = []  # (time, size, src)
        self.server_sent: list[tuple[float, int, Hashable]] = []  # (time, size, dst)
        # (reply size, size of the datagram it answered) for every COOKIE, ACCEPT, CHALLENGE
        # and RESET: the anti-amplification rule says reply <= cause
        self.answers: list[tuple[int, int]] = []
        self._trigger = 0
        self.steps = 0

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # --- the path ----------------------------------------------------------------------------

    def _transmit(self, data: bytes, src: Hashable, dst: Hashable, to_server: bool) -> None:
        link = self.up if to_server else self.down
        link.sent += 1
        if link.black_hole or (link.pattern is not None and link.pattern(self.rng)):
            link.lost += 1
            return
        if link.loss and self.rng.random() < link.loss:
            link.lost += 1
            return
        copies = 2 if link.duplicate and self.rng.random() < link.duplicate else 1
        for _ in range(copies):
            depart = self.now
            if link.bandwidth is not None:
                while link.departures and link.departures[0] <= self.now:
                    link.departures.popleft()
                if len(link.departures) >= link.queue_limit:
                    link.congestion_drops += 1
                    continue
                depart = max(self.now, link.busy_until) + len(data) / link.bandwidth
                link.busy_until = depart
                link.departures.append(depart)
            arrival = depart + link.delay + (self.rng.random() * link.jitter if link.jitter else 0)
            self._counter += 1
            heapq.heappush(self._arrivals, (arrival, self._counter, to_server, data, src, dst))

    def rebind(self, new_addr: Hashable) -> None:
        """The client's NAT mapping changes: it now sends from (and receives at) ``new_addr``."""
        self.client_addr = new_addr

    def inject_to_server(self, data: bytes, src: Hashable) -> ReliableConnection | None:
        """Deliver ``data`` to the server now, from any address (spoofing, fuzzing)."""
        self._trigger = len(data)
        conn = self.server.datagram_received(data, src, self.now)
        self._after_server()
        self.flush()
        self._trigger = 0
        return conn

    # --- driving -----------------------------------------------------------------------------

    def _deliver(self, to_server: bool, data: bytes, src: Hashable, dst: Hashable) -> None:
        if to_server:
            self.delivered_to_server.append((self.now, len(data), src))
            self._trigger = len(data)
            self.server.datagram_received(data, src, self.now)
            self._after_server()
        elif dst == self.client_addr:  # the old address of a rebound client is gone
            self.client.receive_datagram(data, self.now)

    def _after_server(self) -> None:
        for event in self.server.events_received():
            if isinstance(event, NewConnection):
                self.conns.append(event.conn)
        for reply, addr in self.server.datagrams_to_send(self.now):
            self._server_sends(reply, addr)

    def _server_sends(self, datagram: bytes, addr: Hashable) -> None:
        self.server_sent.append((self.now, len(datagram), addr))
        if datagram[1] in _ANSWERS:
            assert self._trigger, "an answer without a datagram that caused it"
            self.answers.append((len(datagram), self._trigger))
        self._transmit(datagram, SERVER_ADDR, addr, to_server=False)

    def flush(self) -> None:
        """Send what every side wants to send now and collect its events."""
        for datagram in self.client.datagrams_to_send(self.now):
            self._transmit(datagram, self.client_addr, SERVER_ADDR, to_server=True)
        for event in self.client.events_received():
            self.client_events.append(event)
            if isinstance(event, DataReceived):
                self.client_messages.append(event.data)
            elif isinstance(event, ConnectionTerminated):
                self.client_terminated = event
        self._after_server()
        for conn in list(self.conns):
            addr = self.server.address_of(conn)
            for datagram in conn.datagrams_to_send(self.now):
                self._server_sends(datagram, addr)
            for event in conn.events_received():
                self.server_events.append(event)
                if isinstance(event, DataReceived):
                    self.server_messages.append(event.data)
                elif isinstance(event, ConnectionTerminated):
                    self.server_terminated = event
                    if self.forget_on_termination:
                        self.server.forget(conn)

    def next_time(self) -> float | None:
        """The earliest timer or arrival."""
        times = [t for t in (c.get_timer() for c in [self.client, *self.conns]) if t is not None]
        if self._arrivals:
            times.append(self._arrivals[0][0])
        return min(times) if times else None

    def step(self, limit: float = float("inf")) -> bool:
        """Advance to the next timer or arrival (not past ``limit``) and act on it."""
        when = self.next_time()
        if when is None or when > limit:
            self.now = max(self.now, min(limit, self.now if when is None else when))
            return False
        self.now = max(self.now, when)
        self.steps += 1
        while self._arrivals and self._arrivals[0][0] <= self.now:
            _, _, to_server, data, src, dst = heapq.heappop(self._arrivals)
            self._deliver(to_server, data, src, dst)
            self.flush()
            self._trigger = 0
        for conn in [self.client, *self.conns]:
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        self.flush()
        return True

    def run(self, until: Callable[[], bool], limit: float) -> float:
        """Step until ``until()`` holds or ``limit`` simulated seconds have passed; return the
        simulated time taken."""
        start = self.now
        end = start + limit
        self.flush()
        while not until():
            if not self.step(end) or self.now >= end:
                break
        return self.now - start

    def run_for(self, seconds: float) -> None:
        """Step through ``seconds`` of simulated time."""
        end = self.now + seconds
        self.flush()
        while self.step(end):
            pass
        self.now = max(self.now, end)

    def connect(self, limit: float = 30.0) -> ReliableConnection:
        """Run the handshake until both sides know it completed; return the server's
        connection."""

        def confirmed() -> bool:
            # (private state: the client saw the server answer after ACCEPT, and vice versa)
            hs = self.client._handshake
            done = hs is not None and hs.retransmit_at is None
            return done and bool(self.conns) and self.conns[0]._confirm_deadline is None

        self.run(confirmed, limit)
        assert self.conns and self.client.connection_id is not None, "no connection"
        return self.conns[0]


def _copy(link: Link) -> Link:
    """The same kind of link the other way (a loss pattern keeps state: not shared)."""
    return Link(
        loss=link.loss,
        duplicate=link.duplicate,
        delay=link.delay,
        jitter=link.jitter,
        bandwidth=link.bandwidth,
        queue_limit=link.queue_limit,
    )
