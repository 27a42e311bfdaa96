"""Kernel shaping: device and server as two hosts (network namespaces joined by a veth pair), the
uplink rate applied by `tc` tbf on the device's veth, the delay still added by the proxy.

Needs root on Linux with `ip netns`; skipped with the reason otherwise. The namespaces are deleted
whatever happens (deleting a namespace deletes its end of the veth pair, and so the pair).
"""
from __future__ import annotations

import json
import os
import queue
import random
import re
import subprocess
import sys
import threading

import pytest

from coinfer.channel.tc import why_not
from coinfer.lab.launch import free_port

REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


@pytest.fixture
def two_hosts():
    """(device ns, server ns, device veth, server address): 10.213.N.1/30 <-> 10.213.N.2/30."""
    tag = f"{os.getpid() % 100000}"
    dev_ns, srv_ns, dev_if, srv_if = f"cfdev{tag}", f"cfsrv{tag}", f"cfd{tag}", f"cfs{tag}"
    net = random.randrange(0, 250)
    try:
        try:
            sh("ip", "netns", "add", dev_ns)
            sh("ip", "netns", "add", srv_ns)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
        sh("ip", "link", "add", dev_if, "type", "veth", "peer", "name", srv_if)
        sh("ip", "link", "set", dev_if, "netns", dev_ns)
        sh("ip", "link", "set", srv_if, "netns", srv_ns)
        sh("ip", "-n", dev_ns, "addr", "add", f"10.213.{net}.1/30", "dev", dev_if)
        sh("ip", "-n", srv_ns, "addr", "add", f"10.213.{net}.2/30", "dev", srv_if)
        for ns, iface in ((dev_ns, dev_if), (srv_ns, srv_if), (dev_ns, "lo"), (srv_ns, "lo")):
            sh("ip", "-n", ns, "link", "set", iface, "up")
        yield dev_ns, srv_ns, dev_if, f"10.213.{net}.2"
    finally:
        for ns in (dev_ns, srv_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        left = sh("ip", "netns", "list").stdout
        assert dev_ns not in left and srv_ns not in left


class InNs:
    """A python process inside a namespace; stopped (terminate, then kill) on exit."""

    def __init__(self, ns: str, args: list[str]):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        # A reader thread, so that waiting for a line can time out.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def line(self, timeout_s: float = 60.0) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"no output in {timeout_s}s") from None
        if line is None:
            raise RuntimeError(f"process exited ({self.proc.wait()}) without the expected output")
        return line

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        self.proc.stdout.close()


SINK = """
import json, sys
from coinfer.channel.measure import Sink
sink = Sink(host=sys.argv[1])
print(sink.port, flush=True)
while True:
    r = sink.next_result(600)
    print(json.dumps({"nbytes": r.nbytes, "t_last": r.t_last}), flush=True)
"""

SEND = """
import sys
from coinfer.channel.measure import send_bytes
print(send_bytes(int(sys.argv[1]), int(sys.argv[2])), flush=True)
"""

CONTROL = """
import sys
from coinfer.channel.control import ChannelControlClient
with ChannelControlClient(sys.argv[1]) as c:
    c.wait_ready()
    print(c.set_rate(float(sys.argv[2])).rate_bps, flush=True)
"""


def test_kernel_shapes_the_uplink_between_two_hosts(two_hosts):
    dev_ns, srv_ns, dev_if, server_ip = two_hosts
    listen, control = free_port(), free_port()
    delay = 0.02
    with InNs(srv_ns, ["-c", SINK, server_ip]) as sink:
        sink_port = int(sink.line())
        with InNs(dev_ns, ["-m", "coinfer", "channel", "--listen", f"127.0.0.1:{listen}",
                           "--upstream", f"{server_ip}:{sink_port}", "--control", f"127.0.0.1:{control}",
                           "--rate-bps", "20e6", "--delay-ms", str(delay * 1e3), "--tc-dev", dev_if]) as channel:
            started = "\n".join(channel.line() for _ in range(3))
            assert f"kernel tc on {dev_if}" in started and "control on" in started, started

            def transfer(nbytes: int) -> float:
                with InNs(dev_ns, ["-c", SEND, str(listen), str(nbytes)]) as sender:
                    t0 = float(sender.line())
                result = json.loads(sink.line())
                assert result["nbytes"] == nbytes
                return result["t_last"] - t0

            # The kernel paces the packets at the class's rate; the proxy adds only the delay.
            # (rated a little above 20 Mbit/s: tbf counts frame headers, the payload should get 20)
            assert qdisc_rate(dev_ns, dev_if) == pytest.approx(20e6 * 1514 / 1448, rel=0.01)
            size = 2 * 1024 * 1024                                  # ~0.84 s at 20 Mbit/s
            within(lambda: transfer(size), size * 8 / 20e6 + delay)
            # A rate change through the control service re-rates the kernel's class.
            with InNs(dev_ns, ["-c", CONTROL, f"127.0.0.1:{control}", "5e6"]) as ctl:
                assert float(ctl.line()) == 5e6
            assert qdisc_rate(dev_ns, dev_if) == pytest.approx(5e6 * 1514 / 1448, rel=0.01)
            size = 512 * 1024                                       # ~0.84 s at 5 Mbit/s
            within(lambda: transfer(size), size * 8 / 5e6 + delay)
        # Stopping the emulator removes its qdisc.
        assert "tbf" not in sh("ip", "netns", "exec", dev_ns, "tc", "qdisc", "show", "dev", dev_if).stdout


def qdisc_rate(ns: str, dev: str) -> float:
    """The tbf qdisc's rate in bit/s, as `tc qdisc show` prints it (e.g. 'rate 20912Kbit')."""
    text = sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev).stdout
    match = re.search(r"rate (\d+(?:\.\d+)?)([KMG]?)bit", text)
    assert match, text
    return float(match.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]


def within(measure, expected: float, rel: float = 0.05, attempts: int = 3) -> None:
    """A busy machine only slows transfers down: up to 3 attempts, one must be within 5 %."""
    results = []
    for _ in range(attempts):
        results.append(measure())
        print(f"kernel-shaped transfer: {results[-1]:.4f} s, expected {expected:.4f} s")
        if abs(results[-1] - expected) <= rel * expected:
            return
    pytest.fail(f"no attempt within {rel:.0%} of {expected:.4f} s: {results}")
