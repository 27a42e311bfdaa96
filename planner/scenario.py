"""Scenario descriptions: one split point of a system, the planner's input, parsed strictly from plain
dicts (YAML).

A *scenario* is a system (coinfer.system: hardware, channel, QoS and distortion model) plus the two
segments of one split point (spec section 7). All numbers are SI units. Unknown keys, missing keys and
bad values raise UsageError naming the dotted key.

Beyond section 7: `distortion.model: measured` takes, for each present segment, a key
`segments.<device|server>.measured: {ratios: [...], l1_removed: [...]}` (the L1 mass removed when a
ratio of the weights is kept); `coinfer plan` measures these on the loaded weights itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from coinfer.errors import UsageError
from coinfer.system import (P1_SCHEMES, SYSTEM_KEYS, QoS, System, check_scheme, parse_system, strict_mapping,
                            strict_number)


@dataclass(frozen=True)
class Curve:
    """Measured parameter distortion of one segment: L1 mass removed at each kept ratio."""
    ratios: tuple[float, ...]
    l1_removed: tuple[float, ...]


@dataclass(frozen=True)
class Segment:
    flops: float            # W_j, FLOPs of one unpruned inference of the segment
    params: float           # N_j
    weight_scale: float     # b_j, Laplace scale (mean |w|)
    curve: Curve | None = None   # only for the `measured` distortion model
    # The fraction of the segment's compute that shrinks with rho (measured per pruning method:
    # structured pruning removes whole heads and neurons, masked zeros in dense matmuls save nothing).
    # 1 is the paper's model, W(rho) = rho W.
    speed: float = 1.0
    # Output-quality loss of pruning this segment alone, max of affine pieces (alpha, beta) in rho
    # (coinfer.planner.quality): only for the `output` distortion model.
    loss_pieces: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def present(self) -> bool:
        return self.flops > 0

    def work(self, rho: float) -> float:
        """The compute at kept ratio rho relative to the unpruned segment: speed rho + 1 - speed."""
        return self.speed * rho + 1.0 - self.speed


@dataclass(frozen=True)
class Scenario:
    """One split point with every number explicit."""
    system: System
    device_segment: Segment
    server_segment: Segment
    embedding_bits: float       # S
    split: int | None = field(default=None, compare=False)   # k, when known (informational)
    held: "Held" = field(default_factory=lambda: Held())     # knobs the nodes cannot set (at their maxima)
    loss_limit: float | None = None   # `output` model: the most quality loss allowed (the floor), None: none

    @property
    def scheme(self) -> str:
        return self.system.scheme

    @property
    def fixes(self) -> "Fixes":
        """What is pinned: by the scheme, and by the knobs the hardware does not let anyone set."""
        return Fixes.of(self.scheme).merged(self.held)

    def with_scheme(self, scheme: str) -> "Scenario":
        return replace(self, system=replace(self.system, scheme=check_scheme(scheme, "scheme")))

    def with_qos(self, max_delay_s: float, max_energy_j: float) -> "Scenario":
        return replace(self, system=replace(self.system, qos=QoS(max_delay_s, max_energy_j)))

    def to_dict(self) -> dict:
        def seg(s: Segment) -> dict:
            d = {"flops": s.flops, "params": s.params, "weight_scale": s.weight_scale}
            if s.curve is not None:
                d["measured"] = {"ratios": list(s.curve.ratios), "l1_removed": list(s.curve.l1_removed)}
            return d
        out = {"segments": {"device": seg(self.device_segment), "server": seg(self.server_segment)},
               "embedding_bits": self.embedding_bits}
        out.update(self.system.to_dict())
        return out


# ----------------------------------------------------------------------------------------------
# strict parsing (the helpers are coinfer.system's)

def _curve(d: Any, key: str) -> Curve:
    d = strict_mapping(d, key, ("ratios", "l1_removed"))
    rs, ys = d["ratios"], d["l1_removed"]
    if not isinstance(rs, list) or not isinstance(ys, list) or len(rs) != len(ys) or len(rs) < 2:
        raise UsageError(f"{key}: ratios and l1_removed must be lists of equal length >= 2")
    ratios = tuple(strict_number(r, f"{key}.ratios", nonneg=True) for r in rs)
    vals = tuple(strict_number(y, f"{key}.l1_removed", nonneg=True) for y in ys)
    if any(r > 1 for r in ratios) or any(b <= a for a, b in zip(ratios, ratios[1:])):
        raise UsageError(f"{key}.ratios: must increase strictly within [0, 1]")
    return Curve(ratios, vals)


def _segment(d: Any, key: str, measured: bool) -> Segment:
    d = strict_mapping(d, key, ("flops", "params", "weight_scale"), ("measured",))
    flops, params, scale = (strict_number(d[k], f"{key}.{k}", nonneg=True) for k in ("flops", "params", "weight_scale"))
    curve = None
    if "measured" in d:
        curve = _curve(d["measured"], f"{key}.measured")
    elif measured and flops > 0:
        raise UsageError(f"missing key {key}.measured (distortion.model is measured)")
    return Segment(flops, params, scale, curve)


def parse_scenario(d: Any) -> Scenario:
    """A scenario dict (spec section 7) -> Scenario; on_device/on_server are split choices, not here."""
    d = strict_mapping(d, "", ("segments", "embedding_bits") + SYSTEM_KEYS, ("scheme",))
    system = parse_system({k: v for k, v in d.items() if k not in ("segments", "embedding_bits")},
                          scheme_allowed=P1_SCHEMES)
    segs = strict_mapping(d["segments"], "segments", ("device", "server"))
    measured = system.distortion.model == "measured"
    dev = _segment(segs["device"], "segments.device", measured)
    srv = _segment(segs["server"], "segments.server", measured)
    bits = strict_number(d["embedding_bits"], "embedding_bits", nonneg=True)
    if not dev.present and not srv.present:
        raise UsageError("segments: device.flops and server.flops are both 0; nothing to run")
    return Scenario(system, dev, srv, bits)


@dataclass(frozen=True)
class Held:
    """Knobs no one can set on the nodes (no writable cpufreq, no NVML clocks, no radio or emulator):
    the planner holds them at their maxima, as the hardware runs them."""
    freq_d: bool = False
    freq_s: bool = False
    power: bool = False

    def names(self) -> list[str]:
        return [n for n, held in (("device clock", self.freq_d), ("server clock", self.freq_s),
                                  ("transmit power", self.power)) if held]


@dataclass(frozen=True)
class Fixes:
    """What is pinned (spec section 5): ratios at 1, frequencies at max, power at max."""
    rho_d: bool = False
    rho_s: bool = False
    freq_d: bool = False
    freq_s: bool = False
    power: bool = False

    @property
    def freq(self) -> bool:
        """Both clocks pinned."""
        return self.freq_d and self.freq_s

    def freq_of(self, side: str) -> bool:
        return self.freq_d if side == "d" else self.freq_s

    @staticmethod
    def of(scheme: str) -> "Fixes":
        return {"fixed_power": Fixes(power=True), "fixed_frequency": Fixes(freq_d=True, freq_s=True),
                "device_only_pruning": Fixes(rho_s=True),
                "server_only_pruning": Fixes(rho_d=True)}.get(scheme, Fixes())

    def merged(self, held: Held) -> "Fixes":
        return replace(self, freq_d=self.freq_d or held.freq_d, freq_s=self.freq_s or held.freq_s,
                       power=self.power or held.power)

    def floor(self, rho_min: float) -> tuple[float, float]:
        """The least ratios the scheme allows (device, server)."""
        return (1.0 if self.rho_d else rho_min), (1.0 if self.rho_s else rho_min)


# The example scenario of system-model.md section 7 (one split point, every number explicit): the
# planner benchmark's and the brute-force tests' reference point.
SPEC_EXAMPLE_SCENARIO = {
    "segments": {"device": {"flops": 7.26e9, "params": 2.83e7, "weight_scale": 0.02},
                 "server": {"flops": 1.45e10, "params": 5.66e7, "weight_scale": 0.02}},
    "embedding_bits": 1572864, "weight_bits": 16,
    "device": {"max_freq_hz": 2.0e9, "flops_per_cycle": 8, "pue": 1.0, "power_coeff": 1.0e-28,
               "max_tx_power_w": 0.2},
    "server": {"max_freq_hz": 1.5e9, "flops_per_cycle": 1024, "pue": 1.5, "power_coeff": 5.0e-27},
    "channel": {"bandwidth_hz": 1.0e7, "noise_psd_w_per_hz": 3.98e-21, "gain": 1.0e-9},
    "qos": {"max_delay_s": 0.35, "max_energy_j": 0.5},
    "distortion": {"model": "magnitude", "min_ratio": 0.05},
    "scheme": "joint",
}
