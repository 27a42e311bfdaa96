"""What a node tells the planner it can set (Knobs in the WatchRequest our PlanWatcher sends), and what a
node does with knobs it cannot set: a recording stand-in planner on loopback, and a device runtime that
runs alone (no server)."""
import logging
import queue
import time
from concurrent import futures

import grpc
import pytest

from coinfer.plans import PlanWatcher, describe_plan
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.retry import RetryPolicy


class RecordingPlanner(ppb_grpc.PlannerServicer):
    """Answers each WatchPlans with plan `epoch` (1 for the first subscription, then 2, ...) and holds
    the stream open; records every WatchRequest."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.subscriptions = 0

    def WatchPlans(self, request, context):
        self.requests.put(request)
        self.subscriptions += 1
        yield ppb.Plan(epoch=self.subscriptions, reason="start", split_point=2, rho_device=1.0, rho_server=0.8,
                       feasible=True)
        while context.is_active():
            time.sleep(0.02)


@pytest.fixture
def planner():
    servicer = RecordingPlanner()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    ppb_grpc.add_PlannerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


FAST = RetryPolicy(initial_s=0.05, max_s=0.1, max_attempts=0)


def test_the_watch_request_carries_the_nodes_knobs(planner):
    servicer, address = planner
    knobs = ppb.Knobs(clock="fixed", clock_reason="scaling_max_freq absent", tx_power="emulator",
                      max_tx_power_w=1.0, energy_source="model")
    watcher = PlanWatcher(address, "dev-1", "device", lambda plan: None, retry=FAST, knobs=lambda: knobs).start()
    try:
        request = servicer.requests.get(timeout=10)
        assert (request.node_id, request.role) == ("dev-1", "device")
        assert request.HasField("knobs") and request.knobs == knobs
        assert watcher.wait_for_plan(10).epoch == 1
    finally:
        watcher.stop()


def test_a_watcher_without_knobs_sends_none(planner):
    servicer, address = planner
    watcher = PlanWatcher(address, "old-node", "server", lambda plan: None, retry=FAST).start()
    try:
        assert not servicer.requests.get(timeout=10).HasField("knobs")
    finally:
        watcher.stop()


def test_knobs_that_change_after_a_plan_subscribe_again_with_the_new_ones(planner):
    servicer, address = planner
    clock = {"mode": "nvml"}
    applied = []

    def on_plan(plan):
        applied.append(plan.epoch)
        clock["mode"] = "fixed"  # applying the plan found the clock refused (e.g. NVML NoPermission)

    watcher = PlanWatcher(address, "srv", "server", on_plan, retry=FAST,
                          knobs=lambda: ppb.Knobs(clock=clock["mode"], energy_source="nvml")).start()
    try:
        assert servicer.requests.get(timeout=10).knobs.clock == "nvml"
        again = servicer.requests.get(timeout=10)
        assert again.knobs.clock == "fixed" and again.known_epoch == 1  # the planner continues above it
        deadline = time.monotonic() + 10
        while applied != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert applied == [1, 2]
        time.sleep(0.3)
        assert servicer.requests.empty()  # unchanged knobs: no third subscription
    finally:
        watcher.stop()


def test_a_plan_is_described_in_one_line():
    plan = ppb.Plan(epoch=5, reason="channel_change", split_point=3, rho_device=1.0, rho_server=0.8,
                    prune_method="structured", codec="fp32", predicted_quality=0.991, feasible=True)
    assert describe_plan(plan, "fixed (cpu not settable: scaling_max_freq absent)") == (
        "plan 5 (channel_change): k=3 rho=1.00/0.80 structured codec=fp32 quality 0.991; "
        "clock fixed (cpu not settable: scaling_max_freq absent)")
    assert "quality unknown" in describe_plan(ppb.Plan(epoch=1, feasible=True))


# --- a device that cannot set its clock or its transmit power -----------------------------------------

@pytest.fixture(scope="module")
def alone():
    """A tiny random model whose device half runs every block (no server needed)."""
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.models import resolve_model

    src = resolve_model("random:bert-tiny")
    runtime = DeviceRuntime(src, src.num_blocks, max_freq_hz=2.0e9)
    yield runtime
    runtime.close()


def test_a_fixed_clock_ignores_the_plans_cap_and_the_answer_says_so(alone, caplog):
    if alone.freq.mode != "fixed":
        pytest.skip(f"this machine can set its CPU clock ({alone.freq.mode})")
    knobs = alone.knobs()
    assert (knobs.clock, knobs.tx_power, knobs.max_tx_power_w) == ("fixed", "fixed", 0.0)
    assert "scaling_max_freq" in knobs.clock_reason and knobs.energy_source in ("rapl", "model")
    baseline = min(alone.infer(["a short sentence"] * 4).device_compute_s for _ in range(3))
    with caplog.at_level(logging.INFO, logger="coinfer.plan"):
        plan = ppb.Plan(epoch=7, reason="qos_change", split_point=alone.split, rho_device=1.0, rho_server=1.0,
                        f_device_hz=84e6, device_max_freq_hz=2.0e9, tx_power_w=0.1, predicted_quality=0.97,
                        quality_metric="cosine", feasible=True)
        alone._apply_plan(plan)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("clock cap 84 MHz ignored: cpu clock not settable here") for m in messages)
    assert any(m.startswith("transmit power 0.1 W ignored") for m in messages)
    assert any(m.startswith("plan 7 (qos_change): ") and "clock fixed (cpu not settable" in m for m in messages)
    assert alone.state.plan.freq_hz == alone.freq.effective_freq_hz() == 2.0e9  # in force: F
    assert alone.state.plan.tx_power_w is None
    result = alone.infer(["a short sentence"] * 4)
    # at 84 MHz of 2 GHz an emulated cap would take 24x as long; fixed runs at full speed
    assert result.device_compute_s < max(10 * baseline, baseline + 0.05)
    assert result.plan["clock"] == "fixed" and result.plan["plan_epoch"] == 7 and result.plan["k"] == alone.split
    assert (result.plan["predicted_quality"], result.plan["quality_metric"]) == (0.97, "cosine")
    assert result.plan["plan_source"] == "planner" and result.plan["freq_hz"] == 2.0e9


def test_emulation_is_opt_in_and_stretches(alone):
    from coinfer.device.runtime import DeviceRuntime

    emulated = DeviceRuntime(alone.src, alone.split, max_freq_hz=2.0e9, emulate_frequency=True)
    try:
        if emulated.freq.mode != "emulated":
            pytest.skip(f"this machine can set its CPU clock ({emulated.freq.mode})")
        assert emulated.knobs().clock == "emulated"
        emulated.apply(1, alone.split, 1.0, "magnitude", "fp32", freq_hz=0.5e9)
        assert emulated.state.plan.freq_hz == emulated.freq.effective_freq_hz() == 0.5e9
        stretches = []
        real_stretch = emulated.freq.stretch
        emulated.freq.stretch = lambda busy: stretches.append((busy, real_stretch(busy))) or stretches[-1][1]
        result = emulated.infer(["a short sentence"] * 4)
        (busy, extra), = stretches
        assert extra == pytest.approx(3 * busy)  # 2 GHz / 0.5 GHz: the compute takes 4x as long
        assert result.device_compute_s >= 4 * busy and result.plan["clock"] == "emulated"
    finally:
        emulated.close()


def test_a_static_plan_reports_quality_only_when_nothing_is_pruned(alone):
    from coinfer.device.runtime import DevicePlan, plan_info

    dense = DevicePlan(0, 2, 1.0, "magnitude", "fp32", 2e9, None, rho_server=1.0)
    assert plan_info(dense, "fixed")["predicted_quality"] == 1.0
    for other in (DevicePlan(0, 2, 0.8, "magnitude", "fp32", 2e9, None, rho_server=1.0),
                  DevicePlan(0, 2, 1.0, "magnitude", "fp32", 2e9, None),            # rho_server unknown
                  DevicePlan(0, 2, 1.0, "magnitude", "int4", 2e9, None, rho_server=1.0)):
        assert plan_info(other, "fixed")["predicted_quality"] is None


def test_a_server_on_a_fixed_clock_reports_full_speed_in_force():
    from coinfer.models import resolve_model
    from coinfer.server.half import ServerHalf

    half = ServerHalf(resolve_model("random:bert-tiny"), 1, device="cpu", max_freq_hz=3.0e9)
    if half.freq.mode != "fixed":
        pytest.skip(f"this machine can set its CPU clock ({half.freq.mode})")
    knobs = half.knobs()
    assert knobs.clock == "fixed" and knobs.clock_reason and knobs.tx_power == ""
    assert knobs.energy_source == half.meter.source
    half.apply(3, 1, 1.0, "magnitude", freq_hz=84e6)
    assert half.plan.epoch == 3 and half.plan.freq_hz == 3.0e9  # what Info and telemetry report
    emulated = ServerHalf(half.src, 1, device="cpu", max_freq_hz=3.0e9, emulate_frequency=True)
    emulated.apply(3, 1, 1.0, "magnitude", freq_hz=1.5e9)
    assert emulated.knobs().clock == "emulated" and emulated.plan.freq_hz == 1.5e9
