"""Per-request telemetry samples, built where the numbers are and sent to the planner.

Process statistics (CPU utilisation, resident memory) come from psutil at most once a second: they
change slowly, and sampling them per request would cost more than the request's bookkeeping.
"""
from __future__ import annotations

import math
import threading
import time

from coinfer.errors import UsageError
from coinfer.plans import PlanRefused, PlanWatcher, TelemetryReporter
from coinfer.protos import planner_pb2 as ppb
from coinfer.sysstats import sample as sample_process


class _ProcessStats:
    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self._at = -1e9
        self._last: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.every_s:
                self._last, self._at = sample_process(), now
            return self._last


class NodeTelemetry:
    """A node's reporter to the planner: device and server samples, with process statistics."""

    def __init__(self, planner_address: str, node_id: str):
        self.reporter = TelemetryReporter(planner_address, node_id).start()
        self._stats = _ProcessStats()

    def _process(self) -> dict:
        stats = self._stats.get()
        return {"cpu_util_pct": stats.get("cpu_util_pct") or 0.0, "rss_bytes": int(stats.get("rss_bytes") or 0)}

    def report_server(self, request, reply) -> None:
        t = reply.timing
        shape = request.hidden_states.shape if request.HasField("hidden_states") else request.input_ids.shape
        self.reporter.report(ppb.ServerSample(
            request_id=request.request_id, plan_epoch=request.plan_epoch, batch=int(shape[0]),
            seq_len=int(shape[1]), queue_s=t.queue_s, compute_s=t.compute_s, batch_size=t.batch_size,
            batch_rows=t.batch_rows, freq_hz=t.freq_hz, energy_j=t.energy_j, energy_source=t.energy_source,
            **self._process()))

    def report_device(self, result, plan_epoch: int, freq_hz: float, tx_power_w: float) -> None:
        self.reporter.report(ppb.DeviceSample(
            request_id=result.request_id, plan_epoch=plan_epoch, batch=result.batch, seq_len=result.seq_len,
            compute_s=result.device_compute_s, bytes_sent=result.bytes_sent, send_s=result.transfer_s,
            freq_hz=freq_hz, energy_j=result.device_energy_j, energy_source=result.device_energy_source,
            end_to_end_s=result.end_to_end_s, tx_power_w=tx_power_w,
            server_s=result.server_queue_s + result.server_compute_s, **self._process()))

    def stop(self) -> None:
        self.reporter.stop()


def check_plan(plan, role: str, model_name: str, min_rho: float = 0.0) -> None:
    """PlanRefused unless a node of `role` holding `model_name` may apply `plan`: a node believes no plan
    blindly. One for another model, one that says it is infeasible, or one that would prune this half
    below `min_rho` is refused."""
    if plan.model_id and plan.model_id != model_name:
        raise PlanRefused(f"it is for model {plan.model_id!r}, this {role} holds {model_name!r}")
    if not plan.feasible:
        raise PlanRefused(f"the planner says it is infeasible ({plan.detail or 'no reason given'})")
    rho = plan.rho_device if role == "device" else plan.rho_server
    if not (math.isfinite(rho) and min_rho <= rho <= 1.0):
        raise PlanRefused(f"rho_{role} {rho:g} is outside this {role}'s [{min_rho:g}, 1] (--min-rho)")


def follow_planner(planner: str, node_id: str, role: str, model_name: str, apply, report: bool = True,
                   min_rho: float = 0.0, knobs=None):
    """How either half follows a planner: `apply(plan)` for each new plan that passes check_plan (the
    watcher logs why one does not, and the last good plan stays in force), and a NodeTelemetry
    reporting to it when `report`. `knobs()` gives the node's planner_pb2.Knobs, sent with each
    subscription. Returns (telemetry or None, the started PlanWatcher)."""
    if not 0.0 <= min_rho <= 1.0:
        raise UsageError(f"--min-rho must be in [0, 1], got {min_rho}")

    def apply_if_acceptable(plan) -> None:
        check_plan(plan, role, model_name, min_rho)
        apply(plan)

    telemetry = NodeTelemetry(planner, node_id) if report else None
    return telemetry, PlanWatcher(planner, node_id, role, apply_if_acceptable, knobs=knobs).start()
