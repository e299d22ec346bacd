"""python-mbedtls behind a small in-memory engine: one :class:`Association` per peer.

python-mbedtls is imported lazily (:func:`mbedtls_tls`), so mqttv5 imports without it and only
building a DTLS server or client needs it.

mbedtls is driven through its memory buffers (``MbedTLSBuffer``: ``receive_from_network``,
``do_handshake``, ``readinto``, ``write``, ``peek_outgoing``); no socket is involved.
Handshake retransmission is mbedtls's own: it runs a wall-clock timer (``gettimeofday``) from
each flight it sends and resends the flight when ``do_handshake()`` is called after it expired.
:meth:`Association.timer` mirrors that timer (first ``retransmit_timeout``, doubled on every
retransmission, reset by each new flight) on the caller's clock, so ``now`` must advance at
the rate of real time (``loop.time()``); if mbedtls has not resent yet when our timer fires,
it is asked again :data:`POLL_INTERVAL` later.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from ...protocol.errors import ConfigError, MqttError
from .records import RECORD_HEADER_SIZE, next_epoch0_sequence, pack_datagrams, plaintext_alert

if TYPE_CHECKING:
    from mbedtls.exceptions import TLSError
    from mbedtls.tls import ClientContext, ServerContext, TLSWrappedBuffer

    from .settings import DtlsClientSettings, DtlsServerSettings

__all__ = [
    "CERTIFICATE_CIPHERS",
    "MISSING_MBEDTLS",
    "PSK_CIPHERS",
    "RECORD_OVERHEAD",
    "Association",
    "DtlsError",
    "DtlsUnavailable",
    "HandshakeError",
    "PskStore",
    "client_context",
    "describe_tls_error",
    "mbedtls_tls",
    "server_context",
]

logger = logging.getLogger("mqttv5.transport.udp")

MISSING_MBEDTLS: Final = "DTLS needs python-mbedtls: pip install 'mqttv5[dtls]'"

# Only AEAD suites: their record expansion is fixed, so RECORD_OVERHEAD is exact. Server
# preference order (mbedtls honours the server's order): forward secrecy first.
PSK_CIPHERS: Final = (
    "TLS-ECDHE-PSK-WITH-CHACHA20-POLY1305-SHA256",
    "TLS-PSK-WITH-AES-128-GCM-SHA256",
    "TLS-PSK-WITH-AES-256-GCM-SHA384",
    "TLS-PSK-WITH-CHACHA20-POLY1305-SHA256",
    "TLS-PSK-WITH-AES-128-CCM",
    "TLS-PSK-WITH-AES-128-CCM-8",
)
CERTIFICATE_CIPHERS: Final = (
    "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
    "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
    "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256",
    "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
    "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384",
    "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256",
)
#: Most bytes a DTLS 1.2 record adds to its plaintext with the suites above: the 13-byte
#: record header, an 8-byte explicit nonce and a 16-byte tag (AES-GCM, AES-CCM).
#: ChaCha20-Poly1305 and CCM-8 add 29.
RECORD_OVERHEAD: Final = RECORD_HEADER_SIZE + 8 + 16

RETRANSMIT_MAX: Final = 60.0  # RFC 6347 4.2.4.1: at least 60 s for the largest timeout
POLL_INTERVAL: Final = 0.1  # ask mbedtls again when its timer had not quite expired
MAX_DATAGRAM: Final = 16384 + 256  # larger ones cannot be one record of ours (2^14 plaintext)
_MAX_STEPS: Final = 64  # handshake steps per call: a flight is well under this
_HANDSHAKE_FAILURE: Final = 40  # AlertDescription, RFC 5246 7.2
_PEER_ENDED: Final = frozenset({0x7780, 0x7880})  # fatal alert, close_notify received
_READ_SIZE: Final = 16384  # MBEDTLS_SSL_IN_CONTENT_LEN: one whole record per readinto()

# mbedtls error codes (negated) and what they mean to an MQTT user; {peer} is the other side.
_REASONS: Final = {
    0x2700: "{peer} certificate not trusted",
    0x6800: "handshake timed out",
    0x6C80: "unknown PSK identity",
    0x7180: "wrong pre-shared key (the Finished message did not verify)",
    0x7380: "no cipher suite in common with the {peer}",
    0x7480: "the client sent no certificate, and one is required",
    0x7780: "the {peer} refused the handshake (fatal alert)",
    0x7800: "verification of the {peer} failed",
    0x7880: "the {peer} closed the connection during the handshake",
    0x6E80: "no DTLS version in common with the {peer} (DTLS 1.2 only)",
    0x6980: "no usable cipher suite in common with the {peer}",
}


class DtlsError(MqttError):
    """A DTLS object was used wrongly (an application record too large for the MTU)."""


class DtlsUnavailable(DtlsError, ImportError):
    """python-mbedtls is not installed."""


class HandshakeError(DtlsError):
    """The handshake failed; the message says why (an alert, if any, is already queued)."""


def mbedtls_tls() -> ModuleType:
    """The ``mbedtls.tls`` module.

    Raises:
        DtlsUnavailable: python-mbedtls is not installed.
    """
    try:
        return importlib.import_module("mbedtls.tls")
    except ImportError as exc:
        raise DtlsUnavailable(MISSING_MBEDTLS) from exc


def describe_tls_error(exc: BaseException, peer: str) -> str:
    """One sentence for an mbedtls error, naming the cause.

    Args:
        exc: the ``mbedtls.exceptions.TLSError`` (or any exception).
        peer: who is at the other end ("client" or "server").
    """
    code = getattr(exc, "err", None)
    if isinstance(code, int) and code in _REASONS:
        return _REASONS[code].format(peer=peer)
    message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    return f"{message} (-0x{code:04X})" if isinstance(code, int) else message


class PskStore(Mapping[str, bytes]):
    """The server's pre-shared keys, recording which identity mbedtls looks up.

    python-mbedtls gives the server no accessor for the client's PSK identity, but its PSK
    callback (``_psk_cb`` in ``_tls.pyx``) resolves the identity from the ClientKeyExchange by
    ``store[identity]`` on the ``pre_shared_key_store`` mapping, synchronously inside the
    ``do_handshake()`` call that processes that message. :class:`Association` clears
    :attr:`looked_up` before each call and reads it after, so the identity is attributed to
    the association whose handshake asked for it. Single-threaded use only.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)
        self.looked_up: str | None = None

    def __getitem__(self, identity: str) -> bytes:
        self.looked_up = identity
        return self._keys[identity]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never show the keys
        return f"{type(self).__name__}({len(self._keys)} identities)"


