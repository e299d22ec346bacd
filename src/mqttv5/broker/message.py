"""The broker's internal message: one per published message, shared by every delivery.

A :class:`BrokerMessage` keeps the invariant parts of the outgoing PUBLISH (the encoded topic
field, the forwardable properties, the payload) and caches the encodings that do not vary per
delivery, so routing a message to many subscribers encodes it once per variant, not once per
subscriber. The per-delivery parts (packet identifier, QoS, RETAIN bit, Subscription
Identifiers, Topic Alias, remaining Message Expiry) are joined at delivery.
"""

from __future__ import annotations

import itertools
import math
from typing import Final

from mqttv5.protocol.codec import VARINTS, encode_varint
from mqttv5.protocol.packets import Publish
from mqttv5.protocol.properties import Properties, decode_properties, strip_properties

__all__ = ["BrokerMessage", "Delivery", "advance_ids"]

_DROP_ON_FORWARD: Final = frozenset({0x02, 0x23})  # Message Expiry (re-added), Topic Alias
_ids = itertools.count(1)


def advance_ids(start: int) -> None:
    """Make new message ids start at ``start`` or above (after loading stored messages)."""
    global _ids
    current = next(_ids)
    _ids = itertools.count(max(current, start))


class BrokerMessage:
    """One application message inside the broker.

    Attributes:
        id: unique within this broker process.
        topic: the topic name (after inbound alias resolution and mount point).
        payload: the application message.
        qos: the QoS it was published with.
        retain: its RETAIN flag as published.
        props: forwardable MQTT 5.0 properties, raw, without Topic Alias and Message Expiry.
        expiry_at: absolute expiry time on the broker's clock, or None.
        origin: client identifier of the publisher ("" for the broker itself).
        received_at: when the broker received it.
    """

    __slots__ = (
        "_cache",
        "_tail_cache",
        "_topic_field",
        "expiry_at",
        "id",
        "origin",
        "payload",
        "payload_format_indicator",
        "props",
        "qos",
        "raw",
        "received_at",
        "retain",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: bytes = b"",
        expiry_at: float | None = None,
        origin: str = "",
        received_at: float = 0.0,
        payload_format_indicator: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.id = next(_ids)
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.props = props
        self.expiry_at = expiry_at
        self.origin = origin
        self.received_at = received_at
        self.payload_format_indicator = payload_format_indicator
        self.raw = raw
        self._topic_field: bytes | None = None
        self._cache: dict[int, bytes] | None = None
        self._tail_cache: dict[tuple[int, ...], bytes] | None = None

    @classmethod
    def from_publish(cls, packet: Publish, origin: str, now: float) -> BrokerMessage:
        """Build from a received PUBLISH (its topic alias already resolved).

        An MQTT 5.0 QoS 0 PUBLISH with no Topic Alias and no Message Expiry is kept as received
        (``packet.raw``): a v5 QoS 0 subscriber without Subscription Identifiers gets those very
        bytes, forwarded verbatim.
        """
        props = packet.props_raw
        mei = packet.message_expiry_interval
        verbatim = packet.raw
        if packet.topic_alias is not None or mei is not None:
            verbatim = None
            if props:
                props = strip_properties(props, _DROP_ON_FORWARD)
        return cls(
            packet.topic,
            packet.payload,
            packet.qos,
            packet.retain,
            props,
            now + mei if mei is not None else None,
            origin,
            now,
            packet.payload_format_indicator,
            verbatim if not packet.qos else None,
        )

    @property
    def topic_field(self) -> bytes:
        """The encoded topic name field (length prefix and UTF-8 bytes)."""
        field = self._topic_field
        if field is None:
            tb = self.topic.encode("utf-8")
            field = self._topic_field = len(tb).to_bytes(2, "big") + tb
        return field

    @property
    def properties(self) -> Properties:
        """The forwardable properties, decoded (not on the hot path)."""
        raw = self.props
        return decode_properties(encode_varint(len(raw)) + raw, 0, 3)[0]

    def expired(self, now: float) -> bool:
        """True once the Message Expiry Interval has passed [MQTT-3.3.2-5]."""
        return self.expiry_at is not None and now >= self.expiry_at

    def _props_block(
        self, sub_ids: tuple[int, ...], expiry: int | None, alias: int | None
    ) -> bytes:
        if expiry is None and alias is None and not sub_ids:
            props = self.props
            n = len(props)
            return (VARINTS[n] if n < 16384 else encode_varint(n)) + props
        parts = []
        if expiry is not None:
            parts.append(b"\x02" + expiry.to_bytes(4, "big"))
        parts.append(self.props)
        parts.extend(b"\x0b" + encode_varint(sid) for sid in sub_ids)
        if alias is not None:
            parts.append(b"\x23" + alias.to_bytes(2, "big"))
        body = b"".join(parts)
        return encode_varint(len(body)) + body

    def encode(
        self,
        version: int,
        qos: int,
        retain: bool,
        packet_id: int | None,
        sub_ids: tuple[int, ...],
        now: float,
        alias: int | None = None,
        alias_known: bool = False,
        dup: bool = False,
        topic: str | None = None,
    ) -> bytes:
        """The PUBLISH bytes for one delivery.

        Args:
            version: the subscriber's protocol level (5, 4 or 3).
            qos: the delivery QoS (the minimum of the message's and the subscription's).
            retain: the RETAIN bit to send.
            packet_id: the identifier for QoS 1/2.
            sub_ids: Subscription Identifiers of the matching subscriptions [MQTT-3.3.4-3].
            now: the broker's clock, for the remaining Message Expiry.
            alias: an outbound Topic Alias, or None.
            alias_known: the subscriber already has the alias: send an empty topic name.
            dup: the DUP flag (retransmission).
            topic: a different topic name to send (a listener's mount point removed).
        """
        expiry_at = self.expiry_at
        expiry = None if expiry_at is None else max(0, math.ceil(expiry_at - now))
        simple = expiry is None and alias is None and not sub_ids and not qos and topic is None
        if simple:
            raw = self.raw
            if raw is not None and version == 5 and retain == self.retain:
                return raw  # forwarded verbatim
            cache = self._cache
            if cache is not None:
                cached = cache.get(version << 1 | retain)
                if cached is not None:
                    return cached
        if version == 5:
            if expiry is None and alias is None:
                tails = self._tail_cache
                if tails is None:
                    tails = self._tail_cache = {}
                tail = tails.get(sub_ids)
                if tail is None:
                    tail = tails[sub_ids] = self._props_block(sub_ids, None, None) + self.payload
            else:
                tail = self._props_block(sub_ids, expiry, alias) + self.payload
        else:
            tail = self.payload
        if alias_known:
            topic_field = b"\x00\x00"
        elif topic is not None:
            tb = topic.encode("utf-8")
            topic_field = len(tb).to_bytes(2, "big") + tb
        else:
            topic_field = self.topic_field
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        if qos:
            assert packet_id is not None
            rem = len(topic_field) + 2 + len(tail)
            return b"".join(
                (
                    bytes((first,)),
                    VARINTS[rem] if rem < 16384 else encode_varint(rem),
                    topic_field,
                    packet_id.to_bytes(2, "big"),
                    tail,
                )
            )
        rem = len(topic_field) + len(tail)
        data = b"".join(
            (
                bytes((first,)),
                VARINTS[rem] if rem < 16384 else encode_varint(rem),
                topic_field,
                tail,
            )
        )
        if simple:
            if self._cache is None:
                self._cache = {}
            self._cache[version << 1 | retain] = data
        return data


class Delivery:
    """A message on its way to one session: what to send it as.

    Attributes:
        message: the shared message.
        qos: delivery QoS.
        retain: the RETAIN bit to send.
        sub_ids: Subscription Identifiers to attach.
        group: the shared-subscription group key it came through, or None.
    """

    __slots__ = ("group", "message", "qos", "retain", "sub_ids")

    def __init__(
        self,
        message: BrokerMessage,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...] = (),
        group: tuple[str, str] | None = None,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.group = group
