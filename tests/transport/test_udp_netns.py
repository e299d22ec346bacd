"""MQTT over UDP and DTLS through real kernel packet loss.

The broker runs as a subprocess inside its own network namespace, reached over a veth pair;
an nftables table in that namespace drops a share of the UDP datagrams to and from the broker's
ports at random, in both directions (this kernel has no netem). The clients run here, in the
root namespace. test_udp_e2e.py simulates loss with a userspace relay; this is the real thing:
the kernel drops datagrams the sockets already handed over. Needs root (CAP_NET_ADMIN and
CAP_SYS_ADMIN); without the privilege to create a namespace the tests are skipped. ``ip`` and
``nft`` are required (scripts/test installs nftables).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqttv5 import MqttClient
from mqttv5.client import ConnectOptions
from mqttv5.transport.udp.reliability import UdpSettings
from tests.broker.conftest import run
from tests.broker.rawclient import timeout

DROP_PERCENT = 10
TCP_PORT, UDP_PORT, DTLS_PORT = 1883, 1884, 8884  # the namespace is ours: fixed ports are free
TABLE = "mqttv5_loss"
PSK_IDENTITY, PSK_KEY = "netns", "00112233445566778899aabbccddeeff"


@dataclass
class LossyBroker:
    """A broker in namespace ``ns`` at ``address``, behind a random-drop nftables table."""

    ns: str
    address: str
    log: Path
    ip: str
    nft: str

    def dropped(self) -> dict[str, int]:
        """Packets the drop rules have dropped so far, per chain (``input``, ``output``)."""
        command = (self.ip, "netns", "exec", self.ns, self.nft, "-j", "list", "table")
        listing = _cmd(*command, "inet", TABLE)
        counts: dict[str, int] = {}
        for item in json.loads(listing)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    counts[rule["chain"]] = (
                        counts.get(rule["chain"], 0) + expr["counter"]["packets"]
                    )
        return counts


def _cmd(*args: str) -> str:
    """Run a command; its stdout, or a test failure quoting its stderr."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _quiet(*args: str) -> None:
    subprocess.run(args, capture_output=True, timeout=30, check=False)


def _ruleset(ifname: str, percent: int) -> str:
    ports = f"{{ {UDP_PORT}, {DTLS_PORT} }}"
    drop = f"numgen random mod 100 < {percent} counter drop"
    return f"""\
table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{ifname}" udp dport {ports} {drop}
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{ifname}" udp sport {ports} {drop}
    }}
}}
"""


def _config(address: str, psk_file: Path) -> str:
    listener = f'bind = "{address}"\nrto_min = 0.05\n'
    return f"""\
storage = "memory"
allow_anonymous = true
sys_interval = 0
shutdown_timeout = 1

[[listener]]
type = "udp"
port = {UDP_PORT}
{listener}
[[listener]]
type = "dtls"
port = {DTLS_PORT}
psk_file = "{psk_file}"
{listener}
[[listener]]
type = "tcp"
port = {TCP_PORT}
bind = "{address}"
"""


