"""Delay and energy of each stage by the plain formulas of spec section 2, and the scaled constants
the solvers work with.

Solvers never trust their own auxiliary variables: every returned point is re-evaluated here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from coinfer.planner.scenario import Scenario
from coinfer.radio import LN2, received_snr, shannon_rate_bps, spectral_efficiency


@dataclass(frozen=True)
class Point:
    rho_d: float
    rho_s: float
    f_d: float
    f_s: float
    p: float


@dataclass(frozen=True)
class Costs:
    t_d: float
    t_u: float
    t_s: float
    e_d: float
    e_u: float
    e_s: float

    @property
    def delay(self) -> float:
        return self.t_d + self.t_u + self.t_s

    @property
    def energy(self) -> float:
        return self.e_d + self.e_u + self.e_s


def evaluate(scn: Scenario, x: Point) -> Costs:
    """Stage delays and energies at x (absent stages cost nothing)."""
    sysm, ch = scn.system, scn.system.channel
    t_d = e_d = t_u = e_u = t_s = e_s = 0.0
    if scn.device_segment.present:
        dev, seg = sysm.device, scn.device_segment
        cyc = seg.work(x.rho_d) * seg.flops / dev.flops_per_cycle
        t_d = cyc / x.f_d
        e_d = dev.pue * dev.power_coeff * cyc * x.f_d ** 2
    if scn.embedding_bits > 0:
        t_u = scn.embedding_bits / shannon_rate_bps(ch.bandwidth_hz, ch.noise_psd_w_per_hz, ch.gain, x.p)
        e_u = x.p * t_u
    if scn.server_segment.present:
        srv, seg = sysm.server, scn.server_segment
        cyc = seg.work(x.rho_s) * seg.flops / srv.flops_per_cycle
        t_s = cyc / x.f_s
        e_s = srv.pue * srv.power_coeff * cyc * x.f_s ** 2
    return Costs(t_d, t_u, t_s, e_d, e_u, e_s)


@dataclass(frozen=True)
class Shape:
    """Which stages exist at this split point (k = 0: no device; k = L for BERT: no upload, no server)."""
    device: bool
    upload: bool
    server: bool

    @staticmethod
    def of(scn: Scenario) -> "Shape":
        return Shape(scn.device_segment.present, scn.embedding_bits > 0, scn.server_segment.present)

    def key(self) -> str:
        return "".join(c if b else "-" for c, b in zip("dus", (self.device, self.upload, self.server)))


@dataclass(frozen=True)
class Scaled:
    """Each stage measured against its own 'full speed' reference, so the solvers see O(1) numbers.

    c_j   time of stage j at rho = 1 and full frequency / full power [s]
    eh_j  energy of compute stage j at rho = 1 and full frequency [J]
    eu    energy of the upload at full power [J]
    r     spectral efficiency at full power, log2(1 + SNR_max) [bit/s/Hz]
    """
    c_d: float
    c_s: float
    c_u: float
    eh_d: float
    eh_s: float
    eu: float
    r: float

    @staticmethod
    def of(scn: Scenario) -> "Scaled":
        s, ch = scn.system, scn.system.channel

        def comp(seg, proc):
            cycles = seg.flops / proc.flops_per_cycle
            return cycles / proc.max_freq_hz, proc.pue * proc.power_coeff * cycles * proc.max_freq_hz ** 2

        c_d, eh_d = comp(scn.device_segment, s.device)
        c_s, eh_s = comp(scn.server_segment, s.server)
        r = spectral_efficiency(received_snr(ch.bandwidth_hz, ch.noise_psd_w_per_hz, ch.gain, s.max_tx_power_w))
        c_u = scn.embedding_bits / (ch.bandwidth_hz * r)
        return Scaled(c_d, c_s, c_u, eh_d, eh_s, s.max_tx_power_w * c_u, r)

    def power_for_upload_ratio(self, u: float, p_max: float) -> float:
        """Transmit power giving upload time u * c_u: p = P_max (2^(r/u) - 1) / (2^r - 1)."""
        return p_max * math.expm1(LN2 * self.r / u) / math.expm1(LN2 * self.r)


def within(costs: Costs, scn: Scenario, rel: float = 1e-4) -> bool:
    """True when both QoS limits hold to a relative tolerance."""
    q = scn.system.qos
    return costs.delay <= q.max_delay_s * (1 + rel) and costs.energy <= q.max_energy_j * (1 + rel)
