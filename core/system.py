"""The system: everything about the hardware, channel, QoS and distortion model (spec section 7,
without the segments), its strict parsing from plain dicts (YAML), and the default system.

The planner solves with a `System`; the device and server halves take their default power model and
maximum clock from `default_system()` where nothing is measured. All numbers are SI units. Unknown
keys, missing keys and bad values raise UsageError naming the dotted key.

The default system, for `coinfer plan` when no --system file is given, is the paper reproduction's
system, `scripts/examples/paper_system.yaml`, mirrored here as a dict (`DEFAULT_SYSTEM`) so that an
installed package needs no data file; tests/unit/planner/test_paper_system.py checks the two agree.
The YAML explains each number. In short: the paper's section VI values were lost with its formulas,
so these are chosen to keep its stated regime, a device that is slow but frugal per FLOP and a
server that is fast but pays more energy per FLOP, under a delay and energy budget (0.6 s, 0.4 J)
that neither side meets alone for BERT-base unpruned; with them the best split of BERT-base
(batch 1 x 128 tokens) is interior.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from coinfer.errors import UsageError
from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain

DISTORTION_MODELS = ("rd_bound", "magnitude", "random", "measured", "output")
# Schemes that are P1 with a block of variables fixed (solvable at one split point).
P1_SCHEMES = ("joint", "fixed_power", "fixed_frequency", "device_only_pruning", "server_only_pruning")
# Schemes that fix the split point instead (meaningful only for a split sweep).
SPLIT_SCHEMES = ("on_device", "on_server")
SCHEMES = P1_SCHEMES + SPLIT_SCHEMES


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


# ----------------------------------------------------------------------------------------------
# strict parsing (also used by coinfer.planner.scenario for the segments)

def strict_number(value: Any, key: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """A finite float (numeric strings accepted), else UsageError naming `key`."""
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


def strict_mapping(value: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """A dict with every required key and no key beyond required + optional, else UsageError."""
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
    d = strict_mapping(d, key, req)
    proc = Processor(*(strict_number(d[k], f"{key}.{k}", positive=True) for k in req[:4]))
    tx = strict_number(d["max_tx_power_w"], f"{key}.max_tx_power_w", positive=True) if with_tx else None
    return proc, tx


SYSTEM_KEYS = ("weight_bits", "device", "server", "channel", "qos", "distortion")


def parse_system(d: Any, *, scheme_allowed: tuple[str, ...] = SCHEMES, prefix: str = "") -> System:
    """A system dict (scenario keys without `segments` and `embedding_bits`) -> System."""
    d = strict_mapping(d, prefix.rstrip("."), SYSTEM_KEYS, ("scheme",))
    q = strict_number(d["weight_bits"], f"{prefix}weight_bits", positive=True)
    device, tx = _processor(d["device"], f"{prefix}device", True)
    server, _ = _processor(d["server"], f"{prefix}server", False)
    ch = strict_mapping(d["channel"], f"{prefix}channel", ("bandwidth_hz", "noise_psd_w_per_hz", "gain"))
    channel = Channel(*(strict_number(ch[k], f"{prefix}channel.{k}", positive=True)
                        for k in ("bandwidth_hz", "noise_psd_w_per_hz", "gain")))
    qd = strict_mapping(d["qos"], f"{prefix}qos", ("max_delay_s", "max_energy_j"))
    qos = QoS(strict_number(qd["max_delay_s"], f"{prefix}qos.max_delay_s", positive=True),
              strict_number(qd["max_energy_j"], f"{prefix}qos.max_energy_j", positive=True))
    dd = strict_mapping(d["distortion"], f"{prefix}distortion", ("model", "min_ratio"))
    if dd["model"] not in DISTORTION_MODELS:
        raise UsageError(f"{prefix}distortion.model: unknown model {dd['model']!r} "
                         f"(one of {', '.join(DISTORTION_MODELS)})")
    rmin = strict_number(dd["min_ratio"], f"{prefix}distortion.min_ratio", positive=True)
    if rmin > 1:
        raise UsageError(f"{prefix}distortion.min_ratio: must be in (0, 1], got {rmin}")
    scheme = check_scheme(d.get("scheme", "joint"), f"{prefix}scheme", scheme_allowed)
    return System(q, device, tx, server, channel, qos, DistortionSpec(dd["model"], rmin), scheme)


def load_yaml(path: str) -> Any:
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None


# ----------------------------------------------------------------------------------------------
# the default system

DEFAULT_SYSTEM = {
    "weight_bits": 16,
    "device": {"max_freq_hz": 2.0e9, "flops_per_cycle": 16, "pue": 1.0, "power_coeff": 2.0e-29,
               "max_tx_power_w": 0.2},
    "server": {"max_freq_hz": 3.0e9, "flops_per_cycle": 64, "pue": 1.5, "power_coeff": 3.0e-27},
    # the YAML's rounded literals: -174 dBm/Hz, and PL0 = -30 dB at 1 m, alpha = 3, d = 100 m
    "channel": {"bandwidth_hz": 1.0e7, "noise_psd_w_per_hz": 3.98e-21, "gain": 1.0e-9},
    "qos": {"max_delay_s": 0.6, "max_energy_j": 0.4},
    "distortion": {"model": "magnitude", "min_ratio": 0.05},
    "scheme": "joint",
}

assert math.isclose(DEFAULT_SYSTEM["channel"]["gain"], path_loss_gain(100.0, -30.0, 3.0))
assert math.isclose(DEFAULT_SYSTEM["channel"]["noise_psd_w_per_hz"], dbm_per_hz_to_w_per_hz(-174.0), rel_tol=1e-3)


@cache
def default_system() -> System:
    """DEFAULT_SYSTEM parsed (one shared, frozen System)."""
    return parse_system(DEFAULT_SYSTEM)
