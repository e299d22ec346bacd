"""Hypothesis strategies: one per MQTT control packet, for MQTT 5.0 (version 5) and 3.1.1 (4).

Every strategy draws only packets our decoder must accept, so ``decode(encode(p)) == p`` holds:

- properties come from ``PROPERTY_TABLE``: only those allowed in the packet (``spec.packets``),
  integer values within ``spec.minimum``..``spec.maximum``, strings without U+0000 and without
  surrogates [MQTT-1.5.4-1] [MQTT-1.5.4-2], User Properties repeated and ordered;
- reason codes come from the frozensets of ``reason_codes.py``;
- the 3.1.1 forms carry no properties, no reason codes in acknowledgements or DISCONNECT, and there
  is no AUTH.

A few rules live in the packet decoders rather than the table and are respected here too: a
Response Topic is a non-empty topic name, SUBSCRIBE carries at most one Subscription Identifier,
Authentication Data needs an Authentication Method, a 3.1.1 password needs a user name.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import strategies as st

from mqttv5.protocol.constants import PacketType
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttv5.protocol.properties import PROPERTY_TABLE, WILL, Properties, PropertySpec, WireType
from mqttv5.protocol.reason_codes import (
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    PUBACK_CODES,
    PUBCOMP_CODES,
    PUBREC_CODES,
    PUBREL_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
    ReasonCode,
)

__all__ = [
    "VERSIONS",
    "any_packet",
    "auth",
    "connack",
    "connect",
    "disconnect",
    "packet_ids",
    "packets_for",
    "pingreq",
    "pingresp",
    "properties",
    "property_value",
    "puback",
    "pubcomp",
    "publish",
    "pubrec",
    "pubrel",
    "reason_codes_of",
    "strings",
    "suback",
    "subscribe",
    "subscriptions",
    "topic_filters",
    "topic_names",
    "unsuback",
    "unsubscribe",
]

VERSIONS = (5, 4)

# --- scalars ---------------------------------------------------------------------------------

# Well-formed UTF-8 only: the utf-8 codec excludes surrogates; and no U+0000.
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_TOPIC_CHARS = st.characters(codec="utf-8", exclude_characters="\x00+#")

packet_ids = st.integers(min_value=1, max_value=65535)


@cache
def strings(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    """UTF-8 Encoded Strings: any code point but U+0000 and surrogates."""
    return st.text(_CHARS, min_size=min_size, max_size=max_size)


_optional_strings = st.none() | strings()


@cache
def topic_names(max_size: int = 12) -> st.SearchStrategy[str]:
    """Non-empty topic names without wildcards (``/`` and ``$`` included on purpose)."""
    return st.text(st.one_of(st.sampled_from("/$ab"), _TOPIC_CHARS), min_size=1, max_size=max_size)


@cache
def topic_filters(max_size: int = 12) -> st.SearchStrategy[str]:
    """Non-empty topic filters; the decoder does not check filter syntax, so keep it loose."""
    return st.one_of(
        st.text(st.one_of(st.sampled_from("/+#$a"), _CHARS), min_size=1, max_size=max_size),
        st.sampled_from(["#", "+", "a/+/b", "a/#", "$share/g/a/b", "$SYS/#"]),
    )


_binary = st.binary(max_size=16)
_payloads = st.binary(max_size=32)
_optional_binary = st.none() | _binary
_qos = st.integers(0, 2)
_bools = st.booleans()


@cache
def reason_codes_of(codes: frozenset[ReasonCode]) -> st.SearchStrategy[ReasonCode]:
    """One code from a reason-code set, in a stable order (so shrinking is reproducible)."""
    return st.sampled_from(sorted(codes))


# --- properties ------------------------------------------------------------------------------


@cache
def property_value(spec: PropertySpec, packet_type: int) -> st.SearchStrategy[Any]:
    """A valid value of one (non-repeatable) property, within the table's range."""
    wire = spec.wire
    if wire in (WireType.BYTE, WireType.U16, WireType.U32, WireType.VARINT):
        return st.integers(min_value=spec.minimum, max_value=spec.maximum)
    if wire is WireType.BINARY:
        return _binary
    if spec.attr == "response_topic":
        # [MQTT-3.3.2-14] a Response Topic is a topic name (the PUBLISH decoder checks it)
        return topic_names()
    return strings()


_SUB_ID = PROPERTY_TABLE[0x0B]
_USER_PROPERTY = PROPERTY_TABLE[0x26]
_sub_ids = st.integers(min_value=_SUB_ID.minimum, max_value=_SUB_ID.maximum)
_user_properties = st.lists(st.tuples(strings(), strings()), max_size=3)
_one_sub_id = st.lists(_sub_ids, max_size=1)
_sub_id_lists = st.lists(_sub_ids, max_size=3)


