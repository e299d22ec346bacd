"""``ClientHandler``: one network connection's glue between the transport and the broker.

An ``asyncio.Protocol``: ``data_received`` feeds the sans-I/O :class:`Connection`, handles every
packet it yields with direct calls into the broker, router and session, and marks the handler
dirty; the broker flushes the output of every dirty handler once per loop tick with one
``writelines`` each. A task is created only where something must be awaited (an authenticator
that answers with an awaitable).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from mqttv5.protocol.connection import SERVER, Closed, Connection, Event
from mqttv5.protocol.errors import ProtocolError
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import DISCONNECT_CODES, ReasonCode
from mqttv5.protocol.topics import parse_shared, validate_topic_filter

from .acl import SubscribeAccess
from .auth import AuthRequest, AuthResult
from .limits import ClientLimits, monitor_for
from .message import BrokerMessage, Delivery
from .sessions import Session, SubEntry

if TYPE_CHECKING:
    from .broker import ListenerRuntime, MqttBroker

__all__ = ["ClientHandler"]

log = logging.getLogger("mqttv5.broker")
_RC = ReasonCode
_PROTO_TAG = {3: "p1", 4: "p2", 5: "p5"}


class ClientHandler(asyncio.Protocol):
    """The broker side of one client connection."""

    def __init__(self, broker: MqttBroker, listener: ListenerRuntime) -> None:
        self.broker = broker
        self.listener = listener
        self.loop = broker.loop
        now = self.loop.time()
        self.created_at = now
        self.now = now  # the loop's clock when the current data arrived
        self.conn = Connection(
            SERVER, max_packet_size=listener.max_packet_size, now=now, keep_raw=True
        )
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.generation = -1
        self.client_id = ""
        self.username: str | None = None
        self.version = 5
        self.accepted = False  # CONNACK success sent and session attached
        self.refused = False  # CONNACK with an error sent
        self.paused = False
        self.reading_paused = False
        self.closing = False
        self.peer: tuple[str, int] = ("?", 0)
        self.mount = listener.settings.mount_point
        self._held: list[Event] | None = None
        self._connect: Connect | None = None
        self._proxy_header: bytes | None = None  # b"" while a PROXY v2 header may come

    # ------------------------------------------------------------------------------------------
    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set TCP_NODELAY and the write-buffer limits; register with the broker."""
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # batching, not Nagle
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        settings = self.listener.settings
        if (
            settings.type == "tcp"
            and settings.trusted_proxies
            and _trusted(self.peer[0], settings.trusted_proxies)
        ):
            self._proxy_header = b""  # the first bytes may be a PROXY protocol v2 header
        high = self.broker.config.outbound_high_water
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self.broker.handler_opened(self)

    # Per-client resource limits (limits.py), set by the broker when the connection opens; None
    # (the class default) when no per-client limit applies, so the checks below cost one test.
    limits: ClientLimits | None = None

    def data_received(self, data: bytes) -> None:
        """Decode and handle every complete packet in ``data``."""
        if self._proxy_header is not None:
            data = self._proxy_received(data)
            if not data:
                return
        broker = self.broker
        broker.counters.bytes_received += len(data)
        conn = self.conn
        self.now = now = self.loop.time()
        conn.receive_data(data, now)
        events = conn.events_received()
        limits = self.limits
        if limits is not None:  # inbound bandwidth; CONNACK 0x9F over the connection rate
            events = limits.on_data(self, len(data), events, now)
        if events:
            held = self._held
            if held is not None:
                held.extend(events)
            else:
                self._dispatch_events(events)
        broker.mark_dirty(self)
        if broker.reading_paused and not self.reading_paused:
            session = self.session
            if session is None or not session.queue:  # never stall a consumer being drained
                broker.pause_reader(self)

    def _dispatch_events(self, events: list[Event]) -> None:
        dispatch = _DISPATCH
        conn = self.conn
        for index, event in enumerate(events):
            if type(event) is not Closed:
                closed = conn.closed_event
                if self.refused or (closed is not None and closed.error is not None):
                    # [MQTT-3.1.4-6] nothing after a refused CONNECT (or a protocol error
                    # later in the same read) is acted upon
                    continue
            dispatch[type(event)](self, event)
            if self._held is not None:  # an authenticator went async: hold the rest
                self._held.extend(events[index + 1 :])
                return

    def pause_reading(self) -> None:
        """Stop reading from the socket (global memory limit reached)."""
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def _proxy_received(self, data: bytes) -> bytes:
        """Read a PROXY protocol v2 header from a trusted proxy; return the bytes after it."""
        buf = self._proxy_header + data if self._proxy_header else data
        if not _PROXY_V2_SIGNATURE.startswith(buf[:12]):
            self._proxy_header = None  # no header: the proxy passes the client's bytes as is
            return buf
        if len(buf) < 16 or len(buf) < 16 + int.from_bytes(buf[14:16], "big"):
            if len(buf) > 16 + 216:  # the largest header we accept (TCP over IPv6 + TLVs)
                log.info("Bad PROXY header from %s:%d.", *self.peer)
                self.abort()
                return b""
            self._proxy_header = buf
            return b""
        self._proxy_header = None
        length = int.from_bytes(buf[14:16], "big")
        peer = parse_proxy_v2_untrusted(buf[12], buf[13], buf[16 : 16 + length])
        if peer is not None:
            log.debug("PROXY header from %s:%d: client is %s:%d.", *self.peer, *peer)
            self.peer = peer
        return buf[16 + length :]

    def eof_received(self) -> bool | None:
        """The peer half-closed: treat as a close."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: finish the connection (will, session expiry)."""
        self.conn.receive_eof()
        for event in self.conn.events_received():
            if isinstance(event, Closed):
                self._on_closed(event)
        self.broker.handler_closed(self)
        self.broker.output_gate.forget(self)
        self.transport = None

    def pause_writing(self) -> None:
        """The socket's send buffer is above the high-water mark: a slow consumer."""
        self.paused = True

    def resume_writing(self) -> None:
        """The send buffer drained: send what waited in the session queue."""
        self.paused = False
        self.drain_queue()
        self.broker.mark_dirty(self)

    # ------------------------------------------------------------------------------------------
    # output

    def flush(self) -> None:
        """Write everything the connection has queued, in one ``writelines``, once the
        commit that covers it is durable (at once unless a writer process commits)."""
        conn = self.conn
        self.broker.output_gate.send(self, conn.data_to_send(), conn.close_expected())

    def write_output(self, data: Sequence[bytes], close_if_over: bool = True) -> None:
        """Write ``data`` now, and close the transport if the connection is over."""
        transport = self.transport
        if transport is None:
            return
        if data:
            transport.writelines(data)
            self.broker.counters.bytes_sent += sum(map(len, data))
        if close_if_over and self.conn.close_expected() and not self.closing:
            self.closing = True
            transport.close()

    def abort(self) -> None:
        """Drop the connection at once, without draining (session takeover, shutdown)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def deliver(self, delivery: Delivery, now: float) -> None:
        """Send one delivery now, or queue it in the session (QoS 1/2) or drop it (QoS 0)."""
        message = delivery.message
        if message.expiry_at is not None and now >= message.expiry_at:
            self.broker.counters.dropped_expired += 1
            return
        if not delivery.qos:
            if self.paused:
                self.broker.counters.dropped_slow_consumer += 1
                return
            topic = message.topic[len(self.mount) :] if self.mount else None
            alias, known = self._alias(topic or message.topic)
            data = message.encode(
                self.version, 0, delivery.retain, None, delivery.sub_ids, now, alias, known,
                topic=topic,
            )  # fmt: skip
            if self.conn.send_publish(data, None, 0, None):
                self.broker.counters.publish_sent += 1
                if alias is not None and not known:
                    self.conn.record_alias(topic or message.topic, alias)
            else:
                self.broker.counters.dropped_too_large += 1
            return
        session = self.session
        assert session is not None
        if session.queue or self.paused or self.conn.send_quota <= 0:
            self.broker.enqueue(session, delivery)
            return
        self._send_qos(delivery, now)

    def _alias(self, topic: str) -> tuple[int | None, bool]:
        if self.conn.peer_topic_alias_maximum and self.version == 5:
            return self.conn.outbound_alias(topic)
        return None, False

    def _send_qos(self, delivery: Delivery, now: float, queued: bool = False) -> None:
        conn = self.conn
        pid = conn.next_packet_id()
        message = delivery.message
        topic = message.topic[len(self.mount) :] if self.mount else None
        alias, known = self._alias(topic or message.topic)
        data = message.encode(
            self.version, delivery.qos, delivery.retain, pid, delivery.sub_ids, now, alias, known,
            topic=topic,
        )  # fmt: skip
        session = self.session
        durable = self.broker.store.durable and session is not None and session.expiry_interval
        if conn.send_publish(data, pid, delivery.qos, delivery):
            self.broker.counters.publish_sent += 1
            if alias is not None and not known:
                conn.record_alias(topic or message.topic, alias)
            if durable:
                assert session is not None
                store = self.broker.store
                if queued:
                    store.delivery_sent(session.client_id, message.id, pid, delivery.qos)
                else:
                    store.add_delivery(session.client_id, delivery, pid)
                    self.broker.persisted += 1
        else:
            # [MQTT-3.1.2-25] too large for this client: discarded, as if delivered
            self.broker.counters.dropped_too_large += 1
            if durable and queued:
                assert session is not None
                self.broker.store.delivery_dropped(session.client_id, message.id)

    def drain_queue(self) -> None:
        """Send queued QoS 1/2 deliveries while the client's Receive Maximum allows."""
        session = self.session
        if session is None or not self.accepted:
            return
        queue = session.queue
        conn = self.conn
        now = self.loop.time()
        while queue and not self.paused and conn.send_quota > 0:
            delivery = queue.popleft()
            size = len(delivery.message.payload)
            session.queued_bytes -= size
            self.broker.queued_changed(-size)
            if delivery.message.expired(now):
                self.broker.counters.dropped_expired += 1  # [MQTT-3.3.2-5]
                if session.expiry_interval and self.broker.store.durable:
                    self.broker.store.delivery_dropped(session.client_id, delivery.message.id)
                continue
            self._send_qos(delivery, now, queued=True)

    def resend_inflight(self) -> None:
        """Retransmit the session's unacknowledged messages after a resume [MQTT-4.4.0-1]."""
        now = self.loop.time()
        version = self.version
        mount = self.mount

        def encode(entry: Any) -> bytes:
            d = entry.item
            assert isinstance(d, Delivery)
            topic = d.message.topic[len(mount) :] if mount else None
            return d.message.encode(
                version, d.qos, d.retain, entry.packet_id, d.sub_ids, now, dup=True, topic=topic
            )

        self.conn.resend_inflight(encode)

    # ------------------------------------------------------------------------------------------
    # packets

    def _on_connect(self, packet: Connect) -> None:
        self.version = packet.protocol_level
        self.client_id = packet.client_id
        if packet.protocol_level not in self.listener.settings.protocol_versions:
            self.refuse(_RC.UNSUPPORTED_PROTOCOL_VERSION, "protocol version not enabled here")
            return
        if self.mount and packet.will is not None:
            packet.will.topic = self.mount + packet.will.topic
        self._connect = packet
        self._authenticate(None)

    def _authenticate(self, auth: Auth | None) -> None:
        """Ask the listener's authenticator about the CONNECT (and an AUTH packet of an
        enhanced-authentication exchange); hold later packets while it thinks."""
        connect = self._connect
        assert connect is not None
        request = AuthRequest(
            connect, self.peer[0], self.peer[1], self.listener.name, self.listener.is_loopback, auth
        )
        if self.transport is not None:  # a TLS client's certificate, for certificate auth
            request.peer_certificate = self.transport.get_extra_info("peercert") or None
        result = self.listener.authenticator.authenticate(request)
        if isinstance(result, AuthResult):
            self._auth_answer(result)
            return
        self._held = []

        async def wait() -> None:
            try:
                answer = await result
            except Exception:
                log.exception("authenticator failed for %s", connect.client_id)
                answer = AuthResult(_RC.UNSPECIFIED_ERROR)
            held, self._held = self._held or [], None
            if self.transport is None:
                return
            self._auth_answer(answer)
            self._dispatch_events(held)
            self.broker.mark_dirty(self)

        self.broker.spawn(wait())

    def _auth_answer(self, result: AuthResult) -> None:
        connect = self._connect
        assert connect is not None
        code = result.reason_code
        method = connect.properties.authentication_method
        if code == _RC.CONTINUE_AUTHENTICATION:
            # [MQTT-4.12.0-2] the exchange continues with AUTH 0x18 carrying the same method
            props = result.properties.copy()
            props.authentication_method = method
            self.conn.send(Auth(_RC.CONTINUE_AUTHENTICATION, props))
            return
        if self.accepted:  # re-authentication; failure closes [MQTT-4.12.1-2]
            if code.is_error:
                if code not in DISCONNECT_CODES:  # e.g. 0x86, 0x8A, 0x8C exist only in CONNACK
                    code = _RC.NOT_AUTHORIZED
                self.conn.fail(code, result.reason_string or "re-authentication failed")
                return
            props = result.properties.copy()
            props.authentication_method = method
            self.conn.send(Auth(_RC.SUCCESS, props))
            return
        if code.is_error:
            self.broker.counters.auth_failures += 1
            log.info(
                "Client %s from %s:%d refused: %s.",
                connect.client_id or "<empty>",
                *self.peer,
                code.text,
            )
            self.refuse(code, result.reason_string)
            return
        self.username = result.username
        extra = result.properties
        if method is not None:
            extra = extra.copy()
            extra.authentication_method = method  # [MQTT-4.12.0-5] CONNACK carries the method
        self.broker.accept(self, connect, extra)

    def refuse(self, code: ReasonCode, reason: str | None = None) -> None:
        """Answer CONNECT with a refusing CONNACK and close."""
        props = Properties(reason_string=reason) if reason and self.version == 5 else Properties()
        self.refused = True
        self.conn.send(Connack(code, False, props))
        self.broker.mark_dirty(self)

    def log_connected(self, packet: Connect) -> None:
        """Log as Mosquitto does when a client is accepted."""
        user = f", u'{packet.username}'" if packet.username is not None else ""
        log.info(
            "New client connected from %s:%d as %s (%s, c%d, k%d%s).",
            self.peer[0],
            self.peer[1],
            self.client_id,
            _PROTO_TAG.get(packet.protocol_level, "p?"),
            int(packet.clean_start),
            self.conn.keep_alive,
            user,
        )

    def _on_publish(self, packet: Publish) -> None:
        broker = self.broker
        counters = broker.counters
        counters.publish_received += 1
        counters.messages_received += 1
        limits = self.limits
        if limits is not None and not limits.admit_publish(self, packet, self.now):
            return  # QoS 0 over max_publish_rate: dropped and counted (limits.py)
        qos = packet.qos
        topic = packet.topic
        code = _RC.SUCCESS
        if topic[:1] == "$":
            # Clients may not publish to topics the broker reserves ($SYS) [MQTT-4.7.2-1 note]
            code = _RC.NOT_AUTHORIZED if topic.startswith("$SYS") else code
            if topic.startswith("$share/"):
                code = _RC.TOPIC_NAME_INVALID
        if topic.count("/") >= broker.config.max_topic_levels:
            self.conn.fail(_RC.TOPIC_NAME_INVALID, "too many topic levels")
            return
        if code == _RC.SUCCESS and not self.listener.acl.can_publish(
            self.client_id, self.username, topic
        ):
            code = _RC.NOT_AUTHORIZED  # QoS 0: dropped silently, as the spec allows
        if packet.payload_format_indicator == 1 and code == _RC.SUCCESS:
            try:
                packet.payload.decode("utf-8")
            except UnicodeDecodeError:
                code = _RC.PAYLOAD_FORMAT_INVALID  # [MQTT-3.3.2-4] receiver may check
                if not qos:
                    self.conn.fail(code, "payload is not valid UTF-8")
                    return
        if (
            packet.retain
            and code == _RC.SUCCESS
            and broker.config.retain_available
            and not monitor_for(broker).retained_allowed(
                broker.router.retained, self.mount + topic, packet.payload, self.now
            )
        ):
            code = _RC.QUOTA_EXCEEDED  # max_retained_messages/bytes: refused whole (limits.py)
        if (
            qos
            and code == _RC.SUCCESS
            and broker.store.failed is not None  # an attribute test per message, not a call
            and not broker.store.writable()
            and self._needs_store(packet)
        ):  # storage fails: refused before routing, so neither delivered nor stored
            if self.version != 5:
                self.conn.fail(_RC.UNSPECIFIED_ERROR, "storage failed")  # 3.1.1 cannot refuse
                return
            code = _RC.QUOTA_EXCEEDED
        must_keep = False
        if code == _RC.SUCCESS:
            if self.mount:
                packet.topic = self.mount + topic  # Mosquitto's mount_point
            message = BrokerMessage.from_publish(packet, self.client_id, self.now)
            persisted = broker.persisted
            if packet.retain and broker.config.retain_available:
                broker.set_retained(message)
                must_keep = True
            if not broker.router.route(message) and qos:
                code = _RC.NO_MATCHING_SUBSCRIBERS
            must_keep = must_keep or broker.persisted != persisted
        if qos:
            pid = packet.packet_id
            assert pid is not None
            if self.version != 5 and code.is_error:
                code = _RC.SUCCESS  # 3.1.1 has no way to refuse a PUBLISH: drop it silently
            store = broker.store
            session = self.session
            if qos == 2 and store.durable and session is not None and session.expiry_interval:
                store.incoming_qos2(session.client_id, pid, True)  # a resend after a restart
                must_keep = True  # is recognised and not delivered twice
            if must_keep and store.durable:
                # The acknowledgement rule: PUBACK/PUBREC only once the message is on disk.
                generation = self.generation
                store.ticket().add_done_callback(
                    lambda ticket: self._ack_after_commit(pid, code, ticket, generation)
                )
                return
            self.conn.ack(pid, code)

    def _needs_store(self, packet: Publish) -> bool:
        """Would routing ``packet`` write to storage? (Asked only while storage fails.)"""
        broker = self.broker
        session = self.session
        if packet.retain and broker.config.retain_available:
            return True
        if packet.qos == 2 and session is not None and session.expiry_interval:
            return True  # its packet identifier is recorded
        for _filter, _key, (target, entry) in broker.router.tree.match(self.mount + packet.topic):
            if target.expiry_interval and entry.qos:
                return True  # queued for, or in flight to, a session that outlives its connection
        return False

    def _ack_after_commit(self, pid: int, code: ReasonCode, ticket: Any, generation: int) -> None:
        if self.transport is None or self.generation != generation:
            return  # the connection is gone: the publisher will resend
        if ticket.error is not None:
            # not stored: refuse instead of promising (3.1.1 cannot refuse: close instead)
            if self.version == 5:
                code = _RC.QUOTA_EXCEEDED
            else:
                self.conn.fail(_RC.UNSPECIFIED_ERROR, "storage failed")
                self.broker.mark_dirty(self)
                return
        gate = self.broker.output_gate
        if gate.deferring:  # a writer process: newer writes may be in flight
            gate.wait_for(self.broker.store.commit_soon())
            self.flush()  # what came before waits for them; the acknowledgement need not
            with contextlib.suppress(ProtocolError):
                self.conn.ack(pid, code)
            gate.acknowledged(self, self.conn.data_to_send())
        else:
            with contextlib.suppress(ProtocolError):
                self.conn.ack(pid, code)
        self.broker.mark_dirty(self)

    def _on_ack_out(self, packet: PubAck | PubComp | PubRec) -> None:
        self.broker.counters.messages_sent += 1
        session = self.session
        if session is None:
            return
        if session.expiry_interval and self.broker.store.durable:
            self.broker.store.delivery_done(session.client_id, packet.packet_id)
        if session.queue:
            self.drain_queue()

    def _on_pubrec(self, packet: PubRec) -> None:
        if packet.reason_code.is_error:
            self._on_ack_out(packet)
            return
        session = self.session
        if session is not None and session.expiry_interval and self.broker.store.durable:
            self.broker.store.delivery_released(session.client_id, packet.packet_id)

    def _on_pubrel(self, packet: PubRel) -> None:
        session = self.session
        if session is not None and session.expiry_interval and self.broker.store.durable:
            self.broker.store.incoming_qos2(session.client_id, packet.packet_id, False)

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        if session is None:
            return
        cfg = self.broker.config
        sub_id = packet.properties.subscription_identifiers
        if sub_id and not cfg.subscription_identifiers:
            self.conn.fail(_RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
            return
        sid = sub_id[0] if sub_id else None
        codes: list[ReasonCode] = []
        retained: list[tuple[SubEntry, bool]] = []
        for sub in packet.subscriptions:
            code, entry = self._check_subscription(session, sub.topic_filter, sub.qos)
            if entry is None:
                codes.append(code)
                continue
            entry.no_local = sub.no_local
            entry.retain_as_published = sub.retain_as_published
            if self._connect is not None and self._connect.is_bridge:
                # Mosquitto's bridge flag (try_private): a bridge never gets its own messages
                # back and sees retained flags as published, as Mosquitto treats bridges
                entry.no_local = entry.retain_as_published = True
            entry.retain_handling = sub.retain_handling
            entry.sub_id = sid
            is_new = self.broker.router.subscribe(session, entry)
            if session.expiry_interval:
                self.broker.store.save_subscription(session.client_id, entry)
            codes.append(code)
            retained.append((entry, is_new))
        self.conn.send(Suback(packet.packet_id, codes))
        now = self.loop.time()
        for entry, is_new in retained:
            self.broker.send_retained(self, entry, is_new, now)

    def _check_subscription(
        self, session: Session, topic_filter: str, qos: int
    ) -> tuple[ReasonCode, SubEntry | None]:
        cfg = self.broker.config
        try:
            validate_topic_filter(topic_filter, cfg.max_topic_levels)
            group, inner = parse_shared(topic_filter, cfg.max_topic_levels)
        except ProtocolError:
            return _RC.TOPIC_FILTER_INVALID, None
        if group is not None and not cfg.shared_subscriptions:
            return _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, None
        if not cfg.wildcard_subscriptions and ("+" in inner or "#" in inner):
            return _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, None
        if (
            cfg.max_subscriptions
            and topic_filter not in session.subscriptions
            and len(session.subscriptions) >= cfg.max_subscriptions
        ):
            return _RC.QUOTA_EXCEEDED, None
        access = self.listener.acl.can_subscribe(self.client_id, self.username, topic_filter)
        if not access:
            return _RC.NOT_AUTHORIZED, None
        if access is SubscribeAccess.PARTIAL:
            session.read_checked = True  # filter each delivery with can_read
        granted = min(qos, cfg.maximum_qos)
        return ReasonCode(granted), SubEntry(topic_filter, self.mount + inner, group, granted)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        if session is None:
            return
        router = self.broker.router
        codes = []
        for topic_filter in packet.topic_filters:
            if router.unsubscribe(session, topic_filter):
                codes.append(_RC.SUCCESS)
                if session.expiry_interval:
                    self.broker.store.delete_subscription(session.client_id, topic_filter)
            else:
                codes.append(_RC.NO_SUBSCRIPTION_EXISTED)
        self.conn.send(Unsuback(packet.packet_id, codes))

    def _on_auth(self, packet: Auth) -> None:
        connect = self._connect
        method = connect.properties.authentication_method if connect is not None else None
        if method is None:
            # [MQTT-4.12.0-7] no AUTH without an Authentication Method in CONNECT
            self.conn.fail(_RC.PROTOCOL_ERROR, "AUTH without an authentication method")
            return
        if packet.properties.authentication_method != method:
            # [MQTT-4.12.1-1] [MQTT-4.12.0-5] every AUTH carries CONNECT's method
            self.conn.fail(_RC.PROTOCOL_ERROR, "AUTH with a different authentication method")
            return
        expected = _RC.RE_AUTHENTICATE if self.accepted else _RC.CONTINUE_AUTHENTICATION
        if packet.reason_code != expected and not (
            self.accepted and packet.reason_code == _RC.CONTINUE_AUTHENTICATION
        ):
            self.conn.fail(_RC.PROTOCOL_ERROR, f"unexpected AUTH {packet.reason_code.name}")
            return
        self._authenticate(packet)

    def _on_closed(self, event: Closed) -> None:
        if event.error is not None:
            self.broker.counters.protocol_errors += 1
            log.info(
                "Client %s disconnected due to protocol error: %s.",
                self.client_id or f"<unknown> {self.peer[0]}:{self.peer[1]}",
                event.error.message,
            )
        self.broker.connection_finished(self, event)


_PROXY_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"


def _trusted(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def parse_proxy_v2_untrusted(ver_cmd: int, family: int, body: bytes) -> tuple[str, int] | None:
    """The client's address from a PROXY protocol v2 header (after its 16 fixed bytes).

    Returns None for a LOCAL command or an address family we do not map (the connection is
    then the proxy's own). Raises nothing: a malformed header yields None.
    """
    if ver_cmd != 0x21:  # version 2, PROXY (0x20 is LOCAL: health checks from the proxy)
        return None
    if family == 0x11 and len(body) >= 12:  # TCP over IPv4
        return str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")
    if family == 0x21 and len(body) >= 36:  # TCP over IPv6
        return str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")
    return None


def _ignore(_handler: ClientHandler, _packet: object) -> None:
    return None


# Dispatch by event class, shared by every handler (not a per-connection table).
_DISPATCH: Final[dict[type, Callable[[ClientHandler, Any], None]]] = {
    Publish: ClientHandler._on_publish,
    PubAck: ClientHandler._on_ack_out,
    PubComp: ClientHandler._on_ack_out,
    PubRec: ClientHandler._on_pubrec,
    PubRel: ClientHandler._on_pubrel,
    Subscribe: ClientHandler._on_subscribe,
    Unsubscribe: ClientHandler._on_unsubscribe,
    Pingreq: _ignore,
    Disconnect: _ignore,
    Connect: ClientHandler._on_connect,
    Auth: ClientHandler._on_auth,
    Closed: ClientHandler._on_closed,
}