# --- contexts -----------------------------------------------------------------------------------


def _load_chain(path: str, key: str) -> tuple[object, ...]:
    x509 = importlib.import_module("mbedtls.x509")
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if not blocks:
        raise ConfigError(key, f"no PEM certificate in {path}")
    try:
        return tuple(x509.CRT.from_PEM(block) for block in blocks)
    except Exception as exc:  # mbedtls raises TLSError for a bad certificate
        raise ConfigError(key, f"bad certificate in {path}: {exc}") from exc


def _load_key(path: str, key: str) -> object:
    pk = importlib.import_module("mbedtls.pk")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
    for kind in (pk.ECC, pk.RSA):
        try:
            return kind.from_buffer(data)
        except Exception:  # try the next key type
            continue
    raise ConfigError(key, f"no unencrypted EC or RSA private key in {path}")


def _trust_store(tls: ModuleType, path: str, key: str) -> object:
    try:
        store = tls.TrustStore.from_pem_file(path)
    except Exception as exc:  # OSError or mbedtls's TLSError
        raise ConfigError(key, f"cannot load CA certificates from {path}: {exc}") from exc
    if not store:
        raise ConfigError(key, f"no PEM certificate in {path}")
    return store


def _own_chain(certfile: str | None, keyfile: str | None) -> tuple[object, object] | None:
    if certfile is None:
        return None
    return _load_chain(certfile, "certfile"), _load_key(keyfile or certfile, "keyfile")


def server_context(settings: DtlsServerSettings, psk_store: PskStore | None) -> ServerContext:
    """The mbedtls server context: one cookie secret for every association made from it.

    Raises:
        DtlsUnavailable: python-mbedtls is not installed.
        ConfigError: no credentials, or a file cannot be loaded.
    """
    tls = mbedtls_tls()
    if psk_store is None and settings.certfile is None:
        raise ConfigError("psk_file", "a DTLS server needs psk, or certfile and keyfile")
    if settings.require_certificate and settings.cafile is None:
        raise ConfigError("require_certificate", "needs cafile to verify client certificates")
    chain = _own_chain(settings.certfile, settings.keyfile)
    ciphers = (PSK_CIPHERS if psk_store is not None else ()) + (
        CERTIFICATE_CIPHERS if chain is not None else ()
    )
    trust = None if settings.cafile is None else _trust_store(tls, settings.cafile, "cafile")
    configuration = _configuration(
        tls,
        settings.retransmit_timeout,
        # python-mbedtls maps False to mbedtls's VERIFY_OPTIONAL (certificate requested,
        # checked by us afterwards) and True to VERIFY_REQUIRED; it has no VERIFY_NONE.
        validate_certificates=settings.require_certificate,
        certificate_chain=chain,
        ciphers=ciphers,
        trust_store=trust,
        pre_shared_key_store=psk_store if psk_store is not None else {},
    )
    context: ServerContext = tls.ServerContext(configuration)
    return context


