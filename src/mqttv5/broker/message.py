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

from mqttv5.protocol.codec import encode_varint
from mqttv5.protocol.packets import Publish
from mqttv5.protocol.properties import Properties, decode_properties, strip_properties

__all__ = ["BrokerMessage", "Delivery"]

_DROP_ON_FORWARD: Final = frozenset({0x02, 0x23})  # Message Expiry (re-added), Topic Alias
_ids = itertools.count(1)


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
        "expiry_at",
        "id",
        "origin",
        "payload",
        "payload_format_indicator",
        "props",
        "qos",
        "received_at",
        "retain",
        "topic",
        "topic_field",
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
    ) -> None:
        self.id = next(_ids)
        self.topic = topic
        tb = topic.encode("utf-8")
        self.topic_field = len(tb).to_bytes(2, "big") + tb
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.props = props
        self.expiry_at = expiry_at
        self.origin = origin
        self.received_at = received_at
        self.payload_format_indicator = payload_format_indicator
        self._cache: dict[int, bytes] = {}
        self._tail_cache: dict[tuple[int, tuple[int, ...]], bytes] = {}

    @classmethod
    def from_publish(cls, packet: Publish, origin: str, now: float) -> BrokerMessage:
        """Build from a received PUBLISH (its topic alias already resolved)."""
        raw = packet.props_raw
        if raw and (packet.topic_alias is not None or packet.message_expiry_interval is not None):
            raw = strip_properties(raw, _DROP_ON_FORWARD)
        mei = packet.message_expiry_interval
        return cls(
            packet.topic,
            packet.payload,
            packet.qos,
            packet.retain,
            raw,
            now + mei if mei is not None else None,
            origin,
            now,
            packet.payload_format_indicator,
        )

    @property
    def properties(self) -> Properties:
        """The forwardable properties, decoded (not on the hot path)."""
        raw = self.props
        return decode_properties(encode_varint(len(raw)) + raw, 0, 3)[0]

    def expired(self, now: float) -> bool:
        """True once the Message Expiry Interval has passed [MQTT-3.3.2-5]."""
        return self.expiry_at is not None and now >= self.expiry_at

    def remaining_expiry(self, now: float) -> int | None:
        """The Message Expiry Interval to send: the original less the time waited [MQTT-3.3.2-6]."""
        if self.expiry_at is None:
            return None
        return max(0, math.ceil(self.expiry_at - now))

    def _props_block(
        self, sub_ids: tuple[int, ...], expiry: int | None, alias: int | None
    ) -> bytes:
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
        expiry = None if self.expiry_at is None else max(0, math.ceil(self.expiry_at - now))
        simple = expiry is None and alias is None and not sub_ids and not dup and topic is None
        if simple and not qos:
            key = version << 1 | retain
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        if version == 5:
            if expiry is None and alias is None:
                tkey = (version, sub_ids)
                tail = self._tail_cache.get(tkey)
                if tail is None:
                    tail = self._props_block(sub_ids, None, None) + self.payload
                    self._tail_cache[tkey] = tail
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
            pid = bytes((packet_id >> 8, packet_id & 0xFF))
            rem = len(topic_field) + 2 + len(tail)
            return b"".join((bytes((first,)), encode_varint(rem), topic_field, pid, tail))
        rem = len(topic_field) + len(tail)
        data = b"".join((bytes((first,)), encode_varint(rem), topic_field, tail))
        if simple:
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
