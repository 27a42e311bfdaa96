"""Kernel shaping: the uplink rate applied by `tc` (a tbf qdisc) on a network device.

Used by `coinfer channel --tc-dev DEV` when device and server are separate hosts (or network
namespaces joined by a veth pair): the kernel paces the packets, and the proxy adds only the
propagation delay (these kernels have no netem). Needs root (CAP_NET_ADMIN) on Linux; `why_not()`
says why it cannot be used here. Every change runs `tc` once (a few ms), so keep fading coherence
times well above that in this mode.

Why tbf and not htb: htb sends a packet whenever its bucket is not in debt and charges it
afterwards, so one 64 KB GSO packet goes out whole at the start of its time (100 ms early at
5 Mbit/s); tbf splits GSO packets larger than its burst into frames. The burst is one frame or
1 ms of traffic, whichever is larger (the proxy's shaper uses 1 ms quanta too).

The proxy's own shaper counts TCP payload bytes; tbf counts whole frames. So that a bulk transfer
gets the same payload rate either way, the qdisc is rated at R x (MTU + 14) / (MTU - 52): one
full-size frame (Ethernet header included) per 1448 payload bytes at MTU 1500, for IPv4 TCP with
timestamps (Linux's default). Small packets then see a slightly higher payload rate than R.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

MIN_RATE_BPS = 1000.0          # tbf needs a positive rate; a silent radio becomes 1 kbit/s
MAX_RATE_BPS = 100e9           # "unlimited"
QUEUE_LIMIT_BYTES = 8 << 20    # what may wait in the qdisc: TCP stops short of it, nothing is dropped
BURST_S = 0.001


def why_not() -> str | None:
    """None when tc shaping can be used here, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return f"tc shaping needs Linux (this is {sys.platform})"
    if shutil.which("tc") is None or shutil.which("ip") is None:
        return "tc shaping needs the `tc` and `ip` commands (iproute2)"
    if os.geteuid() != 0:
        return "tc shaping needs root (CAP_NET_ADMIN)"
    return None


class TcError(RuntimeError):
    pass


class TcShaper:
    """A tbf root qdisc on `dev`; `set_rate` re-rates it (`tc qdisc replace`, no packet lost).

    `netns` runs every command inside that network namespace (`ip netns exec NS tc ...`).
    """

    def __init__(self, dev: str, netns: str | None = None):
        self.dev, self.netns = dev, netns
        self.rate_bps: float | None = None
        self._installed = False
        self.mtu = self._mtu()
        self.frame_factor = (self.mtu + 14) / (self.mtu - 52)

    def _mtu(self) -> int:
        cmd = (["ip", "-n", self.netns] if self.netns else ["ip"]) + ["-o", "link", "show", "dev", self.dev]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        fields = proc.stdout.split()
        if proc.returncode != 0 or "mtu" not in fields:
            raise TcError(f"no network device {self.dev!r}: {proc.stderr.strip() or proc.stdout.strip()}")
        return int(fields[fields.index("mtu") + 1])

    def _tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + ["tc", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise TcError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
        return proc

    def set_rate(self, rate_bps: float) -> None:
        """Rate the qdisc so that TCP payload flows at rate_bps (inf: no limit, 0: all but stopped)."""
        wire = rate_bps * self.frame_factor
        wire = MAX_RATE_BPS if math.isinf(wire) else min(MAX_RATE_BPS, max(MIN_RATE_BPS, wire))
        burst = max(self.mtu + 14, int(wire / 8 * BURST_S))
        self._tc("qdisc", "replace", "dev", self.dev, "root", "handle", "1:", "tbf", "rate",
                 f"{int(round(wire))}bit", "burst", str(burst), "limit", str(QUEUE_LIMIT_BYTES))
        self._installed = True
        self.rate_bps = rate_bps

    def show(self) -> str:
        return self._tc("-s", "qdisc", "show", "dev", self.dev).stdout

    def clear(self) -> None:
        if self._installed:
            self._tc("qdisc", "del", "dev", self.dev, "root", check=False)
            self._installed = False
