"""The planner's brain: estimates from telemetry, when to re-plan, and turning a solution into a plan.

Telemetry samples update smoothed estimates of what the system file can only guess: the channel gain
(from the device's measured uplink rate and the transmit power in force, inverting R(p)), each side's
effective FLOPs per cycle (from measured compute time, FLOPs and the frequency it ran at), each side's
power coefficient (where energy is measured, not modelled), and the runtime's overhead beyond the three
modelled stages (the estimators are coinfer.planner.estimators'). A quantity that moves beyond `drift`
from the value the current plan was solved with, for `hysteresis` samples in a row, triggers a re-plan;
the estimate is then reset to the median of those recent samples (a step change should not wait for
an EWMA to crawl to it). Plans are rate limited to one per `min_interval_s`, except an operator's; a
trigger inside the interval is deferred, not lost.

Every plan is solved for the whole split sweep (or the fixed split) with the delay limit reduced by a
safety margin and the measured overhead, so that measured end-to-end delays, not only modelled ones,
meet the QoS.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

from coinfer.planner.estimators import ComputeModel, Ewma, Tracked, gain_from_rate, power_coeff_from_energy
from coinfer.protos import planner_pb2 as ppb
from coinfer.radio import shannon_rate_bps
from coinfer.system import System

log = logging.getLogger(__name__)

# Re-plans triggered by estimates publish only a changed decision; the others always publish.
SILENT_IF_UNCHANGED = ("channel_change", "compute_drift", "power_drift")
REASONS = ("start", "channel_change", "compute_drift", "power_drift", "qos_change", "operator_request", "resync")


@dataclass(frozen=True)
class ControllerSettings:
    batch: int = 1                  # the workload a plan is solved for
    seq_len: int = 32
    codec: str = "fp32"
    prune_method: str = "structured"  # compute falls with rho only when whole heads/neurons go
    split: str | int = "auto"
    delay_margin: float = 0.15      # solve for (1 - margin) T_max, for the spread of real delays
    drift: float = 0.2              # relative change that counts as a change
    hysteresis: int = 3             # ... for this many samples in a row
    min_interval_s: float = 1.0     # at most one plan per interval (operator requests excepted)
    alpha: float = 0.3              # EWMA weight of a new sample
    min_bytes_for_rate: int = 8192  # smaller sends say more about overheads than about the channel


@dataclass
class Estimates:
    channel_gain: float | None = None
    device_flops_per_cycle: float | None = None
    server_flops_per_cycle: float | None = None
    device_power_coeff: float | None = None
    server_power_coeff: float | None = None
    overhead_s: float | None = None
    device_samples: int = 0
    server_samples: int = 0
    device_fixed_s: float | None = None  # per-forward time that does not shrink with rho (at full clock)
    server_fixed_s: float | None = None

    def to_proto(self) -> ppb.Estimates:
        return ppb.Estimates(**{k: (v or 0) for k, v in self.__dict__.items()})


def _same_decision(a: ppb.Plan, b: ppb.Plan, rho_tol: float = 0.02, rel_tol: float = 0.05) -> bool:
    """Whether two plans configure the runtime the same, within what measurement noise can justify."""
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= rel_tol * max(abs(x), abs(y), 1e-12)

    return (a.split_point == b.split_point and a.feasible == b.feasible
            and abs(a.rho_device - b.rho_device) <= rho_tol and abs(a.rho_server - b.rho_server) <= rho_tol
            and close(a.tx_power_w, b.tx_power_w) and close(a.f_device_hz, b.f_device_hz)
            and close(a.f_server_hz, b.f_server_hz))


class Controller:
    def __init__(self, system: System, profile, settings: ControllerSettings,
                 on_plan: Callable[[ppb.Plan], None], profile_at: Callable[[int, int], object] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.system = system
        self.profile = profile
        self.settings = settings
        self.on_plan = on_plan
        self.clock = clock
        self.qos = system.qos
        # FLOPs of a request of another size than the planned workload (analytic, cached)
        self._profile_at = lru_cache(maxsize=256)(profile_at) if profile_at else (lambda b, s: profile)
        s = settings
        self.gain = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True)
        self.rate = Tracked(s.alpha, s.drift, s.hysteresis)  # measured / planned uplink rate
        self.c_device = ComputeModel(system.device.flops_per_cycle, s.drift, s.hysteresis)
        self.c_server = ComputeModel(system.server.flops_per_cycle, s.drift, s.hysteresis)
        self.k_device = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True)
        self.k_server = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True)
        self.overhead = Ewma(s.alpha)
        self.counts = {"device": 0, "server": 0}
        self.plans: dict[int, ppb.Plan] = {}
        self.plan: ppb.Plan | None = None
        self.planned_with = Estimates()
        self._last_plan_at = -math.inf
        self._epoch_floor = 0
        self.planner_id = uuid.uuid4().hex[:12]
        self._deferred: str | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()

    # --- estimates ---------------------------------------------------------------------------
    def estimates(self) -> Estimates:
        return Estimates(self.gain.value, self.c_device.flops_per_cycle, self.c_server.flops_per_cycle,
                         self.k_device.value, self.k_server.value, self.overhead.value, self.counts["device"],
                         self.counts["server"], self.c_device.fixed_s, self.c_server.fixed_s)

    def effective_system(self) -> System:
        """The system file with every quantity that has been measured replaced by its estimate."""
        e, sys_ = self.estimates(), self.system
        device = replace(sys_.device, flops_per_cycle=e.device_flops_per_cycle or sys_.device.flops_per_cycle,
                         power_coeff=e.device_power_coeff or sys_.device.power_coeff)
        server = replace(sys_.server, flops_per_cycle=e.server_flops_per_cycle or sys_.server.flops_per_cycle,
                         power_coeff=e.server_power_coeff or sys_.server.power_coeff)
        channel = replace(sys_.channel, gain=e.channel_gain or sys_.channel.gain)
        fixed = (e.overhead_s or 0.0) + (e.device_fixed_s or 0.0) + (e.server_fixed_s or 0.0)
        budget = self.qos.max_delay_s * (1 - self.settings.delay_margin) - fixed
        qos = replace(self.qos, max_delay_s=max(budget, 1e-3))
        return replace(sys_, device=device, server=server, channel=channel, qos=qos)

    # --- telemetry ---------------------------------------------------------------------------
    def observe_device(self, sample: ppb.DeviceSample) -> ppb.Plan | None:
        with self._lock:
            self.counts["device"] += 1
            plan = self.plans.get(sample.plan_epoch)
            if plan is None:
                return None  # computed under a plan this planner never made (e.g. a static start)
            reasons = []
            profile = self._profile_at(max(1, sample.batch), max(1, sample.seq_len))
            device_seg, _ = profile.segments(plan.split_point)
            if device_seg.flops > 0 and sample.compute_s > 0 and sample.freq_hz > 0:
                x = plan.rho_device * device_seg.flops / sample.freq_hz
                slowdown = max(1.0, self.system.device.max_freq_hz / sample.freq_hz)
                self.c_device.observe(x, sample.compute_s, slowdown)
                planned = self.c_device.predict(x, self.planned_with.device_fixed_s,
                                                self.planned_with.device_flops_per_cycle
                                                or self.system.device.flops_per_cycle, slowdown)
                if self.c_device.hysteresis.update(planned, sample.compute_s):
                    reasons.append("compute_drift")
            if sample.energy_source in ("rapl", "nvml") and sample.energy_j > 0 and self.c_device.flops_per_cycle:
                raw = power_coeff_from_energy(sample.energy_j, self.system.device.pue,
                                              plan.rho_device * device_seg.flops, self.c_device.flops_per_cycle,
                                              sample.freq_hz)
                self.k_device.observe(raw)
                if self.k_device.hysteresis.update(self.planned_with.device_power_coeff
                                                   or self.system.device.power_coeff, raw):
                    self.k_device.jump_to_recent()
                    reasons.append("power_drift")
            if sample.bytes_sent >= self.settings.min_bytes_for_rate and sample.send_s > 0 and sample.tx_power_w > 0:
                rate = 8.0 * sample.bytes_sent / sample.send_s
                ch = self.system.channel
                planned_gain = self.planned_with.channel_gain or ch.gain
                planned_rate = shannon_rate_bps(ch.bandwidth_hz, ch.noise_psd_w_per_hz, planned_gain,
                                                sample.tx_power_w)
                try:
                    self.gain.observe(gain_from_rate(rate, sample.tx_power_w, ch.bandwidth_hz, ch.noise_psd_w_per_hz))
                except ValueError:  # a rate the configured bandwidth cannot carry: the system file is off
                    log.warning("measured %.3g bit/s exceeds what B = %g Hz can carry; check the system file",
                                rate, ch.bandwidth_hz)
                    return self._maybe_replan(reasons)
                # drift is judged on the rate (what delay depends on): at high SNR a gain estimate
                # swings far more than the rate it came from
                if self.rate.hysteresis.update(planned_rate, rate):
                    self.gain.jump_to_recent()
                    reasons.append("channel_change")
            stages = sample.compute_s + sample.send_s + sample.server_s
            if sample.end_to_end_s > 0:
                self.overhead.update(max(0.0, sample.end_to_end_s - stages))
            return self._maybe_replan(reasons)

    def observe_server(self, sample: ppb.ServerSample) -> ppb.Plan | None:
        with self._lock:
            self.counts["server"] += 1
            plan = self.plans.get(sample.plan_epoch)
            if plan is None:
                return None
            reasons = []
            rows = max(1, sample.batch_rows or sample.batch)
            _, server_seg = self._profile_at(rows, max(1, sample.seq_len)).segments(plan.split_point)
            if server_seg.flops > 0 and sample.compute_s > 0 and sample.freq_hz > 0:
                x = plan.rho_server * server_seg.flops / sample.freq_hz
                slowdown = max(1.0, self.system.server.max_freq_hz / sample.freq_hz)
                self.c_server.observe(x, sample.compute_s, slowdown)
                planned = self.c_server.predict(x, self.planned_with.server_fixed_s,
                                                self.planned_with.server_flops_per_cycle
                                                or self.system.server.flops_per_cycle, slowdown)
                if self.c_server.hysteresis.update(planned, sample.compute_s):
                    reasons.append("compute_drift")
            if sample.energy_source in ("rapl", "nvml") and sample.energy_j > 0 and self.c_server.flops_per_cycle:
                share = sample.batch / rows
                raw = power_coeff_from_energy(sample.energy_j, self.system.server.pue,
                                              plan.rho_server * server_seg.flops * share,
                                              self.c_server.flops_per_cycle, sample.freq_hz)
                self.k_server.observe(raw)
                if self.k_server.hysteresis.update(self.planned_with.server_power_coeff
                                                   or self.system.server.power_coeff, raw):
                    self.k_server.jump_to_recent()
                    reasons.append("power_drift")
            return self._maybe_replan(reasons)

    # --- planning ----------------------------------------------------------------------------
    def set_qos(self, max_delay_s: float, max_energy_j: float) -> ppb.Plan:
        if not (max_delay_s > 0 and max_energy_j > 0):
            raise ValueError("qos: max_delay_s and max_energy_j must be positive")
        with self._lock:
            self.qos = replace(self.qos, max_delay_s=max_delay_s, max_energy_j=max_energy_j)
            return self.replan("qos_change")

    def _maybe_replan(self, reasons: list[str]) -> ppb.Plan | None:
        if not reasons:
            return None
        # a channel change explains compute and power drifts seen with it, not the other way round
        reason = min(reasons, key=("channel_change", "power_drift", "compute_drift").index)
        wait = self._last_plan_at + self.settings.min_interval_s - self.clock()
        if wait <= 0:
            return self.replan(reason)
        if self._deferred is None:  # one deferred re-plan carries the first reason
            self._deferred = reason
            self._timer = threading.Timer(wait, self._fire_deferred)
            self._timer.daemon = True
            self._timer.start()
        return None

    def _fire_deferred(self) -> None:
        with self._lock:
            reason, self._deferred = self._deferred, None
            if reason is not None:
                self.replan(reason)

    def replan(self, reason: str) -> ppb.Plan:
        """Solve now and publish a plan with the next epoch."""
        from coinfer.planner.sweep import plan_splits

        with self._lock:
            system = self.effective_system()
            result = plan_splits(self.profile, system, split=self.settings.split, codec=self.settings.codec)
            plan = self._plan_from(result, system, reason)
            for tracked in (self.rate, self.c_device, self.c_server, self.k_device, self.k_server):
                tracked.hysteresis.reset()
            self.planned_with = self.estimates()
            if reason in SILENT_IF_UNCHANGED and self.plan is not None and _same_decision(plan, self.plan):
                # a new epoch costs every in-flight request a re-send: only for a decision that changed
                log.info("re-solved after %s: no material change, epoch %d stays", reason, self.plan.epoch)
                self.plan.predicted_delay_s = plan.predicted_delay_s
                return self.plan
            self.plans[plan.epoch] = plan
            self.plan = plan
            self._last_plan_at = self.clock()
            if self._timer is not None and reason == "operator_request":
                self._timer.cancel()
                self._deferred = None
        log.info("plan epoch %d (%s): k=%d rho=%.3f/%.3f p=%.4g W feasible=%s", plan.epoch, reason,
                 plan.split_point, plan.rho_device, plan.rho_server, plan.tx_power_w, plan.feasible)
        self.on_plan(plan)
        return plan

    def adopt_epoch(self, known_epoch: int, known_planner_id: str) -> None:
        """A node holds `known_epoch` from another planner (this one restarted): if that is at or past
        ours, re-issue the plan above it."""
        with self._lock:
            if self.plan is None or not known_planner_id or known_planner_id == self.planner_id:
                return
            if known_epoch < self.plan.epoch:
                return
            self._epoch_floor = known_epoch
            self.replan("resync")

    def _plan_from(self, result, system: System, reason: str) -> ppb.Plan:
        epoch = max(self.plan.epoch if self.plan else 0, self._epoch_floor) + 1
        sol = result.plan
        common = dict(epoch=epoch, reason=reason, created_unix_s=time.time(), model_id=self.profile.name,
                      prune_method=self.settings.prune_method, codec=self.settings.codec,
                      delay_limit_s=self.qos.max_delay_s, energy_limit_j=self.qos.max_energy_j,
                      device_max_freq_hz=system.device.max_freq_hz, server_max_freq_hz=system.server.max_freq_hz,
                      planner_id=self.planner_id)
        if sol is None:  # infeasible: the fastest configuration at the current split, flagged as such
            k = self.plan.split_point if self.plan else (0 if self.settings.split == "auto" else int(self.settings.split))
            floor = system.distortion.min_ratio
            return ppb.Plan(**common, split_point=k, rho_device=floor, rho_server=floor,
                            f_device_hz=system.device.max_freq_hz, f_server_hz=system.server.max_freq_hz,
                            tx_power_w=system.max_tx_power_w, feasible=False,
                            detail=(result.reason or "infeasible")[:500])
        return ppb.Plan(
            **common, split_point=result.split, feasible=True,
            rho_device=sol.rho_device if sol.rho_device is not None else 1.0,
            rho_server=sol.rho_server if sol.rho_server is not None else 1.0,
            f_device_hz=sol.f_device_hz or system.device.max_freq_hz,
            f_server_hz=sol.f_server_hz or system.server.max_freq_hz,
            tx_power_w=sol.tx_power_w or (self.plan.tx_power_w if self.plan else system.max_tx_power_w),
            predicted_delay_s=sol.delay_s or 0.0, predicted_energy_j=sol.energy_j or 0.0,
            distortion=sol.distortion or 0.0,
            detail=f"solved with delay budget {system.qos.max_delay_s * 1e3:.1f} ms")
