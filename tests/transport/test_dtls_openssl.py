"""Interop: ``openssl s_client -dtls1_2`` against a DtlsServer behind a tiny asyncio UDP echo
server (defined here, the way the real glue drives it): PSK, certificates, mutual
authentication. Each test sends a line, reads it back, then ends s_client's input so that it
sends close_notify."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Coroutine, Hashable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trustme

from mqttv5.transport.dtls import (
    DtlsServer,
    DtlsServerSettings,
    HandshakeComplete,
    PeerClosed,
)

pytestmark = pytest.mark.interop  # scripts/test installs openssl; the dev extra python-mbedtls

KEY_HEX = "00112233445566778899aabbccddeeff"
TIMEOUT = 10.0 * float(os.environ.get("MQTTV5_TEST_TIMEOUT_FACTOR", "1"))


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(3 * TIMEOUT):
            await coro

    asyncio.run(bounded())


class EchoServer(asyncio.DatagramProtocol):
    """Echoes every plaintext datagram to its sender, over DTLS."""

    def __init__(self, dtls: DtlsServer) -> None:
        self.dtls = dtls
        self.events: list[Any] = []
        self.changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Hashable) -> None:
        for plaintext in self.dtls.datagram_received(data, addr, self._loop.time()):
            self.dtls.send(addr, plaintext)
        self._flush()

    def _flush(self) -> None:
        assert self._transport is not None
        for datagram, addr in self.dtls.datagrams_to_send():
            self._transport.sendto(datagram, cast(tuple[str, int], addr))
        new = self.dtls.events_received()
        if new:
            self.events.extend(new)
            self.changed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.dtls.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.dtls.handle_timer(self._loop.time())
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    async def wait_for(self, kind: type) -> Any:
        while True:
            for event in self.events:
                if isinstance(event, kind):
                    return event
            self.changed.clear()
            await self.changed.wait()


@asynccontextmanager
async def echo_server(settings: DtlsServerSettings) -> AsyncIterator[tuple[EchoServer, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: EchoServer(DtlsServer(settings)), local_addr=("127.0.0.1", 0)
    )
    try:
        yield protocol, transport.get_extra_info("sockname")[1]
    finally:
        protocol.close()


async def s_client(port: int, *args: str, send: bytes = b"", until: bytes = b"Cipher is") -> str:
    """Run ``openssl s_client -dtls1_2`` to ``port``, send ``send``, read until ``until``
    appears, then end input (s_client sends close_notify and exits); its output."""
    process = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    output = b""
    try:
        if send:
            process.stdin.write(send)
            await process.stdin.drain()
        async with asyncio.timeout(TIMEOUT):
            while until not in output:
                chunk = await process.stdout.read(4096)
                if not chunk:
                    break
                output += chunk
            process.stdin.close()
            output += await process.stdout.read()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return output.decode(errors="replace")


async def s_client_echo(port: int, *args: str) -> str:
    """Run s_client, send a line, wait for it to come back, end input; s_client's output."""
    return await s_client(port, *args, send=b"hello over dtls\n", until=b"\nhello over dtls")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("dtls-openssl-pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("sensor-12.example", common_name="sensor-12")
    files = {
        "ca": d / "ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return {name: str(path) for name, path in files.items()}


async def _test_psk() -> None:
    settings = DtlsServerSettings(psk={"alice": bytes.fromhex(KEY_HEX)})
    async with echo_server(settings) as (server, port):
        output = await s_client_echo(port, "-psk_identity", "alice", "-psk", KEY_HEX)
        assert "\nhello over dtls" in output, output
        done = await asyncio.wait_for(server.wait_for(HandshakeComplete), TIMEOUT)
        assert done.identity == "alice"
        await asyncio.wait_for(server.wait_for(PeerClosed), TIMEOUT)


async def _test_certificate(pki: dict[str, str]) -> None:
    settings = DtlsServerSettings(certfile=pki["server_cert"], keyfile=pki["server_key"])
    async with echo_server(settings) as (server, port):
        output = await s_client_echo(port, "-CAfile", pki["ca"], "-verify_return_error")
        assert "\nhello over dtls" in output, output
        assert "Verification: OK" in output
        done = await asyncio.wait_for(server.wait_for(HandshakeComplete), TIMEOUT)
        assert done.identity is None


async def _test_mutual_certificates(pki: dict[str, str]) -> None:
    settings = DtlsServerSettings(
        certfile=pki["server_cert"],
        keyfile=pki["server_key"],
        cafile=pki["ca"],
        require_certificate=True,
    )
    async with echo_server(settings) as (server, port):
        output = await s_client_echo(
            port,
            "-CAfile",
            pki["ca"],
            "-verify_return_error",
            "-cert",
            pki["client_cert"],
            "-key",
            pki["client_key"],
        )
        assert "\nhello over dtls" in output, output
        done = await asyncio.wait_for(server.wait_for(HandshakeComplete), TIMEOUT)
        assert done.identity == "sensor-12"
        assert done.peer_certificate is not None
        assert done.peer_certificate["notAfter"]


def test_psk() -> None:
    run(_test_psk())


def test_certificate(pki: dict[str, str]) -> None:
    run(_test_certificate(pki))


def test_mutual_certificates(pki: dict[str, str]) -> None:
    run(_test_mutual_certificates(pki))
