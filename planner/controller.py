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

What it is told, it checks (coinfer.planner.bounds): a sample with a field outside its physical bounds
is refused whole (ValueError naming the field) before any of it is used; so is a QoS outside its
bounds (nothing is stored) and a node's claim of an epoch above MAX_EPOCH. Inside the bounds, every
estimate is behind an outlier gate: one odd sample, or a burst of them between honest ones, moves
nothing; a step is believed once `hysteresis` samples in a row show it over at least `persist_s`
(by default `min_interval_s`: a change shorter than that would be re-planned away again). An estimate
is used, and its drift re-plans, only once it has `warmup` samples: a fresh planner does not act on a
handful.

Rate limits, whatever the reason: drift plans at most one per `min_interval_s`; resyncs (a node holds
an epoch of another planner: this one moves past it, at most MAX_EPOCH_JUMP above its own epoch at a
time) at most one per `resync_interval_s` (and `min_interval_s`), deferred and not lost; operator plans
(Replan, SetQoS) skip the interval but draw on a bucket of `operator_burst`, refilled at
`operator_per_s` (RateLimited beyond it).

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

from coinfer.planner.bounds import MAX_EPOCH_JUMP, UINT64_MAX, check_claim, check_knobs, check_qos, check_sample
from coinfer.planner.scenario import Held
from coinfer.planner.estimators import ComputeModel, Tracked, gain_from_rate, power_coeff_from_energy
from coinfer.protos import planner_pb2 as ppb
from coinfer.radio import shannon_rate_bps
from coinfer.system import System

log = logging.getLogger(__name__)
plan_log = logging.getLogger("coinfer.plan")  # each new plan, with its reason: shown by default (coinfer.cli)

# Re-plans triggered by estimates publish only a changed decision; the others always publish.
SILENT_IF_UNCHANGED = ("channel_change", "compute_drift", "power_drift")
REASONS = ("start", "channel_change", "compute_drift", "power_drift", "qos_change", "operator_request", "resync",
           "knobs_change")
SETTABLE_CLOCKS = ("cpufreq", "nvml", "emulated")   # anything else (fixed, unknown, not reported) is held at F
SETTABLE_TX_POWER = ("emulator", "radio")
METHODS = ("structured", "magnitude", "random")
QUALITY_STATISTIC = "worst"
QUALITY_CHECKS = 4      # solves per plan, each with the floor raised by what the last check measured short
OPERATOR_REASONS = ("operator_request", "qos_change")  # skip min_interval_s, but draw on the operator bucket
MIN_TIME_S = 1e-6     # a measured time below a microsecond says nothing about compute or the channel
MIN_FREQ_HZ = 1.0     # 0: not reported (plans for small models do set clocks below 1 MHz)
KEEP_PLANS = 256      # telemetry under an older plan than these is ignored