@st.composite
def _properties(draw: st.DrawFn, packet_type: int) -> Properties:
    props = Properties()
    for spec in sorted(PROPERTY_TABLE.values(), key=lambda s: s.id):
        if packet_type not in spec.packets or spec.repeatable:
            continue
        if draw(_bools):
            setattr(props, spec.attr, draw(property_value(spec, packet_type)))
    if packet_type in _USER_PROPERTY.packets:
        props.user_properties = draw(_user_properties)
    if packet_type in _SUB_ID.packets:
        # SUBSCRIBE carries at most one identifier; a server's PUBLISH may carry several.
        ids = _one_sub_id if packet_type == PacketType.SUBSCRIBE else _sub_id_lists
        props.subscription_identifiers = draw(ids)
    if props.authentication_data is not None and props.authentication_method is None:
        props.authentication_method = draw(strings())
    return props


@cache
@cache
def properties(packet_type: int) -> st.SearchStrategy[Properties]:
    """A Properties object with only the properties ``packet_type`` allows.

    ``packet_type`` is a :class:`PacketType` or ``WILL`` (0) for Will Properties.
    """
    return _properties(packet_type)


@cache
def _props_or_empty(packet_type: int, version: int) -> st.SearchStrategy[Properties]:
    return properties(packet_type) if version == 5 else st.just(Properties())


# --- CONNECT / CONNACK -----------------------------------------------------------------------


@st.composite
def _connect(draw: st.DrawFn, version: int = 5) -> Connect:
    will = None
    if draw(_bools):
        will = Will(
            topic=draw(topic_names()),
            payload=draw(_binary),
            qos=draw(_qos),
            retain=draw(_bools),
            properties=draw(_props_or_empty(WILL, version)),
        )
    username = draw(_optional_strings)
    password = draw(_optional_binary)
    if version != 5 and username is None:
        password = None  # 3.1.1: the Password Flag needs the User Name Flag
    return Connect(
        client_id=draw(strings(max_size=23)),
        protocol_level=version,
        clean_start=draw(_bools),
        keep_alive=draw(st.integers(0, 65535)),
        username=username,
        password=password,
        will=will,
        properties=draw(_props_or_empty(PacketType.CONNECT, version)),
        is_bridge=draw(_bools),
        protocol_name="MQIsdp" if version == 3 else "MQTT",
    )


@cache
def connect(version: int = 5) -> st.SearchStrategy[Connect]:
    """CONNECT for protocol level ``version`` (5, 4 or 3)."""
    return _connect(version)


# Codes that survive the 3.1.1 return-code mapping both ways.
_V311_CONNACK_CODES = frozenset(
    {
        ReasonCode.SUCCESS,
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
        ReasonCode.SERVER_UNAVAILABLE,
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
    }
)


@st.composite
def _connack(draw: st.DrawFn, version: int = 5) -> Connack:
    codes = CONNACK_CODES if version == 5 else _V311_CONNACK_CODES
    code = draw(reason_codes_of(codes))
    present = draw(_bools) if code == ReasonCode.SUCCESS else False
    return Connack(code, present, draw(_props_or_empty(PacketType.CONNACK, version)))


@cache
def connack(version: int = 5) -> st.SearchStrategy[Connack]:
    """CONNACK; Session Present only with a success code [MQTT-3.2.2-6]."""
    return _connack(version)


# --- PUBLISH and its acknowledgements --------------------------------------------------------


@st.composite
def _publish(draw: st.DrawFn, version: int = 5) -> Publish:
    qos = draw(_qos)
    props = draw(_props_or_empty(PacketType.PUBLISH, version))
    topic = draw(topic_names())
    if version == 5 and props.topic_alias is not None and draw(_bools):
        topic = ""  # an empty topic name is allowed with a Topic Alias
    return Publish(
        topic,
        draw(_payloads),
        qos,
        draw(_bools),
        draw(_bools) if qos else False,
        draw(packet_ids) if qos else None,
        props,
    )


@cache
def publish(version: int = 5) -> st.SearchStrategy[Publish]:
    """PUBLISH; QoS 0 has no packet identifier and DUP 0 [MQTT-2.2.1-2] [MQTT-3.3.1-2]."""
    return _publish(version)


def _ack(
    cls: type[PubAck | PubRec | PubRel | PubComp],
    codes: frozenset[ReasonCode],
    ptype: PacketType,
    version: int,
) -> st.SearchStrategy[Any]:
    if version != 5:
        return st.builds(cls, packet_ids)
    return st.builds(cls, packet_ids, reason_codes_of(codes), st.none() | properties(ptype))


@cache
def puback(version: int = 5) -> st.SearchStrategy[PubAck]:
    """PUBACK."""
    return _ack(PubAck, PUBACK_CODES, PacketType.PUBACK, version)


@cache
def pubrec(version: int = 5) -> st.SearchStrategy[PubRec]:
    """PUBREC."""
    return _ack(PubRec, PUBREC_CODES, PacketType.PUBREC, version)


@cache
def pubrel(version: int = 5) -> st.SearchStrategy[PubRel]:
    """PUBREL."""
    return _ack(PubRel, PUBREL_CODES, PacketType.PUBREL, version)


@cache
def pubcomp(version: int = 5) -> st.SearchStrategy[PubComp]:
    """PUBCOMP."""
    return _ack(PubComp, PUBCOMP_CODES, PacketType.PUBCOMP, version)


