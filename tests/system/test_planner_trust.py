"""A real `coinfer planner` against a hostile client built from the protos (issue 15, findings 2, 3, 8
and 9): a forged epoch claim, forged and non-finite telemetry and an absurd QoS are refused or
ignored, and the planner keeps planning as before."""
import math

import grpc
import pytest

from coinfer.lab.launch import ServiceProcess
from coinfer.planner.profile import profile_from_config
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.system import DEFAULT_SYSTEM

SPLIT = 2


@pytest.fixture(scope="module")
def planner():
    # a long --min-interval-s: a step must persist that long before it is believed (a forged burst
    # never does here, however slowly this machine runs the test)
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--model", "random:bert-tiny", "--split", str(SPLIT),
                         "--min-interval-s", "10"], "planner") as process:
        channel = grpc.insecure_channel(process.address)
        try:
            yield ppb_grpc.PlannerStub(channel)
        finally:
            channel.close()


def _state(stub) -> ppb.PlannerState:
    return stub.GetState(ppb.StateRequest(), timeout=30)


def test_a_forged_epoch_claim_is_refused_and_epochs_stay_small(planner):
    epoch = _state(planner).plan.epoch
    forged = ppb.WatchRequest(node_id="forged", role="server", known_epoch=2 ** 64 - 2,
                              known_planner_id="0123456789ab")
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(planner.WatchPlans(forged, timeout=30)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "known_epoch" in caught.value.details()
    assert _state(planner).plan.epoch == epoch
    assert planner.Replan(ppb.ReplanRequest(why="after a forged claim"), timeout=60).epoch == epoch + 1


def _honest(stub, tiny_bert, n: int) -> list[ppb.Telemetry]:
    """n server samples exactly as the plan in force predicts them: nothing to re-plan."""
    state = _state(stub)
    plan = state.plan
    _, segment = profile_from_config(tiny_bert.config, tiny_bert.family, tiny_bert.name, 1, 32).segments(
        plan.split_point)
    c = state.planned_with.server_flops_per_cycle or DEFAULT_SYSTEM["server"]["flops_per_cycle"]
    compute_s = plan.rho_server * segment.flops / (c * plan.f_server_hz)
    sample = ppb.ServerSample(request_id="honest", plan_epoch=plan.epoch, batch=1, seq_len=32, queue_s=1e-4,
                              compute_s=compute_s, batch_size=1, batch_rows=1, freq_hz=plan.f_server_hz,
                              energy_source="model")
    return [ppb.Telemetry(node_id="server-1", server=sample) for _ in range(n)]


def _forged(message: ppb.Telemetry, **fields) -> ppb.Telemetry:
    sample = ppb.ServerSample()
    sample.CopyFrom(message.server)
    for name, value in fields.items():
        setattr(sample, name, value)
    return ppb.Telemetry(node_id="server-1", server=sample)


def test_forged_telemetry_is_refused_or_moves_nothing(planner, tiny_bert):
    fresh = _state(planner)
    honest = _honest(planner, tiny_bert, 12)
    # a non-finite value: refused naming the field, before anything is used
    with pytest.raises(grpc.RpcError) as caught:
        planner.ReportTelemetry(iter([_forged(honest[0], compute_s=math.inf)]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.compute_s" in caught.value.details() and "inf" in caught.value.details()
    assert _state(planner).estimates == fresh.estimates
    # a fresh planner does not act on a handful of forged samples (3 were enough)
    planner.ReportTelemetry(iter([_forged(honest[0], compute_s=1000.0)] * 3), timeout=60)
    state = _state(planner)
    assert state.plan.epoch == fresh.plan.epoch and state.estimates.server_flops_per_cycle == 0
    # the real server reports; then a forged node claims compute_s=1000 between its samples and in a burst
    assert planner.ReportTelemetry(iter(honest), timeout=60).received == len(honest)
    trusted = _state(planner)
    assert trusted.plan.epoch == fresh.plan.epoch
    assert trusted.estimates.server_flops_per_cycle == pytest.approx(DEFAULT_SYSTEM["server"]["flops_per_cycle"],
                                                                     rel=1e-3)
    forged = _forged(honest[0], compute_s=1000.0)
    stream = [forged, honest[0], forged, forged, honest[0]] + [forged] * 30 + [honest[0]]
    assert planner.ReportTelemetry(iter(stream), timeout=60).received == len(stream)
    after = _state(planner)
    assert after.plan.epoch == trusted.plan.epoch and after.plan.feasible
    assert after.estimates.server_flops_per_cycle == pytest.approx(trusted.estimates.server_flops_per_cycle,
                                                                   rel=1e-6)
    assert after.estimates.server_fixed_s == pytest.approx(trusted.estimates.server_fixed_s, abs=1e-9)
    # and an out-of-bounds compute time (finite, but over an hour) is refused like inf
    with pytest.raises(grpc.RpcError) as caught:
        planner.ReportTelemetry(iter([_forged(honest[0], compute_s=4000.0)]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "server.compute_s" in caught.value.details()


def test_an_absurd_qos_is_refused_stores_nothing_and_replan_still_works(planner):
    before = _state(planner)
    for delay, energy, field in ((math.inf, math.inf, "qos.max_delay_s"), (1e-300, 1.0, "qos.max_delay_s"),
                                 (0.5, 1e308, "qos.max_energy_j")):
        with pytest.raises(grpc.RpcError) as caught:
            planner.SetQoS(ppb.SetQoSRequest(qos=ppb.QoS(max_delay_s=delay, max_energy_j=energy)), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.details()
    assert _state(planner).qos == before.qos
    plan = planner.Replan(ppb.ReplanRequest(why="after a refused QoS"), timeout=60)
    assert plan.epoch == before.plan.epoch + 1
    assert (plan.delay_limit_s, plan.energy_limit_j) == (before.qos.max_delay_s, before.qos.max_energy_j)
