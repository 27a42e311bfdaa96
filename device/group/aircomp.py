"""The group's all-reduce, in two modes: exact (gloo) and an over-the-air emulation.

Exact: `dist.all_reduce(SUM)` on the gloo backend.

Over the air (the signal model and the transceiver design are in coinfer.device.group.design): rank 0 hosts
the emulated receiver, i.e. the multiple-access channel and the access point; every rank, rank 0
included, is a transmitting device. One all-reduce is four steps:

1. control uplink: each device measures its signal power per symbol w_i and sends it to the receiver
   (a gather of one number per device);
2. control downlink: the receiver designs (b_i, a) for the current channel h and these powers (zf or
   mmse) and sends each device its own b_i (a scatter); the devices never see h or each other's data;
3. the air: device i transmits b_i u_i (u_i: its partial packed two elements per complex symbol). The
   emulation gathers these transmitted signals at rank 0, where the channel is applied and the signals
   superpose: y = sum_i h_i b_i u_i + n, with n ~ CN(0, N0 B) drawn once from the receiver's seeded
   generator;
4. the receiver estimates a y, unpacks it to real elements and broadcasts it: every rank continues
   from the same, noisy, sum.

Nothing but b_i u_i leaves a device on the data path, and the noise is added once, at one place.
With `probe=True` an extra exact all-reduce runs after each one, only to measure the error (a genie
for tests and benchmarks; the output never uses it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from coinfer.device.group.design import TransceiverDesign, design_transceiver


def to_symbols(flat: torch.Tensor) -> torch.Tensor:
    """Real [M] -> complex [ceil(M/2)]: element 2m is the in-phase part of symbol m, 2m+1 the quadrature."""
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return torch.view_as_complex(flat.reshape(-1, 2).contiguous())


def from_symbols(symbols: torch.Tensor, elements: int) -> torch.Tensor:
    return torch.view_as_real(symbols).reshape(-1)[:elements]


@dataclass
class AllReduceRecord:
    """One all-reduce as rank 0 saw it. Errors are per real element; powers per complex symbol."""

    tag: str
    mode: str
    elements: int
    wall_s: float                                   # emulation wall time (loopback, not airtime)
    design: TransceiverDesign | None = None
    predicted_mse: float | None = None             # the design's expected squared error per element
    tx_power_w: list[float] = field(default_factory=list)   # measured mean |b_i u_i|^2 per device
    sq_error_sum: float | None = None              # probe: sum over elements of (estimate - exact)^2
    exact_sq_sum: float | None = None              # probe: sum over elements of exact^2

    @property
    def measured_mse(self) -> float | None:
        return None if self.sq_error_sum is None else self.sq_error_sum / self.elements

    def to_dict(self) -> dict:
        out = {"tag": self.tag, "mode": self.mode, "elements": self.elements, "wall_s": self.wall_s}
        if self.design is not None:
            out.update(predicted_mse=self.predicted_mse, tx_power_w=self.tx_power_w,
                       design=self.design.to_dict())
        if self.sq_error_sum is not None:
            out.update(measured_mse=self.measured_mse, exact_power=self.exact_sq_sum / self.elements)
        return out


class AirReceiver:
    """The emulated channel and access point (rank 0 only): channel h, noise, design, seeded randomness.

    `gains` are the channel power gains g_i = |h_i|^2. The phases are drawn once from the seed (the
    design must undo them); with `fading="rayleigh"` each `redraw()` multiplies by a fresh CN(0, 1)
    block-fading coefficient (call it once per coherence time, e.g. per request).
    """

    def __init__(self, gains, max_power_w, noise_power_w: float, method: str = "mmse",
                 fading: str = "none", seed: int = 0):
        self.gains = np.asarray(gains, dtype=np.float64)
        self.max_power_w = np.broadcast_to(np.asarray(max_power_w, dtype=np.float64), self.gains.shape).copy()
        if fading not in ("none", "rayleigh"):
            raise ValueError(f"fading must be none or rayleigh, got {fading!r}")
        if noise_power_w < 0 or np.any(self.gains < 0) or np.any(self.max_power_w < 0):
            raise ValueError("gains, powers and the noise power must be >= 0")
        self.noise_power_w = float(noise_power_w)
        self.method, self.fading = method, fading
        self._rng = np.random.default_rng(seed)
        self._noise = torch.Generator().manual_seed(seed)
        self.h = np.sqrt(self.gains) * np.exp(1j * self._rng.uniform(0, 2 * np.pi, self.gains.shape))
        self._static_h = self.h.copy()
        design_transceiver(np.abs(self.h), self.max_power_w, np.ones_like(self.gains), self.noise_power_w,
                           method)  # refuse a bad method or an unusable channel now, not mid-forward

    def redraw(self) -> None:
        if self.fading == "rayleigh":
            fade = (self._rng.standard_normal(self.h.shape) + 1j * self._rng.standard_normal(self.h.shape)) / math.sqrt(2)
            self.h = self._static_h * fade

    def design(self, signal_power: np.ndarray) -> TransceiverDesign:
        return design_transceiver(np.abs(self.h), self.max_power_w, signal_power, self.noise_power_w, self.method)

    def transmit_scalars(self, design: TransceiverDesign) -> np.ndarray:
        """b_i = |b_i| e^{-j arg h_i}: each device pre-rotates so that all arrive in phase."""
        return design.b_abs * np.exp(-1j * np.angle(self.h))

    def superpose(self, transmitted: list[torch.Tensor], design: TransceiverDesign) -> torch.Tensor:
        """a (sum_i h_i x_i + n) for the transmitted symbols x_i = b_i u_i (complex128 arithmetic)."""
        y = torch.zeros(transmitted[0].shape, dtype=torch.complex128)
        for h_i, x_i in zip(self.h, transmitted):
            y += complex(h_i) * x_i.to(torch.complex128)
        std = math.sqrt(self.noise_power_w / 2)  # CN(0, s^2): each of I and Q is N(0, s^2 / 2)
        noise = torch.randn((*y.shape, 2), generator=self._noise, dtype=torch.float64) * std
        return design.a * (y + torch.view_as_complex(noise))


class ExactAllReduce:
    """dist.all_reduce(SUM): the digital reference."""

    mode = "exact"

    def __init__(self, records: list[AllReduceRecord] | None = None):
        self.records = records

    def __call__(self, partial: torch.Tensor, tag: str) -> torch.Tensor:
        started = time.perf_counter()
        if dist.get_world_size() == 1:
            out = partial  # a group of one has nothing to add (Megatron skips it too)
        else:
            out = partial.contiguous().clone()
            dist.all_reduce(out)
        if self.records is not None:
            self.records.append(AllReduceRecord(tag, self.mode, out.numel(), time.perf_counter() - started))
        return out


class AirCompAllReduce:
    """The over-the-air all-reduce; `receiver` on rank 0, None elsewhere (see the module docstring)."""

    mode = "aircomp"

    def __init__(self, receiver: AirReceiver | None = None, probe: bool = False,
                 records: list[AllReduceRecord] | None = None):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if (self.rank == 0) != (receiver is not None):
            raise ValueError("rank 0, and only rank 0, hosts the receiver")
        if receiver is not None and receiver.gains.shape != (self.world,):
            raise ValueError(f"the receiver knows {receiver.gains.size} channels, the group has {self.world} devices")
        self.receiver, self.probe, self.records = receiver, probe, records

    def __call__(self, partial: torch.Tensor, tag: str) -> torch.Tensor:
        started = time.perf_counter()
        shape, flat = partial.shape, partial.reshape(-1).float()
        elements = flat.numel()
        symbols = to_symbols(flat)
        root = self.rank == 0

        # 1. control uplink: my signal power per symbol
        power = (symbols.abs() ** 2).mean().to(torch.float64).reshape(1)
        powers = [torch.zeros(1, dtype=torch.float64) for _ in range(self.world)] if root else None
        dist.gather(power, powers, dst=0)
        # 2. control downlink: my transmit scalar b_i (real, imaginary)
        design = None
        mine = torch.zeros(2, dtype=torch.float64)
        if root:
            design = self.receiver.design(torch.cat(powers).numpy())
            b = self.receiver.transmit_scalars(design)
            scalars = [torch.tensor([v.real, v.imag], dtype=torch.float64) for v in b]
        dist.scatter(mine, scalars if root else None, src=0)
        # 3. the air: what I transmit goes to the emulated channel at rank 0
        sent = symbols * complex(mine[0].item(), mine[1].item())
        sent_real = torch.view_as_real(sent).contiguous()
        arrived = [torch.empty_like(sent_real) for _ in range(self.world)] if root else None
        dist.gather(sent_real, arrived, dst=0)
        # 4. receiver: superpose, add noise once, scale, unpack, broadcast
        estimate = torch.empty(elements, dtype=torch.float32)
        if root:
            transmitted = [torch.view_as_complex(t) for t in arrived]
            estimate.copy_(from_symbols(self.receiver.superpose(transmitted, design), elements))
        dist.broadcast(estimate, src=0)
        wall = time.perf_counter() - started

        record = None
        if root and self.records is not None:
            record = AllReduceRecord(tag, self.mode, elements, wall, design, design.mse_per_element(elements),
                                     [float((t.abs() ** 2).mean()) for t in transmitted])
            self.records.append(record)
        if self.probe:
            exact = flat.clone()
            dist.all_reduce(exact)
            if record is not None:
                record.sq_error_sum = float(((estimate.double() - exact.double()) ** 2).sum())
                record.exact_sq_sum = float((exact.double() ** 2).sum())
        return estimate.view(shape).to(partial.dtype)
