"""The machinery under ``MqttClient``: connection handshake, reader task, output batching,
keep-alive, loss of connection and reconnection.

The public API is in :mod:`mqttv5.client.client`.

The client is glue around the sans-I/O :class:`~mqttv5.protocol.connection.Connection`: method
calls build packets and hand them to ``Connection.send``; one reader task per connection feeds
``Connection.receive_data`` and resolves the futures the methods wait on (PUBACK, PUBCOMP,
SUBACK ...) or hands messages to the application. Output is batched: every call only queues
bytes, and one flush per loop tick writes ``Connection.data_to_send()`` with a single
``writelines``. Background work is three plain tasks: the reader, keep-alive and reconnection.

Session state that outlives a connection — the :class:`~mqttv5.protocol.connection.Inflight`
tables, inbound messages the application still holds, subscriptions — lives on the client and
is handed to each new ``Connection`` when the server resumes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from ..protocol.connection import CLIENT, CLOSED, CONNECTED, Closed, Connection, Event, Inflight
from ..protocol.errors import (
    ConnectionClosed,
    InvalidState,
    LocalProtocolError,
    MqttError,
)
from ..protocol.packets import (
    MAX_PACKET_SIZE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    Suback,
    Subscription,
    Unsuback,
)
from ..protocol.properties import Properties
from ..protocol.reason_codes import ReasonCode
from ..protocol.topics import matches, parse_shared
from ..transport.base import Stream
from ..transport.url import open_url
from .delivery import CallbackDispatcher, MessageQueue
from .message import (
    ClientStats,
    ConnectedEvent,
    DisconnectedByServer,
    DisconnectedEvent,
    Message,
    MessageCallback,
    NotConnected,
    RefusedByServer,
    SessionLost,
)
from .options import PERMANENT_REFUSALS, ConnectOptions, Overflow, ReconnectPolicy

__all__ = ["ClientCore", "StreamOpener", "SubscriptionSpec"]


logger = logging.getLogger("mqttv5.client")

StreamOpener = Callable[[], Awaitable[Stream]]
"""A zero-argument coroutine function that opens a stream (instead of a URL)."""

_E = TypeVar("_E")

SubscriptionSpec = str | Subscription | tuple[str, int]

_FLUSH_EVERY: Final = 256  # queued packets that force a synchronous flush (and a yield)
_HIGH_WATER: Final = 1 << 20  # transport buffer size above which QoS 0 publish() drains
_RC: Final = ReasonCode
_SUCCESS: Final = ReasonCode.SUCCESS


def _new_publish(
    topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None
) -> Publish:
    # Publish() without properties encodes nothing (the hot path's common case).
    return Publish(topic, payload, qos, retain, properties=properties)


class _SubRecord:
    __slots__ = ("callback", "properties", "subscription")

    def __init__(
        self, subscription: Subscription, callback: MessageCallback | None, properties: Properties
    ) -> None:
        self.subscription = subscription
        self.callback = callback
        self.properties = properties


class ClientCore:
    """State and background tasks of :class:`~mqttv5.client.MqttClient` (see there)."""

    def __init__(
        self,
        client_id: str = "",
        *,
        url: str | StreamOpener | None = None,
        options: ConnectOptions | None = None,
        reconnect: ReconnectPolicy | bool | None = None,
        manual_ack: bool = False,
        queue_size: int = 10_000,
        overflow: Overflow = Overflow.DROP_OLDEST,
        offline_queue: int = 1000,
        topic_alias: bool = False,
        on_connect: Callable[[ConnectedEvent], object] | None = None,
        on_disconnect: Callable[[DisconnectedEvent], object] | None = None,
        seed: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.url = url
        self.options = options if options is not None else ConnectOptions()
        if reconnect is True:
            reconnect = ReconnectPolicy(enabled=True)
        self.reconnect = reconnect if isinstance(reconnect, ReconnectPolicy) else ReconnectPolicy()
        self.manual_ack = manual_ack
        self.offline_queue = offline_queue
        self.topic_alias = topic_alias
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.stats = ClientStats()
        self.server_properties = Properties()
        """CONNACK properties of the current (or last) connection."""
        self.session_present = False
        self._rng = random.Random(seed)
        self._inflight = Inflight()
        self._conn: Connection | None = None
        self._stream: Stream | None = None
        self._epoch = 0
        self._clean_start_sent = True
        self._ready = False
        self._closing = False
        self._connected_once = False
        self._pub_futs: dict[int, asyncio.Future[ReasonCode]] = {}
        self._req_futs: dict[int, asyncio.Future[Suback | Unsuback]] = {}
        self._send_queue: deque[tuple[Publish, asyncio.Future[ReasonCode] | None]] = deque()
        self._control: asyncio.Queue[Connack | Auth | Closed] = asyncio.Queue()
        self._held: dict[int, Message] = {}
        self._acked_early: set[int] = set()
        self._subs: dict[str, _SubRecord] = {}
        self._sid_callbacks: dict[int, MessageCallback] = {}
        self._filter_callbacks: dict[str, MessageCallback] = {}
        self._next_sid = 0
        self._topics_ok: set[str] = set()
        self._queue = MessageQueue(queue_size, overflow, self.stats)
        self._dispatcher = CallbackDispatcher(self._taken)
        self._response_topic: str | None = None
        self._rr_waiters: dict[bytes, asyncio.Future[Message]] = {}
        self._server_disconnect: Disconnect | None = None
        self._unflushed = 0
        self._flush_scheduled = False
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()

    async def _open_stream(self) -> Stream:
        url = self.url
        assert url is not None
        if isinstance(url, str):
            return await open_url(url, connect_timeout=self.options.connect_timeout)
        return await url()

    def _build_connect(self, clean_start: bool, auth: tuple[str, bytes | None] | None) -> Connect:
        opts = self.options
        v5 = opts.version == 5
        props = opts.connect_properties() if v5 else Properties()
        if auth is not None:
            props.authentication_method, props.authentication_data = auth
        password = opts.password.encode() if isinstance(opts.password, str) else opts.password
        return Connect(
            client_id=self.client_id,
            protocol_level=opts.version,
            clean_start=clean_start,
            keep_alive=opts.keep_alive,
            username=opts.username,
            password=password,
            will=opts.will,
            properties=props,
            is_bridge=opts.bridge,
        )

    async def _establish(self, *, reconnect: bool) -> ConnectedEvent:
        """Open a stream, exchange CONNECT / AUTH / CONNACK, start the background tasks."""
        opts = self.options
        if reconnect and opts.version == 5:
            # Resume the session if it can have outlived the connection.
            clean_start = opts.session_expiry_interval == 0
        else:
            clean_start = opts.clean_start
        async with asyncio.timeout(opts.connect_timeout):
            stream = await self._open_stream()
            try:
                return await self._handshake(stream, clean_start, reconnect)
            except BaseException:
                stream.abort()
                await self._stop_tasks()
                self._conn = None
                self._stream = None
                self._ready = False
                raise

    async def _handshake(
        self, stream: Stream, clean_start: bool, reconnect: bool
    ) -> ConnectedEvent:
        opts = self.options
        loop = asyncio.get_running_loop()
        auth = opts.authenticator
        first = await auth.start() if auth is not None else None
        conn = Connection(
            CLIENT,
            inflight=self._inflight,
            max_packet_size=opts.maximum_packet_size or MAX_PACKET_SIZE,
            version=opts.version,
            now=loop.time(),
        )
        self._epoch += 1
        self._conn = conn
        self._stream = stream
        self._server_disconnect = None
        self._clean_start_sent = clean_start
        self._control = asyncio.Queue()
        conn.send(self._build_connect(clean_start, first))
        self._flush()
        self._reader_task = loop.create_task(self._read_loop(conn, stream))
        while True:
            event = await self._control.get()
            if isinstance(event, Auth):
                await self._auth_step(conn, event)
                continue
            if isinstance(event, Closed):
                raise self._closed_error(event)
            if event.reason_code.is_error:
                raise RefusedByServer(event.reason_code, event.properties)
            break
        if auth is not None and event.properties.authentication_method is not None:
            await auth.step(_SUCCESS, event.properties.authentication_data)
        if reconnect and not event.session_present and self._subs:
            await self._resubscribe()
        return ConnectedEvent(event.session_present, event.properties, reconnect)

    async def _auth_step(self, conn: Connection, packet: Auth) -> None:
        auth = self.options.authenticator
        if auth is None or packet.reason_code != _RC.CONTINUE_AUTHENTICATION:
            conn.fail(_RC.PROTOCOL_ERROR, "unexpected AUTH")
            self._flush()
            return
        try:
            data = await auth.step(packet.reason_code, packet.properties.authentication_data)
        except Exception:
            # [MQTT-4.12.1-2] a failed (re-)authentication ends the connection
            if conn.state is not CLOSED:
                conn.fail(_RC.NOT_AUTHORIZED, "authentication rejected by the client")
                self._flush()
                stream = self._stream
                if stream is not None and conn is self._conn:
                    await stream.close()  # the reader sees the end and reports the loss
            raise
        if conn.state is CLOSED:
            return
        props = Properties(authentication_method=packet.properties.authentication_method)
        props.authentication_data = data
        conn.send(Auth(_RC.CONTINUE_AUTHENTICATION, props))
        self._flush()

    def _closed_error(self, event: Closed) -> MqttError:
        disc = self._server_disconnect
        if disc is not None:
            return DisconnectedByServer(disc.reason_code, disc.properties)
        exc = ConnectionClosed(event.sent, event.received, event.reason_string)
        if event.error is not None:
            exc.__cause__ = event.error
        return exc

    async def _read_loop(self, conn: Connection, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        error: BaseException | None = None
        cancelled = False
        try:
            while True:
                try:
                    data = await stream.read()
                except ConnectionClosed as exc:
                    error = exc
                    data = b""
                if data:
                    conn.receive_data(data, loop.time())
                else:
                    conn.receive_eof()
                events = conn.events_received()
                if events:
                    self._dispatch(conn, events)
                if self._send_queue and self._ready:
                    self._pump()
                self._flush()
                if conn.state is CLOSED:
                    break
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if conn is self._conn:
                self._lost(conn, conn.closed_event, error, cancelled=cancelled)

    def _dispatch(self, conn: Connection, events: list[Event]) -> None:
        pub_futs = self._pub_futs
        for event in events:
            kind = type(event)
            if kind is Publish:
                self._on_publish(conn, event)  # type: ignore[arg-type]
            elif kind is PubAck or kind is PubComp or kind is PubRec:
                assert isinstance(event, PubAck | PubComp | PubRec)
                if kind is PubRec and not event.reason_code.is_error:
                    continue  # PUBREL already queued by the connection; wait for PUBCOMP
                fut = pub_futs.pop(event.packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.reason_code)
            elif kind is Suback or kind is Unsuback:
                assert isinstance(event, Suback | Unsuback)
                req = self._req_futs.pop(event.packet_id, None)
                if req is not None and not req.done():
                    req.set_result(event)
            elif kind is Connack:
                assert isinstance(event, Connack)
                self._on_connack(conn, event)
            elif kind is Auth:
                assert isinstance(event, Auth)
                self._control.put_nowait(event)
            elif kind is Disconnect:
                assert isinstance(event, Disconnect)
                self._server_disconnect = event
            elif kind is Closed:
                assert isinstance(event, Closed)
                self._control.put_nowait(event)

    def _on_connack(self, conn: Connection, packet: Connack) -> None:
        if packet.reason_code.is_error:
            self._control.put_nowait(packet)
            return
        if packet.session_present and self._clean_start_sent:
            # [MQTT-3.2.2-4] a client that has no session state closes on Session Present 1
            conn.fail(_RC.PROTOCOL_ERROR, "Session Present 1 in answer to Clean Start 1")
            return
        props = packet.properties
        if props.assigned_client_identifier:
            self.client_id = props.assigned_client_identifier
        self.server_properties = props
        self.session_present = packet.session_present
        if not packet.session_present:
            self._drop_session()
        else:
            conn.resend_inflight()
        self._ready = True
        self._connected_once = True
        self.stats.connects += 1
        self._pump()
        if conn.keep_alive:
            loop = asyncio.get_running_loop()
            self._keepalive_task = loop.create_task(self._keepalive_loop(conn))
        self._control.put_nowait(packet)

    def _drop_session(self) -> None:
        """The server has no session: forget ours [MQTT-3.2.2-4] (in-flight messages fail)."""
        inflight = self._inflight
        if inflight.out:
            error = SessionLost("the server did not resume the session; message not confirmed")
            for fut in self._pub_futs.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pub_futs.clear()
            inflight.out.clear()
        inflight.in_qos2.clear()
        for message in self._held.values():
            message._acked = True
        self._held.clear()
        self._acked_early.clear()

    def _on_publish(self, conn: Connection, packet: Publish) -> None:
        qos = packet.qos
        if qos:
            pid = packet.packet_id
            assert pid is not None
            held = self._held.get(pid)
            if held is not None:
                # A retransmission of a message the application still holds: not delivered
                # again; its acknowledgement will answer this connection [MQTT-4.3.3-9].
                held._epoch = self._epoch
                self.stats.duplicates_suppressed += 1
                return
            if pid in self._acked_early:
                self._acked_early.discard(pid)
                conn.ack(pid)
                self.stats.duplicates_suppressed += 1
                return
        message = Message(packet, self, self._epoch)
        self.stats.messages_received += 1
        if self._response_topic is not None and packet.topic == self._response_topic:
            self._on_response(conn, message)
            return
        if qos:
            self._held[packet.packet_id] = message  # type: ignore[index]
        callbacks = self._callbacks_for(packet) if self._filter_callbacks else None
        if callbacks:
            self._dispatcher.submit(message, callbacks)
        else:
            self._queue.put(message)

    def _callbacks_for(self, packet: Publish) -> list[MessageCallback] | None:
        sids = packet.subscription_identifiers
        found: list[MessageCallback] = []
        if sids:
            for sid in sids:
                cb = self._sid_callbacks.get(sid)
                if cb is not None and cb not in found:
                    found.append(cb)
            return found or None
        topic = packet.topic
        for filt, cb in self._filter_callbacks.items():
            if cb not in found and matches(parse_shared(filt)[1], topic):
                found.append(cb)
        return found or None

    def _on_response(self, conn: Connection, message: Message) -> None:
        if message.qos:
            self._held[message.packet_id] = message  # type: ignore[index]
            self.ack(message)
        corr = message.correlation_data
        fut = self._rr_waiters.pop(corr, None) if corr is not None else None
        if fut is not None and not fut.done():
            fut.set_result(message)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        conn = self._conn
        stream = self._stream
        if conn is None or stream is None:
            return
        data = conn.data_to_send()
        if not data:
            return
        try:
            stream.writelines(data)
        except ConnectionClosed:
            return  # the reader task sees the broken stream and handles it
        conn.mark_sent(asyncio.get_running_loop().time())

    def _schedule_flush(self) -> None:
        self._unflushed += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _send_publish(self, conn: Connection, packet: Publish) -> None:
        """Send one PUBLISH now (with an outbound Topic Alias when enabled)."""
        if self.topic_alias and conn.peer_topic_alias_maximum and packet.topic_alias is None:
            self._send_aliased(conn, packet)
        else:
            conn.send(packet)
        self.stats.messages_sent += 1
        self._schedule_flush()

    def _send_aliased(self, conn: Connection, packet: Publish) -> None:
        topic = packet.topic
        original = packet.properties
        if len(packet.payload) + len(topic) * 4 + 64 > conn.peer_maximum_packet_size:
            conn.send(packet)  # may be too large: let the connection decide before aliasing
            return
        alias, known = conn.outbound_alias(topic)
        if alias is None:
            conn.send(packet)
            return
        props = original.copy()
        props.topic_alias = alias
        packet.set_properties(props)
        if known:
            packet.topic = ""
        try:
            conn.send(packet)
            if not known:
                conn.record_alias(topic, alias)
        finally:
            # Kept for retransmission after a reconnect, when aliases are forgotten.
            packet.topic = topic
            packet.set_properties(original)

    def _pump(self) -> None:
        """Send queued publishes while connected and the server's Receive Maximum allows."""
        conn = self._conn
        queue = self._send_queue
        if conn is None or not self._ready:
            return
        while queue:
            packet, fut = queue[0]
            if fut is not None and fut.done():
                queue.popleft()  # the caller gave up (cancelled)
                continue
            if packet.qos and conn.send_quota <= 0:
                break
            queue.popleft()
            try:
                self._send_publish(conn, packet)
            except (LocalProtocolError, InvalidState) as exc:
                if fut is not None:
                    fut.set_exception(exc)
                continue
            if fut is not None:
                if packet.qos:
                    assert packet.packet_id is not None
                    self._pub_futs[packet.packet_id] = fut
                else:
                    fut.set_result(_SUCCESS)

    def _taken(self, message: Message) -> None:
        if not self.manual_ack:
            self.ack(message)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1/2 message: PUBACK (QoS 1) or PUBREC (QoS 2). Idempotent.

        If the connection the message came on is gone and the session was resumed, the
        acknowledgement answers the server's retransmission (which is not delivered again).
        """
        if message._acked:
            return
        message._acked = True
        pid = message.packet_id
        if pid is None or self._held.get(pid) is not message:
            return  # QoS 0, or the session was lost: nothing to acknowledge
        del self._held[pid]
        conn = self._conn
        if conn is not None and message._epoch == self._epoch and conn.state is CONNECTED:
            conn.ack(pid)
            self._schedule_flush()
        elif message.qos == 2:
            self._inflight.in_qos2.add(pid)  # answer the retransmission with PUBREC
        else:
            self._acked_early.add(pid)

    def _require_ready(self) -> Connection:
        conn = self._conn
        if conn is None or not self._ready:
            raise NotConnected()
        return conn

    async def _keepalive_loop(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        while conn.state is CONNECTED:
            deadline = conn.get_timer()
            if deadline is None:
                return
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            conn.handle_timer(loop.time())
            if conn.close_expected():
                # No PINGRESP within keep-alive: the connection is dead.
                if self._stream is not None and conn is self._conn:
                    self._stream.abort()
                return
            self._flush()
            if (conn.get_timer() or 0.0) <= loop.time():
                await asyncio.sleep(0.05)

    def _lost(
        self,
        conn: Connection,
        closed: Closed | None,
        error: BaseException | None,
        *,
        cancelled: bool = False,
    ) -> None:
        """The reader saw the connection end; decide between reconnecting and giving up."""
        was_ready = self._ready
        self._ready = False
        stream = self._stream
        if stream is not None:
            stream.abort()
        keepalive = self._keepalive_task
        self._keepalive_task = None
        if keepalive is not None and keepalive is not asyncio.current_task():
            keepalive.cancel()
        if closed is None:
            closed = Closed(reason_string=str(error) if error else None)
        self._control.put_nowait(closed)
        exc = self._closed_error(closed)
        for fut in self._req_futs.values():
            if not fut.done():
                fut.set_exception(exc)
        self._req_futs.clear()
        if not was_ready:
            return  # still in the handshake: connect() raises
        disc = self._server_disconnect
        will_reconnect = self.reconnect.enabled and not self._closing and not cancelled
        event = DisconnectedEvent(
            reason_code=disc.reason_code if disc is not None else None,
            reason_string=closed.reason_string,
            server_reference=disc.properties.server_reference if disc is not None else None,
            properties=disc.properties if disc is not None else Properties(),
            exception=None if self._closing else exc,
            requested=self._closing,
            will_reconnect=will_reconnect,
        )
        if will_reconnect:
            loop = asyncio.get_running_loop()
            self._reconnect_task = loop.create_task(self._reconnect_loop())
        else:
            self._give_up(None if self._closing else exc)
        self._fire_nowait(self.on_disconnect, event)

    def _give_up(self, error: BaseException | None) -> None:
        """No more connections: fail waiting publishes and end the message iterators."""
        failure = error if error is not None else ConnectionClosed(reason_string="disconnected")
        for fut in self._pub_futs.values():
            if not fut.done():
                fut.set_exception(failure)
        self._pub_futs.clear()
        while self._send_queue:
            _, waiting = self._send_queue.popleft()
            if waiting is not None and not waiting.done():
                waiting.set_exception(failure)
        for rr in self._rr_waiters.values():
            if not rr.done():
                rr.set_exception(failure)
        self._queue.end(error)

    async def _reconnect_loop(self) -> None:
        policy = self.reconnect
        me = asyncio.current_task()
        attempt = 0
        last: BaseException | None = None
        try:
            while not self._closing:
                attempt += 1
                if policy.max_attempts is not None and attempt > policy.max_attempts:
                    break
                await asyncio.sleep(policy.delay(attempt, self._rng))
                self.stats.reconnect_attempts += 1
                try:
                    event = await self._establish(reconnect=True)
                except RefusedByServer as exc:
                    last = exc
                    logger.warning("! reconnect attempt %d refused: %s", attempt, exc)
                    if exc.reason_code in PERMANENT_REFUSALS:
                        break
                    continue
                except (MqttError, OSError, TimeoutError) as exc:
                    last = exc
                    logger.info("! reconnect attempt %d failed: %s", attempt, exc)
                    continue
                self._reconnect_task = None
                await self._fire(self.on_connect, event)
                return
        finally:
            if self._reconnect_task is me:
                self._reconnect_task = None
        if not self._closing:
            self._give_up(last or ConnectionClosed(reason_string="reconnection failed"))

    async def _fire(self, callback: Callable[[_E], object] | None, event: _E) -> None:
        if callback is None:
            return
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("! event callback %r failed", callback)

    def _fire_nowait(self, callback: Callable[[_E], object] | None, event: _E) -> None:
        if callback is None:
            return
        try:
            result = callback(event)
        except Exception:
            logger.exception("! event callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(_await(result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        for name in ("_keepalive_task", "_reader_task"):
            task: asyncio.Task[None] | None = getattr(self, name)
            setattr(self, name, None)
            if task is None or task is current or task.done():
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await task

    async def _resubscribe(self) -> None:
        raise NotImplementedError


async def _await(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("! event callback failed")
