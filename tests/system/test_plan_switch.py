"""A plan change costs no request already on the wire: the server swaps a new plan in when the first
request under it arrives (or its switch grace ends), never mixing two plans in one forward."""
import time

import grpc
import pytest
import torch

from coinfer.device.runtime import DeviceRuntime
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.server.half import PlanChanged, ServerHalf
from coinfer.split import GenerationOptions

SPLIT = 3


def _hidden(src, sentences):
    from coinfer.split import DevicePart

    ids, mask = src.tokenize(sentences)
    return DevicePart(src, SPLIT)(ids, mask), mask


def test_a_prepared_plan_waits_for_its_first_request_and_the_old_one_serves_till_then(minilm, sentences):
    half = ServerHalf(minilm, SPLIT, epoch=1, switch_grace_s=60)
    x, mask = _hidden(minilm, sentences)
    dense_out = half.run(half.state, x, mask, GenerationOptions())[0]

    half.apply(2, SPLIT, 0.3, "structured")
    assert half.plan.epoch == 1 and half.pending_epoch == 2
    old = half.state
    assert torch.equal(half.run(old, x, mask, GenerationOptions())[0], dense_out)  # still the dense plan
    assert half.commit(3) is None and half.plan.epoch == 1  # another epoch does not swap it in

    new = half.commit(2)
    assert new is not None and half.state is new and half.plan.epoch == 2 and half.pending_epoch is None
    assert new.pruner.state.rho == 0.3 and new.pruner.state.method == "structured"
    pruned_out = half.run(new, x, mask, GenerationOptions())[0]
    assert not torch.allclose(pruned_out, dense_out, atol=1e-3)
    with pytest.raises(PlanChanged, match="plan_epoch"):  # the old state is gone: a request on it is refused
        half.run(old, x, mask, GenerationOptions())


def test_a_new_split_is_built_aside_and_a_second_plan_commits_the_first(minilm):
    half = ServerHalf(minilm, SPLIT, epoch=1, switch_grace_s=60)
    half.apply(2, SPLIT - 1, 1.0, "magnitude")
    assert half.plan.split == SPLIT and half.pending_epoch == 2
    half.apply(3, SPLIT - 1, 0.5, "magnitude")  # the pending plan goes in first, then the next waits
    assert half.plan.epoch == 2 and half.plan.split == SPLIT - 1 and half.pending_epoch == 3


def test_the_switch_grace_ends_by_itself(minilm):
    half = ServerHalf(minilm, SPLIT, epoch=1, switch_grace_s=0.3)
    half.apply(2, SPLIT, 0.5, "magnitude")
    assert half.plan.epoch == 1
    deadline = time.monotonic() + 10
    while half.plan.epoch != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert half.plan.epoch == 2 and half.pending_epoch is None


def test_without_a_grace_a_plan_is_in_force_when_apply_returns(minilm):
    half = ServerHalf(minilm, SPLIT, epoch=1)
    half.apply(2, SPLIT, 0.5, "magnitude")
    assert half.plan.epoch == 2 and half.pending_epoch is None


def test_a_request_on_the_wire_when_the_plan_changes_is_answered_without_a_resend(minilm, sentences):
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", str(SPLIT), "--min-interval-s", "0"],
                        "planner") as planner:
        with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--planner",
                             planner.address, "--plan-switch-grace-s", "60"], "server") as server:
            channel = grpc.insecure_channel(planner.address)
            device = DeviceRuntime(minilm, SPLIT, server=server.address, timeout_s=60)
            try:
                stub = ppb_grpc.PlannerStub(channel)
                device.follow(planner.address, "device")
                assert device.watcher.wait_for_plan(60) is not None
                first = device.infer(sentences)  # the server swaps the first plan in on this request
                held = device.epoch
                assert first.plan_epoch == held and first.resends == 0
                device.watcher.stop()  # from here the device's requests are those already under way
                newer = stub.Replan(ppb.ReplanRequest(why="test")).epoch
                assert newer > held
                time.sleep(2.0)  # the server has the new plan prepared by now (60 s grace: not swapped)
                late = device.infer(sentences)
                assert late.plan_epoch == held and late.resends == 0
                device.follow(planner.address, "device", report=False)
                deadline = time.monotonic() + 30
                while device.epoch < newer and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert device.epoch == newer
                moved = device.infer(sentences)  # the first request under the new plan swaps it in
                assert moved.plan_epoch == newer and moved.resends == 0
                from coinfer.device.client import InferenceClient

                with InferenceClient(server.address) as client:
                    assert client.info().plan_epoch == newer
            finally:
                device.close()
                channel.close()
