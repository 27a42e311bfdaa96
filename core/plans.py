"""The runtime's side of the planner: following plans and reporting telemetry.

`PlanWatcher` subscribes to the planner's plan stream and hands each plan with a higher epoch than the
last one to a callback, in order, from one thread; when the planner goes away it keeps the last plan
in force and re-subscribes with backoff. `TelemetryReporter` streams samples to the planner from a
bounded queue; while the planner is away it drops the oldest samples rather than block the runtime.

Each subscription tells the planner the node's `Knobs` (what it can really set: clock, transmit power,
energy meter), asked afresh of the node's `knobs()` callable; when they change after a plan was applied
(a clock the hardware refused), the watcher subscribes again so the planner learns of it.

Plan changes are logged on the `coinfer.plan` logger (`describe_plan`), which the command line shows
at INFO even at its default WARNING level: one line per plan.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

import grpc

from coinfer import security
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.retry import RetryPolicy
from coinfer.rpc import client_options

log = logging.getLogger(__name__)
PLAN_LOG = logging.getLogger("coinfer.plan")  # plan changes and ignored knobs: shown by default (coinfer.cli)

RECONNECT = RetryPolicy(initial_s=0.2, max_s=2.0, max_attempts=0)


class PlanRefused(ValueError):
    """A node will not apply this plan (infeasible, below its floors, for another model)."""


def describe_plan(plan: ppb.Plan, clock: str = "") -> str:
    """One line for a plan: "plan 5 (channel_change): k=3 rho=1.00/0.80 structured codec=fp32 quality
    0.991; clock fixed (cpu not settable: ...)"."""
    if plan.predicted_quality > 0:
        quality = f" quality {plan.predicted_quality:.3f}"
    elif plan.rho_device == plan.rho_server == 1.0 and plan.codec in ("", "fp32"):
        quality = " quality 1 (unpruned)"  # as the answers' plan_info says
    else:
        quality = " quality unknown"
    line = (f"plan {plan.epoch} ({plan.reason or 'no reason given'}): k={plan.split_point} "
            f"rho={plan.rho_device:.2f}/{plan.rho_server:.2f} {plan.prune_method or 'magnitude'} "
            f"codec={plan.codec or 'fp32'}{quality}")
    if plan.binding:
        line += f" (binding: {plan.binding})"
    if not plan.feasible:
        line += " INFEASIBLE"
    return line + (f"; clock {clock}" if clock else "")