class RateLimited(RuntimeError):
    """An operator plan beyond the operator bucket (the service answers RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class ControllerSettings:
    batch: int = 1                  # the workload a plan is solved for
    seq_len: int = 32
    codec: str = "fp32"
    # auto: the planner picks per plan from each method's measured quality and speed (a quality model is
    # needed); else the one every plan uses
    prune_method: str = "auto"
    min_quality: float = 0.98       # the floor on predicted output quality (0: none); needs a quality model
    split: str | int = "auto"
    delay_margin: float = 0.15      # solve for (1 - margin) T_max, for the spread of real delays
    drift: float = 0.2              # relative change that counts as a change
    hysteresis: int = 3             # ... for this many samples in a row
    min_interval_s: float = 1.0     # at most one plan per interval (operator requests excepted)
    alpha: float = 0.3              # EWMA weight of a new sample
    min_bytes_for_rate: int = 8192  # smaller sends say more about overheads than about the channel
    warmup: int = 8                 # samples an estimate needs before plans use it (or its drift re-plans)
    persist_s: float | None = None  # a step must last this long to be believed (None: min_interval_s)
    resync_interval_s: float = 5.0  # at most one resync per interval (and per min_interval_s)
    operator_burst: int = 5         # operator plans (Replan, SetQoS) at once ...
    operator_per_s: float = 1.0     # ... and per second after that

    def __post_init__(self):
        if self.prune_method not in ("auto",) + METHODS:
            raise ValueError(f"prune_method must be auto or one of {', '.join(METHODS)}, got {self.prune_method!r}")
        if not 0 <= self.min_quality <= 1:
            raise ValueError(f"min_quality must be in [0, 1], got {self.min_quality}")
        if self.warmup < 1 or self.operator_burst < 1 or not self.operator_per_s > 0:
            raise ValueError("warmup and operator_burst must be >= 1, operator_per_s > 0")
        if not (self.resync_interval_s >= 0 and (self.persist_s is None or self.persist_s >= 0)):
            raise ValueError("resync_interval_s and persist_s must be >= 0")


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
                 clock: Callable[[], float] = time.monotonic, quality=None, quality_check=None):
        if settings.prune_method == "auto" and quality is None:
            settings = replace(settings, prune_method="structured")  # nothing measured to choose by
        # coinfer.planner.quality.QualityModel, or None (the paper's model). Plans are solved for the
        # worst calibration answer: every answer, not the average one, must stay above the floor.
        self.quality = quality.with_statistic(QUALITY_STATISTIC) if quality is not None else None
        self.quality_check = quality_check  # coinfer.planner.quality.QualityCheck: measures a plan before it goes
        self.knobs: dict[str, ppb.Knobs | None] = {"device": None, "server": None}
        self.system = system
        self.profile = profile
        self.settings = settings
        self.on_plan = on_plan
        self.clock = clock
        self.qos = system.qos
        # FLOPs of a request of another size than the planned workload (analytic, cached)
        self._profile_at = lru_cache(maxsize=256)(profile_at) if profile_at else (lambda b, s: profile)
        s = settings
        persist = s.min_interval_s if s.persist_s is None else s.persist_s
        trust = dict(persist_s=persist, warmup=s.warmup)
        self.gain = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True, **trust)
        self.rate = Tracked(s.alpha, s.drift, s.hysteresis)  # measured / planned uplink rate (its hysteresis)
        self.c_device = ComputeModel(system.device.flops_per_cycle, s.drift, s.hysteresis, **trust)
        self.c_server = ComputeModel(system.server.flops_per_cycle, s.drift, s.hysteresis, **trust)
        self.k_device = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True, **trust)
        self.k_server = Tracked(s.alpha, s.drift, s.hysteresis, log_domain=True, **trust)
        # seconds, often near 0: linear, and within drift x its level + 5 ms never an outlier
        self.overhead = Tracked(s.alpha, s.drift, s.hysteresis, tol_abs=5e-3, **trust)
        self.counts = {"device": 0, "server": 0}
        self.plans: dict[int, ppb.Plan] = {}
        self.plan: ppb.Plan | None = None
        self.planned_with = Estimates()
        self._last_plan_at = -math.inf
        self._epoch_floor = 0
        self.planner_id = uuid.uuid4().hex[:12]
        self._deferred: str | None = None
        self._timer: threading.Timer | None = None
        self._claim: int | None = None            # the epoch a resync will move past, once it is due
        self._last_resync_at = -math.inf
        self._resync_timer: threading.Timer | None = None
        self._operator_tokens = float(s.operator_burst)
        self._operator_at = clock()
        self._lock = threading.RLock()

    # --- estimates ---------------------------------------------------------------------------
    def _warm(self, estimator) -> bool:
        return estimator.count >= self.settings.warmup

    def estimates(self) -> Estimates:
        """What the planner believes: an estimate with fewer than `warmup` samples is not believed yet
        (None: the system file's value is in use)."""
        def warm(estimator, value):
            return value if self._warm(estimator) else None

        return Estimates(warm(self.gain, self.gain.value),
                         warm(self.c_device, self.c_device.flops_per_cycle),
                         warm(self.c_server, self.c_server.flops_per_cycle),
                         warm(self.k_device, self.k_device.value), warm(self.k_server, self.k_server.value),
                         warm(self.overhead, self.overhead.value), self.counts["device"], self.counts["server"],
                         warm(self.c_device, self.c_device.fixed_s), warm(self.c_server, self.c_server.fixed_s))

    # --- knobs -------------------------------------------------------------------------------
    def set_knobs(self, role: str, knobs: ppb.Knobs) -> ppb.Plan | None:
        """What a node says it can set (from its WatchRequest). Checked before it is believed; a change
        re-plans (a clock that became settable may save energy; one that did not is held at F)."""
        check_knobs(knobs)
        if role not in self.knobs:
            return None
        with self._lock:
            before = self.knobs[role]
            self.knobs[role] = ppb.Knobs.FromString(knobs.SerializeToString())  # a copy
            if self.plan is None or before == self.knobs[role]:
                return None
            if _held(before, role) == _held(knobs, role):
                # the same decision: the plan in force records what the node said, no new epoch
                getattr(self.plan, f"{role}_knobs").CopyFrom(self.knobs[role])
                return None
            return self._replan("knobs_change")

    def held(self) -> Held:
        """Knobs nobody can set: a clock is settable only where its node said cpufreq, nvml or emulated;
        transmit power only through an emulator or radio the device drives."""
        d, s = _held(self.knobs["device"], "device"), _held(self.knobs["server"], "server")
        return Held(freq_d=d[0], freq_s=s[0], power=d[1])

    def effective_system(self) -> System:
        """The system file with every quantity that has been measured replaced by its estimate."""
        e, sys_ = self.estimates(), self.system
        device = replace(sys_.device, flops_per_cycle=e.device_flops_per_cycle or sys_.device.flops_per_cycle,
                         power_coeff=e.device_power_coeff or sys_.device.power_coeff,
                         max_freq_hz=_measured_max(self.knobs["device"], sys_.device.max_freq_hz))
        server = replace(sys_.server, flops_per_cycle=e.server_flops_per_cycle or sys_.server.flops_per_cycle,
                         power_coeff=e.server_power_coeff or sys_.server.power_coeff,
                         max_freq_hz=_measured_max(self.knobs["server"], sys_.server.max_freq_hz))
        channel = replace(sys_.channel, gain=e.channel_gain or sys_.channel.gain)
        fixed = (e.overhead_s or 0.0) + (e.device_fixed_s or 0.0) + (e.server_fixed_s or 0.0)
        budget = self.qos.max_delay_s * (1 - self.settings.delay_margin) - fixed
        qos = replace(self.qos, max_delay_s=max(budget, 1e-3))
        return replace(sys_, device=device, server=server, channel=channel, qos=qos)

    # --- telemetry ---------------------------------------------------------------------------
    def observe_device(self, sample: ppb.DeviceSample) -> ppb.Plan | None:
        check_sample(sample)  # ValueError naming the field: nothing of a refused sample is used
        with self._lock:
            self.counts["device"] += 1
            plan = self.plans.get(sample.plan_epoch)
            if plan is None:
                return None  # computed under a plan this planner never made (e.g. a static start)
            now = self.clock()
            reasons = []
            profile = self._profile_at(max(1, sample.batch), max(1, sample.seq_len))
            device_seg, _ = profile.segments(plan.split_point)
            if device_seg.flops > 0 and sample.compute_s >= MIN_TIME_S and sample.freq_hz >= MIN_FREQ_HZ:
                x = plan.rho_device * device_seg.flops / sample.freq_hz
                slowdown = max(1.0, self.system.device.max_freq_hz / sample.freq_hz)
                admitted = self.c_device.observe(x, sample.compute_s, slowdown, now)
                planned = self.c_device.predict(x, self.planned_with.device_fixed_s,
                                                self.planned_with.device_flops_per_cycle
                                                or self.system.device.flops_per_cycle, slowdown)
                if (self.c_device.hysteresis.update(planned, sample.compute_s) and admitted
                        and self._warm(self.c_device)):
                    reasons.append("compute_drift")
            if (sample.energy_source in ("rapl", "nvml") and sample.energy_j > 0 and sample.freq_hz >= MIN_FREQ_HZ
                    and self.c_device.flops_per_cycle):
                raw = power_coeff_from_energy(sample.energy_j, self.system.device.pue,
                                              plan.rho_device * device_seg.flops, self.c_device.flops_per_cycle,
                                              sample.freq_hz)
                if self._observe_power(self.k_device, raw, self.planned_with.device_power_coeff
                                       or self.system.device.power_coeff, now):
                    reasons.append("power_drift")
            if (sample.bytes_sent >= self.settings.min_bytes_for_rate and sample.send_s >= MIN_TIME_S
                    and sample.tx_power_w > 0):
                rate = 8.0 * sample.bytes_sent / sample.send_s
                ch = self.system.channel
                planned_gain = self.planned_with.channel_gain or ch.gain
                planned_rate = shannon_rate_bps(ch.bandwidth_hz, ch.noise_psd_w_per_hz, planned_gain,
                                                sample.tx_power_w)
                try:
                    gain = gain_from_rate(rate, sample.tx_power_w, ch.bandwidth_hz, ch.noise_psd_w_per_hz)
                except ValueError:  # a rate the configured bandwidth cannot carry: the system file is off
                    log.warning("measured %.3g bit/s exceeds what B = %g Hz can carry; check the system file",
                                rate, ch.bandwidth_hz)
                    return self._maybe_replan(reasons)
                admitted = gain > 0 and self.gain.observe(gain, now)
                # drift is judged on the rate (what delay depends on): at high SNR a gain estimate
                # swings far more than the rate it came from
                if self.rate.hysteresis.update(planned_rate, rate) and admitted and self._warm(self.gain):
                    self.gain.jump_to_recent()
                    reasons.append("channel_change")
            stages = sample.compute_s + sample.send_s + sample.server_s
            if sample.end_to_end_s > 0:
                self.overhead.observe(max(0.0, sample.end_to_end_s - stages), now)
            return self._maybe_replan(reasons)

    def _observe_power(self, tracked: Tracked, raw: float, planned: float, now: float) -> bool:
        """Offer a power coefficient; True when it has drifted from the planned one (and is believed)."""
        if not (math.isfinite(raw) and raw > 0):
            return False
        admitted = tracked.observe(raw, now)
        if tracked.hysteresis.update(planned, raw) and admitted and self._warm(tracked):
            tracked.jump_to_recent()
            return True
        return False

    def observe_server(self, sample: ppb.ServerSample) -> ppb.Plan | None:
        check_sample(sample)
        with self._lock:
            self.counts["server"] += 1
            plan = self.plans.get(sample.plan_epoch)
            if plan is None:
                return None
            now = self.clock()
            reasons = []
            rows = max(1, sample.batch_rows or sample.batch)
            _, server_seg = self._profile_at(rows, max(1, sample.seq_len)).segments(plan.split_point)
            if server_seg.flops > 0 and sample.compute_s >= MIN_TIME_S and sample.freq_hz >= MIN_FREQ_HZ:
                x = plan.rho_server * server_seg.flops / sample.freq_hz
                slowdown = max(1.0, self.system.server.max_freq_hz / sample.freq_hz)
                admitted = self.c_server.observe(x, sample.compute_s, slowdown, now)
                planned = self.c_server.predict(x, self.planned_with.server_fixed_s,
                                                self.planned_with.server_flops_per_cycle
                                                or self.system.server.flops_per_cycle, slowdown)
                if (self.c_server.hysteresis.update(planned, sample.compute_s) and admitted
                        and self._warm(self.c_server)):
                    reasons.append("compute_drift")
            if (sample.energy_source in ("rapl", "nvml") and sample.energy_j > 0 and sample.freq_hz >= MIN_FREQ_HZ
                    and self.c_server.flops_per_cycle):
                share = sample.batch / rows
                raw = power_coeff_from_energy(sample.energy_j, self.system.server.pue,
                                              plan.rho_server * server_seg.flops * share,
                                              self.c_server.flops_per_cycle, sample.freq_hz) if share > 0 else 0.0
                if self._observe_power(self.k_server, raw, self.planned_with.server_power_coeff
                                       or self.system.server.power_coeff, now):
                    reasons.append("power_drift")
            return self._maybe_replan(reasons)

    # --- planning ---------------------------------------------------------------------------
    def set_qos(self, max_delay_s: float, max_energy_j: float) -> ppb.Plan:
        """New limits and a plan for them. ValueError naming the field for limits outside their bounds
        (coinfer.planner.bounds), RateLimited beyond the operator bucket; either way nothing is stored."""
        check_qos(max_delay_s, max_energy_j)
        with self._lock:
            self._take_operator_token("SetQoS")
            before = self.qos
            self.qos = replace(self.qos, max_delay_s=float(max_delay_s), max_energy_j=float(max_energy_j))
            try:
                return self._replan("qos_change")
            except BaseException:
                self.qos = before
                raise

    def _take_operator_token(self, what: str) -> None:
        s, now = self.settings, self.clock()
        self._operator_tokens = min(float(s.operator_burst),
                                    self._operator_tokens + (now - self._operator_at) * s.operator_per_s)
        self._operator_at = now
        if self._operator_tokens < 1.0:
            wait = (1.0 - self._operator_tokens) / s.operator_per_s
            raise RateLimited(f"{what}: at most {s.operator_burst} operator plans at once and "
                              f"{s.operator_per_s:g} per second after that; retry in {wait:.2f} s")
        self._operator_tokens -= 1.0

    def _maybe_replan(self, reasons: list[str]) -> ppb.Plan | None:
        if not reasons:
            return None
        # a channel change explains compute and power drifts seen with it, not the other way round
        reason = min(reasons, key=("channel_change", "power_drift", "compute_drift").index)
        wait = self._last_plan_at + self.settings.min_interval_s - self.clock()
        if wait <= 0:
            return self._replan(reason)
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
                self._replan(reason)

    def replan(self, reason: str) -> ppb.Plan:
        """Solve now and publish a plan with the next epoch. An operator's (`operator_request`) skips
        min_interval_s but draws on the operator bucket: RateLimited beyond it."""
        with self._lock:
            if reason in OPERATOR_REASONS:
                self._take_operator_token("Replan")
            return self._replan(reason)

    def _replan(self, reason: str) -> ppb.Plan:
        with self._lock:
            if self._claim is not None and self.clock() >= self._resync_due():
                # a node holds another planner's epoch: this plan goes past it (and must be published)
                self._epoch_floor = max(self._epoch_floor, self._claim)
                self._claim, self._last_resync_at = None, self.clock()
                if reason in SILENT_IF_UNCHANGED:
                    reason = "resync"
            system = self.effective_system()
            result = self._solve(system)
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
            while len(self.plans) > KEEP_PLANS:
                del self.plans[next(iter(self.plans))]
            self.plan = plan
            self._last_plan_at = self.clock()
            if self._timer is not None and reason in OPERATOR_REASONS:
                self._timer.cancel()
                self._deferred = None
        plan_log.info("plan epoch %d (%s): k=%d rho=%.3f/%.3f %s quality %s p=%.4g W feasible=%s binding=%s; %s",
                 plan.epoch, reason, plan.split_point, plan.rho_device, plan.rho_server, plan.prune_method,
                 f"{plan.predicted_quality:.4f}" if plan.quality_metric else "unknown", plan.tx_power_w,
                 plan.feasible, plan.binding, plan.detail)
        self.on_plan(plan)
        return plan

    def _solve(self, system: System):
        """P1 over the split points; with a quality model, for each method, under the floor, and a pruned
        plan measured on the calibration set before it is believed: where the measured quality falls
        short of the prediction, the floor is raised by the shortfall and P1 solved again."""
        from coinfer.planner.sweep import plan_splits

        s = self.settings
        methods = tuple(m for m in METHODS if m in self.quality.methods) if self.quality is not None else ()
        methods = (methods[:2] if s.prune_method == "auto" else (s.prune_method,)) or ("structured",)
        floor = s.min_quality if self.quality is not None else 0.0
        for _ in range(QUALITY_CHECKS):
            result = plan_splits(self.profile, system, split=s.split, codec=s.codec, held=self.held(),
                                 quality=self.quality, methods=methods, min_quality=floor)
            sol = result.plan
            if self.quality_check is None or sol is None or min(sol.rho_device, sol.rho_server) >= 1.0:
                return result
            _, worst = self.quality_check.measure(result.method, result.split, sol.rho_device, sol.rho_server)
            log.info("plan check: k=%d %s rho=%.3f/%.3f predicted %.4f, measured %.4f (worst calibration answer)",
                     result.split, result.method, sol.rho_device, sol.rho_server, sol.predicted_quality, worst)
            sol.predicted_quality = worst
            if worst >= s.min_quality:
                return result
            floor = min(1.0, floor + (s.min_quality - worst) + 1e-3)
        result.reason = (f"no plan meets the QoS with measured quality >= {s.min_quality:g}: the last candidate "
                         f"(k={result.split}, {result.method}, rho {sol.rho_device:.3f}/{sol.rho_server:.3f}) "
                         f"measured {worst:.4f} on the calibration set")
        result.plan, result.feasible, result.binding = None, False, "quality"
        return result

    # --- epochs ------------------------------------------------------------------------------
    def adopt_epoch(self, known_epoch: int, known_planner_id: str) -> None:
        """A node holds `known_epoch` from another planner (this one restarted): if that is at or past
        ours, re-issue the plan above it, by a resync that is rate limited (one per resync_interval_s
        and min_interval_s; one inside it is deferred, not lost) and moves this planner's epoch at most
        MAX_EPOCH_JUMP above its own. ValueError (naming known_epoch) for a claim above MAX_EPOCH, or
        for an epoch of this planner's own that it never issued."""
        check_claim(known_epoch, known_planner_id)
        with self._lock:
            if self.plan is None or not known_planner_id:
                return
            if known_planner_id == self.planner_id:
                if known_epoch > self.plan.epoch:
                    raise ValueError(f"known_epoch: planner {self.planner_id} has issued epochs up to "
                                     f"{self.plan.epoch}, not {known_epoch}")
                return
            if known_epoch < self.plan.epoch:
                return
            target = min(known_epoch, self.plan.epoch + MAX_EPOCH_JUMP)
            if target < known_epoch:
                log.warning("a node claims epoch %d of planner %s: moving at most %d above epoch %d",
                            known_epoch, known_planner_id[:64], MAX_EPOCH_JUMP, self.plan.epoch)
            self._claim = max(self._claim or 0, target)
            self._schedule_resync()

    def _resync_due(self) -> float:
        return self._last_resync_at + max(self.settings.resync_interval_s, self.settings.min_interval_s)

    def _schedule_resync(self) -> None:
        now = self.clock()
        due = max(self._resync_due(), self._last_plan_at + self.settings.min_interval_s)
        if now >= due:
            self._replan("resync")
        elif self._resync_timer is None:
            self._resync_timer = threading.Timer(due - now, self._fire_resync)
            self._resync_timer.daemon = True
            self._resync_timer.start()

    def _fire_resync(self) -> None:
        with self._lock:
            self._resync_timer = None
            if self._claim is not None:
                self._schedule_resync()

    def _plan_from(self, result, system: System, reason: str) -> ppb.Plan:
        epoch = max(self.plan.epoch if self.plan else 0, self._epoch_floor) + 1
        if epoch > UINT64_MAX:  # unreachable: claims are bounded and jumps are rate limited (bounds.py)
            raise RuntimeError(f"epoch {epoch} does not fit a uint64")
        sol = result.plan
        held = self.held()
        knobs = {role: ppb.Knobs() if k is None else k for role, k in self.knobs.items()}
        common = dict(epoch=epoch, reason=reason, created_unix_s=time.time(), model_id=self.profile.name,
                      codec=self.settings.codec,
                      delay_limit_s=self.qos.max_delay_s, energy_limit_j=self.qos.max_energy_j,
                      device_max_freq_hz=system.device.max_freq_hz, server_max_freq_hz=system.server.max_freq_hz,
                      planner_id=self.planner_id, device_knobs=knobs["device"], server_knobs=knobs["server"],
                      binding=result.binding,
                      min_quality=self.settings.min_quality if self.quality is not None else 0.0,
                      quality_metric=self.quality.metric if self.quality is not None else "")
        held_note = f"; held at maximum (not settable): {', '.join(held.names())}" if held.names() else ""
        if sol is None:
            # infeasible: the nodes keep the last good plan's configuration (never a lower quality to
            # chase a limit nobody can meet); with none yet, the unpruned model at full speed
            why = (result.reason or "infeasible")[:400] + held_note
            log.warning("no plan meets the QoS%s: %s", " and the quality floor" if self.quality else "", why)
            last = self._last_good
            if last is not None:
                keep = {f: getattr(last, f) for f in ("split_point", "rho_device", "rho_server", "prune_method",
                                                      "f_device_hz", "f_server_hz", "tx_power_w",
                                                      "predicted_quality")}
                return ppb.Plan(**common, **keep, feasible=False, detail="kept the last good plan: " + why)
            k = self.plan.split_point if self.plan else (0 if self.settings.split == "auto" else int(self.settings.split))
            return ppb.Plan(**common, split_point=k, rho_device=1.0, rho_server=1.0,
                            prune_method=self._default_method(), f_device_hz=system.device.max_freq_hz,
                            f_server_hz=system.server.max_freq_hz, tx_power_w=system.max_tx_power_w,
                            feasible=False, predicted_quality=1.0 if self.quality is not None else 0.0,
                            detail="unpruned at full speed: " + why)
        method = result.method or self._default_method()
        return ppb.Plan(
            **common, split_point=result.split, feasible=True, prune_method=method,
            predicted_quality=sol.predicted_quality if sol.predicted_quality is not None else 0.0,
            rho_device=sol.rho_device if sol.rho_device is not None else 1.0,
            rho_server=sol.rho_server if sol.rho_server is not None else 1.0,
            f_device_hz=sol.f_device_hz or system.device.max_freq_hz,
            f_server_hz=sol.f_server_hz or system.server.max_freq_hz,
            tx_power_w=sol.tx_power_w or (self.plan.tx_power_w if self.plan else system.max_tx_power_w),
            predicted_delay_s=sol.delay_s or 0.0, predicted_energy_j=sol.energy_j or 0.0,
            distortion=sol.distortion or 0.0,
            detail=(f"{result.explanation}; solved with delay budget {system.qos.max_delay_s * 1e3:.1f} ms"
                    + held_note)[:500])

    @property
    def _last_good(self) -> ppb.Plan | None:
        for plan in reversed(self.plans.values()):
            if plan.feasible:
                return plan
        return None

    def _default_method(self) -> str:
        return "structured" if self.settings.prune_method == "auto" else self.settings.prune_method


def _held(knobs: ppb.Knobs | None, role: str) -> tuple[bool, bool]:
    """(clock held, transmit power held) for what a node reported (nothing reported: both held)."""
    if knobs is None:
        return True, True
    return knobs.clock not in SETTABLE_CLOCKS, role != "device" or knobs.tx_power not in SETTABLE_TX_POWER


def _measured_max(knobs: ppb.Knobs | None, assumed: float) -> float:
    """F: what a node with a real clock control measured; otherwise what the system says (a fixed
    clock runs at whatever the machine gives, which the compute estimates absorb)."""
    if knobs is not None and knobs.clock in ("cpufreq", "nvml") and knobs.max_freq_hz > 0:
        return knobs.max_freq_hz
    return assumed
