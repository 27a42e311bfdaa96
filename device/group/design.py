"""Planning a tensor-parallel device group: who holds which heads and FFN columns, and the transceiver
of the over-the-air all-reduce (issue 10; seed paper 002, "Distributed On-Device LLM Inference With
Over-the-Air Computation").

Model assignment
----------------
Each block's attention heads and FFN intermediate columns are split Megatron-style over the N devices.
A sub-layer ends in an all-reduce, a barrier, so its time is the slowest device's: device i with
speed s_i (FLOP/s) holding n_i units takes n_i u / s_i. `assign_units` gives the integer n_i (>= 0,
summing to the total) that minimise max_i n_i / s_i: units go one at a time to the device that would
finish it first, which is optimal for identical units (a classic list-scheduling exchange argument).

Over-the-air all-reduce: the signal model
-----------------------------------------
One all-reduce sums real partials x_i (M elements each, one per device) into s = sum_i x_i.

* Packing: elements pair into complex baseband symbols u_i[m] = x_i[2m] + j x_i[2m+1],
  m < Ms = ceil(M / 2) (odd M is zero-padded). The airtime is Ms / B: one complex symbol per 1/B s.
* Power: w_i = (1/Ms) sum_m |u_i[m]|^2 is device i's signal power per symbol, measured on the partial
  itself (so x needs no fixed normalisation; the N values of w go to the receiver over a control channel
  before the transmission, 2N scalars against Ms symbols, not counted in the airtime).
  Device i transmits b_i u_i[m]; its power limit is on the average power per symbol over the all-reduce:
  |b_i|^2 w_i <= P_i (watts, the same P as in R = B log2(1 + g P / (B N0))).
* Channel and noise: the receiver gets y[m] = sum_i h_i b_i u_i[m] + n[m], n ~ CN(0, sigma^2) i.i.d.,
  sigma^2 = N0 B (noise power in the band, W); |h_i|^2 = g_i is the channel power gain.
  It estimates s_hat = a y and unpacks real and imaginary parts; each real element's noise then has
  variance |a|^2 sigma^2 / 2.
* Error: with the devices' symbols uncorrelated (the design's assumption),
      mse per symbol = sum_i w_i |a h_i b_i - 1|^2 + |a|^2 sigma^2,
  and mse per real element = (mse per symbol) * Ms / M (= half of it for even M).

Transceiver design (scalar b_i, a; per-device power limits)
-----------------------------------------------------------
The phases are fixed by the channel: b_i = |b_i| e^{-j arg h_i} and a = t > 0 (a common phase changes
nothing). Write c_i = t |h_i| |b_i| (device i's end-to-end gain; 1 is perfect alignment) and
G_i = |h_i| sqrt(P_i / w_i) (the largest c_i per unit of t).

* zf (zero-forcing alignment): c_i = 1 for every transmitting device, so b_i = 1 / (t h_i) and the
  power limits need t >= 1 / G_i: t = max_i 1/G_i, mse = t^2 sigma^2, set by the weakest device.
* mmse: for a given t the best |b_i| is min(1 / (t |h_i|), sqrt(P_i / w_i)) (align if the power allows,
  else send at full power), so mse(t) = sum_i w_i max(0, 1 - t G_i)^2 + t^2 sigma^2: convex in t, with
  its minimum either at a breakpoint t = 1/G_i or at the stationary point of a piece,
  t = sum_S w_i G_i / (sigma^2 + sum_S w_i G_i^2) with S = {i : t G_i < 1}. Every candidate is tried.
  It trades a little misalignment of the weak devices for a smaller noise gain t^2.
A device with nothing to send (w_i = 0: no heads, or no columns) does not transmit and constrains
nothing.

Latency
-------
Compute: FLOPs of each device's share over its speed (the sub-layer waits for the slowest). All-reduce:
digital = every transmitting device sends its M elements of `bits` bits in turn over the full band
(TDMA) at R_i = B log2(1 + g_i P_i / (N0 B)); over the air = Ms / B, all at once. The result's return
to the devices is the same in both and not counted (as the spec neglects the return of the result).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from coinfer.radio import THERMAL_NOISE_DBM_PER_HZ, dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps

DEFAULT_NOISE_PSD_DBM_HZ = THERMAL_NOISE_DBM_PER_HZ
DEFAULT_BANDWIDTH_HZ = 1.0e7        # a 10 MHz uplink allocation (the planner's default system)
DEFAULT_TX_POWER_W = 0.2            # 23 dBm, 3GPP UE power class 3
DEFAULT_DISTANCE_M = 100.0          # path loss at the spec's PL0 = -30 dB, alpha = 3 (coinfer.radio): g = 1e-9
DEFAULT_BITS_PER_ELEMENT = 32       # the digital all-reduce sends fp32 partials
DESIGNS = ("zf", "mmse")


# --- model assignment ------------------------------------------------------------------------------

def assign_units(total: int, speeds: Sequence[float]) -> tuple[int, ...]:
    """Integer units per device (each >= 0, summing to `total`) minimising max_i n_i / speed_i.

    A device of speed 0 gets nothing. Ties go to the lower index, so the result is deterministic.
    """
    speeds = [float(s) for s in speeds]
    if total < 0:
        raise ValueError(f"cannot assign {total} units")
    if not speeds or any(not (s >= 0 and math.isfinite(s)) for s in speeds) or not any(s > 0 for s in speeds):
        raise ValueError(f"device speeds must be finite, >= 0 and not all 0, got {speeds}")
    counts = [0] * len(speeds)
    heap = [(1.0 / s, i) for i, s in enumerate(speeds) if s > 0]
    heapq.heapify(heap)
    for _ in range(total):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, ((counts[i] + 1) / speeds[i], i))
    return tuple(counts)


@dataclass(frozen=True)
class Assignment:
    """Heads and FFN columns per device (rank order); the same for every block of the device half."""

    heads: tuple[int, ...]
    columns: tuple[int, ...]

    def __post_init__(self):
        if len(self.heads) != len(self.columns) or not self.heads:
            raise ValueError(f"heads {self.heads} and columns {self.columns} must name the same devices")
        if any(int(n) != n or n < 0 for n in (*self.heads, *self.columns)):
            raise ValueError(f"heads {self.heads} and columns {self.columns} must be integers >= 0")

    @property
    def devices(self) -> int:
        return len(self.heads)

    def check(self, num_heads: int, ffn: int) -> "Assignment":
        if sum(self.heads) != num_heads:
            raise ValueError(f"heads {list(self.heads)} sum to {sum(self.heads)}, the model has {num_heads}")
        if sum(self.columns) != ffn:
            raise ValueError(f"FFN columns {list(self.columns)} sum to {sum(self.columns)}, the model has {ffn}")
        return self

    @staticmethod
    def by_compute(num_heads: int, ffn: int, speeds: Sequence[float]) -> "Assignment":
        return Assignment(assign_units(num_heads, speeds), assign_units(ffn, speeds))


# --- transceiver design ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TransceiverDesign:
    """Magnitudes of the transmit scalars |b_i| and the receive scalar a (> 0); see the module docstring."""

    method: str
    channel_amp: np.ndarray     # |h_i|
    power_limit: np.ndarray     # P_i, W
    signal_power: np.ndarray    # w_i, per complex symbol
    noise_power: float          # sigma^2 = N0 B, W
    b_abs: np.ndarray
    a: float

    @property
    def gains(self) -> np.ndarray:
        """c_i = a |h_i| |b_i|: 1 for an aligned device."""
        return self.a * self.channel_amp * self.b_abs

    @property
    def tx_power(self) -> np.ndarray:
        """Average transmit power per symbol, |b_i|^2 w_i (<= P_i)."""
        return self.b_abs ** 2 * self.signal_power

    @property
    def misalignment_mse(self) -> float:
        return float(np.sum(self.signal_power * (1.0 - self.gains) ** 2))

    @property
    def noise_mse(self) -> float:
        return float(self.a ** 2 * self.noise_power)

    @property
    def mse_per_symbol(self) -> float:
        return self.misalignment_mse + self.noise_mse

    def mse_per_element(self, elements: int) -> float:
        """Expected squared error per real element of an all-reduce of `elements` elements."""
        return self.mse_per_symbol * math.ceil(elements / 2) / elements

    @property
    def nmse(self) -> float:
        """MSE relative to the power of the sum (sum_i w_i, uncorrelated partials)."""
        total = float(np.sum(self.signal_power))
        return self.mse_per_symbol / total if total > 0 else 0.0

    def to_dict(self) -> dict:
        return {"method": self.method, "a": self.a, "b_abs": self.b_abs.tolist(),
                "gains": self.gains.tolist(), "tx_power_w": self.tx_power.tolist(),
                "misalignment_mse": self.misalignment_mse, "noise_mse": self.noise_mse,
                "mse_per_symbol": self.mse_per_symbol, "nmse": self.nmse}


def _mmse_objective(t: float, w: np.ndarray, big_g: np.ndarray, sigma2: float) -> float:
    return float(np.sum(w * np.maximum(0.0, 1.0 - t * big_g) ** 2) + t * t * sigma2)


def design_transceiver(channel_amp: Sequence[float], power_limit: Sequence[float], signal_power: Sequence[float],
                       noise_power: float, method: str = "mmse") -> TransceiverDesign:
    """The zf or mmse choice of (|b_i|, a) for channel amplitudes |h_i|, limits P_i, powers w_i, sigma^2."""
    amp = np.asarray(channel_amp, dtype=np.float64)
    p_max = np.asarray(power_limit, dtype=np.float64)
    w = np.asarray(signal_power, dtype=np.float64)
    if method not in DESIGNS:
        raise ValueError(f"transceiver design must be one of {', '.join(DESIGNS)}, got {method!r}")
    if not (amp.shape == p_max.shape == w.shape and amp.ndim == 1):
        raise ValueError("channel amplitudes, power limits and signal powers must be vectors of one length")
    if np.any(~np.isfinite(amp)) or np.any(amp < 0) or np.any(~(p_max >= 0)) or np.any(~(w >= 0)):
        raise ValueError("channel amplitudes, power limits and signal powers must be finite and >= 0")
    if not (noise_power >= 0 and math.isfinite(noise_power)):
        raise ValueError(f"noise power must be finite and >= 0, got {noise_power}")
    big_g = np.zeros_like(amp)
    with np.errstate(divide="ignore", over="ignore"):
        big_g[w > 0] = amp[w > 0] * np.sqrt(p_max[w > 0] / w[w > 0])
    # A power so small that G overflows (subnormal w) is nothing to send: such a device stays silent.
    sending = (w > 0) & np.isfinite(big_g)
    if not sending.any():  # nothing to add up: nobody transmits, the estimate is 0, exactly right
        return TransceiverDesign(method, amp, p_max, w, float(noise_power), np.zeros_like(amp), 0.0)
    if method == "zf":
        dead = sending & (big_g == 0)
        if dead.any():
            raise ValueError(f"zero-forcing cannot align device(s) {np.flatnonzero(dead).tolist()}: "
                             "no channel or no transmit power")
        t = float(np.max(1.0 / big_g[sending]))
    else:
        t = _mmse_scale(w[sending], big_g[sending], float(noise_power))
    b_abs = np.zeros_like(amp)
    reach = sending & (amp > 0)
    if t > 0:
        b_abs[reach] = np.minimum(1.0 / (t * amp[reach]), np.sqrt(p_max[reach] / w[reach]))
    return TransceiverDesign(method, amp, p_max, w, float(noise_power), b_abs, t)


def _mmse_scale(w: np.ndarray, big_g: np.ndarray, sigma2: float) -> float:
    """argmin_t>=0 of sum_i w_i max(0, 1 - t G_i)^2 + t^2 sigma^2 (convex, piecewise quadratic)."""
    # t at which device i becomes aligned (t G_i = 1); a device with G_i = 0 never does.
    align_at = np.full_like(big_g, np.inf)
    align_at[big_g > 0] = 1.0 / big_g[big_g > 0]
    breaks = np.sort(align_at[np.isfinite(align_at)])
    edges = np.concatenate([[0.0], breaks, [np.inf]])
    candidates = list(breaks)
    for lo, hi in zip(edges[:-1], edges[1:]):
        unaligned = align_at >= hi  # on (lo, hi) these still send at full power, short of alignment
        num = float(np.sum(w[unaligned] * big_g[unaligned]))
        den = sigma2 + float(np.sum(w[unaligned] * big_g[unaligned] ** 2))
        if den > 0:
            candidates.append(min(max(num / den, lo), hi if math.isfinite(hi) else num / den))
    return float(min(candidates, key=lambda t: _mmse_objective(t, w, big_g, sigma2)))


# --- the group's channel and devices ---------------------------------------------------------------

@dataclass(frozen=True)
class GroupDevice:
    """One member: compute speed (effective FLOP/s), power limit, and channel gain g = |h|^2 to the receiver."""

    flops_per_s: float
    gain: float = path_loss_gain(DEFAULT_DISTANCE_M)
    max_tx_power_w: float = DEFAULT_TX_POWER_W

    def __post_init__(self):
        if not (self.flops_per_s >= 0 and self.gain >= 0 and self.max_tx_power_w >= 0):
            raise ValueError(f"device {self}: speed, gain and power must be >= 0")


@dataclass(frozen=True)
class GroupChannel:
    bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ
    noise_psd_w_per_hz: float = dbm_per_hz_to_w_per_hz(DEFAULT_NOISE_PSD_DBM_HZ)

    def __post_init__(self):
        if not (self.bandwidth_hz > 0 and self.noise_psd_w_per_hz >= 0):
            raise ValueError(f"channel {self}: bandwidth must be > 0 Hz and N0 >= 0 W/Hz")

    @property
    def noise_power_w(self) -> float:
        return self.noise_psd_w_per_hz * self.bandwidth_hz

    def rate_bps(self, gain: float, power_w: float) -> float:
        return shannon_rate_bps(self.bandwidth_hz, self.noise_psd_w_per_hz, gain, power_w) \
            if self.noise_power_w > 0 else math.inf

    def airtime_s(self, elements: int) -> float:
        """Over-the-air all-reduce: ceil(M / 2) complex symbols at B symbols/s, all devices at once."""
        return math.ceil(elements / 2) / self.bandwidth_hz

    def digital_time_s(self, elements: int, devices: Sequence[GroupDevice], sending: Sequence[bool],
                       bits: int = DEFAULT_BITS_PER_ELEMENT) -> float:
        """Digital all-reduce: each sending device uploads M * bits in turn over the whole band (TDMA)."""
        return sum(elements * bits / self.rate_bps(d.gain, d.max_tx_power_w)
                   for d, on in zip(devices, sending) if on)


# --- FLOPs of a share ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockShape:
    hidden: int
    heads: int
    ffn: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @staticmethod
    def of(src) -> "BlockShape":
        """The shape of a coinfer.models.ModelSource's encoder blocks."""
        c = src.config
        if src.family == "bart":
            return BlockShape(int(c.d_model), int(c.encoder_attention_heads), int(c.encoder_ffn_dim))
        return BlockShape(int(c.hidden_size), int(c.num_attention_heads), int(c.intermediate_size))

    def attention_flops(self, heads: int, batch: int, seq: int) -> float:
        """QKV for `heads` heads, scores and weighted values, and their slice of the output projection."""
        hd = heads * self.head_dim
        return 2.0 * batch * seq * (3 * self.hidden * hd + 2 * seq * hd + hd * self.hidden)

    def ffn_flops(self, columns: int, batch: int, seq: int) -> float:
        return 2.0 * batch * seq * 2 * self.hidden * columns

    def replicated_flops(self, batch: int, seq: int) -> float:
        """Bias adds, residuals and two LayerNorms, done by every device after each all-reduce."""
        return 20.0 * batch * seq * self.hidden