class PlanWatcher:
    def __init__(self, address: str, node_id: str, role: str, on_plan: Callable[[ppb.Plan], None],
                 retry: RetryPolicy = RECONNECT, knobs: Callable[[], ppb.Knobs] | None = None):
        """knobs: the node's Knobs now (asked at each subscription); None sends none (nothing settable
        is then assumed by the planner)."""
        self.address, self.node_id, self.role = address, node_id, role
        self.on_plan = on_plan
        self.knobs = knobs
        self.sent_knobs: ppb.Knobs | None = None  # what the current subscription told the planner
        self._resubscribe = False
        self.retry = retry
        self.current: ppb.Plan | None = None
        self.connected = threading.Event()
        self.subscriptions = 0
        self.refused = 0  # plans this node would not apply
        self._first = threading.Event()
        self._stop = threading.Event()
        self._call = None
        self._channel = security.channel(address, client_options())
        self._thread = threading.Thread(target=self._run, name=f"coinfer-plans-{role}", daemon=True)

    def start(self) -> "PlanWatcher":
        self._thread.start()
        return self

    def wait_for_plan(self, timeout_s: float) -> ppb.Plan | None:
        """Block until a first plan has been applied (or the timeout passes)."""
        self._first.wait(timeout_s)
        return self.current

    def _run(self) -> None:
        stub = ppb_grpc.PlannerStub(self._channel)
        attempt = 0
        while not self._stop.is_set():
            try:
                known = self.current or ppb.Plan()
                self._call = stub.WatchPlans(self._watch_request(known))
                for plan in self._call:
                    if not self.connected.is_set():
                        self.connected.set()
                        self.subscriptions += 1
                    attempt = 0
                    self._deliver(plan)
                    if self._knobs_changed():
                        self._resubscribe = True
                        self._call.cancel()  # the loop's next read ends the call: subscribe again
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if self._resubscribe:
                    self._resubscribe = False
                    self.connected.clear()
                    log.info("this node's knobs changed (was %s): subscribing to %s again",
                             _knobs_text(self.sent_knobs), self.address)
                    continue
                log.info("plan stream from %s ended (%s); keeping epoch %s", self.address,
                         exc.code().name if hasattr(exc, "code") else exc,
                         self.current.epoch if self.current else None)
            self.connected.clear()
            self._stop.wait(self.retry.delay(attempt))
            attempt = min(attempt + 1, 10)

    def _current_knobs(self) -> ppb.Knobs | None:
        if self.knobs is None:
            return None
        try:
            return self.knobs()
        except Exception:  # a node that cannot say what it has still follows plans
            log.exception("reading this node's knobs failed; subscribing without them")
            return None

    def _watch_request(self, known: ppb.Plan) -> ppb.WatchRequest:
        request = ppb.WatchRequest(node_id=self.node_id, role=self.role, known_epoch=known.epoch,
                                   known_planner_id=known.planner_id)
        knobs = self._current_knobs()
        if knobs is not None:
            request.knobs.CopyFrom(knobs)
        self.sent_knobs = knobs
        return request

    def _knobs_changed(self) -> bool:
        """Whether what the node can set differs from what this subscription told the planner."""
        if self.knobs is None:
            return False
        now = self._current_knobs()
        return now is not None and now != self.sent_knobs

    def _deliver(self, plan: ppb.Plan) -> None:
        if self.current is not None and plan.epoch <= self.current.epoch:
            return  # plans never go backwards (a re-subscription repeats the current one)
        try:
            self.on_plan(plan)
        except PlanRefused as exc:
            self.refused += 1
            log.warning("plan %d refused: %s; keeping epoch %s", plan.epoch, exc,
                        self.current.epoch if self.current else "of the command line")
            return
        except Exception:  # a plan that cannot be applied must not kill the watcher
            log.exception("applying plan epoch %d failed; keeping epoch %s", plan.epoch,
                          self.current.epoch if self.current else None)
            return
        self.current = plan
        self._first.set()

    def stop(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._channel.close()
        self._thread.join(timeout=5)


def _knobs_text(knobs: ppb.Knobs | None) -> str:
    if knobs is None:
        return "none"
    return f"clock {knobs.clock or '?'}" + (f", tx power {knobs.tx_power}" if knobs.tx_power else "")


class TelemetryReporter:
    def __init__(self, address: str, node_id: str, max_queued: int = 1000, retry: RetryPolicy = RECONNECT):
        self.address, self.node_id = address, node_id
        self.retry = retry
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._channel = security.channel(address, client_options())
        self._thread = threading.Thread(target=self._run, name="coinfer-telemetry", daemon=True)

    def start(self) -> "TelemetryReporter":
        self._thread.start()
        return self

    def report(self, sample) -> None:
        """Queue a DeviceSample or ServerSample; never blocks."""
        kind = "device" if isinstance(sample, ppb.DeviceSample) else "server"
        message = ppb.Telemetry(node_id=self.node_id, **{kind: sample})
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest sample is the least useful one
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _messages(self):
        while not self._stop.is_set():
            try:
                message = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.sent += 1
            yield message

    def _run(self) -> None:
        stub = ppb_grpc.PlannerStub(self._channel)
        attempt = 0
        while not self._stop.is_set():
            try:
                stub.ReportTelemetry(self._messages())
                attempt = 0
            except grpc.RpcError:
                pass
            self._stop.wait(self.retry.delay(attempt))
            attempt = min(attempt + 1, 10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._channel.close()