# --- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ---------------------------------------------


@cache
def subscriptions(version: int = 5) -> st.SearchStrategy[Subscription]:
    """One topic filter with options; 3.1.1 has only the requested QoS."""
    if version != 5:
        return st.builds(Subscription, topic_filters(), st.integers(0, 2))
    return st.builds(
        Subscription,
        topic_filters(),
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
        st.integers(0, 2),
    )


@cache
def subscribe(version: int = 5) -> st.SearchStrategy[Subscribe]:
    """SUBSCRIBE with one to four filters [MQTT-3.8.3-2]."""
    return st.builds(
        Subscribe,
        packet_ids,
        st.lists(subscriptions(version), min_size=1, max_size=4),
        _props_or_empty(PacketType.SUBSCRIBE, version),
    )


_V311_SUBACK_CODES = frozenset(
    {
        ReasonCode.GRANTED_QOS_0,
        ReasonCode.GRANTED_QOS_1,
        ReasonCode.GRANTED_QOS_2,
        ReasonCode.UNSPECIFIED_ERROR,
    }
)


@cache
def suback(version: int = 5) -> st.SearchStrategy[Suback]:
    """SUBACK; 3.1.1 return codes are 0x00-0x02 and 0x80."""
    codes = SUBACK_CODES if version == 5 else _V311_SUBACK_CODES
    return st.builds(
        Suback,
        packet_ids,
        st.lists(reason_codes_of(codes), min_size=1, max_size=4),
        _props_or_empty(PacketType.SUBACK, version),
    )


@cache
def unsubscribe(version: int = 5) -> st.SearchStrategy[Unsubscribe]:
    """UNSUBSCRIBE with one to four filters [MQTT-3.10.3-2]."""
    return st.builds(
        Unsubscribe,
        packet_ids,
        st.lists(topic_filters(), min_size=1, max_size=4),
        _props_or_empty(PacketType.UNSUBSCRIBE, version),
    )


@cache
def unsuback(version: int = 5) -> st.SearchStrategy[Unsuback]:
    """UNSUBACK; 3.1.1 has no reason codes."""
    if version != 5:
        return st.builds(Unsuback, packet_ids)
    return st.builds(
        Unsuback,
        packet_ids,
        st.lists(reason_codes_of(UNSUBACK_CODES), min_size=1, max_size=4),
        properties(PacketType.UNSUBACK),
    )


# --- PINGREQ / PINGRESP / DISCONNECT / AUTH --------------------------------------------------


@cache
def pingreq(version: int = 5) -> st.SearchStrategy[Pingreq]:
    """PINGREQ."""
    return st.just(Pingreq())


@cache
def pingresp(version: int = 5) -> st.SearchStrategy[Pingresp]:
    """PINGRESP."""
    return st.just(Pingresp())


@cache
def disconnect(version: int = 5) -> st.SearchStrategy[Disconnect]:
    """DISCONNECT; 3.1.1 has no reason code or properties."""
    if version != 5:
        return st.just(Disconnect())
    return st.builds(
        Disconnect,
        reason_codes_of(DISCONNECT_CODES),
        properties(PacketType.DISCONNECT),
    )


@cache
def auth(version: int = 5) -> st.SearchStrategy[Auth]:
    """AUTH (MQTT 5.0 only)."""
    assert version == 5, "AUTH does not exist in MQTT 3.1.1"
    return st.builds(Auth, reason_codes_of(AUTH_CODES), properties(PacketType.AUTH))


# --- all packets -----------------------------------------------------------------------------

_BY_TYPE = {
    PacketType.CONNECT: connect,
    PacketType.CONNACK: connack,
    PacketType.PUBLISH: publish,
    PacketType.PUBACK: puback,
    PacketType.PUBREC: pubrec,
    PacketType.PUBREL: pubrel,
    PacketType.PUBCOMP: pubcomp,
    PacketType.SUBSCRIBE: subscribe,
    PacketType.SUBACK: suback,
    PacketType.UNSUBSCRIBE: unsubscribe,
    PacketType.UNSUBACK: unsuback,
    PacketType.PINGREQ: pingreq,
    PacketType.PINGRESP: pingresp,
    PacketType.DISCONNECT: disconnect,
    PacketType.AUTH: auth,
}


@cache
def packets_for(packet_type: PacketType, version: int = 5) -> st.SearchStrategy[Any]:
    """The strategy for one packet type and protocol level."""
    return _BY_TYPE[packet_type](version)


@cache
def any_packet(version: int = 5, *, connect_too: bool = False) -> st.SearchStrategy[Packet]:
    """Any packet valid for ``version``.

    CONNECT is left out unless ``connect_too``: a CONNECT inside a stream switches the stream
    decoder to the CONNECT's own protocol level.
    """
    types = [
        t
        for t in PacketType
        if (version == 5 or t != PacketType.AUTH) and (connect_too or t != PacketType.CONNECT)
    ]
    return st.one_of([packets_for(t, version) for t in types])
