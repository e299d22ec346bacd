"""``OutputGate``: no byte reaches a socket before the commit that covers it is durable.

With an inline commit this holds by construction: the flush of a tick starts with the commit,
and the gate never holds anything. With the writer process the commit finishes later, so the
broker hands each tick's output to the gate, which writes it once every commit issued up to
that tick is done. That keeps, for ``storage_sync = "full"``, every rule the inline commit
gives:

- a QoS 2 message is forwarded only after the commit that records its packet identifier;
- a PUBCOMP, PUBREL or SUBACK never announces state that a crash could still take back.

Tickets complete in the order their commits were issued (one batch is in flight at a time), so
one queue in tick order releases everything in order, and each connection's bytes stay in
order. A failed commit releases its output too: QoS 0 keeps flowing while the disk fails.

The acknowledgements a commit completes depend on that commit only: they go out with the next
flush, without waiting for the commits issued since (:meth:`OutputGate.acknowledged`), unless
older output of their connection is still held, which they must not overtake.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from .base import COMMITTED, CommitTicket

__all__ = ["GatedOutput", "OutputGate"]


class GatedOutput(Protocol):
    """A connection whose output the gate may hold (``ClientHandler``)."""

    def write_output(self, data: Sequence[bytes], close_if_over: bool = True) -> None:
        """Write ``data`` now (and close the transport if the connection is over)."""
        ...


class OutputGate:
    """Holds connection output until the commits issued before it are durable."""

    __slots__ = ("_counts", "_held", "_ready", "_ticket", "deferring")

    def __init__(self) -> None:
        self._ticket: CommitTicket | None = None  # the newest commit not yet done
        self._held: deque[tuple[CommitTicket, GatedOutput, Sequence[bytes]]] = deque()
        self._counts: dict[GatedOutput, int] = {}  # pieces held per connection
        self._ready: dict[GatedOutput, list[bytes]] = {}  # acknowledgements due first
        self.deferring = False  # True once a commit finished after its tick (writer process)

    def wait_for(self, ticket: CommitTicket) -> None:
        """Output from now on waits for ``ticket`` (a no-op when it is done already)."""
        if ticket.done or ticket is self._ticket:
            return
        self._ticket = ticket
        self.deferring = True
        ticket.add_done_callback(self._release)

    def send(self, output: GatedOutput, data: Sequence[bytes], over: bool) -> None:
        """Write ``data`` now if no commit is in flight, else once it is done.

        Args:
            output: the connection.
            data: its bytes since its last flush.
            over: the connection is over (its transport closes after ``data``).
        """
        ready = self._ready.pop(output, None) if self._ready else None
        ticket = self._ticket
        if ticket is None:
            output.write_output(ready + list(data) if ready else data)
            return
        if ready:
            output.write_output(ready, False)
        if data or over:
            self._held.append((ticket, output, data))
            self._counts[output] = self._counts.get(output, 0) + 1

    def acknowledged(self, output: GatedOutput, data: list[bytes]) -> None:
        """``data`` answers a commit that is done: it goes with ``output``'s next flush,
        ahead of what ``output`` produces later, or behind what it has held already."""
        if not data:
            return
        if self._counts.get(output):
            self._held.append((COMMITTED, output, data))
            self._counts[output] += 1
        else:
            self._ready.setdefault(output, []).extend(data)

    def forget(self, output: GatedOutput) -> None:
        """``output``'s connection is gone: drop what it had ready."""
        self._ready.pop(output, None)

    def _release(self, ticket: CommitTicket) -> None:
        held = self._held
        counts = self._counts
        while held and held[0][0].done:
            _, output, data = held.popleft()
            left = counts[output] - 1
            if left:
                counts[output] = left
            else:
                del counts[output]
            output.write_output(data)
        if not held and self._ticket is not None and self._ticket.done:
            self._ticket = None

    @property
    def holding(self) -> int:
        """How many pieces of output wait (for tests and metrics)."""
        return len(self._held)
