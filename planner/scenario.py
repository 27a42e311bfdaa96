"""Scenario and system descriptions: the planner's inputs, parsed strictly from plain dicts (YAML).

A *system* is everything about the hardware, channel, QoS and distortion model; a *scenario* is a
system plus the two segments of one split point (spec section 7). All numbers are SI units.
Unknown keys, missing keys and bad values raise UsageError naming the dotted key.

Beyond section 7: `distortion.model: measured` takes, for each present segment, a key
`segments.<device|server>.measured: {ratios: [...], l1_removed: [...]}` (the L1 mass removed when a
ratio of the weights is kept); `coinfer plan` measures these on the loaded weights itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from coinfer.errors import UsageError

DISTORTION_MODELS = ("rd_bound", "magnitude", "random", "measured")
# Schemes that are P1 with a block of variables fixed (solvable at one split point).
P1_SCHEMES = ("joint", "fixed_power", "fixed_frequency", "device_only_pruning", "server_only_pruning")
# Schemes that fix the split point instead (meaningful only for a split sweep).
SPLIT_SCHEMES = ("on_device", "on_server")
SCHEMES = P1_SCHEMES + SPLIT_SCHEMES


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

    @property
    def present(self) -> bool:
        return self.flops > 0


@dataclass(frozen=True)
class Processor:
    max_freq_hz: float      # F_j
    flops_per_cycle: float  # C_j
    pue: float              # eta_j
    power_coeff: float      # kappa_j


@dataclass(frozen=True)
class Channel:
    bandwidth_hz: float         # B
    noise_psd_w_per_hz: float   # N0
    gain: float                 # g


@dataclass(frozen=True)
class QoS:
    max_delay_s: float
    max_energy_j: float


@dataclass(frozen=True)
class DistortionSpec:
    model: str
    min_ratio: float


@dataclass(frozen=True)
class System:
    weight_bits: float          # q
    device: Processor
    max_tx_power_w: float       # P_max (a device key in YAML)
    server: Processor
    channel: Channel
    qos: QoS
    distortion: DistortionSpec
    scheme: str = "joint"

    def to_dict(self) -> dict:
        dev = asdict(self.device)
        dev["max_tx_power_w"] = self.max_tx_power_w
        return {"weight_bits": self.weight_bits, "device": dev, "server": asdict(self.server),
                "channel": asdict(self.channel), "qos": asdict(self.qos),
                "distortion": asdict(self.distortion), "scheme": self.scheme}


@dataclass(frozen=True)
class Scenario:
    """One split point with every number explicit."""
    system: System
    device_segment: Segment
    server_segment: Segment
    embedding_bits: float       # S
    split: int | None = field(default=None, compare=False)   # k, when known (informational)

    @property
    def scheme(self) -> str:
        return self.system.scheme

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
# strict parsing

def _number(value: Any, key: str, *, positive: bool = False, nonneg: bool = False) -> float:
    # YAML 1.1 reads "1e-9" (no dot) as a string; accept numeric strings rather than surprise users.
    if isinstance(value, bool):
        raise UsageError(f"{key}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UsageError(f"{key}: must be finite, got {value!r}")
    if positive and not x > 0:
        raise UsageError(f"{key}: must be > 0, got {value!r}")
    if nonneg and x < 0:
        raise UsageError(f"{key}: must be >= 0, got {value!r}")
    return x


def _mapping(value: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    where = key or "top level"
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
    prefix = f"{key}." if key else ""
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(required + optional)
        raise UsageError(f"unknown key {prefix}{unknown[0]} (allowed here: {allowed})")
    missing = [k for k in required if k not in value]
    if missing:
        raise UsageError(f"missing key {prefix}{missing[0]}")
    return value


def check_scheme(value: Any, key: str, allowed: tuple[str, ...] = SCHEMES) -> str:
    if value not in allowed:
        raise UsageError(f"{key}: unknown scheme {value!r} (one of {', '.join(allowed)})")
    return value


def _processor(d: Any, key: str, with_tx: bool) -> tuple[Processor, float | None]:
    req = ("max_freq_hz", "flops_per_cycle", "pue", "power_coeff") + (("max_tx_power_w",) if with_tx else ())
    d = _mapping(d, key, req)
    proc = Processor(*(_number(d[k], f"{key}.{k}", positive=True) for k in req[:4]))
    tx = _number(d["max_tx_power_w"], f"{key}.max_tx_power_w", positive=True) if with_tx else None
    return proc, tx


SYSTEM_KEYS = ("weight_bits", "device", "server", "channel", "qos", "distortion")


def parse_system(d: Any, *, scheme_allowed: tuple[str, ...] = SCHEMES, prefix: str = "") -> System:
    """A system dict (scenario keys without `segments` and `embedding_bits`) -> System."""
    d = _mapping(d, prefix.rstrip("."), SYSTEM_KEYS, ("scheme",))
    q = _number(d["weight_bits"], f"{prefix}weight_bits", positive=True)
    device, tx = _processor(d["device"], f"{prefix}device", True)
    server, _ = _processor(d["server"], f"{prefix}server", False)
    ch = _mapping(d["channel"], f"{prefix}channel", ("bandwidth_hz", "noise_psd_w_per_hz", "gain"))
    channel = Channel(*(_number(ch[k], f"{prefix}channel.{k}", positive=True)
                        for k in ("bandwidth_hz", "noise_psd_w_per_hz", "gain")))
    qd = _mapping(d["qos"], f"{prefix}qos", ("max_delay_s", "max_energy_j"))
    qos = QoS(_number(qd["max_delay_s"], f"{prefix}qos.max_delay_s", positive=True),
              _number(qd["max_energy_j"], f"{prefix}qos.max_energy_j", positive=True))
    dd = _mapping(d["distortion"], f"{prefix}distortion", ("model", "min_ratio"))
    if dd["model"] not in DISTORTION_MODELS:
        raise UsageError(f"{prefix}distortion.model: unknown model {dd['model']!r} "
                         f"(one of {', '.join(DISTORTION_MODELS)})")
    rmin = _number(dd["min_ratio"], f"{prefix}distortion.min_ratio", positive=True)
    if rmin > 1:
        raise UsageError(f"{prefix}distortion.min_ratio: must be in (0, 1], got {rmin}")
    scheme = check_scheme(d.get("scheme", "joint"), f"{prefix}scheme", scheme_allowed)
    return System(q, device, tx, server, channel, qos, DistortionSpec(dd["model"], rmin), scheme)


def _curve(d: Any, key: str) -> Curve:
    d = _mapping(d, key, ("ratios", "l1_removed"))
    rs, ys = d["ratios"], d["l1_removed"]
    if not isinstance(rs, list) or not isinstance(ys, list) or len(rs) != len(ys) or len(rs) < 2:
        raise UsageError(f"{key}: ratios and l1_removed must be lists of equal length >= 2")
    ratios = tuple(_number(r, f"{key}.ratios", nonneg=True) for r in rs)
    vals = tuple(_number(y, f"{key}.l1_removed", nonneg=True) for y in ys)
    if any(r > 1 for r in ratios) or any(b <= a for a, b in zip(ratios, ratios[1:])):
        raise UsageError(f"{key}.ratios: must increase strictly within [0, 1]")
    return Curve(ratios, vals)


def _segment(d: Any, key: str, measured: bool) -> Segment:
    d = _mapping(d, key, ("flops", "params", "weight_scale"), ("measured",))
    flops, params, scale = (_number(d[k], f"{key}.{k}", nonneg=True) for k in ("flops", "params", "weight_scale"))
    curve = None
    if "measured" in d:
        curve = _curve(d["measured"], f"{key}.measured")
    elif measured and flops > 0:
        raise UsageError(f"missing key {key}.measured (distortion.model is measured)")
    return Segment(flops, params, scale, curve)


def parse_scenario(d: Any) -> Scenario:
    """A scenario dict (spec section 7) -> Scenario; on_device/on_server are split choices, not here."""
    d = _mapping(d, "", ("segments", "embedding_bits") + SYSTEM_KEYS, ("scheme",))
    system = parse_system({k: v for k, v in d.items() if k not in ("segments", "embedding_bits")},
                          scheme_allowed=P1_SCHEMES)
    segs = _mapping(d["segments"], "segments", ("device", "server"))
    measured = system.distortion.model == "measured"
    dev = _segment(segs["device"], "segments.device", measured)
    srv = _segment(segs["server"], "segments.server", measured)
    bits = _number(d["embedding_bits"], "embedding_bits", nonneg=True)
    if not dev.present and not srv.present:
        raise UsageError("segments: device.flops and server.flops are both 0; nothing to run")
    return Scenario(system, dev, srv, bits)


def load_yaml(path: str) -> Any:
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None


@dataclass(frozen=True)
class Fixes:
    """What a scheme pins (spec section 5): ratios at 1, frequencies at max, power at max."""
    rho_d: bool = False
    rho_s: bool = False
    freq: bool = False
    power: bool = False

    @staticmethod
    def of(scheme: str) -> "Fixes":
        return {"fixed_power": Fixes(power=True), "fixed_frequency": Fixes(freq=True),
                "device_only_pruning": Fixes(rho_s=True),
                "server_only_pruning": Fixes(rho_d=True)}.get(scheme, Fixes())

    def floor(self, rho_min: float) -> tuple[float, float]:
        """The least ratios the scheme allows (device, server)."""
        return (1.0 if self.rho_d else rho_min), (1.0 if self.rho_s else rho_min)
