"""Broker-to-broker bridges: each ``[[bridge]]`` connects this broker to another one.

A bridge is two MQTT clients (:class:`~mqttv5.client.MqttClient`) forwarding to each other:

* the *remote* client connects to the other broker (its URLs tried in order, credentials,
  protocol 5.0 or 3.1.1, session settings, reconnection with backoff) and subscribes there to
  the ``in`` and ``both`` rules;
* the *local* client is connected to this broker through a private socket pair: the broker
  serves it with an ordinary :class:`~mqttv5.broker.handler.ClientHandler` of a private
  listener (anonymous, no ACL, no mount point). It subscribes to the ``out`` and ``both``
  rules.

Why a socket pair rather than a configured listener: the bridge then works whatever the
listeners are (TLS only, password-protected, behind an ACL or a mount point, limited to 3.1.1,
full), needs no local credentials and opens no port; and it runs through the same handler,
session, queue and flow-control code as any client, without a hook in the router. Why two
clients rather than a hook into the router: every guarantee the bridge needs is already MQTT
semantics that both brokers implement and test:

* **No loops.** Both subscriptions carry No Local, so neither broker sends the bridge the
  messages the bridge itself published there: a message never travels back over the bridge it
  came over (MQTT 5.0 on both sides; towards a 3.1.1 remote, Mosquitto gives bridges that
  announced themselves with ``try_private`` the same treatment, and the configuration refuses
  both-way rules toward a 3.1.1 remote without it).
* **Retained state crosses intact**: Retain As Published on both subscriptions.
* **Nothing lost while the remote is down** (QoS 1 and 2): a message is acknowledged to the
  broker it came from only when the other broker has acknowledged it (manual acknowledgement);
  until then it stays in the source broker's session, whose queue bounds it
  (``max_queued_messages`` here). The remote session (``session_expiry``) keeps what the
  remote broker has for the bridge while the connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from mqttv5.client.client import MqttClient
from mqttv5.client.message import (
    ConnectedEvent,
    DisconnectedEvent,
    Message,
    SessionLost,
)
from mqttv5.client.options import ConnectOptions, ReconnectPolicy
from mqttv5.protocol.errors import ConnectionClosed, LocalProtocolError, MqttError
from mqttv5.protocol.packets import Subscription, Will
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.protocol.topics import matches
from mqttv5.transport.base import PeerInfo, Stream, TransportError
from mqttv5.transport.url import open_url, parse_url

from .acl import ALLOW_ALL
from .auth import AnonymousPolicy
from .config import BridgeSettings, BridgeTopic, BrokerConfig, ListenerSettings
from .handler import ClientHandler
from .message import BrokerMessage

if TYPE_CHECKING:
    from .broker import ListenerRuntime, MqttBroker

__all__ = ["Bridge", "BridgeManager"]

log = logging.getLogger("mqttv5.broker")

OUT: Final = "out"
IN: Final = "in"
_READ_SIZE: Final = 65_536
_STOP_TIMEOUT: Final = 2.0
# Forwarding tasks per direction beyond the QoS 1/2 ones (which the Receive Maximum bounds):
# past it the bridge stops taking messages, and the client's bounded queue drops QoS 0 ones.
_QOS0_WINDOW: Final = 256


class Bridge:
    """One ``[[bridge]]``: a remote and a local client forwarding to each other.

    Statistics for ``/metrics`` are plain attributes: :attr:`up`, :attr:`forwarded` and
    :attr:`dropped` (by direction, ``"in"`` or ``"out"``), :attr:`connections` (successful
    connections to the remote broker) and :attr:`address` (the URL last connected to).
    """

    def __init__(self, broker: MqttBroker, settings: BridgeSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.name = settings.name
        self.up = False
        self.address: str | None = None
        self.forwarded = {IN: 0, OUT: 0}
        self.dropped = {IN: 0, OUT: 0}
        self.connections = 0
        self._rules: list[BridgeTopic] = list(settings.topics)
        self._runtime = _local_listener(broker, settings.name)
        self._policy = ReconnectPolicy(
            enabled=True,
            initial_delay=settings.reconnect_delay,
            max_delay=settings.reconnect_delay_max,
        )
        self._rng = random.Random()
        self._up = {IN: asyncio.Event(), OUT: asyncio.Event()}  # by direction of the target
        self._remote_gone = asyncio.Event()  # the remote client stopped reconnecting
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy = {IN: 0, OUT: 0}  # forwarding tasks by direction
        self._room = {IN: asyncio.Event(), OUT: asyncio.Event()}
        self._window = settings.max_inflight + _QOS0_WINDOW
        self._runner: asyncio.Task[Any] | None = None
        self._stopping = False
        self.local = MqttClient(
            settings.effective_local_client_id,
            url=self._open_local,
            options=ConnectOptions(
                clean_start=settings.clean_start,
                session_expiry_interval=settings.session_expiry,
                keep_alive=0,
                receive_maximum=settings.max_inflight,
                topic_alias_maximum=0,
            ),
            reconnect=ReconnectPolicy(enabled=True, initial_delay=0.05, max_delay=1.0),
            manual_ack=True,
            offline_queue=settings.max_inflight,
            on_connect=lambda _event: self._up[IN].set(),
            on_disconnect=lambda _event: self._up[IN].clear(),
        )
        self.remote = MqttClient(
            settings.remote_client_id,
            url=self._open_remote,
            options=self._remote_options(),
            reconnect=self._policy,
            manual_ack=True,
            offline_queue=settings.max_inflight,
            on_connect=self._remote_connected,
            on_disconnect=self._remote_disconnected,
        )

    def _remote_options(self) -> ConnectOptions:
        s = self.settings
        v5 = s.protocol_version == 5
        will = None
        if s.notifications and not s.notifications_local_only:
            will = Will(s.state_topic, b"0", qos=1, retain=True)  # Mosquitto's notification Will
        return ConnectOptions(
            clean_start=s.clean_start,
            keep_alive=s.keepalive,
            session_expiry_interval=s.session_expiry if v5 else 0,
            receive_maximum=s.max_inflight,
            topic_alias_maximum=0,
            username=s.username,
            password=s.password,
            will=will,
            version=s.protocol_version,
            # every address may take connect_timeout, and then the handshake
            connect_timeout=s.connect_timeout * (len(s.urls) + 1),
            # Mosquitto sets the bridge bit over 3.1.1 only (5.0 has No Local and Retain As
            # Published), and refuses a 5.0 CONNECT carrying it as a protocol error
            bridge=s.try_private and not v5,
        )

    # ------------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Start connecting (in the background): the local side first, then the remote one."""
        self._notify(False)
        self._runner = self._spawn(self._run())

    async def stop(self, *, forget: bool = False) -> None:
        """Disconnect both sides and stop forwarding.

        Args:
            forget: end the bridge's session on this broker too (the bridge was removed);
                otherwise it is kept, so a restarted bridge resumes it and the messages it
                holds.
        """
        self._stopping = True
        runner = self._runner
        if runner is not None:
            runner.cancel()  # mid-connection attempts end here
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        settings = self.settings
        if self.up and settings.notifications and not settings.notifications_local_only:
            with contextlib.suppress(MqttError, TimeoutError):
                async with asyncio.timeout(_STOP_TIMEOUT / 2):
                    await self.remote.publish(settings.state_topic, b"0", 1, True)
        await self.remote.disconnect(timeout=_STOP_TIMEOUT)
        props = Properties(session_expiry_interval=0) if forget else None
        await self.local.disconnect(properties=props, timeout=_STOP_TIMEOUT)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.up:
            self.up = False
            self._notify(False)
        log.info("Bridge %s stopped.", self.name)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Bridge %s: task failed", self.name, exc_info=task.exception())

    async def _run(self) -> None:
        """Connect the local side, then keep the remote side connected until stopped."""
        await self._connect_local()
        self._spawn(self._pump(self.local, self.remote, OUT))
        self._spawn(self._pump(self.remote, self.local, IN))
        attempt = 0
        while not self._stopping:
            if attempt:
                delay = self._policy.delay(attempt, self._rng)
                log.info("Bridge %s: next connection attempt in %.1f s.", self.name, delay)
                await asyncio.sleep(delay)
            attempt += 1
            self._remote_gone.clear()  # also set by our own disconnect() below
            try:
                event = await self.remote.connect()
            except (MqttError, OSError, TimeoutError) as exc:
                log.warning("Bridge %s: connection failed: %s", self.name, _describe(exc))
                continue
            except Exception:  # a bug must not end the bridge for good: log it, try again
                log.exception("Bridge %s: connection failed", self.name)
                continue
            try:
                await self._subscribe_remote(event)
            except MqttError as exc:
                log.warning("Bridge %s: cannot subscribe on the remote broker: %s", self.name, exc)
                await self.remote.disconnect(timeout=_STOP_TIMEOUT)
                continue
            attempt = 0
            # From here on the client reconnects by itself (resuming the session, so in-flight
            # messages complete); it stops only on a refusal that retrying cannot fix.
            await self._remote_gone.wait()
            attempt = 1

    # ------------------------------------------------------------------------------------------
    # the two sides

    async def _open_local(self) -> Stream:
        """One end of a fresh socket pair; the broker serves the other end."""
        ours, theirs = socket.socketpair()
        try:
            ours.setblocking(False)
            theirs.setblocking(False)
            await self.broker.loop.connect_accepted_socket(self._local_handler, theirs)
            reader, writer = await asyncio.open_connection(sock=ours, limit=_READ_SIZE)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return _PairStream(reader, writer)

    def _local_handler(self) -> ClientHandler:
        handler = ClientHandler(self.broker, self._runtime)
        handler.peer = ("bridge", 0)  # what log lines show: a socket pair has no address
        return handler

    async def _connect_local(self) -> None:
        attempt = 0
        while True:
            try:
                event = await self.local.connect()
                break
            except (MqttError, OSError, TimeoutError) as exc:
                attempt += 1
                log.error("Bridge %s: cannot attach to this broker: %s", self.name, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        wanted: dict[str, int] = {}
        for rule in self._rules:
            if rule.outgoing:
                wanted[rule.local_filter] = max(rule.qos, wanted.get(rule.local_filter, 0))
        if event.session_present:
            # a resumed session keeps the subscriptions of rules that no longer exist
            session = self.broker.sessions.get(self.settings.effective_local_client_id)
            stale = [f for f in (session.subscriptions if session else ()) if f not in wanted]
            if stale:
                await self.local.unsubscribe(stale)
        if wanted:
            # No Local: not the messages the bridge brings in; Retain As Published: the
            # RETAIN flag crosses; Retain Handling 2: the retained messages here are not
            # pushed to the remote at every start (as Mosquitto).
            subs = [Subscription(f, q, True, True, 2) for f, q in wanted.items()]
            self._check_granted("this broker", subs, await self.local.subscribe(subs))

    async def _open_remote(self) -> Stream:
        """Try the bridge's URLs in order; the first that accepts the connection is used."""
        errors = []
        for url in self.settings.urls:
            endpoint = parse_url(url)
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            log.info("Connecting bridge %s (%s:%d)", self.name, host, endpoint.port)
            try:
                stream = await open_url(endpoint, connect_timeout=self.settings.connect_timeout)
            except (MqttError, OSError) as exc:
                errors.append(str(exc))
                continue
            self.address = url
            return stream
        raise TransportError(", ".join(self.settings.urls), "; ".join(errors))

    async def _subscribe_remote(self, event: ConnectedEvent) -> None:
        v5 = self.settings.protocol_version == 5
        wanted: dict[str, int] = {}
        for rule in self._rules:
            if rule.incoming:
                wanted[rule.remote_filter] = max(rule.qos, wanted.get(rule.remote_filter, 0))
        if event.session_present:
            # Mosquitto's bridge_attempt_unsubscribe: an out-only rule's remote topics may
            # still be subscribed in the resumed session (the rule was `in` before)
            stale = {r.remote_filter for r in self._rules if not r.incoming} - set(wanted)
            if stale:
                await self.remote.unsubscribe(sorted(stale))
        if not wanted:
            return
        # No Local and Retain As Published exist in MQTT 5.0 only; over 3.1.1, try_private
        # asks Mosquitto for the same. Retain Handling 0: the remote's retained messages
        # come in at every connection (Mosquitto's MQTT_SUB_OPT_SEND_RETAIN_ALWAYS).
        subs = [Subscription(f, q, v5, v5, 0) for f, q in wanted.items()]
        self._check_granted("the remote broker", subs, await self.remote.subscribe(subs))

    def _check_granted(self, where: str, subs: list[Subscription], codes: list[ReasonCode]) -> None:
        for sub, code in zip(subs, codes, strict=False):
            if code.is_error:
                log.warning(
                    "Bridge %s: %s refused the subscription to %s: %s.",
                    self.name,
                    where,
                    sub.topic_filter,
                    code.text,
                )

    def _remote_connected(self, event: ConnectedEvent) -> None:
        self.up = True
        self.connections += 1
        self._up[OUT].set()
        resumed = " (session resumed)" if event.session_present else ""
        log.info("Bridge %s connected to %s%s.", self.name, self.address, resumed)
        self._notify(True)
        settings = self.settings
        if settings.notifications and not settings.notifications_local_only:
            self._spawn(self._notify_remote())

    async def _notify_remote(self) -> None:
        with contextlib.suppress(MqttError):
            await self.remote.publish(self.settings.state_topic, b"1", 1, True)

    def _remote_disconnected(self, event: DisconnectedEvent) -> None:
        self._up[OUT].clear()
        if self.up and not event.requested:
            reason = event.reason_string or (event.reason_code.text if event.reason_code else "")
            log.warning(
                "Bridge %s lost its connection to %s%s.",
                self.name,
                self.address,
                f": {reason}" if reason else "",
            )
        if self.up:
            self.up = False
            self._notify(False)
        if not event.will_reconnect:
            self._remote_gone.set()

    def _notify(self, up: bool) -> None:
        """Publish the bridge's state on this broker, retained (Mosquitto's notifications)."""
        if not self.settings.notifications:
            return
        broker = self.broker
        message = BrokerMessage(
            self.settings.state_topic, b"1" if up else b"0", 1, True, received_at=broker.loop.time()
        )
        broker.set_retained(message)
        broker.router.route(message)

    # ------------------------------------------------------------------------------------------
    # forwarding

    async def _pump(self, source: MqttClient, target: MqttClient, direction: str) -> None:
        """Hand every message ``source`` receives to a forwarding task, in order."""
        source_side = OUT if direction == IN else IN
        while True:
            try:
                async for message in source.messages():
                    room = self._room[direction]
                    while self._busy[direction] >= self._window:
                        room.clear()
                        await room.wait()
                    # tasks start in creation order, so sends keep the arrival order
                    self._busy[direction] += 1
                    self._spawn(self._forward(message, source, target, direction))
            except MqttError:
                pass  # the source stopped reconnecting; its next connection revives messages()
            if self._stopping:
                return
            await self._up[source_side].wait()

    def _rule_for(self, topic: str, direction: str) -> BridgeTopic | None:
        for rule in self._rules:
            if direction == OUT:
                if rule.outgoing and matches(rule.local_filter, topic):
                    return rule
            elif rule.incoming and matches(rule.remote_filter, topic):
                return rule
        return None

    async def _forward(
        self, message: Message, source: MqttClient, target: MqttClient, direction: str
    ) -> None:
        """Publish ``message`` on the other broker; acknowledge it to its source only when the
        other broker has acknowledged it (QoS 1 and 2)."""
        try:
            await self._forward_one(message, source, target, direction)
        finally:
            self._busy[direction] -= 1
            self._room[direction].set()

    async def _forward_one(
        self, message: Message, source: MqttClient, target: MqttClient, direction: str
    ) -> None:
        rule = self._rule_for(message.topic, direction)
        if rule is None:
            # a subscription of a rule that no longer exists (kept by a resumed session)
            self.dropped[direction] += 1
            source.ack(message)
            return
        topic = rule.to_remote(message.topic) if direction == OUT else rule.to_local(message.topic)
        props = _forwarded_properties(message)
        while True:
            qos, retain = message.qos, message.retain
            if direction == OUT:
                qos, retain = self._fit_remote(qos, retain)
            try:
                code = await target.publish(topic, message.payload, qos, retain, props)
            except SessionLost:
                continue  # the remote broker lost the session, and the message: send it again
            except LocalProtocolError as exc:  # too large for the other broker ...
                log.warning("Bridge %s: cannot forward %s: %s", self.name, topic, exc)
                self.dropped[direction] += 1
                break
            except MqttError:
                # not connected (NotConnected), or the client gave up reconnecting (connection
                # closed, refused): the message waits for the next connection
                if not message.qos:
                    self.dropped[direction] += 1
                    return
                up = self._up[direction]
                if up.is_set():
                    await asyncio.sleep(0.1)  # connected, yet refused: do not spin
                await up.wait()
                continue
            if code.is_error:
                log.debug("Bridge %s: %s refused by %s", self.name, topic, code.text)
                self.dropped[direction] += 1
            else:
                self.forwarded[direction] += 1
            break
        source.ack(message)

    def _fit_remote(self, qos: int, retain: bool) -> tuple[int, bool]:
        """QoS and RETAIN as the remote broker accepts them (its CONNACK may lower the
        maximum QoS or refuse retained messages; Mosquitto downgrades too)."""
        props = self.remote.server_properties
        maximum = props.maximum_qos if props.maximum_qos is not None else 2
        if retain and (not self.settings.outgoing_retain or props.retain_available == 0):
            retain = False
        return min(qos, maximum), retain


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _forwarded_properties(message: Message) -> Properties | None:
    """The message's properties minus those that belong to the hop it came over."""
    props = message.properties
    if not props:
        return None
    if props.subscription_identifiers or props.topic_alias is not None:
        props = props.copy()
        props.subscription_identifiers = []
        props.topic_alias = None
    return props


def _local_listener(broker: MqttBroker, name: str) -> ListenerRuntime:
    """The private listener the local sides of bridges are served by: anonymous, no ACL, no
    mount point, every protocol version (the bridge is part of this broker)."""
    from .broker import ListenerRuntime  # broker.py imports this module

    return ListenerRuntime(
        settings=ListenerSettings(name=f"bridge {name}"),
        name=f"bridge:{name}",
        max_packet_size=broker.config.max_packet_size,
        authenticator=AnonymousPolicy(True),
        is_loopback=True,
        acl=ALLOW_ALL,
    )


class _PairStream:
    """The bridge's end of its socket pair, as a :class:`~mqttv5.transport.Stream`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False
        self.peer = PeerInfo("broker", 0, None, "socketpair")

    async def read(self) -> bytes:
        try:
            return await self._reader.read(_READ_SIZE)
        except OSError as exc:
            raise ConnectionClosed(reason_string=str(exc)) from exc

    def write(self, data: bytes) -> None:
        if self._closed or self._writer.is_closing():
            raise ConnectionClosed(reason_string="stream closed")
        self._writer.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def write_buffer_size(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionClosed(reason_string=str(exc)) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()


class BridgeManager:
    """Every bridge of the broker: started with it, stopped with it, changed on SIGHUP."""

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.bridges: dict[str, Bridge] = {}
        self._applying: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the configured bridges (they connect in the background)."""
        await self.apply(self.broker.config.bridges)

    async def stop(self) -> None:
        """Stop every bridge."""
        task, self._applying = self._applying, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        bridges = list(self.bridges.values())
        self.bridges.clear()
        await asyncio.gather(*(bridge.stop() for bridge in bridges), return_exceptions=True)

    def reload(self, old: BrokerConfig, new: BrokerConfig) -> list[str]:
        """Reload applier: bridges added, removed or changed are applied at once (in the
        background, after any earlier reload); nothing needs a restart."""
        previous = self._applying
        wanted = list(new.bridges)

        async def apply() -> None:
            if previous is not None and not previous.done():
                with contextlib.suppress(Exception):
                    await previous
            await self.apply(wanted)

        self._applying = self.broker.spawn(apply())
        return []

    async def apply(self, wanted: list[BridgeSettings]) -> None:
        """Make the running bridges those of ``wanted``: stop the removed and changed ones,
        start the new and changed ones."""
        by_name = {settings.name: settings for settings in wanted}
        for name, bridge in list(self.bridges.items()):
            settings = by_name.get(name)
            if settings == bridge.settings:
                continue
            del self.bridges[name]
            log.info("Bridge %s %s.", name, "changed: restarting it" if settings else "removed")
            await bridge.stop(forget=settings is None)
        for settings in wanted:
            if settings.name not in self.bridges:
                bridge = self.bridges[settings.name] = Bridge(self.broker, settings)
                bridge.start()
