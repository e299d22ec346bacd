"""Fragmentation and the receive side's bounded buffers, without I/O.

Send side: :class:`SendQueue` holds whole messages (one ``send()`` each) and cuts the next
segment off the head only when the congestion window lets one go, so a segment is always as
large as the datagram budget known at that moment.

Receive side: :class:`ReceiveBuffer` takes DATA segments in any order, drops duplicates and
segments beyond the receive window, holds the rest out of order and hands them in order to a
:class:`Reassembler`, which joins fragments into messages. Every buffer is bounded: the
out-of-order buffer by the receive window (segments), the reassembler by the maximum message
size (bytes), by count (in-order delivery means at most one message is ever partly assembled)
and by time (the connection ends it when no fragment has arrived for its idle timeout).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Final

from .wire import FIRST, LAST, TOTAL_SIZE, CloseCode

__all__ = ["Reassembler", "ReassemblyError", "ReceiveBuffer", "Received", "SendQueue"]

_WHOLE: Final = FIRST | LAST


class ReassemblyError(Exception):
    """The peer's fragments break the rules; the connection closes with ``code``.

    Internal: the connection catches it and turns it into a CLOSE and a termination event.
    """

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SendQueue:
    """Messages waiting to be cut into DATA segments, oldest first."""

    __slots__ = ("_bytes", "_messages", "_offset")

    def __init__(self) -> None:
        self._messages: deque[bytes] = deque()
        self._offset = 0  # bytes of the head message already cut off
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._messages)

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes not yet cut into segments."""
        return self._bytes - self._offset

    def push(self, message: bytes) -> None:
        """Queue one message."""
        self._messages.append(message)
        self._bytes += len(message)

    def clear(self) -> None:
        """Discard everything."""
        self._messages.clear()
        self._offset = self._bytes = 0

    def next_segment(self, room: int) -> tuple[int, int | None, bytes]:
        """Cut the next segment: ``(flags, total, payload)``.

        Args:
            room: payload bytes a DATA datagram holds (budget minus the DATA header). A first
                fragment of several gives up :data:`TOTAL_SIZE` of it to the message length.

        The queue must not be empty.
        """
        message = self._messages[0]
        offset = self._offset
        size = len(message)
        if offset == 0:
            if size <= room:
                self._pop(size)
                return _WHOLE, None, message
            chunk = message[: room - TOTAL_SIZE]
            self._offset = len(chunk)
            return FIRST, size, chunk
        if size - offset <= room:
            self._pop(size)
            return LAST, None, message[offset:]
        self._offset = offset + room
        return 0, None, message[offset : offset + room]

    def _pop(self, size: int) -> None:
        self._messages.popleft()
        self._bytes -= size
        self._offset = 0


class Reassembler:
    """Joins in-order fragments into messages, at most ``max_message_size`` bytes each."""

    __slots__ = ("_parts", "_size", "_total", "last_progress", "max_message_size", "peak_bytes")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._parts: list[bytes] = []
        self._size = 0
        self._total = 0
        self.last_progress: float | None = None  # when the partial message last grew
        self.peak_bytes = 0  # the most bytes ever held (for tests and stats)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the partly assembled message."""
        return self._size

    def push(self, flags: int, total: int | None, payload: bytes, now: float) -> bytes | None:
        """Add the next fragment; return the message it completes, if any.

        Raises:
            ReassemblyError: a fragment out of place, a message larger than
                ``max_message_size``, or fragments that disagree with the announced length.
        """
        if flags == _WHOLE:
            if self._parts:
                raise ReassemblyError(CloseCode.PROTOCOL_ERROR, "whole message inside another")
            if len(payload) > self.max_message_size:
                raise ReassemblyError(CloseCode.MESSAGE_TOO_LARGE, "message too large")
            return payload
        if flags & FIRST:
            if self._parts:
                raise ReassemblyError(CloseCode.PROTOCOL_ERROR, "first fragment inside a message")
            assert total is not None  # the parser guarantees it
            if total > self.max_message_size:  # refused before any of it is buffered
                raise ReassemblyError(CloseCode.MESSAGE_TOO_LARGE, "message too large")
            self._total = total
        elif not self._parts:
            raise ReassemblyError(CloseCode.PROTOCOL_ERROR, "fragment without a first fragment")
        self._parts.append(payload)
        self._size += len(payload)
        self.last_progress = now
        if self._size > self._total or (flags & LAST and self._size != self._total):
            raise ReassemblyError(CloseCode.PROTOCOL_ERROR, "fragments disagree with the length")
        self.peak_bytes = max(self.peak_bytes, self._size)
        if not flags & LAST:
            return None
        message = b"".join(self._parts)
        self._parts.clear()
        self._size = self._total = 0
        self.last_progress = None
        return message


