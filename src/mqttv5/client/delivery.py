"""Handing received messages to the application: the bounded receive queue behind
:meth:`MqttClient.messages`, and the callback dispatcher for per-subscription callbacks.

Both call ``on_taken(message)`` once the application has the message (taken from the iterator,
or every callback returned); the client then acknowledges QoS 1/2 messages unless
``manual_ack`` is set. That is the backpressure: while the application has not taken a QoS 1/2
message its PUBACK/PUBREC is withheld, and the server stops at our Receive Maximum.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable

from .message import ClientStats, Message, MessageCallback
from .options import Overflow

__all__ = ["CallbackDispatcher", "MessageQueue", "MessageStream"]

logger = logging.getLogger("mqttv5.client")

OnTaken = Callable[[Message], None]


class MessageQueue:
    """The receive queue: bounded for QoS 0 (see :class:`Overflow`); QoS 1/2 messages are never
    dropped (they are bounded by the Receive Maximum we advertise)."""

    def __init__(self, maxsize: int, overflow: Overflow, stats: ClientStats) -> None:
        self.maxsize = maxsize
        self.overflow = overflow
        self.stats = stats
        self.items: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.ended = False
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, message: Message) -> None:
        """Queue a message (applying the QoS 0 overflow policy) and wake one reader."""
        items = self.items
        if message.qos == 0 and len(items) >= self.maxsize:
            self.stats.dropped_qos0 += 1
            if self.overflow is Overflow.DROP_NEWEST:
                return
            if items[0].qos == 0:
                items.popleft()
            else:
                for old in items:
                    if old.qos == 0:
                        items.remove(old)
                        break
                else:
                    return  # only QoS 1/2 queued: the new QoS 0 message is the one dropped
        items.append(message)
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def end(self, error: BaseException | None = None) -> None:
        """No more messages: iterators stop (or raise ``error``) once the queue is empty."""
        self.ended = True
        self.error = error
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    def reopen(self) -> None:
        """Accept messages again (after a new :meth:`MqttClient.connect`)."""
        self.ended = False
        self.error = None

    async def get(self) -> Message:
        """The next message; raises StopAsyncIteration (or the closing error) at the end."""
        items = self.items
        while not items:
            if self.ended:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        return items.popleft()


class MessageStream:
    """``async for message in client.messages():`` — taking a message acknowledges it (unless
    ``manual_ack``). The iteration ends after :meth:`MqttClient.disconnect`, and raises the
    connection error when the connection is lost for good."""

    __slots__ = ("_on_taken", "_queue")

    def __init__(self, queue: MessageQueue, on_taken: OnTaken) -> None:
        self._queue = queue
        self._on_taken = on_taken

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        queue = self._queue
        if queue.items:
            message = queue.items.popleft()
        else:
            message = await queue.get()
        if message.qos:
            self._on_taken(message)
        return message

    def pending(self) -> int:
        """Messages waiting in the queue."""
        return len(self._queue.items)


class CallbackDispatcher:
    """Runs per-subscription callbacks in order, in one task (sync ones called directly,
    ``async def`` ones awaited), so a slow callback delays only later callbacks."""

    def __init__(self, on_taken: OnTaken) -> None:
        self._on_taken = on_taken
        self._items: deque[tuple[Message, list[MessageCallback]]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def submit(self, message: Message, callbacks: list[MessageCallback]) -> None:
        """Queue a message for its callbacks."""
        self._items.append((message, callbacks))
        self._stopped = False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        items = self._items
        while not self._stopped:
            while items and not self._stopped:
                message, callbacks = items.popleft()
                for callback in callbacks:
                    try:
                        result = callback(message)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        logger.exception("! message callback %r failed", callback)
                if message.qos:
                    self._on_taken(message)
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake

    async def stop(self) -> None:
        """Cancel the dispatcher (queued messages stay unacknowledged)."""
        self._items.clear()
        self._stopped = True
        task = self._task
        self._task = None
        if task is asyncio.current_task():
            return  # stop() called from a callback: the task ends when the callback returns
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