def _configuration(tls: ModuleType, retransmit_timeout: float, **options: Any) -> Any:
    """A DTLS 1.2 configuration, with anti-replay and our handshake retransmission timers, as
    both ends use; ``options`` are the side's own (certificates, ciphers, PSK)."""
    return tls.DTLSConfiguration(
        lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        highest_supported_version=tls.DTLSVersion.DTLSv1_2,
        anti_replay=True,
        handshake_timeout_min=retransmit_timeout,
        handshake_timeout_max=max(RETRANSMIT_MAX, retransmit_timeout),
        **options,
    )


def client_context(settings: DtlsClientSettings) -> ClientContext:
    """The mbedtls client context.

    Raises:
        DtlsUnavailable: python-mbedtls is not installed.
        ConfigError: half a PSK, or a file cannot be loaded.
    """
    tls = mbedtls_tls()
    if (settings.psk is None) != (settings.psk_identity is None):
        raise ConfigError("psk", "give both psk_identity and psk, or neither")
    psk = None
    if settings.psk is not None and settings.psk_identity is not None:
        psk = (settings.psk_identity, settings.psk)
    trust = None
    if psk is None and settings.verify:
        trust = (
            tls.TrustStore.system()
            if settings.cafile is None
            else _trust_store(tls, settings.cafile, "cafile")
        )
    configuration = _configuration(
        tls,
        settings.retransmit_timeout,
        validate_certificates=settings.verify,
        certificate_chain=_own_chain(settings.certfile, settings.keyfile),
        ciphers=PSK_CIPHERS if psk is not None else CERTIFICATE_CIPHERS,
        trust_store=trust,
        pre_shared_key=psk,
    )
    context: ClientContext = tls.ClientContext(configuration)
    return context


# --- one association ---------------------------------------------------------------------------