class Received(IntEnum):
    """What :meth:`ReceiveBuffer.receive` made of a segment."""

    IN_ORDER = 0  # delivered (with any buffered segments it unblocked)
    OUT_OF_ORDER = 1  # held until the gap before it fills
    DUPLICATE = 2  # had it already: dropped
    BEYOND_WINDOW = 3  # too far ahead of the next expected segment: dropped


class ReceiveBuffer:
    """Out-of-order buffering, duplicate suppression and in-order delivery of segments.

    Sequence numbers here are full (64-bit) numbers; the caller expands the wire's 32 bits.
    """

    __slots__ = ("_held", "messages", "next_seq", "peak_held", "reassembler", "window")

    def __init__(self, window: int, max_message_size: int) -> None:
        self.window = window
        self.next_seq = 0  # every segment below it was delivered
        self._held: dict[int, tuple[int, int | None, bytes]] = {}
        self.reassembler = Reassembler(max_message_size)
        self.messages: list[bytes] = []  # complete messages, for the caller to take
        self.peak_held = 0

    @property
    def held(self) -> int:
        """Segments held out of order."""
        return len(self._held)

    def receive(
        self, seq: int, flags: int, total: int | None, payload: bytes, now: float
    ) -> Received:
        """Take one segment; complete messages are appended to :attr:`messages`.

        Raises:
            ReassemblyError: from the reassembler (the connection must close).
        """
        next_seq = self.next_seq
        if seq < next_seq or seq in self._held:
            return Received.DUPLICATE
        if seq >= next_seq + self.window:
            return Received.BEYOND_WINDOW
        if seq > next_seq:
            self._held[seq] = (flags, total, payload)
            self.peak_held = max(self.peak_held, len(self._held))
            return Received.OUT_OF_ORDER
        self._deliver(flags, total, payload, now)
        held = self._held
        seq += 1
        while held:
            segment = held.pop(seq, None)
            if segment is None:
                break
            self._deliver(*segment, now)
            seq += 1
        self.next_seq = seq
        return Received.IN_ORDER

    def _deliver(self, flags: int, total: int | None, payload: bytes, now: float) -> None:
        message = self.reassembler.push(flags, total, payload, now)
        if message is not None:
            self.messages.append(message)

    def take_messages(self) -> list[bytes]:
        """The complete messages received since the last call, in order."""
        messages, self.messages = self.messages, []
        return messages

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ranges held above :attr:`next_seq`: (offset, length), ascending."""
        if not self._held or limit <= 0:
            return []
        base = self.next_seq
        blocks: list[tuple[int, int]] = []
        start = prev = -2
        for seq in sorted(self._held):
            if seq != prev + 1:
                if start >= 0:
                    blocks.append((start - base, prev - start + 1))
                    if len(blocks) == limit:
                        return blocks
                start = seq
            prev = seq
        blocks.append((start - base, prev - start + 1))
        return blocks

    def clear(self) -> None:
        """Drop everything held (the connection ended)."""
        self._held.clear()
        self.messages.clear()
