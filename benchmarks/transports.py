"""Throughput of each transport: QoS 0 fan-in through our broker over tcp, tls, ws and wss.

For each transport, ``--publishers`` clients (mqttv5's MqttClient) publish ``--count`` QoS 0
messages in all (64-byte payloads) to one subscriber on the same transport, through one
``mqttv5 broker`` process this script starts (uvloop when installed, as ``mqttv5 broker``
runs). The table shows messages per second from the first publish until the subscriber has the
last message, how many were lost (QoS 0 to a slow reader may be dropped; the broker here is
given a large outbound buffer so that none are), and the broker's CPU time per message (user +
system, from /proc): on a small shared machine, where broker, publishers and subscriber compete
for the same cores, that column is the steadier measure of what a transport costs the broker.

``--ws-servers`` measures instead what the broker's WebSocket layer costs against websockets'
own asyncio server: the same binary messages sent over N connections to (a) an asyncio.Protocol
driving websockets' sans-I/O ``ServerProtocol``, the broker's design, and (b)
``websockets.asyncio.server.serve`` with one ``async for`` task per connection; each server runs
in its own process and counts messages; also its memory per idle connection.

Run:  .venv/bin/python benchmarks/transports.py [--count 100000] [--publishers 4]
      .venv/bin/python benchmarks/transports.py --ws-servers [--count 200000] [--idle 1000]
(trustme makes the test certificates: ``pip install -e .[dev]``)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAYLOAD = b"x" * 64
TRANSPORTS = ("tcp", "tls", "ws", "wss")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("the broker exited") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_certs(directory: Path) -> tuple[Path, Path]:
    """(CA file, server key+chain file) for localhost."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    return directory / "ca.pem", directory / "server.pem"


@contextlib.contextmanager
def broker(directory: Path, server_pem: Path) -> Iterator[tuple[dict[str, int], int]]:
    """``mqttv5 broker`` with one listener per transport; yields (transport -> port, pid)."""
    ports = {kind: free_port() for kind in TRANSPORTS}
    tls = f'certfile = "{server_pem}"\nkeyfile = "{server_pem}"\n'
    listeners = "".join(
        f'[[listener]]\ntype = "{kind}"\nport = {port}\nallow_anonymous = true\n'
        + (tls if kind in ("tls", "wss") else "")
        for kind, port in ports.items()
    )
    conf = directory / "broker.toml"
    conf.write_text(
        f'sys_interval = 0\noutbound_high_water = 268435456\nlog_level = "warning"\n{listeners}'
    )
    cli = "import sys; from mqttv5.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", cli, "broker", "-c", str(conf)])
    try:
        for port in ports.values():
            wait_port(port, proc)
        yield ports, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def url(kind: str, port: int) -> str:
    host = "localhost" if kind in ("tls", "wss") else "127.0.0.1"
    scheme = {"tcp": "mqtt", "tls": "mqtts", "ws": "ws", "wss": "wss"}[kind]
    return f"{scheme}://{host}:{port}" + ("/mqtt" if kind in ("ws", "wss") else "")


def _client(kind: str, port: int, ca: Path, name: str, queue: int = 10_000) -> Any:
    from mqttv5 import MqttClient

    client = MqttClient(f"{kind}-{name}", url=url(kind, port), queue_size=queue)
    if kind in ("tls", "wss"):
        client.set_tls_config(ca_file=str(ca))
    return client


def _publish_process(kind: str, port: int, ca: Path, per: int, publishers: int, pipe: Any) -> None:
    """The publishers, in a process of their own: connect, report ready, wait, publish."""

    async def main() -> None:
        pubs = [_client(kind, port, ca, f"pub{i}") for i in range(publishers)]
        for pub in pubs:
            await pub.connect()
        pipe.send("ready")
        await asyncio.to_thread(pipe.recv)
        pipe.send(time.monotonic())  # the start, on the clock every process shares

        async def produce(pub: Any, n: int) -> None:
            for i in range(per):
                await pub.publish(f"bench/{n}", PAYLOAD, qos=0)
                if i % 1000 == 999:
                    await asyncio.sleep(0)

        await asyncio.gather(*(produce(pub, n) for n, pub in enumerate(pubs)))
        for pub in pubs:
            await pub.disconnect()

    asyncio.run(main(), debug=False)


async def fan_in(kind: str, port: int, ca: Path, count: int, publishers: int) -> tuple[float, int]:
    """(messages per second end to end, messages lost) for one transport."""
    per = count // publishers
    total = per * publishers
    sub = _client(kind, port, ca, "sub", total + 10)
    await sub.connect()
    await sub.subscribe("bench/#", qos=0)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_publish_process, args=(kind, port, ca, per, publishers, there))
    proc.start()
    assert await asyncio.to_thread(here.recv) == "ready"
    received = 0
    last = 0.0
    messages = sub.messages()
    here.send("go")
    start = await asyncio.to_thread(here.recv)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            while received < total:
                await anext(messages)
                received += 1
                last = time.monotonic()
    await asyncio.to_thread(proc.join, 30)
    await sub.disconnect()
    return received / (last - start), total - received


