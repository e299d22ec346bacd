"""``ListenerSettings``: one ``[[listener]]`` table."""

from __future__ import annotations

from dataclasses import dataclass, field

from .keys import (
    _MAX_PACKET,
    _PORT_BY_TYPE,
    _PROTOCOL_DOC,
    _U16,
    DEFAULT_PORTS,
    LISTENER_TYPES,
    TLS_VERSIONS,
    _alpn,
    _host,
    _key,
    _mount_point,
    _networks,
    _protocol_versions,
    _spec,
    _subprotocols,
    _unlimited_or_positive,
    _ws_path,
)


@dataclass
class ListenerSettings:
    """One ``[[listener]]``: a socket the broker accepts connections on.

    Settings left unset (None) inherit the top-level value of the same name.
    """

    type: str = _key(
        "tcp",
        "Transport: `tcp`, `tls` (MQTT over TLS), `ws` (MQTT over WebSocket), `wss` (WebSocket "
        "over TLS), `udp` (MQTT over UDP with our reliability layer, see docs/udp.md) or `dtls` "
        "(the same over DTLS 1.2, with pre-shared keys or certificates; needs python-mbedtls: "
        "`pip install 'mqttv5[dtls]'`).",
        choices=LISTENER_TYPES,
    )
    bind: str = _key(
        "127.0.0.1",
        "Address to listen on: an IP address or a host name. `0.0.0.0` (all IPv4 interfaces) or "
        "`::` (all interfaces) exposes the broker to the network, which needs an authentication "
        "choice (see `allow_anonymous`).",
        check=_host,
    )
    port: int = _key(
        _PORT_BY_TYPE,
        "TCP or UDP port. 0 picks a free port (for tests).",
        minimum=0,
        maximum=_U16,
        default_doc="1883 (tcp), 8883 (tls), 8080 (ws), 8443 (wss), 1884 (udp), 8884 (dtls)",
    )
    allow_anonymous: bool | None = _key(
        None,
        "Accept clients that send no user name on this listener. Unset: the top-level "
        "`allow_anonymous`.",
    )
    password_file: str | None = _key(
        None,
        "Password file for this listener (Mosquitto format). Unset: the top-level `password_file`.",
    )
    scram_file: str | None = _key(
        None,
        "SCRAM-SHA-256 credentials file for this listener (enhanced authentication). Unset: the "
        "top-level `scram_file`.",
    )
    acl_file: str | None = _key(
        None,
        "Access control file for this listener. Unset: the top-level `acl_file`.",
    )
    mount_point: str = _key(
        "",
        "Topic prefix for clients of this listener: a client publishing `a/b` on a listener with "
        '`mount_point = "site1/"` publishes `site1/a/b`, and sees only topics under it. '
        "As Mosquitto's `mount_point`.",
        check=_mount_point,
    )
    max_connections: int = _key(
        -1,
        "Most simultaneous connections on this listener; -1 = unlimited. The top-level "
        "`max_connections` bounds all listeners together.",
        check=_unlimited_or_positive,
        rule_doc="-1 or ≥ 1",
    )
    max_connections_per_address: int | None = _key(
        None,
        "Most simultaneous connections from one source address on this listener (IPv6: one "
        "/64). Unset: the top-level `max_connections_per_address`.",
        minimum=0,
    )
    max_connection_rate: float | None = _key(
        None,
        "New connections per second from one source address on this listener. Unset: the "
        "top-level `max_connection_rate`.",
        minimum=0,
    )
    connection_rate_burst: int | None = _key(
        None,
        "Connections one address may open at once on this listener before "
        "`max_connection_rate` applies. Unset: the top-level `connection_rate_burst`.",
        minimum=0,
    )
    max_packet_size: int | None = _key(
        None,
        "Largest packet accepted on this listener, in bytes. Unset: the top-level "
        "`max_packet_size`.",
        minimum=1,
        maximum=_MAX_PACKET,
    )
    protocol_versions: list[int] = field(
        default_factory=lambda: [3, 4, 5],
        metadata=_spec(
            f"MQTT protocol levels accepted on this listener ({_PROTOCOL_DOC}). A CONNECT with "
            "another level is refused with Unsupported Protocol Version.",
            check=_protocol_versions,
            rule_doc="subset of [3, 4, 5]",
        ),
    )
    name: str = _key(
        "",
        "Label used in log lines; empty = the listener's type and address.",
    )
    # --- TLS (tls and wss listeners) ---
    certfile: str | None = _key(
        None,
        "`tls`, `wss`: the server's certificate chain (PEM), leaf first. Required for `tls` and "
        "`wss`. Re-read on SIGHUP. As Mosquitto.",
    )
    keyfile: str | None = _key(
        None,
        "`tls`, `wss`: the private key of `certfile` (PEM, not encrypted). Required for `tls` "
        "and `wss`. Re-read on SIGHUP. As Mosquitto.",
    )
    cafile: str | None = _key(
        None,
        "`tls`, `wss`: CA certificates (PEM) that client certificates must chain to. Needed for "
        "`require_certificate` and the certificate-as-username options. As Mosquitto.",
    )
    capath: str | None = _key(
        None,
        "`tls`, `wss`: a directory of CA certificates (OpenSSL `c_rehash` layout), instead of "
        "or with `cafile`. As Mosquitto.",
    )
    require_certificate: bool = _key(
        False,
        "`tls`, `wss`: clients must present a certificate signed by `cafile`/`capath` (mutual "
        "TLS); the handshake fails otherwise. As Mosquitto.",
    )
    use_identity_as_username: bool = _key(
        False,
        "`tls`, `wss`: the Common Name (CN) of the client's certificate becomes its user name "
        "(for authentication and the ACL) and no password is checked for a client that "
        "presents one. A client without a certificate (possible only without "
        "`require_certificate`) is judged by the password file or `allow_anonymous`. As "
        "Mosquitto.",
    )
    use_subject_as_username: bool = _key(
        False,
        "`tls`, `wss`: like `use_identity_as_username`, with the certificate's whole subject "
        "as the user name, written as RFC 2253 (`CN=client,O=Example,C=FR`) like Mosquitto.",
    )
    tls_version: str = _key(
        "tlsv1.2",
        "`tls`, `wss`: the oldest TLS version accepted. Mosquitto's `tls_version` names one "
        "version; here it is a minimum, so `tlsv1.2` accepts TLS 1.2 and 1.3.",
        choices=TLS_VERSIONS,
    )
    ciphers: str | None = _key(
        None,
        "`tls`, `wss`: OpenSSL cipher list for TLS 1.2 (e.g. `ECDHE+AESGCM`); TLS 1.3 suites "
        "are OpenSSL's defaults. Unset: Python's secure defaults. As Mosquitto.",
    )
    crlfile: str | None = _key(
        None,
        "`tls`, `wss`: certificate revocation list (PEM) checked against client certificates; "
        "re-read on SIGHUP. As Mosquitto.",
    )
    alpn: list[str] | None = field(
        default=None,
        metadata=_spec(
            "`tls`, `wss`: ALPN protocol names offered to clients, in order of preference; `[]` "
            "turns ALPN off. A client offering none of them still connects.",
            check=_alpn,
            default_doc='`["mqtt"]` (tls), `["http/1.1"]` (wss)',
        ),
    )
    # --- WebSocket (ws and wss listeners) ---
    ws_path: str = _key(
        "",
        '`ws`, `wss`: the only HTTP path accepted (e.g. `"/mqtt"`, the convention); others get '
        "404. Empty: any path, as Mosquitto.",
        check=_ws_path,
    )
    ws_subprotocols: list[str] = field(
        default_factory=lambda: ["mqtt", "mqttv3.1"],
        metadata=_spec(
            "`ws`, `wss`: WebSocket subprotocols accepted, in order of preference. A client "
            "offering only others is refused (HTTP 400); a client offering none is accepted "
            "(as Mosquitto), although MQTT 5.0 asks clients to offer `mqtt` [MQTT-6.0.0-3].",
            check=_subprotocols,
        ),
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata=_spec(
            "`ws`, `wss`: accepted values of a browser's `Origin` header (e.g. "
            '`["https://app.example.com"]`; `*` matches within one host label, as in '
            '`"https://*.example.com"`); another origin is refused with HTTP 403. A client '
            "sending no Origin (not a browser) is accepted. Empty: every origin.",
        ),
    )
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata=_spec(
            "`tcp`, `ws`, `wss`: addresses or networks (`10.0.0.0/8`) of proxies whose word "
            "on the client's address is believed: a PROXY protocol v2 header (`tcp`) or an "
            "`X-Forwarded-For` header (`ws`, `wss`). A connection from one of them is attributed "
            "to the address given (for logs, lockouts and authentication). Empty: no header is "
            "believed.",
            check=_networks,
        ),
    )
    ws_compression: bool = _key(
        False,
        "`ws`, `wss`: offer permessage-deflate compression. Off by default: MQTT payloads are "
        "often already compact, and compression costs memory and CPU per connection.",
    )

    # --- UDP and DTLS (udp and dtls listeners) ---
    psk_file: str | None = _key(
        None,
        "`dtls`: pre-shared keys, one `identity:hexkey` per line (Mosquitto's `psk_file`). A "
        "client's PSK identity becomes its user name. A `dtls` listener needs `psk_file`, or "
        "`certfile` and `keyfile`, or both.",
    )
    mtu: int | None = _key(
        None,
        "`udp`, `dtls`: largest datagram sent, in bytes (UDP payload). Bigger MQTT packets are "
        "split into fragments. Unset: 1472 on IPv4, 1452 on IPv6 (a 1500-byte Ethernet MTU).",
        minimum=256,
        maximum=65_507,
        default_doc="1472 (IPv4), 1452 (IPv6)",
    )
    rto_min: float = _key(
        0.2,
        "`udp`, `dtls`: shortest retransmission timeout, in seconds (RFC 6298's RTO, from the "
        "measured round-trip time, never below this).",
        minimum=0.001,
    )
    rto_max: float = _key(
        60.0,
        "`udp`, `dtls`: longest retransmission timeout, in seconds (the exponential backoff "
        "stops doubling here).",
        minimum=0.01,
    )
    max_retransmits: int = _key(
        10,
        "`udp`, `dtls`: a datagram sent this many more times without acknowledgement ends the "
        "connection (as a lost TCP connection: the Will is published).",
        minimum=1,
    )
    idle_timeout: float = _key(
        90.0,
        "`udp`, `dtls`: a connection that has received nothing (not even a keep-alive) for this "
        "many seconds is closed. Raised per client to 1.5 x its MQTT Keep Alive when that is "
        "longer, so the Will follows MQTT's rule.",
        minimum=1.0,
    )

    def __post_init__(self) -> None:
        if self.port == _PORT_BY_TYPE:
            self.port = DEFAULT_PORTS.get(self.type, DEFAULT_PORTS["tcp"])

    @property
    def address(self) -> str:
        """``host:port`` as a user would write it (``[::1]:1883`` for IPv6)."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{host}:{self.port}"

    @property
    def label(self) -> str:
        """The listener's name, or ``type address`` when it has none."""
        return self.name or f"{self.type} {self.address}"


def _default_listeners() -> list[ListenerSettings]:
    return [ListenerSettings(bind="127.0.0.1"), ListenerSettings(bind="::1")]