# --- the plan --------------------------------------------------------------------------------------

@dataclass
class GroupPlan:
    shape: BlockShape
    blocks: int
    batch: int
    seq_len: int
    assignment: Assignment
    devices: list[GroupDevice]
    channel: GroupChannel
    design_method: str
    bits_per_element: int
    attention_design: TransceiverDesign
    ffn_design: TransceiverDesign
    compute_s: dict = field(default_factory=dict)

    @property
    def elements_per_all_reduce(self) -> int:
        return self.batch * self.seq_len * self.shape.hidden

    @property
    def all_reduces(self) -> int:
        return 2 * self.blocks

    def _sending(self, kind: str) -> list[bool]:
        shares = self.assignment.heads if kind == "attention" else self.assignment.columns
        return [n > 0 for n in shares]

    def all_reduce_time_s(self, mode: str) -> float:
        """Per block: one attention and one FFN all-reduce."""
        m = self.elements_per_all_reduce
        if mode == "exact":
            return sum(self.channel.digital_time_s(m, self.devices, self._sending(k), self.bits_per_element)
                       for k in ("attention", "ffn"))
        if mode == "aircomp":
            return 2 * self.channel.airtime_s(m)
        raise ValueError(f"mode must be exact or aircomp, got {mode!r}")

    def latency_s(self, mode: str) -> float:
        return self.blocks * (self.compute_s["block_critical_path"] + self.all_reduce_time_s(mode))

    def to_dict(self) -> dict:
        m = self.elements_per_all_reduce
        return {
            "blocks": self.blocks, "batch": self.batch, "seq_len": self.seq_len, "shape": asdict(self.shape),
            "assignment": {"heads": list(self.assignment.heads), "columns": list(self.assignment.columns)},
            "devices": [asdict(d) for d in self.devices],
            "channel": {**asdict(self.channel), "noise_power_w": self.channel.noise_power_w},
            "compute_s": self.compute_s,
            "all_reduce": {
                "per_inference": self.all_reduces, "elements": m,
                "digital_bytes_per_device": m * self.bits_per_element // 8,
                "airtime_s": self.channel.airtime_s(m),
                "digital_s": {k: self.channel.digital_time_s(m, self.devices, self._sending(k),
                                                             self.bits_per_element)
                              for k in ("attention", "ffn")},
            },
            "design": {"method": self.design_method, "attention": self.attention_design.to_dict(),
                       "ffn": self.ffn_design.to_dict()},
            "expected_nmse": {"attention": self.attention_design.nmse, "ffn": self.ffn_design.nmse},
            "latency_s": {"exact": self.latency_s("exact"), "aircomp": self.latency_s("aircomp")},
        }