def run_fan_in(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca, server = make_certs(directory)
        with broker(directory, server) as (ports, pid):
            print(
                f"QoS 0 fan-in: {args.publishers} publishers (one process) -> 1 subscriber, "
                f"{args.count} messages of {len(PAYLOAD)} bytes, best of {args.repeat}"
            )
            print(f"{'transport':<10} {'msgs/s':>10} {'lost':>6} {'vs tcp':>7} {'broker CPU':>11}")
            base = None
            for kind in args.only or TRANSPORTS:
                runs = []
                for _ in range(args.repeat):
                    cpu = _cpu(pid)
                    rate, lost = asyncio.run(
                        fan_in(kind, ports[kind], ca, args.count, args.publishers), debug=False
                    )
                    runs.append((rate, lost, (_cpu(pid) - cpu) / args.count * 1e6))
                rate, lost, _ = max(runs)
                base = base or rate
                print(
                    f"{kind:<10} {rate:>10,.0f} {lost:>6} {rate / base:>7.2f} "
                    f"{min(r[2] for r in runs):>6.1f} µs/msg"
                )


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used by process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- websockets' sans-I/O core in our Protocol vs its asyncio server ------------------------------


def _sansio_server(port: int, ready: Any) -> None:
    from websockets.frames import BINARY, Frame
    from websockets.http11 import Request
    from websockets.server import ServerProtocol
    from websockets.typing import Subprotocol

    class Sink(asyncio.Protocol):
        """The broker's shape: data_received feeds ServerProtocol, binary payloads counted."""

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.ws = ServerProtocol(subprotocols=[Subprotocol("mqtt")], max_size=1 << 20)
            self.count = 0

        def data_received(self, data: bytes) -> None:
            ws = self.ws
            ws.receive_data(data)
            for event in ws.events_received():
                if isinstance(event, Request):
                    ws.send_response(ws.accept(event))
                elif isinstance(event, Frame) and event.opcode is BINARY:
                    self.count += 1
                    if event.data == b"done":
                        ws.send_binary(str(self.count - 1).encode())
            for chunk in ws.data_to_send():
                if chunk:
                    self.transport.write(chunk)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main(), debug=False)


def _asyncio_server(port: int, ready: Any) -> None:
    import logging

    from websockets.asyncio.server import serve
    from websockets.typing import Subprotocol

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # idle clients just go away

    async def handler(ws: Any) -> None:
        count = 0
        async for message in ws:
            if message == b"done":
                await ws.send(str(count).encode())
            else:
                count += 1

    async def main() -> None:
        async with serve(
            handler, "127.0.0.1", port, subprotocols=[Subprotocol("mqtt")], compression=None
        ):
            ready.set()
            await asyncio.Future()

    asyncio.run(main(), debug=False)


async def _ws_load(port: int, count: int, connections: int) -> float:
    """Messages per second pushed through ``connections`` WebSocket connections."""
    from websockets.client import ClientProtocol
    from websockets.frames import BINARY, Frame
    from websockets.typing import Subprotocol
    from websockets.uri import parse_uri

    message = Frame(BINARY, b"\x30\x4c\x00\x0abench/topi" + PAYLOAD).serialize(
        mask=True, extensions=[]
    )
    done = Frame(BINARY, b"done").serialize(mask=True, extensions=[])
    batch = message * 1000
    per = count // connections

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/mqtt"), subprotocols=[Subprotocol("mqtt")]
        )
        ws.send_request(ws.connect())
        writer.writelines(ws.data_to_send())
        while not ws.events_received():
            ws.receive_data(await reader.read(65536))
        for _ in range(per // 1000):
            writer.write(batch)
            await writer.drain()
        writer.write(done)
        answer = b""
        while not answer:
            ws.receive_data(await reader.read(65536))
            for event in ws.events_received():
                answer = bytes(getattr(event, "data", b""))
        assert int(answer) == per // 1000 * 1000, answer
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return per // 1000 * 1000 * connections / (time.perf_counter() - start)


async def _idle(port: int, n: int) -> list[Any]:
    from websockets.client import ClientProtocol
    from websockets.typing import Subprotocol
    from websockets.uri import parse_uri

    held = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/mqtt"), subprotocols=[Subprotocol("mqtt")]
        )
        ws.send_request(ws.connect())
        writer.writelines(ws.data_to_send())
        while not ws.events_received():
            ws.receive_data(await reader.read(65536))
        held.append(writer)
    return held


async def _hold(port: int, n: int, pid: int) -> int:
    """The server's RSS while ``n`` idle connections are open."""
    held = await _idle(port, n)
    await asyncio.sleep(0.5)
    size = _rss(pid)
    for writer in held:
        writer.close()
    return size


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_ws_servers(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("spawn")
    print(
        f"WebSocket server layer: {args.count} binary messages of 80 bytes over "
        f"{args.connections} connections; memory per idle connection over {args.idle}"
    )
    print(f"{'server':<34} {'msgs/s':>10} {'KiB/conn':>9}")
    for name, target in (
        ("sans-I/O ServerProtocol + Protocol", _sansio_server),
        ("websockets.asyncio.server.serve", _asyncio_server),
    ):
        port = free_port()
        ready = ctx.Event()
        proc = ctx.Process(target=target, args=(port, ready), daemon=True)
        proc.start()
        try:
            ready.wait(15)
            rate = max(
                asyncio.run(_ws_load(port, args.count, args.connections), debug=False)
                for _ in range(args.repeat)
            )
            assert proc.pid is not None
            before = _rss(proc.pid)
            after = asyncio.run(_hold(port, args.idle, proc.pid), debug=False)
            per_conn = (after - before) / args.idle / 1024
            print(f"{name:<34} {rate:>10,.0f} {per_conn:>9.1f}")
        finally:
            proc.terminate()
            proc.join(5)


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="messages per run")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (best is shown)")
    parser.add_argument("--only", nargs="+", choices=TRANSPORTS)
    parser.add_argument("--ws-servers", action="store_true", help="sans-I/O vs asyncio server")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONASYNCIODEBUG", None)  # debug mode would measure itself
    if args.ws_servers:
        args.count = args.count or 200_000
        run_ws_servers(args)
    else:
        args.count = args.count or 100_000
        run_fan_in(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
