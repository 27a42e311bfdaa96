"""The server's half of the model under a plan: blocks k+1..L and the head, with live knobs.

A `HalfState` is one plan's half (epoch, split point, pruning) and is what a request is validated
against and computed with. Applying a plan makes a new state: a new split point builds a new part from
the local checkpoint while the old one keeps serving; a new ratio ranks the weights for it from the
dense master. The swap happens between forwards (under the compute lock), so a forward never mixes
two plans, and a request that was accepted under a state that is no longer current is refused with the
epoch the server now holds (the device re-sends it under the new plan).

With a switch grace (`switch_grace_s` > 0, the server's default) the prepared plan waits for the first
request computed under it, or the end of the grace, before it swaps in: the device's request that was
already on the wire under the old plan when the planner pushed the new one is still answered under the
old plan, instead of being refused and computed again (which costs a whole extra round, and a delay
limit, for every plan change).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import torch

from coinfer.energy import EnergyReading, PowerModel, make_meter
from coinfer.engines import Engine, check_engine, prepare_engine
from coinfer.errors import UsageError
from coinfer.frequency import FrequencyControl
from coinfer.models import ModelSource
from coinfer.openmp import release_thread_pool, single_threaded_here
from coinfer.plans import PLAN_LOG, describe_plan
from coinfer.pruning import Pruner, check_method, check_ratio
from coinfer.split import GenerationOptions, ServerPart, check_split
from coinfer.system import default_system

log = logging.getLogger(__name__)

# Where energy is not measured, the server's power model is the default system's (coinfer.system).
_DEFAULT_SERVER = default_system().server
DEFAULT_SERVER_POWER = PowerModel(pue=_DEFAULT_SERVER.pue, power_coeff=_DEFAULT_SERVER.power_coeff)
DEFAULT_SERVER_MAX_FREQ_HZ = _DEFAULT_SERVER.max_freq_hz


@dataclass(frozen=True)
class ServerPlan:
    """What the server half is set to; a request must match epoch and split point."""

    epoch: int
    split: int
    rho: float
    method: str
    freq_hz: float  # the cap in force (F where the clock is fixed)


@dataclass(eq=False)
class HalfState:
    plan: ServerPlan
    part: ServerPart
    pruner: Pruner
    engine: Engine | None = None  # what computes the part (coinfer.engines); None: the part itself


class PlanChanged(Exception):
    """The state a request was accepted under is no longer current."""

    def __init__(self, current: ServerPlan):
        super().__init__(f"plan_epoch: the server moved to epoch {current.epoch} (k={current.split}) "
                         "before this request was computed; re-send it under that plan")
        self.current = current


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else the CPU; a missing GPU is reported, never fatal."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(requested if requested.startswith("cuda") else "cuda:0")
    if requested.startswith("cuda"):
        log.warning("no CUDA device available; the server half runs on the CPU")
    return torch.device("cpu")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the server half computes in (--dtype): fp32, or half precision where it pays. auto is
    fp32 on the CPU and, on CUDA, bf16 where the GPU supports it, else fp16. fp16 on the CPU is refused:
    CPU fp16 kernels are missing or slower than fp32; bf16 on the CPU is allowed."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise UsageError(f"--dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise UsageError(f"--dtype fp16 needs a CUDA device; the server half runs on {device} "
                         "(use --dtype bf16 or fp32 there)")
    return DTYPES[name]


class ServerHalf:
    def __init__(self, src: ModelSource, split: int, rho: float = 1.0, method: str = "magnitude",
                 epoch: int = 0, device: str = "auto", max_freq_hz: float = DEFAULT_SERVER_MAX_FREQ_HZ,
                 power_model: PowerModel = DEFAULT_SERVER_POWER, dtype: str = "fp32", switch_grace_s: float = 0.0,
                 emulate_frequency: bool = False, engine: str = "eager"):
        self.src = src
        self.engine_name = check_engine(engine)
        self.device = pick_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._kind = "gpu" if self.device.type == "cuda" else "cpu"
        self._index = self.device.index or 0
        # a clock cap the hardware cannot set is ignored ("fixed"), unless emulation is asked for
        self.freq = FrequencyControl(self._kind, max_freq_hz, device_index=self._index, emulate=emulate_frequency)
        self.meter = make_meter(self._kind, power_model, device_index=self._index)
        self.state = self._build(ServerPlan(epoch, split, check_ratio(rho), check_method(method), max_freq_hz))
        # One forward at a time: concurrent forwards on a few cores only thrash each other's caches.
        self._compute_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        # the prepared plan (and its built state when the split changes) waiting to swap in
        self.switch_grace_s = max(0.0, switch_grace_s)
        self._pending: tuple[ServerPlan, HalfState | None] | None = None
        self._pending_lock = threading.Lock()
        self._grace_timer: threading.Timer | None = None
        self.watcher = self.telemetry = None  # set by follow()
        release_thread_pool()  # the forwards run on the batcher's thread: one OpenMP pool per process

    @property
    def plan(self) -> ServerPlan:
        return self.state.plan

    @property
    def output_kind(self) -> str:
        return self.state.part.output_kind

    def _build(self, plan: ServerPlan) -> HalfState:
        check_split(self.src, plan.split)
        part = ServerPart(self.src, plan.split).to(self.device, self.dtype)  # floating weights only
        pruner = Pruner.for_part(part, self.src, plan.rho, plan.method)
        # after the pruning: an onnxruntime engine exports the weights the part holds
        return HalfState(plan, part, pruner, prepare_engine(part, self.engine_name, pruner))

    @property
    def pending_epoch(self) -> int | None:
        pending = self._pending
        return pending[0].epoch if pending else None

    def apply(self, epoch: int, split: int, rho: float, method: str, freq_hz: float | None = None,
              max_freq_hz: float | None = None) -> ServerPlan:
        """Move to a new plan: prepare what it needs beside the serving state, then swap between forwards
        (at once, or with a switch grace when its first request comes or the grace ends)."""
        rho, method = check_ratio(rho), check_method(method)
        with self._apply_lock:
            self.commit()  # a plan still waiting for its first request goes in first: one pending at most
            self.freq = self.freq.with_max(max_freq_hz)
            cap = self.freq.cap_for(freq_hz)
            plan = ServerPlan(epoch, split, rho, method, cap)
            current = self.state
            fresh = None
            if split != current.plan.split:
                started = time.perf_counter()
                fresh = self._build(plan)  # loads blocks k+1..L for the new k while the old state serves
                log.info("built blocks %d..%d for epoch %d in %.2f s", split + 1, self.src.num_blocks, epoch,
                         time.perf_counter() - started)
            else:
                current.pruner.prepare(rho, method)  # the ranking now, so the swap only writes weights
                if current.engine is not None:
                    current.engine.prepare(rho, method)  # onnxruntime: the export too, so the swap only loads
            with self._pending_lock:
                self._pending = (plan, fresh)
            if self.switch_grace_s > 0:
                self._grace_timer = threading.Timer(self.switch_grace_s, self._commit_after_grace, (epoch,))
                self._grace_timer.daemon = True
                self._grace_timer.start()
            else:
                self.commit()
            release_thread_pool()  # applied on the plan watcher's thread, which computes nothing else
            return plan

    def follow(self, planner: str, node_id: str = "server", min_rho: float = 0.0) -> None:
        """Apply the plans of the planner at `planner` as they come (as the device runtime does), and
        keep a NodeTelemetry for it in `self.telemetry` (the service reports each answered request)."""
        from coinfer.telemetry import follow_planner

        self.telemetry, self.watcher = follow_planner(planner, node_id, "server", self.src.name, self._apply_plan,
                                                      min_rho=min_rho, knobs=self.knobs)

    def knobs(self):
        """What this server can really set, for the planner (planner_pb2.Knobs): its clock (GPU via NVML,
        CPU via cpufreq, else fixed or emulated) and its energy meter; no transmit power."""
        knobs = self.freq.knobs()
        knobs.energy_source = self.meter.source
        return knobs

    def _apply_plan(self, plan) -> None:
        """A planner's plan (called by the PlanWatcher, one plan at a time)."""
        applied = self.apply(plan.epoch, plan.split_point, plan.rho_server, plan.prune_method or self.plan.method,
                             plan.f_server_hz or None, plan.server_max_freq_hz or None)
        PLAN_LOG.info("%s", describe_plan(plan, self.freq.describe(applied.freq_hz)))
        log.debug("applied plan %d: %s", plan.epoch, applied)

    def stop_following(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def close_telemetry(self) -> None:
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None

    def _commit_after_grace(self, epoch: int) -> None:
        single_threaded_here()  # a short-lived thread: re-pruning must not leave an OpenMP pool behind
        self.commit(epoch)  # its own plan only: a late timer must not cut a newer plan's grace short

    def commit(self, epoch: int | None = None) -> HalfState | None:
        """Swap the pending plan in (only if it is `epoch`, when given); the state now serving it, or None
        when nothing of that epoch was pending."""
        with self._pending_lock:
            pending = self._pending
            if pending is None or (epoch is not None and pending[0].epoch != epoch):
                return None
            plan, fresh = pending
            with self._compute_lock:
                self.freq.set_cap(plan.freq_hz)
                if self.freq.cap_hz != plan.freq_hz:  # fixed (F), or clamped: report what is in force
                    plan = replace(plan, freq_hz=self.freq.cap_hz)
                if fresh is None:
                    current = self.state
                    current.pruner.apply(plan.rho, plan.method)  # masks are cached per (method, rho)
                    if current.engine is not None:
                        current.engine.refresh()  # the weights changed in place; an ONNX session holds a copy
                    fresh = HalfState(plan, current.part, current.pruner, current.engine)
                fresh.plan = plan
                self.state = fresh
            self._pending = None
            if self._grace_timer is not None:
                self._grace_timer.cancel()
                self._grace_timer = None
            return fresh

    def run(self, state: HalfState, x: torch.Tensor, attention_mask: torch.Tensor,
            generation: GenerationOptions) -> tuple[torch.Tensor, float, float, EnergyReading]:
        """(output on the CPU, seconds queued for the compute lock, seconds computing, energy) under
        `state`; PlanChanged if the server has moved on since the request was accepted."""
        waited_from = time.perf_counter()
        with self._compute_lock:
            if state is not self.state:
                raise PlanChanged(self.state.plan)
            started = time.perf_counter()
            token = self.meter.begin()
            # hidden states in the half's dtype; token ids (k = 0) stay integers
            x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
            out = (state.engine or state.part)(x, attention_mask.to(self.device), generation)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # host time is only right once the GPU is done
            busy = time.perf_counter() - started
            self.freq.stretch(busy)  # an emulated cap: the forward takes as long as at the capped clock
            finished = time.perf_counter()
            energy = self.meter.end(token, finished - started, self.freq.effective_freq_hz())
            out = out.cpu()
            if out.is_floating_point():
                out = out.float()  # answers are float32 whatever the half computed in
        return out, started - waited_from, finished - started, energy
