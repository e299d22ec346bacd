"""``MqttClient``: the asyncio MQTT 5.0 client.

The client is glue around the sans-I/O :class:`~mqttv5.protocol.connection.Connection`: method
calls build packets and hand them to ``Connection.send``; one reader task per connection feeds
``Connection.receive_data`` and resolves the futures the methods wait on (PUBACK, PUBCOMP,
SUBACK ...) or hands messages to the application (see :mod:`mqttv5.client.core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self

from ..protocol.connection import CONNECTED, Closed, Connection, Inflight
from ..protocol.errors import (
    ConnectionClosed,
    InvalidState,
    LocalProtocolError,
    MqttError,
    ProtocolError,
)
from ..protocol.packets import (
    Auth,
    Disconnect,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from ..protocol.properties import Properties
from ..protocol.reason_codes import ReasonCode
from ..protocol.topics import parse_shared, validate_topic_filter, validate_topic_name
from ..transport.base import Stream, TransportError
from ..transport.tls import TlsConfig
from ..transport.url import open_url
from .core import ClientCore, StreamOpener, SubscriptionSpec, _new_publish, _SubRecord
from .delivery import MessageStream
from .message import ConnectedEvent, Message, MessageCallback, NotConnected
from .options import ConnectOptions

__all__ = ["MqttClient", "StreamOpener"]

_FLUSH_EVERY: Final = 256  # queued packets that force a synchronous flush (and a yield)
_HIGH_WATER: Final = 1 << 20  # transport buffer size above which QoS 0 publish() drains
_RC: Final = ReasonCode
_SUCCESS: Final = ReasonCode.SUCCESS


class MqttClient(ClientCore):
    """An asyncio MQTT 5.0 (and 3.1.1) client.

    Args:
        client_id: the Client Identifier ("" lets the server assign one).
        url: broker URL used by ``async with`` and by :meth:`connect` when it gets none.
        options: CONNECT options (:class:`ConnectOptions`); may also be given to :meth:`connect`.
        reconnect: automatic reconnection: a :class:`ReconnectPolicy`, True for the default
            policy, or False/None for none (the library default).
        manual_ack: the application acknowledges each QoS 1/2 message itself
            (``await message.ack()`` or :meth:`ack`); otherwise a message is acknowledged when
            the application takes it from :meth:`messages` or its callbacks return.
        queue_size: bound of the receive queue for QoS 0 messages.
        overflow: what happens to a QoS 0 message when the queue is full.
        offline_queue: how many publishes may wait while a reconnection is in progress;
            0 makes publish() fail at once with :class:`NotConnected`.
        topic_alias: use outbound Topic Aliases automatically (up to the server's Topic Alias
            Maximum; one alias per topic name, first come first served).
        on_connect: called with a :class:`ConnectedEvent` after each successful connection
            (sync or async).
        on_disconnect: called with a :class:`DisconnectedEvent` when a connection ends.
        seed: seeds the reconnection jitter (for reproducible tests).
    """

    @property
    def is_connected(self) -> bool:
        """True while a connection is established (CONNACK received, not yet closed)."""
        return self._ready

    @property
    def connection(self) -> Connection | None:
        """The current protocol connection (for inspection: peer limits, keep-alive ...)."""
        return self._conn

    @property
    def inflight(self) -> Inflight:
        """Outgoing QoS 1/2 messages not yet completed (session state)."""
        return self._inflight

    def set_tls_config(
        self,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        server_hostname: str | None = None,
        *,
        ca_path: str | None = None,
        alpn: Sequence[str] | None = None,
        min_version: str = "tlsv1.2",
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Set how ``mqtts://`` and ``wss://`` connections are secured (``options.tls``).

        Args:
            ca_file: CA certificates (PEM) the server's certificate must chain to; None: the
                system's trusted CAs.
            cert_file: our certificate (PEM) for mutual TLS.
            key_file: its private key (PEM, not encrypted); None if ``cert_file`` holds it.
            insecure: do not check the server's host name against its certificate (the chain
                is still verified), as mosquitto_pub's ``--insecure``.
            server_hostname: the name sent as SNI and checked; None: the URL's host.
            ca_path: a directory of CA certificates.
            alpn: ALPN protocols to offer; None: ``mqtt`` (``http/1.1`` for ``wss://``).
            min_version: ``"tlsv1.2"`` or ``"tlsv1.3"``.
            context: a ready :class:`ssl.SSLContext` instead of the above.

        A handshake failure then raises :class:`~mqttv5.transport.base.TlsError` from
        :meth:`connect`; TLS settings with an ``mqtt://`` URL are an error.
        """
        self.options.tls = TlsConfig(
            ca_file=ca_file,
            ca_path=ca_path,
            cert_file=cert_file,
            key_file=key_file,
            insecure=insecure,
            server_hostname=server_hostname,
            alpn=tuple(alpn) if alpn is not None else None,
            min_version=min_version,
            context=context,
        )

    def set_dtls_config(
        self,
        psk_identity: str | None = None,
        psk: bytes | str | None = None,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Set how ``mqtts-dtls://`` connections are secured (``options.dtls``).

        Args:
            psk_identity: the pre-shared key's identity (the broker takes it as the user name).
            psk: the key, as bytes or as a hex string (as ``--psk`` and Mosquitto's psk_file).
            ca_file: CA certificates (PEM) the server's certificate must chain to.
            cert_file: our certificate (PEM) for mutual authentication.
            key_file: its private key (PEM).
            server_hostname: the name checked against the server's certificate; None: the
                URL's host (with ``ca_file``).

        Raises:
            ValueError: a PSK identity without a key (or the reverse), a key that is not
                hexadecimal, or neither a PSK nor a CA file.
        """
        from ..transport.dtls import DtlsClientSettings

        if (psk_identity is None) != (psk is None):
            raise ValueError("psk_identity and psk go together")
        key = bytes.fromhex(psk) if isinstance(psk, str) else psk
        if key is None and ca_file is None:
            raise ValueError("DTLS needs a PSK (psk_identity and psk) or a CA file")
        self.options.dtls = DtlsClientSettings(
            psk_identity=psk_identity,
            psk=key,
            cafile=ca_file,
            certfile=cert_file,
            keyfile=key_file,
            server_hostname=server_hostname,
        )

    async def _open_stream(self) -> Stream:
        url = self.url
        if isinstance(url, str):
            opts = self.options
            udp_scheme = url.lower().startswith(("mqtt-udp:", "mqtts-dtls:"))
            return await open_url(
                url,
                connect_timeout=opts.connect_timeout,
                tls=opts.tls,
                dtls=opts.dtls if udp_scheme else None,
                udp=opts.udp if udp_scheme else None,
            )
        return await super()._open_stream()

    async def _handshake(
        self, stream: Stream, clean_start: bool, reconnect: bool
    ) -> ConnectedEvent:
        try:
            return await super()._handshake(stream, clean_start, reconnect)
        except ConnectionClosed as exc:
            # A transport that knows why (a TLS 1.3 server refusing our certificate tells us
            # on the first read, after the handshake looked complete) says so.
            failure = getattr(stream, "failure", None)
            if isinstance(failure, TransportError):
                raise failure from exc
            raise

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closing:
            await self.disconnect()

    async def connect(
        self, url: str | StreamOpener | None = None, options: ConnectOptions | None = None
    ) -> ConnectedEvent:
        """Connect and wait for CONNACK (and any AUTH exchange).

        Args:
            url: ``mqtt://host:port`` (``tcp://`` alike), ``mqtts://host:8883`` (TLS, see
                :meth:`set_tls_config`), ``ws://host:8080/mqtt`` or ``wss://host:8443/mqtt``
                (WebSocket), ``mqtt-udp://host:1884`` (UDP with a reliability layer) or
                ``mqtts-dtls://host:8884`` (DTLS, see :meth:`set_dtls_config`), or a coroutine
                function returning a
                :class:`~mqttv5.transport.Stream`.
            options: CONNECT options (default: those given to the constructor).

        Returns:
            the :class:`ConnectedEvent` (session present, CONNACK properties).

        Raises:
            RefusedByServer: CONNACK carried an error reason code (``str(exc)`` reads like
                ``Connection refused: not authorized (0x87)``).
            TransportError: the network connection could not be made (its subclasses
                TlsError: the TLS handshake failed, e.g. an untrusted or expired certificate;
                WebSocketError: the WebSocket upgrade was refused).
            InvalidState: already connected.
            TimeoutError: no CONNACK within ``options.connect_timeout``.
        """
        if self._ready or self._reconnect_task is not None:
            raise InvalidState("already connected")
        if url is not None:
            self.url = url
        if options is not None:
            self.options = options
        if self.url is None:
            raise InvalidState("connect() needs a URL")
        self._closing = False
        self._queue.reopen()
        event = await self._establish(reconnect=False)
        await self._fire(self.on_connect, event)
        return event

    async def reauthenticate(self) -> None:
        """Re-authenticate on the open connection (AUTH 0x19, section 4.12.1).

        Raises:
            InvalidState: no authenticator is configured, or not connected.
            ConnectionClosed: the server closed the connection (authentication failed).
        """
        auth = self.options.authenticator
        conn = self._conn
        if auth is None:
            raise InvalidState("reauthenticate() needs an authenticator in ConnectOptions")
        if conn is None or not self._ready:
            raise NotConnected()
        method, data = await auth.start()
        props = Properties(authentication_method=method)
        props.authentication_data = data
        conn.send(Auth(_RC.RE_AUTHENTICATE, props))
        self._flush()
        while True:
            event = await self._control.get()
            if isinstance(event, Closed):
                raise self._closed_error(event)
            if isinstance(event, Auth):
                if event.reason_code == _SUCCESS:
                    await auth.step(_SUCCESS, event.properties.authentication_data)
                    return
                await self._auth_step(conn, event)

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish a message and wait until its QoS flow completes.

        QoS 0 returns once the PUBLISH is queued for writing (it waits only when the transport
        buffer is above its high-water mark); QoS 1 returns the PUBACK reason code, QoS 2 the
        PUBCOMP's (or an error PUBREC's). A reason code such as 0x10 *No matching subscribers*
        or 0x87 *Not authorized* is returned, not raised: check ``rc.is_error``.

        When the server's Receive Maximum is reached, the call waits for a free slot. While a
        reconnection is in progress the message is queued (up to ``offline_queue``) and sent
        on the next connection.

        Raises:
            LocalProtocolError: the message breaks a server limit: larger than its Maximum
                Packet Size (0x95), QoS above its Maximum QoS (0x9B; the client does not
                downgrade silently), retain when Retain is not available (0x9A), or an invalid
                topic name (0x90).
            NotConnected: not connected and not queueing.
            SessionLost: the connection was lost and the server did not resume the session.
        """
        if type(payload) is not bytes:
            payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        if topic not in self._topics_ok:
            self._check_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        packet = _new_publish(topic, payload, qos, retain, properties)
        conn = self._conn
        if self._ready and conn is not None and conn.state is CONNECTED:
            if not qos:
                self._send_publish(conn, packet)
                if self._unflushed >= _FLUSH_EVERY:
                    await self._flush_and_yield()
                return _SUCCESS
            if conn.send_quota > 0 and not self._send_queue:
                fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
                self._send_publish(conn, packet)
                assert packet.packet_id is not None
                self._pub_futs[packet.packet_id] = fut
                return await fut
            queued: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
            self._send_queue.append((packet, queued))
            return await queued
        return await self._publish_offline(packet)

    async def _flush_and_yield(self) -> None:
        self._flush()
        stream = self._stream
        if stream is not None and stream.write_buffer_size() > _HIGH_WATER:
            with contextlib.suppress(ConnectionClosed):
                await stream.drain()
        else:
            await asyncio.sleep(0)

    async def _publish_offline(self, packet: Publish) -> ReasonCode:
        reconnecting = self.reconnect.enabled and self._connected_once and not self._closing
        if not reconnecting or self.offline_queue <= 0:
            raise NotConnected("not connected" if not reconnecting else "reconnecting")
        if len(self._send_queue) >= self.offline_queue:
            raise NotConnected(f"offline queue full ({self.offline_queue} messages)")
        conn = self._conn
        if conn is not None and packet.qos > conn.peer_maximum_qos:
            raise LocalProtocolError(_RC.QOS_NOT_SUPPORTED, f"QoS {packet.qos} not supported")
        if not packet.qos:
            self._send_queue.append((packet, None))
            return _SUCCESS
        fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._send_queue.append((packet, fut))
        return await fut

    def _check_topic(self, topic: str) -> None:
        try:
            validate_topic_name(topic)
        except ProtocolError as exc:
            raise LocalProtocolError(exc.reason_code, exc.message) from None
        if len(self._topics_ok) < 4096:
            self._topics_ok.add(topic)

    def messages(self) -> MessageStream:
        """Received messages not taken by a subscription callback, as an async iterator.

        ``async for message in client.messages(): ...`` — the queue is bounded (``queue_size``,
        QoS 0 overflow per ``overflow``); a QoS 1/2 message is acknowledged when the iterator
        hands it out (unless ``manual_ack``). Iteration ends after :meth:`disconnect`, and
        raises the connection error if the connection is lost and not re-established.
        """
        return MessageStream(self._queue, self._taken)

    @property
    def pending_messages(self) -> int:
        """Messages waiting in the receive queue."""
        return len(self._queue)

    async def subscribe(
        self,
        topic_filter: SubscriptionSpec | Sequence[SubscriptionSpec],
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        callback: MessageCallback | None = None,
        subscription_identifier: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> list[ReasonCode]:
        """Subscribe and wait for SUBACK.

        Args:
            topic_filter: a filter, a :class:`Subscription`, a ``(filter, qos)`` pair, or a list
                of them (options given here apply to plain strings).
            qos: maximum QoS requested.
            no_local: do not receive our own publications (MQTT 5).
            retain_as_published: keep the RETAIN flag of forwarded messages (MQTT 5).
            retain_handling: 0 send retained messages, 1 only for a new subscription, 2 never.
            callback: called (sync or async) for each message of this subscription instead of
                queueing it for :meth:`messages`. The client routes by a Subscription
                Identifier it assigns (or by topic matching where the server has none).
            subscription_identifier: an explicit Subscription Identifier (MQTT 5).
            user_properties: User Properties of the SUBSCRIBE.

        Returns:
            one reason code per filter: the granted QoS (0x00-0x02) or a failure (>= 0x80).
        """
        subs = self._subscriptions(
            topic_filter, qos, no_local, retain_as_published, retain_handling
        )
        conn = self._require_ready()
        v5 = conn.version == 5
        sid = subscription_identifier
        sids_ok = self.server_properties.subscription_identifier_available != 0
        if callback is not None and sid is None and v5 and sids_ok:
            self._next_sid += 1
            sid = self._next_sid
        props = Properties(user_properties=user_properties)
        if sid is not None and v5:
            props.subscription_identifiers = [sid]
        if callback is not None:
            # registered before SUBSCRIBE goes out: a retained message may arrive with the SUBACK
            if sid is not None:
                self._sid_callbacks[sid] = callback
            for sub in subs:
                self._filter_callbacks[sub.topic_filter] = callback
        suback = await self._request(conn, Subscribe(conn.next_packet_id(), subs, props))
        assert isinstance(suback, Suback)
        codes = suback.reason_codes
        for sub, code in zip(subs, codes, strict=False):
            if code.is_error:
                if (
                    callback is not None
                    and self._filter_callbacks.get(sub.topic_filter) is callback
                ):
                    del self._filter_callbacks[sub.topic_filter]
                continue
            self._subs[sub.topic_filter] = _SubRecord(sub, callback, props)
            if callback is not None:
                self._filter_callbacks[sub.topic_filter] = callback
            else:
                self._filter_callbacks.pop(sub.topic_filter, None)
        if callback is not None and sid is not None:
            self._sid_callbacks[sid] = callback
        return codes

    @staticmethod
    def _subscriptions(
        spec: SubscriptionSpec | Sequence[SubscriptionSpec],
        qos: int,
        no_local: bool,
        retain_as_published: bool,
        retain_handling: int,
    ) -> list[Subscription]:
        items = [spec] if isinstance(spec, str | Subscription | tuple) else list(spec)
        subs: list[Subscription] = []
        for item in items:
            if isinstance(item, Subscription):
                sub = item
            elif isinstance(item, tuple):
                sub = Subscription(item[0], item[1], no_local, retain_as_published, retain_handling)
            else:
                sub = Subscription(item, qos, no_local, retain_as_published, retain_handling)
            try:
                validate_topic_filter(sub.topic_filter)
                parse_shared(sub.topic_filter)
            except ProtocolError as exc:
                raise LocalProtocolError(exc.reason_code, exc.message) from None
            subs.append(sub)
        if not subs:
            raise ValueError("subscribe() needs at least one topic filter")
        return subs

    async def unsubscribe(
        self, topic_filter: str | Sequence[str], user_properties: Sequence[tuple[str, str]] = ()
    ) -> list[ReasonCode]:
        """Unsubscribe and wait for UNSUBACK; returns one reason code per filter (3.1.1:
        SUCCESS for each)."""
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        conn = self._require_ready()
        props = Properties(user_properties=user_properties)
        unsuback = await self._request(conn, Unsubscribe(conn.next_packet_id(), filters, props))
        assert isinstance(unsuback, Unsuback)
        for filt in filters:
            self._subs.pop(filt, None)
            self._filter_callbacks.pop(filt, None)
        return unsuback.reason_codes or [_SUCCESS] * len(filters)

    async def _request(
        self, conn: Connection, packet: Subscribe | Unsubscribe
    ) -> Suback | Unsuback:
        fut: asyncio.Future[Suback | Unsuback] = asyncio.get_running_loop().create_future()
        self._req_futs[packet.packet_id] = fut
        try:
            conn.send(packet)
        except BaseException:
            self._req_futs.pop(packet.packet_id, None)
            raise
        self._schedule_flush()
        return await fut

    async def _resubscribe(self) -> None:
        """The session was not resumed: subscribe again to everything we had."""
        records = list(self._subs.values())
        self._subs.clear()
        for rec in records:
            sid = rec.properties.subscription_identifiers
            await self.subscribe(
                rec.subscription,
                callback=rec.callback,
                subscription_identifier=sid[0] if sid else None,
                user_properties=rec.properties.user_properties,
            )

    async def request(
        self,
        topic: str,
        payload: bytes | str = b"",
        *,
        qos: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109 - the documented API
        properties: Properties | None = None,
    ) -> Message:
        """Publish a request and wait for its response (MQTT 5 request/response, 4.10).

        The first call subscribes to a response topic of this client (under the server's
        Response Information if it gave one, else ``mqttv5/response/<client id>``). Each
        request carries that Response Topic and fresh Correlation Data; the response with the
        same Correlation Data is returned.

        Raises:
            TimeoutError: no response within ``timeout`` seconds.
        """
        if self._response_topic is None:
            await self._setup_response_topic()
        assert self._response_topic is not None
        corr = os.urandom(16)
        props = properties.copy() if properties is not None else Properties()
        props.response_topic = self._response_topic
        props.correlation_data = corr
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._rr_waiters[corr] = fut
        try:
            async with asyncio.timeout(timeout):
                await self.publish(topic, payload, qos, properties=props)
                return await fut
        finally:
            self._rr_waiters.pop(corr, None)

    async def _setup_response_topic(self) -> None:
        base = self.server_properties.response_information
        suffix = self.client_id or os.urandom(6).hex()
        topic = f"{base.rstrip('/')}/{suffix}" if base else f"mqttv5/response/{suffix}"
        self._response_topic = topic
        try:
            codes = await self.subscribe(topic, 1)
        except BaseException:
            self._response_topic = None
            raise
        if codes[0].is_error:
            self._response_topic = None
            raise MqttError(f"cannot subscribe to response topic {topic!r}: {codes[0].text}")

    async def respond(
        self,
        request: Message,
        payload: bytes | str = b"",
        *,
        qos: int | None = None,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish a response to ``request`` (to its Response Topic, with its Correlation Data).

        Raises:
            ValueError: the request has no Response Topic.
        """
        topic = request.response_topic
        if not topic:
            raise ValueError("the request message has no Response Topic")
        props = properties.copy() if properties is not None else Properties()
        if request.correlation_data is not None:
            props.correlation_data = request.correlation_data
        return await self.publish(topic, payload, request.qos if qos is None else qos, False, props)

    async def disconnect(
        self,
        reason_code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION,
        properties: Properties | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the whole close
    ) -> None:
        """Send DISCONNECT and close; stops automatic reconnection for good.

        Args:
            reason_code: 0x00 Normal disconnection (the Will is discarded) or 0x04 Disconnect
                with Will Message, or an error code.
            properties: DISCONNECT properties (Session Expiry Interval, Reason String, User
                Properties).
            timeout: seconds to wait for the close to complete.
        """
        self._closing = True
        task = self._reconnect_task
        self._reconnect_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, stream = self._conn, self._stream
        if conn is not None and stream is not None and conn.state is CONNECTED:
            try:
                conn.send(Disconnect(reason_code, properties or Properties()))
            except ProtocolError:
                conn.send(Disconnect(reason_code))
            self._flush()
            with contextlib.suppress(MqttError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await stream.drain()
                    await stream.close()
        elif stream is not None:
            stream.abort()
        reader = self._reader_task
        if reader is not None and reader is not asyncio.current_task():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(reader)
        await self._stop_tasks()
        self._give_up(None)
        await self._dispatcher.stop()