def _wait_listening(broker: subprocess.Popen[bytes], lossy: LossyBroker) -> None:
    """Until the broker accepts TCP on its address (its last listener) across the veth."""
    deadline = time.monotonic() + timeout(20)
    while True:
        if broker.poll() is not None:
            pytest.fail(f"the broker exited ({broker.returncode}): {_tail(lossy.log)}")
        try:
            socket.create_connection((lossy.address, TCP_PORT), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the broker does not listen on {lossy.address}: {_tail(lossy.log)}")
            time.sleep(0.05)
    text = lossy.log.read_text()
    for port, kind in ((UDP_PORT, "udp"), (DTLS_PORT, "dtls")):
        assert f"listening on {lossy.address}:{port} ({kind})" in text, text


def _tail(log: Path, lines: int = 60) -> str:
    return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _tool(name: str) -> str | None:
    """The path of ``name``, also where root's tools live when they are not on $PATH."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def _nth(network: str, host: int) -> str:
    """The ``host``-th address of ``network`` (dotted IPv4)."""
    return str(ipaddress.IPv4Address(network) + host)


@pytest.fixture(scope="module")
def lossy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LossyBroker]:
    ip = _tool("ip")
    if ip is None:
        pytest.fail("`ip` not found: install iproute2")
    pid = os.getpid()
    ns, outer, inner = f"mqttv5-{pid}", f"mq5r{pid}", f"mq5n{pid}"
    n = pid % 16384  # a /30 of 10.200.0.0/16 per process
    net = f"10.200.{n // 64}.{n % 64 * 4}"
    host_address, broker_address = _nth(net, 1), _nth(net, 2)

    _quiet(ip, "netns", "del", ns)  # left over by a killed run with the same pid
    _quiet(ip, "link", "del", outer)
    created = subprocess.run(
        [ip, "netns", "add", ns], capture_output=True, text=True, timeout=30, check=False
    )
    if created.returncode != 0:
        error = created.stderr.strip()
        if os.geteuid() != 0 or "not permitted" in error or "Permission denied" in error:
            pytest.skip(f"cannot create a network namespace (`ip netns add {ns}`: {error})")
        pytest.fail(f"`ip netns add {ns}` failed ({created.returncode}): {error}")
    nft = _tool("nft")  # looked up after the skip: missing privileges skip, a missing nft fails

    broker: subprocess.Popen[bytes] | None = None
    try:
        if nft is None:
            pytest.fail("`nft` not found: install nftables (scripts/test does)")
        _cmd(ip, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        _cmd(ip, "addr", "add", f"{host_address}/30", "dev", outer)
        _cmd(ip, "link", "set", outer, "up")
        _cmd(ip, "-n", ns, "link", "set", "lo", "up")
        _cmd(ip, "-n", ns, "addr", "add", f"{broker_address}/30", "dev", inner)
        _cmd(ip, "-n", ns, "link", "set", inner, "up")

        work = tmp_path_factory.mktemp("netns")
        rules = work / "loss.nft"
        rules.write_text(_ruleset(inner, DROP_PERCENT))
        _cmd(ip, "netns", "exec", ns, nft, "-c", "-f", str(rules))
        _cmd(ip, "netns", "exec", ns, nft, "-f", str(rules))

        psk_file = work / "psk.txt"
        psk_file.write_text(f"{PSK_IDENTITY}:{PSK_KEY}\n")
        conf = work / "conf.toml"
        conf.write_text(_config(broker_address, psk_file))
        log = work / "broker.log"
        with log.open("wb") as out:
            command = [ip, "netns", "exec", ns, sys.executable, "-m", "mqttv5", "broker"]
            broker = subprocess.Popen(
                [*command, "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=work,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps its stacks
            )
        lossy = LossyBroker(ns, broker_address, log, ip, nft)
        _wait_listening(broker, lossy)
        yield lossy
    finally:
        trouble = _stop(broker, log) if broker is not None else None
        _quiet(ip, "link", "del", outer)  # its peer goes with it, at once
        _quiet(ip, "netns", "del", ns)
    if trouble is not None:  # only when the tests ran: never hides the error of a set-up
        pytest.fail(trouble)


def _stop(broker: subprocess.Popen[bytes], log: Path) -> str | None:
    """SIGTERM, as an operator would; what went wrong, if anything."""
    if broker.poll() is not None:
        return f"the broker exited during the tests ({broker.returncode}): {_tail(log)}"
    broker.send_signal(signal.SIGTERM)
    try:
        broker.wait(timeout=10)
        return None
    except subprocess.TimeoutExpired:
        broker.send_signal(signal.SIGABRT)  # faulthandler: its threads' stacks into the log
        try:
            broker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        return f"the broker did not stop within 10 s of SIGTERM: {_tail(log)}"


async def _client(url: str, client_id: str) -> MqttClient:
    # A lost set-up datagram costs the initial retransmission timeout, doubling: 1 s by
    # default, and the UDP set-up must finish within 10 s, so four losses in a row of HELLO or
    # COOKIE (0.19 ** 4, about one set-up in 800 at 10 % each way) would fail it. Start the
    # client's timers at 0.1 s (UDP set-up and DTLS handshake) and give both 30 s.
    options = ConnectOptions(
        connect_timeout=timeout(30),
        udp=UdpSettings(rto_min=0.05, rto_initial=0.1, handshake_timeout=timeout(30)),
    )
    c = MqttClient(client_id, options=options)
    if url.startswith("mqtts-dtls:"):
        c.set_dtls_config(PSK_IDENTITY, PSK_KEY)
        assert c.options.dtls is not None
        c.options.dtls = dataclasses.replace(
            c.options.dtls, retransmit_timeout=0.1, handshake_timeout=timeout(30)
        )
    await c.connect(url)
    return c


async def _pubsub(
    broker: LossyBroker,
    pub: MqttClient,
    sub: MqttClient,
    topic: str,
    qos: int,
    count: int,
    size: int,
) -> None:
    """``count`` messages of ``size`` bytes reach ``sub`` once each, in order; a final
    sentinel shows that no duplicate trails behind them."""
    await sub.subscribe(topic, qos=qos)
    payloads = [i.to_bytes(4, "big") + os.urandom(size - 4) for i in range(count)]
    sentinel = b"end"
    messages = sub.messages()

    published = 0

    async def publish() -> None:
        nonlocal published
        for payload in [*payloads, sentinel]:
            await pub.publish(topic, payload, qos=qos)
            published += 1

    got: list[bytes] = []
    try:
        async with asyncio.timeout(timeout(40)), asyncio.TaskGroup() as group:
            group.create_task(publish())
            async for message in messages:
                got.append(message.payload)
                if message.payload == sentinel:
                    break
    except TimeoutError:
        stuck = f"stuck: {published} of {count + 1} published, {len(got)} received"
        pytest.fail(f"{stuck}; the broker's log: {_tail(broker.log)}")
    assert len(got) == count + 1, f"{len(got) - 1} of {count} messages, or duplicates"
    assert got[:-1] == payloads, "messages lost, duplicated or out of order"


@pytest.mark.parametrize(
    ("scheme", "port"), [("mqtt-udp", UDP_PORT), ("mqtts-dtls", DTLS_PORT)], ids=["udp", "dtls"]
)
@pytest.mark.parametrize(
    ("qos", "count", "size"), [(1, 200, 16), (2, 100, 3000)], ids=["qos1", "qos2-3kB"]
)
def test_exactly_once_in_order_through_kernel_packet_loss(
    lossy_broker: LossyBroker, scheme: str, port: int, qos: int, count: int, size: int
) -> None:
    """At 10 % random loss both ways (3000-byte payloads span three datagrams each)."""
    before = lossy_broker.dropped()
    url = f"{scheme}://{lossy_broker.address}:{port}"

    async def main() -> None:
        tag = f"{scheme}-{qos}"
        pub, sub = await _client(url, f"pub-{tag}"), await _client(url, f"sub-{tag}")
        await _pubsub(lossy_broker, pub, sub, f"netns/{tag}", qos, count, size)
        await pub.disconnect()
        await sub.disconnect()

    run(main(), 60)
    after = lossy_broker.dropped()
    dropped = {chain: after[chain] - before.get(chain, 0) for chain in after}
    print(f"dropped by the kernel: {dropped}")
    # hundreds of datagrams each way at 10 %: none dropped means the rules never matched
    assert dropped.get("input", 0) > 0 and dropped.get("output", 0) > 0, dropped
