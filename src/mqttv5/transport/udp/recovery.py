"""The sending side's loss recovery and congestion control, without I/O (aioquic's recovery.py).

- :class:`RttEstimator`: SRTT, RTTVAR and RTO per RFC 6298, exponential backoff bounded by
  ``rto_max``; samples follow Karn's rule (never from a retransmitted segment).
- :class:`CongestionController`: an AIMD window in segments per RFC 5681 (slow start,
  congestion avoidance, halved once per recovery episode on a loss detected from SACKs,
  collapsed to one segment on a retransmission timeout).
- :class:`Recovery`: the unacknowledged segments; processes ACKs (cumulative and selective);
  detects losses from SACKs by time (RACK, RFC 8985); a tail-loss probe (RFC 8985 section 7)
  before the retransmission timeout; the timeout itself (RFC 6298 5.4-5.7).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .fragmentation import SendQueue

__all__ = [
    "GRANULARITY",
    "INITIAL_WINDOW",
    "LOSS_WINDOW",
    "MAX_ACK_DELAY",
    "MIN_WINDOW",
    "SAMPLE_MAX_ACK_DELAY",
    "CongestionController",
    "ConnectionStats",
    "Recovery",
    "RetransmitLimit",
    "RttEstimator",
]

#: A receiver acknowledges within this long of an ack-eliciting datagram (at once on a gap).
MAX_ACK_DELAY: Final = 0.010
#: An ACK held longer than this after its largest segment arrived gives no RTT sample.
SAMPLE_MAX_ACK_DELAY: Final = 4 * MAX_ACK_DELAY
#: Clock granularity G of RFC 6298.
GRANULARITY: Final = 0.001
INITIAL_WINDOW: Final = 10  # segments (RFC 6928)
MIN_WINDOW: Final = 2.0  # ssthresh floor (RFC 5681: 2 segments)
LOSS_WINDOW: Final = 1.0  # cwnd after a retransmission timeout (RFC 5681)

IN_FLIGHT: Final = 0
LOST: Final = 1  # waiting to be retransmitted
SACKED: Final = 2


@dataclass(slots=True)
class ConnectionStats:
    """Counters and estimator state of one connection (:attr:`ReliableConnection.stats`)."""

    srtt: float = 0.0  # 0 until the first RTT sample
    rttvar: float = 0.0
    min_rtt: float = 0.0
    latest_rtt: float = 0.0
    rto: float = 0.0  # the current timeout, backoff included
    rtt_samples: int = 0
    cwnd: float = 0.0  # segments
    ssthresh: float = math.inf
    in_flight: int = 0
    peer_window: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    datagrams_dropped: int = 0
    drops_by_cause: dict[str, int] = field(default_factory=dict)
    segments_sent: int = 0  # first transmissions of DATA
    retransmissions: int = 0
    segments_lost: int = 0  # declared lost (SACK/time or timeout)
    loss_events: int = 0  # congestion window halvings (fast retransmit)
    rto_expiries: int = 0
    probes_sent: int = 0  # tail-loss probes
    segments_received: int = 0
    duplicates_received: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    pings_sent: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0  # message bytes queued by send()
    bytes_received: int = 0  # message bytes delivered
    max_out_of_order: int = 0  # most segments ever held out of order
    max_reassembly_bytes: int = 0  # most bytes ever held in a partial message


class RetransmitLimit(Exception):
    """A segment was lost after being sent ``1 + max_retransmits`` times (internal)."""


class RttEstimator:
    """SRTT, RTTVAR and RTO of RFC 6298, with the exponential backoff kept apart."""

    __slots__ = (
        "_max",
        "_min",
        "backoff",
        "base_rto",
        "latest",
        "min_rtt",
        "rttvar",
        "samples",
        "srtt",
    )

    def __init__(self, initial: float, rto_min: float, rto_max: float) -> None:
        self._min = rto_min
        self._max = rto_max
        self.base_rto = min(max(initial, rto_min), rto_max)
        self.backoff = 0
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rtt = math.inf
        self.latest = 0.0
        self.samples = 0

    @property
    def rto(self) -> float:
        """The timeout now: the base doubled once per consecutive expiry, at most ``rto_max``."""
        return min(self.base_rto * (1 << min(self.backoff, 40)), self._max)

    def on_sample(self, rtt: float, ack_delay: float = 0.0) -> None:
        """Take one measurement (RFC 6298 2.2/2.3; the peer's ACK delay is taken off as in
        RFC 9002 5.3 when that leaves at least the minimum RTT)."""
        rtt = max(rtt, 0.0)
        self.latest = rtt
        self.samples += 1
        self.min_rtt = min(self.min_rtt, rtt)
        if rtt - ack_delay >= self.min_rtt:
            rtt -= ack_delay
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        # The peer may hold an ACK for MAX_ACK_DELAY: a timeout shorter than that is spurious.
        rto = self.srtt + max(GRANULARITY, 4 * self.rttvar) + MAX_ACK_DELAY
        self.base_rto = min(max(rto, self._min), self._max)


class CongestionController:
    """AIMD congestion window in segments (RFC 5681), one reduction per recovery episode."""

    __slots__ = ("cwnd", "max_window", "recovery_start", "ssthresh")

    def __init__(self, max_window: float) -> None:
        self.cwnd = float(INITIAL_WINDOW)
        self.ssthresh = math.inf
        self.recovery_start = -math.inf
        self.max_window = max_window

    def on_delivered(self, sent_time: float, limited: bool) -> None:
        """A segment was acknowledged; grow unless it predates the last reduction or the
        window was not the limit (RFC 7661: an application-limited sender does not grow)."""
        if sent_time <= self.recovery_start or not limited:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += 1.0  # slow start
        else:
            self.cwnd += 1.0 / self.cwnd  # congestion avoidance: one segment per round trip
        self.cwnd = min(self.cwnd, self.max_window)

    def on_loss(self, sent_time: float, now: float) -> bool:
        """A segment sent at ``sent_time`` was lost; halve once per episode. True if halved."""
        if sent_time <= self.recovery_start:
            return False
        self.recovery_start = now
        self.ssthresh = max(self.cwnd / 2, MIN_WINDOW)
        self.cwnd = self.ssthresh
        return True

    def on_timeout(self, flight: int, now: float) -> None:
        """Retransmission timeout: ssthresh = max(FlightSize / 2, 2), cwnd = 1."""
        self.recovery_start = now
        self.ssthresh = max(flight / 2, MIN_WINDOW)
        self.cwnd = LOSS_WINDOW


class Segment:
    """One DATA segment sent and not yet cumulatively acknowledged."""

    __slots__ = ("datagram", "sent_time", "seq", "size", "state", "transmissions")

    def __init__(self, seq: int, datagram: bytes, size: int, now: float) -> None:
        self.seq = seq
        self.datagram = datagram
        self.size = size
        self.sent_time = now
        self.transmissions = 1
        self.state = IN_FLIGHT


def _seq_of(segment: Segment) -> int:
    return segment.seq


Encoder = Callable[[int, int, "int | None", bytes], bytes]


class Recovery:
    """Unacknowledged segments, ACK processing, loss detection and the sender's timers.

    Sequence numbers are full 64-bit counters here. Methods that may declare a segment lost
    raise :class:`RetransmitLimit` when one has been sent ``1 + max_retransmits`` times.
    """

    def __init__(
        self,
        stats: ConnectionStats,
        *,
        rto_initial: float,
        rto_min: float,
        rto_max: float,
        max_retransmits: int,
        max_window: float,
    ) -> None:
        self.rtt = RttEstimator(rto_initial, rto_min, rto_max)
        self.cc = CongestionController(max_window)
        self.max_retransmits = max_retransmits
        self.segments: dict[int, Segment] = {}  # ascending seq
        self._lost: list[int] = []  # heap of seqs to retransmit (stale entries skipped)
        self.snd_una = 0  # lowest unacknowledged
        self.snd_nxt = 0  # next new
        self.in_flight = 0
        self.unacked_bytes = 0
        self.cwnd_limited = False
        self.rto_at: float | None = None
        self.probe_at: float | None = None
        self.loss_at: float | None = None
        self._probe_due = False
        self._probe_allowed = True  # one probe per flight without progress
        self._rack_key = (-math.inf, -1)  # (sent time, seq) of the latest-sent delivered segment
        self._rack_rtt = 0.0
        self.consecutive_timeouts = 0
        self.stats = stats  # the connection's; the sender's counters are kept in it

    def refresh_stats(self) -> ConnectionStats:
        """The connection's stats with the estimator and window fields brought up to date."""
        st, rtt, cc = self.stats, self.rtt, self.cc
        st.srtt = rtt.srtt or 0.0
        st.rttvar = rtt.rttvar
        st.min_rtt = rtt.min_rtt if rtt.samples else 0.0
        st.latest_rtt = rtt.latest
        st.rto = rtt.rto
        st.rtt_samples = rtt.samples
        st.cwnd = cc.cwnd
        st.ssthresh = cc.ssthresh
        st.in_flight = self.in_flight
        return st

    def timer(self) -> float | None:
        """The earliest of the retransmission, probe and loss timers."""
        times = [t for t in (self.rto_at, self.probe_at, self.loss_at) if t is not None]
        return min(times) if times else None

    def clear(self) -> None:
        """Forget everything (the connection ended)."""
        self.segments.clear()
        self._lost.clear()
        self.in_flight = self.unacked_bytes = 0
        self.rto_at = self.probe_at = self.loss_at = None

    # --- sending -----------------------------------------------------------------------------

    def send(
        self,
        out: list[bytes],
        now: float,
        queue: SendQueue,
        room: int,
        peer_window: int,
        encode: Encoder,
    ) -> None:
        """Append retransmissions, then new segments cut from ``queue``, as the congestion
        window and the peer's window allow; a due probe goes out even when the window is
        full. ``encode(seq, flags, total, payload)`` makes a DATA datagram."""
        window = max(1, int(self.cc.cwnd))
        limit = self.snd_una + max(1, peer_window)  # a zero window still admits one probe
        probe, self._probe_due = self._probe_due, False
        if probe:
            self.stats.probes_sent += 1
        self.cwnd_limited = False
        sent = False
        while True:
            if self.in_flight >= window and not probe:
                self.cwnd_limited = bool(self._lost or queue)
                break
            segment = self._next_lost()
            if segment is None and queue and self.snd_nxt < limit:
                flags, total, payload = queue.next_segment(room)
                seq = self.snd_nxt
                segment = Segment(seq, encode(seq, flags, total, payload), len(payload), now)
                self.segments[seq] = segment
                self.snd_nxt = seq + 1
                self.in_flight += 1
                self.unacked_bytes += len(payload)
                self.stats.segments_sent += 1
            elif segment is None and probe:  # nothing new: resend the newest in flight
                segment = self._newest_in_flight()
                if segment is None:
                    break
                self._retransmit(segment, now)
            elif segment is None:
                break
            else:
                self._retransmit(segment, now)
            out.append(segment.datagram)
            sent = True
            probe = False
        if sent and self.rto_at is None:
            self._arm(now)

    def _retransmit(self, segment: Segment, now: float) -> None:
        if segment.state != IN_FLIGHT:
            self.in_flight += 1
        segment.transmissions += 1
        segment.sent_time = now
        segment.state = IN_FLIGHT
        self.stats.retransmissions += 1

    def _next_lost(self) -> Segment | None:
        lost = self._lost
        while lost:
            segment = self.segments.get(heapq.heappop(lost))
            if segment is not None and segment.state == LOST:
                return segment
        return None

    def _newest_in_flight(self) -> Segment | None:
        for seq in reversed(self.segments):
            segment = self.segments[seq]
            if segment.state == IN_FLIGHT:
                return segment
        return None

    def _arm(self, now: float) -> None:
        """(Re)start the retransmission timer, and the probe timer before it if allowed."""
        if not self.segments:
            self.rto_at = self.probe_at = None
            return
        rtt = self.rtt
        self.rto_at = now + rtt.rto
        self.probe_at = None
        if self._probe_allowed and rtt.srtt is not None:
            probe_at = now + 2 * rtt.srtt + MAX_ACK_DELAY
            if probe_at < self.rto_at:
                self.probe_at = probe_at

    # --- acknowledgements --------------------------------------------------------------------

    def on_ack(
        self, cumulative: int, blocks: tuple[tuple[int, int], ...], ack_delay: float, now: float
    ) -> bool:
        """Process one ACK (``cumulative`` expanded, ``blocks`` as on the wire). True if it
        acknowledged anything new; then timers restart and losses are looked for.

        Raises:
            RetransmitLimit: a segment found lost had been sent too often.
        """
        flight_before = self.in_flight
        newly = self._acknowledge(cumulative, blocks)
        if not newly:
            return False
        largest = max(newly, key=_seq_of)
        acked_top = cumulative - 1
        if blocks:
            offset, length = blocks[-1]
            acked_top = max(acked_top, cumulative + offset + length - 1)
        # Karn's rule: only a segment sent once; and only if the peer sent this ACK soon after
        # receiving it (a late ACK, its predecessors lost, would measure the ACK's delay).
        if (
            largest.seq == acked_top
            and largest.transmissions == 1
            and ack_delay <= SAMPLE_MAX_ACK_DELAY
        ):
            self.rtt.on_sample(now - largest.sent_time, ack_delay)
        limited = self.cwnd_limited or 2 * flight_before >= self.cc.cwnd
        min_rtt = self.rtt.min_rtt
        for segment in newly:
            self.cc.on_delivered(segment.sent_time, limited)
            if segment.transmissions == 1 or now - segment.sent_time >= min_rtt:
                key = (segment.sent_time, segment.seq)
                if key > self._rack_key:
                    self._rack_key = key
                    self._rack_rtt = now - segment.sent_time
        self.rtt.backoff = 0
        self.consecutive_timeouts = 0
        self._probe_allowed = True
        self._arm(now)
        self.detect_losses(now)
        return True

    def _acknowledge(self, cumulative: int, blocks: tuple[tuple[int, int], ...]) -> list[Segment]:
        """Remove what ``cumulative`` covers, mark what ``blocks`` cover; return the newly
        acknowledged segments."""
        newly: list[Segment] = []
        segments = self.segments
        seq = self.snd_una
        while seq < cumulative:
            segment = segments.pop(seq)
            if segment.state != SACKED:
                newly.append(segment)
                if segment.state == IN_FLIGHT:
                    self.in_flight -= 1
            self.unacked_bytes -= segment.size
            seq += 1
        self.snd_una = max(self.snd_una, cumulative)
        for offset, length in blocks:
            start = max(cumulative + offset, self.snd_una)
            for seq in range(start, min(cumulative + offset + length, self.snd_nxt)):
                held = segments.get(seq)
                if held is not None and held.state != SACKED:
                    if held.state == IN_FLIGHT:
                        self.in_flight -= 1
                    held.state = SACKED
                    newly.append(held)
        return newly

    # --- loss detection ----------------------------------------------------------------------

    def _reorder_window(self) -> float:
        rtt = self.rtt
        if rtt.srtt is None:
            return self._rack_rtt / 4
        # RFC 8985 6.2: min_rtt / 4, widened by the RTT variation (jitter reorders too).
        return min(max(rtt.min_rtt / 4, rtt.rttvar), rtt.srtt)

    def detect_losses(self, now: float) -> None:
        """RACK: a segment sent before one that was delivered, and older than the RTT of that
        delivery plus a reordering window, is lost (fast retransmit: the window halves).

        Raises:
            RetransmitLimit: a lost segment had been sent too often.
        """
        self.loss_at = None
        if self._rack_key[1] < 0:
            return
        threshold = self._rack_rtt + self._reorder_window()
        lost: list[Segment] = []
        loss_at: float | None = None
        for segment in self.segments.values():
            if segment.state != IN_FLIGHT or (segment.sent_time, segment.seq) >= self._rack_key:
                continue
            deadline = segment.sent_time + threshold
            if deadline <= now:
                lost.append(segment)
            elif loss_at is None or deadline < loss_at:
                loss_at = deadline
        self.loss_at = loss_at
        for segment in lost:
            self._declare_lost(segment)
            if self.cc.on_loss(segment.sent_time, now):
                self.stats.loss_events += 1

    def _declare_lost(self, segment: Segment) -> None:
        if segment.transmissions > self.max_retransmits:
            raise RetransmitLimit
        segment.state = LOST
        self.in_flight -= 1
        heapq.heappush(self._lost, segment.seq)
        self.stats.segments_lost += 1

    def _all_in_flight_lost(self) -> None:
        for segment in [s for s in self.segments.values() if s.state == IN_FLIGHT]:
            self._declare_lost(segment)

    # --- timers ------------------------------------------------------------------------------

    def on_timer(self, now: float) -> bool:
        """Act on the recovery timers that are due. True if the retransmission timer expired.

        Raises:
            RetransmitLimit: a lost segment had been sent too often.
        """
        expired = False
        if self.rto_at is not None and now >= self.rto_at:
            self._on_timeout(now)
            expired = True
        elif self.probe_at is not None and now >= self.probe_at:
            # Tail-loss probe: one segment beyond the window, to draw an ACK whose SACKs
            # let RACK repair the losses without a timeout.
            self.probe_at = None
            self._probe_allowed = False
            self._probe_due = True
        if self.loss_at is not None and now >= self.loss_at:
            self.detect_losses(now)
        return expired

    def _on_timeout(self, now: float) -> None:
        """RFC 6298 5.4-5.7: everything in flight is marked lost and goes out again as the
        collapsed window allows; the timeout doubles; the timer restarts."""
        self.probe_at = None
        if not self.segments:
            self.rto_at = None
            return
        self.stats.rto_expiries += 1
        flight = sum(1 for s in self.segments.values() if s.state != SACKED)
        self.cc.on_timeout(flight, now)
        self._all_in_flight_lost()
        self.rtt.backoff += 1
        self.consecutive_timeouts += 1
        self._probe_allowed = False
        self.rto_at = now + self.rtt.rto
        self.loss_at = None

    def restart(self, now: float) -> None:
        """The path changed (RESUMED, migration): resend now what has been in flight for a
        round trip (its ACK would have come on a working path); backoff reset.

        Raises:
            RetransmitLimit: a segment had been sent too often.
        """
        self.rtt.backoff = 0
        self.consecutive_timeouts = 0
        before = now - (self.rtt.srtt or 0.0)
        for segment in [s for s in self.segments.values() if s.state == IN_FLIGHT]:
            if segment.sent_time <= before:
                self._declare_lost(segment)
        self._probe_allowed = True
        self._arm(now)