def plan_group(shape: BlockShape, blocks: int, devices: Sequence[GroupDevice], channel: GroupChannel = GroupChannel(),
               batch: int = 1, seq_len: int = 128, design: str = "mmse",
               assignment: Assignment | None = None, bits_per_element: int = DEFAULT_BITS_PER_ELEMENT) -> GroupPlan:
    """Assignment (by compute unless given), transceiver per sub-layer kind, expected NMSE and latency.

    The expected NMSE takes each device's partial to carry power in proportion to its share (heads or
    columns), uncorrelated across devices: w_i = n_i / n of the sum's power. The runtime designs
    again for every all-reduce with the powers it measures.
    """
    devices = list(devices)
    if blocks < 1:
        raise ValueError("the device half has no blocks to split over the group")
    if assignment is None:
        assignment = Assignment.by_compute(shape.heads, shape.ffn, [d.flops_per_s for d in devices])
    if assignment.devices != len(devices):
        raise ValueError(f"assignment names {assignment.devices} devices, the group has {len(devices)}")
    assignment.check(shape.heads, shape.ffn)
    amp = np.sqrt([d.gain for d in devices])
    p_max = np.array([d.max_tx_power_w for d in devices])
    designs = {}
    for kind, shares, total in (("attention", assignment.heads, shape.heads), ("ffn", assignment.columns, shape.ffn)):
        w = np.array(shares, dtype=np.float64) / total
        designs[kind] = design_transceiver(amp, p_max, w, channel.noise_power_w, design)

    def seconds(flops: float, d: GroupDevice) -> float:
        return flops / d.flops_per_s if flops > 0 else 0.0

    attn = [seconds(shape.attention_flops(h, batch, seq_len), d) for h, d in zip(assignment.heads, devices)]
    ffn = [seconds(shape.ffn_flops(c, batch, seq_len), d) for c, d in zip(assignment.columns, devices)]
    slowest = min(d.flops_per_s for d in devices if d.flops_per_s > 0)
    replicated = shape.replicated_flops(batch, seq_len) / slowest
    compute = {"attention_per_device": attn, "ffn_per_device": ffn, "replicated": replicated,
               "block_critical_path": max(attn) + max(ffn) + replicated}
    return GroupPlan(shape, blocks, batch, seq_len, assignment, devices, channel, design, bits_per_element,
                     designs["attention"], designs["ffn"], compute)