class Association:
    """One DTLS association (client or server side) over an mbedtls memory buffer.

    Hand a datagram to :meth:`feed`, then call :meth:`handshake` (until it returns True) or
    :meth:`read_records`; take :attr:`outgoing` after every call (datagrams, already cut to
    the MTU).

    Attributes:
        buffer: the mbedtls connection.
        established: the handshake is over.
        outgoing: datagrams to send, in order; the owner empties it.
        psk_identity: the PSK identity the peer used (server side), once looked up.
        deadline: when the handshake must be over (caller's clock).
        retransmit_at: when mbedtls's retransmission timer should have expired, or None.
        hello_random: (server) the random of the ClientHello that made the association.
    """

    def __init__(
        self,
        buffer: TLSWrappedBuffer,
        *,
        mtu: int,
        now: float,
        handshake_timeout: float,
        retransmit_timeout: float,
        peer: str,
        psk_store: PskStore | None = None,
    ) -> None:
        self.buffer = buffer
        self.mtu = mtu
        self.established = False
        self.outgoing: list[bytes] = []
        self.psk_identity: str | None = None
        self.deadline = now + handshake_timeout
        self.retransmit_at: float | None = None
        self.hello_random = b""
        self._rto_min = retransmit_timeout
        self._rto = retransmit_timeout
        self._peer = peer
        self._epoch0_sequence = 0  # next epoch-0 sequence number we send; -1 after epoch 0
        self._psk_store = psk_store
        self._tls = mbedtls_tls()
        self._tls_error: type[TLSError] = importlib.import_module("mbedtls.exceptions").TLSError
        buffer.setmtu(mtu)

    # -- handshake

    def handshake(self, now: float, *, by_timer: bool = False) -> bool:
        """Run the handshake as far as the input received allows.

        Args:
            now: the caller's clock.
            by_timer: called because :meth:`timer` expired (a retransmission is expected).

        Returns:
            True when the handshake is over (then read the peer with :meth:`read_records`).

        Raises:
            HandshakeError: the handshake failed; an alert for the peer may be in
                :attr:`outgoing`.
            mbedtls.tls.HelloVerifyRequest: (server) the ClientHello had no valid cookie; the
                HelloVerifyRequest is in :attr:`outgoing`.
        """
        tls = self._tls
        sent = len(self.outgoing)
        try:
            self._steps(tls)
        except tls.HelloVerifyRequest:
            raise
        except self._tls_error as exc:
            self._collect()
            if len(self.outgoing) == sent and getattr(exc, "err", None) not in _PEER_ENDED:
                self._alert_in_clear()
            raise HandshakeError(describe_tls_error(exc, self._peer)) from exc
        finally:
            self._collect()
        if self.buffer._handshake_state is tls.HandshakeStep.HANDSHAKE_OVER:
            self.established = True
            self.retransmit_at = None
        else:
            self._mirror_timer(now, produced=len(self.outgoing) > sent, by_timer=by_timer)
        return self.established

    def _steps(self, tls: ModuleType) -> None:
        over = tls.HandshakeStep.HANDSHAKE_OVER
        for _ in range(_MAX_STEPS):
            if self.buffer._handshake_state is over:
                return
            self._watch_psk()
            try:
                self.buffer.do_handshake()
            except tls.WantReadError:
                return
            except tls.WantWriteError:
                pass  # output to take: ``do_handshake`` signals it this way
            finally:
                self._note_psk()
            self._collect()

    def _alert_in_clear(self) -> None:
        # mbedtls fails some handshakes without telling the peer (a missing client
        # certificate, for one), which would leave the peer to time out. Before
        # ChangeCipherSpec an alert is a clear record anyway: send handshake_failure.
        if self._epoch0_sequence >= 0:
            self.outgoing.append(plaintext_alert(self._epoch0_sequence, _HANDSHAKE_FAILURE))
            self._epoch0_sequence += 1

    def _mirror_timer(self, now: float, *, produced: bool, by_timer: bool) -> None:
        if produced:
            # mbedtls doubles its timeout on a retransmission, resets it on a new flight.
            self._rto = min(self._rto * 2, RETRANSMIT_MAX) if by_timer else self._rto_min
            self.retransmit_at = now + self._rto
        elif by_timer:
            self.retransmit_at = now + POLL_INTERVAL
        if self.retransmit_at is not None:
            self.retransmit_at = min(self.retransmit_at, self.deadline)

    def _watch_psk(self) -> None:
        if self._psk_store is not None:
            self._psk_store.looked_up = None

    def _note_psk(self) -> None:
        if self._psk_store is not None and self._psk_store.looked_up is not None:
            self.psk_identity = self._psk_store.looked_up
            self._psk_store.looked_up = None

    def timer(self) -> float | None:
        """When :meth:`handle_timer` is due, or None (established or closed)."""
        if self.established:
            return None
        if self.retransmit_at is None:
            return self.deadline
        return min(self.deadline, self.retransmit_at)

    def handle_timer(self, now: float) -> bool:
        """Retransmit the last flight if due (mbedtls decides); True when the handshake is over.

        Raises:
            HandshakeError: the handshake timed out or failed.
        """
        if self.established:
            return True
        if now >= self.deadline:
            raise HandshakeError("handshake timed out")
        if self.retransmit_at is not None and now >= self.retransmit_at:
            return self.handshake(now, by_timer=True)
        return False

    # -- records

    def feed(self, datagram: bytes) -> None:
        """Hand one datagram to mbedtls (anything it left of the previous one is dropped)."""
        self.buffer._input_buffer.clear()  # type: ignore[attr-defined]
        self.buffer.receive_from_network(datagram)

    def read_records(self) -> tuple[list[bytes], BaseException | None]:
        """Decrypt the application records of the datagram last fed, one plaintext per record.

        Invalid records (bad MAC, replayed, wrong epoch) are dropped by mbedtls.

        Returns:
            The plaintexts, and the mbedtls error that ended the association (its ``err`` is
            0x7880 for the peer's close_notify) or None; after an error the object must not
            be used any more.
        """
        tls = self._tls
        records: list[bytes] = []
        chunk = bytearray(_READ_SIZE)
        try:
            for _ in range(MAX_DATAGRAM // RECORD_HEADER_SIZE + 1):
                try:
                    size = self.buffer.readinto(chunk, _READ_SIZE)  # type: ignore[arg-type]
                except tls.RaggedEOF:
                    continue  # an empty application record
                except tls.WantWriteError:
                    continue  # mbedtls resent its last flight (peer retransmitted Finished)
                except tls.WantReadError:
                    break
                records.append(bytes(chunk[:size]))
        except self._tls_error as exc:
            return records, exc
        finally:
            self._collect()
        return records, None

    def write(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` as one application record (then take :attr:`outgoing`).

        Raises:
            DtlsError: the record would not fit in the MTU.
        """
        limit = self.mtu - RECORD_OVERHEAD
        if len(plaintext) > limit:
            raise DtlsError(f"{len(plaintext)} bytes do not fit in one record ({limit} max)")
        if plaintext:
            self.buffer.write(plaintext)
        self._collect()

    def shutdown(self) -> None:
        """Queue a close_notify alert (best effort)."""
        try:
            self.buffer.shutdown()
        except self._tls_error:
            pass  # WantRead/WantWrite: the alert is written all the same
        self._collect()

    # -- helpers

    def _collect(self) -> None:
        output = self.buffer._output_buffer
        size = len(output)
        if size:
            data = self.buffer.peek_outgoing(size)
            self.buffer.consume_outgoing(size)
            if not self.established:
                self._epoch0_sequence = next_epoch0_sequence(data, self._epoch0_sequence)
            self.outgoing.extend(pack_datagrams(data, self.mtu))
