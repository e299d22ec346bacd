"""``MqttBroker``: lifecycle, listeners, sessions, flushing and background tasks.

Embeddable::

    async with MqttBroker(BrokerConfig()) as broker:
        await broker.wait_closed()

The broker owns the session registry and the router; each connection's :class:`ClientHandler`
calls back into it. Output is flushed once per loop tick for every handler touched in the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mqttv5.protocol.connection import Closed, OutFlight
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Connack, Connect, Disconnect, Will
from mqttv5.protocol.properties import Properties, strip_properties
from mqttv5.protocol.reason_codes import ReasonCode

from .acl import ALLOW_ALL, AclPolicy
from .auth import Authenticator
from .bridge import BridgeManager
from .config import (
    TLS_LISTENER_TYPES,
    UDP_LISTENER_TYPES,
    WS_LISTENER_TYPES,
    BrokerConfig,
    ListenerSettings,
    is_loopback,
)
from .handler import ClientHandler
from .limits import monitor_for
from .message import BrokerMessage, Delivery
from .metrics import Counters
from .metrics_http import MetricsServer, reload_metrics
from .reload import ReloadRegistry
from .router import Router
from .security import Security
from .sessions import EXPIRY_NEVER, Session, SessionRegistry, SubEntry
from .storage import MemoryStore, SessionStore, StorageError, StoredSession, StoredState
from .storage.gate import OutputGate
from .storage.sqlite import SqliteStore
from .sys_topics import SysPublisher
from .tls import (
    PendingHandshakes,
    ServerTls,
    TlsAdapter,
    with_certificate_auth,
    with_identity_auth,
)

if TYPE_CHECKING:
    from ..transport.udp.endpoint import UdpServerEndpoint
    from .websocket import WebSocketOptions

__all__ = ["ListenerRuntime", "MqttBroker"]

log = logging.getLogger("mqttv5.broker")
_RC = ReasonCode
_WILL_DROP = frozenset({0x02, 0x18})  # Message Expiry (kept as expiry_at), Will Delay Interval


@dataclass(slots=True)
class ListenerRuntime:
    """A listener's settings as the handlers use them, and its server object.

    ``tls`` holds the current SSL context of a ``tls``/``wss`` listener (rebuilt on SIGHUP);
    ``websocket`` the compiled settings of a ``ws``/``wss`` one. A WebSocket listener is never
    ``is_loopback``: a reverse proxy on this host may forward clients from anywhere.
    """

    settings: ListenerSettings
    name: str
    max_packet_size: int
    authenticator: Authenticator
    is_loopback: bool
    acl: AclPolicy = ALLOW_ALL
    server: asyncio.Server | None = None
    connections: int = 0
    tls: ServerTls | None = None
    websocket: WebSocketOptions | None = None
    udp: UdpServerEndpoint | None = None


class MqttBroker:
    """An MQTT 5.0 / 3.1.1 broker.

    Args:
        config: the broker configuration (defaults: TCP 1883 on loopback, anonymous access).
        store: where sessions and messages are mirrored (default: per ``config.storage``).
        authenticator: decides who may connect on every listener (default: per the config's
            ``allow_anonymous``); an embedding program's own hook, enhanced authentication too.
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        store: SessionStore | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config if config is not None else BrokerConfig()
        self.security = Security(authenticator)
        self.store: SessionStore = store if store is not None else self._make_store()
        self.counters = Counters()
        self.sessions = SessionRegistry()
        self.router = Router(self._deliver)
        self.handlers: set[ClientHandler] = set()
        self.listeners: list[ListenerRuntime] = []
        self.started_at = time.time()
        self._dirty: set[ClientHandler] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Event | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sys: SysPublisher | None = None
        self.bridges: BridgeManager | None = None  # started at the end of start()
        self.metrics_server: MetricsServer | None = None
        self._all_gone: asyncio.Event | None = None
        self.persisted = 0  # writes of deliveries to the store: a PUBACK must wait for them
        self.output_gate = OutputGate()  # output waits for the commit that covers it
        self.reloads = ReloadRegistry()
        self.reloads.register("core", self._reload_core)
        self.reloads.register("security", self.security.reload)
        self.queued_total = 0  # payload bytes in all session queues
        self.reading_paused = False
        self._paused_readers: set[ClientHandler] = set()

    def _make_store(self) -> SessionStore:
        if self.config.storage == "memory":
            return MemoryStore()
        try:
            return SqliteStore(self.config.data_dir, self.config.storage_sync.upper())
        except (StorageError, OSError) as exc:
            raise ConfigError("data_dir", str(exc)) from exc

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the broker runs on."""
        assert self._loop is not None, "broker not started"
        return self._loop

    # ------------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> None:
        """Open every listener and start the background tasks.

        Raises:
            OSError: a listener cannot bind (the message names the address).
        """
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self.store.clock_offset = time.time() - self._loop.time()
        self._restore(self.store.load())
        try:
            for settings in self.config.effective_listeners():
                await self._open_listener(settings)
        except BaseException:
            await self._close_listeners()
            self.store.close()  # and its data directory, for the next attempt
            raise
        self.spawn(self._sweep())
        if self.config.sys_interval > 0:
            self.sys = SysPublisher(self)
            self.spawn(self.sys.run())
        try:
            if self.config.metrics is not None:
                self.metrics_server = MetricsServer(self, self.config.metrics)
                await self.metrics_server.start()
            self.bridges = BridgeManager(self)
            await self.bridges.start()
        except BaseException:
            await self.stop()
            raise
        self.reloads.register("bridges", self.bridges.reload)
        self.reloads.register("metrics", reload_metrics)
        gc.freeze()  # start-up objects are long-lived: keep them out of the collector's way

    async def _open_listener(self, settings: ListenerSettings) -> None:
        cfg = self.config
        allow = cfg.effective_allow_anonymous(settings)
        websocket = settings.type in WS_LISTENER_TYPES
        runtime = ListenerRuntime(
            settings=settings,
            name=settings.name or f"{settings.type}:{settings.bind}:{settings.port}",
            max_packet_size=cfg.effective_max_packet_size(settings),
            authenticator=with_certificate_auth(
                settings, self.security.authenticator_for(cfg, settings), allow
            ),
            is_loopback=is_loopback(settings.bind) and not websocket,
            acl=self.security.acl_for(cfg, settings),
        )
        if settings.type in UDP_LISTENER_TYPES:
            await self._open_udp_listener(runtime)
            return
        try:
            server = await self.loop.create_server(
                self._protocol_factory(runtime),
                host=settings.bind,
                port=settings.port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            if settings.bind == "::1" and self._has_ipv4_twin(settings):
                # the default pair (or --port's): 127.0.0.1 still serves local clients
                log.warning("IPv6 loopback unavailable; not listening on [::1]: %s", exc)
                return
            raise OSError(
                exc.errno, f"cannot listen on {settings.bind}:{settings.port}: {exc.strerror}"
            ) from exc
        runtime.server = server
        self.listeners.append(runtime)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening on %s:%d (%s)", host, port, settings.type)
        self._log_local_only(runtime)

    async def _open_udp_listener(self, runtime: ListenerRuntime) -> None:
        """A ``udp``/``dtls`` listener: every reliable connection gets a ClientHandler. The
        DTLS identity (PSK identity, or the client certificate's Common Name) becomes the
        user name, as a certificate does with ``use_identity_as_username``."""
        settings = runtime.settings
        cfg = self.config
        if settings.type == "dtls":
            runtime.authenticator = with_identity_auth(
                runtime.authenticator, cfg.effective_allow_anonymous(settings)
            )
        from .udp import open_udp_listener  # the UDP layers load only when a listener needs them

        per_address = settings.max_connections_per_address
        if per_address is None:
            per_address = cfg.max_connections_per_address
        runtime.udp = await open_udp_listener(
            settings, lambda: ClientHandler(self, runtime), runtime.name, per_address
        )
        self.listeners.append(runtime)
        host, port = runtime.udp.sockname()[:2]
        log.info("listening on %s:%d (%s)", host, port, settings.type)
        self._log_local_only(runtime)

    def _log_local_only(self, runtime: ListenerRuntime) -> None:
        """Say so, as Mosquitto 2.0 does, when a loopback listener admits anonymous clients
        because nothing was configured."""
        cfg = self.config
        if not (runtime.is_loopback and cfg.allow_anonymous is None):
            return
        if cfg.effective_allow_anonymous(runtime.settings):
            log.info(
                "Starting in local only mode: connections only possible from clients on this "
                "machine, anonymous access allowed on %s.",
                runtime.name,
            )

    def _has_ipv4_twin(self, settings: ListenerSettings) -> bool:
        """Whether a 127.0.0.1 listener of the same type and port stands next to this ::1 one."""
        return any(
            other.bind == "127.0.0.1" and (other.type, other.port) == (settings.type, settings.port)
            for other in self.config.effective_listeners()
        )

    def _protocol_factory(self, runtime: ListenerRuntime) -> Callable[[], asyncio.Protocol]:
        """What accepts a connection on ``runtime``: a ClientHandler, behind the WebSocket
        adapter (ws, wss) and the TLS handshake (tls, wss). Builds the listener's SSL context
        (registered for SIGHUP reload) and WebSocket settings.

        Raises:
            ConfigError: a certificate, key, CA or CRL file cannot be loaded.
        """
        settings = runtime.settings

        def handler() -> asyncio.Protocol:
            return ClientHandler(self, runtime)

        if settings.type not in WS_LISTENER_TYPES | TLS_LISTENER_TYPES:
            return handler
        if settings.type in TLS_LISTENER_TYPES:
            runtime.tls = ServerTls(settings)  # raises ConfigError on a bad file
        pending = PendingHandshakes(self.config.connect_timeout)
        self.spawn(pending.run())
        inner: Callable[[], asyncio.Protocol] = handler
        if settings.type in WS_LISTENER_TYPES:
            try:
                from .websocket import WebSocketAdapter, WebSocketOptions
            except ImportError as exc:  # validate_config checks this too
                message = "needs the websockets package: pip install 'mqttv5[ws]'"
                raise ConfigError("type", message, settings.label) from exc
            options = runtime.websocket = WebSocketOptions.from_settings(
                settings, runtime.max_packet_size
            )

            def adapter() -> asyncio.Protocol:
                return WebSocketAdapter(options, handler, pending, runtime.name)

            inner = adapter
        tls = runtime.tls
        if tls is None:
            return inner
        # one entry per listener, even where two share a name (port 0 in tests)
        self.reloads.register(f"tls listener {len(self.listeners)} {runtime.name}", tls.reload)
        return lambda: TlsAdapter(tls, inner, pending, runtime.name)

    @property
    def ports(self) -> list[int]:
        """The bound port of every listener (useful with port 0)."""
        out: list[int] = []
        for runtime in self.listeners:
            if runtime.server is not None:
                out.extend(s.getsockname()[1] for s in runtime.server.sockets)
            elif runtime.udp is not None:
                out.append(runtime.udp.sockname()[1])
        return out

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, DISCONNECT 0x8B to every client, flush for at
        most ``shutdown_timeout`` seconds, then close."""
        if self._stopping:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._stopping = True
        if self.bridges is not None:
            await self.bridges.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self._close_listeners()
        self.store.commit()  # and wait for a commit in flight: output below is sent at once
        for handler in list(self.handlers):
            if handler.accepted and handler.version == 5 and not handler.conn.close_expected():
                with contextlib.suppress(Exception):
                    handler.conn.send(Disconnect(_RC.SERVER_SHUTTING_DOWN))
            handler.flush()
            if handler.transport is not None:
                handler.transport.close()
        if self.handlers:
            self._all_gone = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), self.config.shutdown_timeout)
        for handler in list(self.handlers):
            handler.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.store.close()
        self.security.close()
        if self._closed is not None:
            self._closed.set()
        log.info("broker stopped")

    async def _close_listeners(self) -> None:
        for runtime in self.listeners:
            if runtime.server is not None:
                runtime.server.close()
            if runtime.udp is not None:
                runtime.udp.close()
        for runtime in self.listeners:
            if runtime.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(runtime.server.wait_closed(), 1.0)
        self.listeners = []

    async def wait_closed(self) -> None:
        """Wait until :meth:`stop` has finished."""
        assert self._closed is not None, "broker not started"
        await self._closed.wait()

    async def __aenter__(self) -> MqttBroker:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def reload(self, new_config: BrokerConfig) -> list[str]:
        """Apply what can change at run time (limits, log level, and every component registered
        in :attr:`reloads`); return the settings that need a restart, which keep their old
        values until then."""
        needs_restart = self.reloads.apply(self.config, new_config)
        if "listeners" in needs_restart:
            new_config.listeners = self.config.listeners
        if "storage" in needs_restart:
            new_config.storage, new_config.data_dir = self.config.storage, self.config.data_dir
        self.config = new_config
        return needs_restart

    def _reload_core(self, old: BrokerConfig, new: BrokerConfig) -> list[str]:
        restart = []
        if [vars(x) for x in new.effective_listeners()] != [
            vars(x) for x in old.effective_listeners()
        ]:
            restart.append("listeners")
        if new.storage != old.storage or new.data_dir != old.data_dir:
            restart.append("storage")
        logging.getLogger("mqttv5").setLevel(new.log_level.upper())
        return restart

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task owned by the broker."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------------------------------
    # handlers and flushing

    def handler_opened(self, handler: ClientHandler) -> None:
        """A new network connection."""
        cfg = self.config
        limit = handler.listener.settings.max_connections
        if (
            self._stopping
            or (0 <= cfg.max_connections <= len(self.handlers))
            or (0 <= limit <= handler.listener.connections)
        ):
            log.info("Refusing connection from %s:%d: too many connections.", *handler.peer)
            handler.abort()
            return
        # Per-address count and rate, per-client limits (limits.py); a dict lookup when all off.
        if not monitor_for(self).admit(handler):
            return
        self.handlers.add(handler)
        handler.listener.connections += 1
        self.counters.connections_total += 1
        log.debug("New connection from %s:%d on %s.", *handler.peer, handler.listener.name)

    def handler_closed(self, handler: ClientHandler) -> None:
        """The network connection is gone."""
        if handler in self.handlers:
            self.handlers.discard(handler)
            handler.listener.connections -= 1
        self._dirty.discard(handler)
        self._paused_readers.discard(handler)
        if not self.handlers and self._all_gone is not None:
            self._all_gone.set()

    def mark_dirty(self, handler: ClientHandler) -> None:
        """Schedule ``handler``'s output for this tick's flush."""
        self._dirty.add(handler)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def request_flush(self) -> None:
        """Make sure a flush (and so a store commit) runs this tick, even with no handler
        touched: writes made by timers (wills, expiry) must not wait for the next packet."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        # group commit: one transaction per loop tick, and its output waits until it is durable
        self.output_gate.wait_for(self.store.commit_soon())
        dirty = self._dirty
        self._dirty = set()
        for handler in dirty:
            handler.flush()

    # ------------------------------------------------------------------------------------------
    # connecting

    def accept(
        self, handler: ClientHandler, connect: Connect, extra: Properties | None = None
    ) -> None:
        """Attach an authenticated client to its session and send CONNACK (with ``extra``
        properties from the authenticator, e.g. Authentication Method and Data)."""
        cfg = self.config
        conn = handler.conn
        v5 = connect.protocol_level == 5
        client_id = connect.client_id
        assigned = None
        if not client_id:
            if not connect.clean_start:
                # [MQTT-3.1.3-8] an empty ClientID needs Clean Start (3.1.1: identifier rejected)
                handler.refuse(_RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id needs clean start")
                return
            client_id = assigned = cfg.assigned_client_id_prefix + secrets.token_hex(8)
        if len(client_id) > cfg.max_client_id_length:
            handler.refuse(_RC.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
            return
        handler.client_id = client_id
        acl = handler.listener.acl
        will = connect.will
        if will is not None and will.qos > cfg.maximum_qos:
            handler.refuse(_RC.QOS_NOT_SUPPORTED, "will QoS above maximum QoS")  # [MQTT-3.2.2-12]
            return
        if will is not None and will.retain and not cfg.retain_available:
            handler.refuse(_RC.RETAIN_NOT_SUPPORTED, "retained will not supported")  # 3.2.2-13
            return
        if connect.will is not None and not acl.can_publish(
            client_id, handler.username, connect.will.topic
        ):
            # the Will could never be published: refuse now rather than drop it later
            handler.refuse(_RC.NOT_AUTHORIZED, "will topic not authorized")
            return
        requested = connect.properties.session_expiry_interval or 0
        if v5:
            expiry = requested
            if cfg.max_session_expiry is not None:
                expiry = min(expiry, cfg.max_session_expiry)
        else:
            expiry = 0 if connect.clean_start else EXPIRY_NEVER
            if expiry and cfg.persistent_client_expiration is not None:
                expiry = cfg.persistent_client_expiration
        now = self.loop.time()
        existing = self.sessions.get(client_id)
        if existing is not None and existing.handler is not None:
            self._take_over(existing, now)
        if connect.clean_start or existing is None:
            if existing is not None:
                self.end_session(existing, now)
            session = self.sessions.create(client_id)
            present = False
        else:
            session = existing
            present = True
            session.cancel_will()  # [MQTT-3.1.3-9] reconnected before the Will Delay ended
        session.generation += 1
        session.handler = handler
        session.disconnected_at = None
        session.version = connect.protocol_level
        session.expiry_interval = expiry
        session.username = handler.username
        session.acl = acl
        session.read_checked = False
        session.will = connect.will
        handler.session = session
        handler.generation = session.generation
        conn.inflight = session.inflight
        conn.session_expiry_interval = expiry
        if cfg.max_inflight_messages > 0:
            # Mosquitto's max_inflight_messages caps what the client's Receive Maximum allows
            conn.peer_receive_maximum = min(conn.peer_receive_maximum, cfg.max_inflight_messages)
        props = extra.copy() if extra is not None and v5 else Properties()
        if v5:
            props.receive_maximum = cfg.receive_maximum
            props.topic_alias_maximum = cfg.topic_alias_maximum
            props.maximum_packet_size = handler.listener.max_packet_size
            if cfg.maximum_qos < 2:
                props.maximum_qos = cfg.maximum_qos
            if not cfg.retain_available:
                props.retain_available = 0
            if not cfg.wildcard_subscriptions:
                props.wildcard_subscription_available = 0
            if not cfg.subscription_identifiers:
                props.subscription_identifier_available = 0
            if not cfg.shared_subscriptions:
                props.shared_subscription_available = 0
            if assigned is not None:
                props.assigned_client_identifier = assigned  # [MQTT-3.2.2-16]
            if expiry != requested:
                props.session_expiry_interval = expiry  # the server's choice, told to the client
            keep_alive = connect.keep_alive
            if keep_alive > cfg.max_keepalive or (keep_alive == 0 and cfg.max_keepalive < 65535):
                props.server_keep_alive = cfg.max_keepalive  # [MQTT-3.2.2-21]
        else:
            conn.receive_maximum = cfg.receive_maximum
            conn.maximum_qos = cfg.maximum_qos
        if expiry:
            self.store.save_session(self._stored(session))
        conn.send(Connack(_RC.SUCCESS, present, props))  # [MQTT-3.2.2-2] session present
        handler.accepted = True
        set_idle_timeout = getattr(handler.transport, "set_idle_timeout", None)
        if set_idle_timeout is not None and conn.keep_alive:
            # UDP: the transport's idle expiry must not fire before MQTT's 1.5 x Keep Alive
            set_idle_timeout(max(handler.listener.settings.idle_timeout, 1.5 * conn.keep_alive))
        self.counters.clients_connected += 1
        self.counters.clients_maximum = max(
            self.counters.clients_maximum, self.counters.clients_connected
        )
        handler.log_connected(connect)
        if present:
            handler.resend_inflight()
            handler.drain_queue()
        self.mark_dirty(handler)

    @staticmethod
    def _stored(session: Session) -> StoredSession:
        return StoredSession(
            session.client_id,
            session.expiry_interval,
            session.disconnected_at,
            session.will,
            session.username,
        )

    def _restore(self, state: StoredState) -> None:
        """Rebuild sessions, subscriptions, queues, in-flight state and retained messages
        from the store (start-up). Sessions come back offline; one that was online when the
        broker stopped counts as disconnected now, and its Will follows the usual rules."""
        now = self.loop.time()
        for stored in state.sessions:
            session = self.sessions.create(stored.client_id)
            session.expiry_interval = stored.expiry_interval
            session.username = stored.username
            session.disconnected_at = (
                stored.disconnected_at if stored.disconnected_at is not None else now
            )
            for entry in stored.subscriptions:
                self.router.subscribe(session, entry)
            for item in stored.deliveries:
                if item.packet_id is not None:
                    flight = OutFlight(item.packet_id, item.delivery.qos, item.delivery)
                    flight.released = item.released
                    session.inflight.out[item.packet_id] = flight
                else:
                    session.queue.append(item.delivery)
                    size = len(item.delivery.message.payload)
                    session.queued_bytes += size
                    self.queued_changed(size)
            session.inflight.in_qos2.update(stored.incoming_qos2)
            session.will = stored.will
            if stored.will is not None:
                # time spent down counts towards the Will Delay
                self._start_will(session, now, now - session.disconnected_at)
                if session.will is None:
                    self.store.save_session(self._stored(session))
        for message in state.retained:
            self.router.retained.set(message)
        if state.sessions or state.retained:
            log.info(
                "Restored %d sessions and %d retained messages from storage.",
                len(state.sessions),
                len(state.retained),
            )

    def _take_over(self, session: Session, now: float) -> None:
        old = session.handler
        assert old is not None
        log.info("Client %s already connected, closing old connection.", session.client_id)
        if old.version == 5 and not old.conn.close_expected():
            with contextlib.suppress(Exception):
                old.conn.send(Disconnect(_RC.SESSION_TAKEN_OVER))  # [MQTT-3.1.4-3]
        self.store.commit()  # nothing reaches a socket before the commit that covers it
        old.flush()
        old.abort()  # do not wait for a full send buffer to drain
        # The old connection ended without DISCONNECT: its Will follows the spec's rules.
        self._detach(session, old, now, normal=False)

    def connection_finished(self, handler: ClientHandler, event: Closed) -> None:
        """The connection's MQTT conversation is over (DISCONNECT, error, or network loss)."""
        session = handler.session
        if session is None or session.generation != handler.generation:
            return  # never attached, or taken over: the session is someone else's now
        normal = event.received == _RC.NORMAL_DISCONNECTION and event.error is None
        if event.received is not None:
            session.expiry_interval = handler.conn.session_expiry_interval
            log.info("Client %s disconnected.", session.client_id)
        elif event.sent == _RC.KEEP_ALIVE_TIMEOUT:
            log.info("Client %s has exceeded timeout, disconnecting.", session.client_id)
        elif event.error is None:
            log.info("Client %s closed its connection.", session.client_id)
        self._detach(session, handler, self.loop.time(), normal)

    def _detach(self, session: Session, handler: ClientHandler, now: float, normal: bool) -> None:
        if session.handler is not handler:
            return
        handler.session = None
        handler.accepted = False
        session.handler = None
        session.disconnected_at = now
        self.counters.clients_connected -= 1
        if normal:
            session.cancel_will()  # [MQTT-3.1.2-10] a normal DISCONNECT discards the Will
        if session.expiry_interval == 0:
            self.end_session(session, now)  # the Will (if any) goes now: the session ended
            return
        self._start_will(session, now)
        self.store.save_session(self._stored(session))  # with the Will still pending, if any

    def _start_will(self, session: Session, now: float, elapsed: float = 0.0) -> None:
        """The connection ended without a normal DISCONNECT: publish the Will when its delay
        (or the session) ends, whichever is first; ``elapsed`` of it has passed already."""
        will = session.will
        if will is not None:
            delay: float = will.properties.will_delay_interval or 0
            if session.expiry_interval != EXPIRY_NEVER:
                delay = min(delay, session.expiry_interval)
            delay -= elapsed
            if delay <= 0:
                session.will = None
                self.publish_will(will, session.client_id, now)
            else:
                session.will_handle = self.loop.call_later(delay, self._will_due, session)

    def _will_due(self, session: Session) -> None:
        session.will_handle = None
        will, session.will = session.will, None
        if will is not None and session.handler is None:
            self.publish_will(will, session.client_id, self.loop.time())
            if session.expiry_interval and self.sessions.get(session.client_id) is session:
                self.store.save_session(self._stored(session))  # the Will is spent

    def end_session(self, session: Session, now: float) -> None:
        """End a session: publish its pending Will, drop its subscriptions, and hand its
        unacknowledged shared-subscription messages to other members of their groups."""
        self.sessions.remove(session)
        if session.expiry_interval:
            self.store.delete_session(session.client_id)
            self.request_flush()
        will = session.will
        session.cancel_will()
        self.router.remove_session(session)
        pending = [e.item for e in session.inflight.out.values() if not e.released]
        pending.extend(session.queue)
        session.queue.clear()
        self.queued_changed(-session.queued_bytes)
        session.queued_bytes = 0
        session.inflight.out.clear()
        for delivery in pending:
            # QoS 1 goes to another member of its group; a QoS 2 message never does, as the
            # ended session may have received it already [MQTT-4.8.2-5]
            if isinstance(delivery, Delivery) and delivery.group is not None and delivery.qos == 1:
                self.router.deliver_shared(delivery.message, delivery.group, session)
        if will is not None:
            self.publish_will(will, session.client_id, now)

    def publish_will(self, will: Will, client_id: str, now: float) -> None:
        """Publish a Will Message (section 3.1.3.2)."""
        raw = strip_properties(will.properties.encode(), _WILL_DROP)
        expiry = will.properties.message_expiry_interval
        message = BrokerMessage(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            raw,
            now + expiry if expiry is not None else None,
            client_id,
            now,
            will.properties.payload_format_indicator,
        )
        log.debug("Publishing will of %s on %s.", client_id, will.topic)
        if will.retain and self.config.retain_available:
            self.set_retained(message)
        self.router.route(message)

    def set_retained(self, message: BrokerMessage) -> None:
        """Store, replace or clear a retained message, in memory and in the store."""
        self.router.retained.set(message)
        self.store.save_retained(message)
        self.request_flush()

    # ------------------------------------------------------------------------------------------
    # delivery

    def _deliver(self, session: Session, delivery: Delivery) -> None:
        if session.read_checked and not session.acl.can_read(
            session.client_id, session.username, delivery.message.topic
        ):
            return  # a partly readable subscription: this topic is not readable [ACL]
        handler = session.handler
        if handler is not None and handler.accepted:
            # the clock matters only for a message with an expiry
            now = self.loop.time() if delivery.message.expiry_at is not None else 0.0
            handler.deliver(delivery, now)
            self.mark_dirty(handler)
        elif delivery.qos:
            self.enqueue(session, delivery)
        # QoS 0 to an offline session is not queued (Mosquitto's queue_qos0_messages false)

    def enqueue(self, session: Session, delivery: Delivery) -> None:
        """Queue a QoS 1/2 delivery in the session, honouring the queue limits."""
        cfg = self.config
        queue = session.queue
        size = len(delivery.message.payload)
        full = len(queue) >= cfg.max_queued_messages > 0 or (
            cfg.max_queued_bytes > 0 and session.queued_bytes + size > cfg.max_queued_bytes
        )
        if full:
            self.counters.dropped_queue_full += 1
            if cfg.queue_overflow != "drop_oldest" or not queue:
                return
            dropped = queue.popleft()
            session.queued_bytes -= len(dropped.message.payload)
            self.queued_changed(-len(dropped.message.payload))
            if session.expiry_interval and self.store.durable:
                self.store.delivery_dropped(session.client_id, dropped.message.id)
        queue.append(delivery)
        session.queued_bytes += size
        self.queued_changed(size)
        if session.expiry_interval and self.store.durable:
            self.store.add_delivery(session.client_id, delivery, None)
            self.persisted += 1
            self.request_flush()

    def queued_changed(self, delta: int) -> None:
        """Account for bytes entering or leaving session queues; above ``memory_limit`` the
        broker stops reading from publishers until the queues drain below half of it."""
        total = self.queued_total = self.queued_total + delta
        if not self.reading_paused:
            if total > self.config.memory_limit:
                self.reading_paused = True
                log.warning(
                    "Queued messages use %d bytes, over memory_limit: pausing publishers.", total
                )
        elif total <= self.config.memory_limit // 2:
            self.reading_paused = False
            paused, self._paused_readers = self._paused_readers, set()
            for handler in paused:
                handler.resume_reading()
            log.info("Queued messages down to %d bytes: publishers resumed.", total)

    def pause_reader(self, handler: ClientHandler) -> None:
        """Stop reading from ``handler`` until the global queue memory drains."""
        self._paused_readers.add(handler)
        handler.pause_reading()

    def send_retained(
        self, handler: ClientHandler, entry: SubEntry, is_new: bool, now: float
    ) -> None:
        """Send the retained messages matching a new subscription, per its Retain Handling."""
        if entry.group is not None:
            return  # no retained messages for shared subscriptions (section 4.8.2)
        if entry.retain_handling == 2 or (entry.retain_handling == 1 and not is_new):
            return  # [MQTT-3.3.1-10] [MQTT-3.3.1-11]
        sub_ids = (entry.sub_id,) if entry.sub_id else ()
        session = handler.session
        for message in self.router.retained.match_now(entry.match_filter, now):
            if (
                session is not None
                and session.read_checked
                and not session.acl.can_read(session.client_id, session.username, message.topic)
            ):
                continue
            qos = min(message.qos, entry.qos)
            # [MQTT-3.3.1-9] retained messages sent on subscribe carry RETAIN 1
            handler.deliver(Delivery(message, qos, True, sub_ids), now)

    # ------------------------------------------------------------------------------------------
    # background

    async def _sweep(self) -> None:
        """One periodic pass over connections and sessions: CONNECT timeout, keep-alive
        (1.5 x Keep Alive [MQTT-3.1.2-22]), session expiry, retained expiry."""
        interval = self.config.keepalive_sweep_interval
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            timeout = self.config.connect_timeout
            for handler in list(self.handlers):
                conn = handler.conn
                if not handler.accepted:
                    if now - handler.created_at > timeout and handler.session is None:
                        if not handler.closing:
                            log.info("Client %s:%d did not CONNECT in time.", *handler.peer)
                        handler.abort()
                    continue
                if handler.reading_paused:
                    conn.last_received = now  # silent because we stopped reading, not dead
                    continue
                if conn.keep_alive and now >= conn.keep_alive_deadline():
                    conn.handle_timer(now)
                    for event in conn.events_received():
                        if isinstance(event, Closed):
                            handler._on_closed(event)
                    self.mark_dirty(handler)
            for session in self.sessions:
                if session.handler is None and session.disconnected_at is not None:
                    exp = session.expiry_interval
                    if exp != EXPIRY_NEVER and now >= session.disconnected_at + exp:
                        log.debug("Session %s expired.", session.client_id)
                        self.end_session(session, now)
            self.router.retained.purge_expired(now)
