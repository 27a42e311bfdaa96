"""The closed loop with real processes: planner, server, channel emulator and device on loopback."""
import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from coinfer.device.runtime import DeviceRuntime
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc

SPLIT = 3


def test_step_fade_is_answered_by_a_new_plan_that_meets_the_delay_limit():
    out = subprocess.run([sys.executable, "-m", "coinfer", "demo", "--closed-loop", "--scenario", "step-fade",
                          "--json", "--duration", "24", "--calibrate-s", "4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    plans = summary["plans"]
    assert [p["epoch"] for p in plans] == sorted({p["epoch"] for p in plans})  # strictly increasing
    new = summary["new_plan"]
    assert new is not None, plans
    assert summary["new_plan_after_drop_s"] <= 3.0
    previous = [p for p in plans if p["epoch"] < new["epoch"]][-1]
    assert any(abs(new[key] - previous[key]) > 1e-6 for key in ("tx_power_w", "rho_device", "rho_server", "split"))
    assert summary["requests"]["after_new_plan"] >= 20
    assert summary["fraction_over_limit"]["after_new_plan"] < 0.05


@pytest.fixture
def planner_and_server(tmp_path, minilm):
    """A planner and a server following it; yields (planner, server, planner stub)."""
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", str(SPLIT), "--min-interval-s", "0"],
                        "planner") as planner:
        with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--planner",
                             planner.address], "server") as server:
            channel = grpc.insecure_channel(planner.address)
            try:
                yield planner, server, ppb_grpc.PlannerStub(channel)
            finally:
                channel.close()


def _follow(minilm, server_address, planner_address) -> DeviceRuntime:
    device = DeviceRuntime(minilm, SPLIT, server=server_address, timeout_s=60)
    device.follow(planner_address, "device")
    assert device.watcher.wait_for_plan(60) is not None
    return device


def test_a_request_under_an_old_epoch_is_refused_and_resent_once(minilm, planner_and_server, sentences):
    planner, server, stub = planner_and_server
    device = _follow(minilm, server.address, planner.address)
    try:
        device.infer(sentences)  # both halves hold the first plan
        device.watcher.stop()    # the device stops hearing plans; the server does not
        held = device.epoch
        newer = stub.Replan(ppb.ReplanRequest(why="test")).epoch
        assert newer > held
        deadline = time.monotonic() + 30
        while _server_epoch(server.address) < newer and time.monotonic() < deadline:
            time.sleep(0.05)
        # the device hears plans again a second later, while its request waits to be re-sent
        threading.Timer(1.0, lambda: device.follow(planner.address, "device", report=False)).start()
        before = stub.GetState(ppb.StateRequest()).estimates.server_samples
        result = device.infer(sentences)
        assert result.resends >= 1 and result.plan_epoch >= newer
        time.sleep(1.5)  # telemetry is asynchronous
        after = stub.GetState(ppb.StateRequest()).estimates.server_samples
        assert after - before == 1  # the refused attempt was never computed: counted once
    finally:
        device.close()


def _server_epoch(address: str) -> int:
    from coinfer.device.client import InferenceClient

    with InferenceClient(address) as client:
        return client.info().plan_epoch


def test_planner_away_leaves_both_serving_and_its_return_resubscribes_them(minilm, sentences, tmp_path):
    import socket

    with socket.socket() as probe:  # the planner must come back on the same address
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    args = ["planner", "--listen", address, "--split", str(SPLIT), "--min-interval-s", "0"]
    planner = ServiceProcess(args, "planner")
    try:
        with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--planner", address],
                            "server") as server:
            device = _follow(minilm, server.address, address)
            try:
                device.infer(sentences)
                epoch = device.epoch
                planner.stop(grace_s=0)
                deadline = time.monotonic() + 10
                while device.watcher.connected.is_set() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not device.watcher.connected.is_set()  # the device noticed the planner is gone
                for _ in range(3):  # both halves keep serving under the last plan
                    assert device.infer(sentences).plan_epoch == epoch
                assert _server_epoch(server.address) == epoch
                planner = ServiceProcess(args, "planner")  # a new planner starts again from epoch 1 ...
                deadline = time.monotonic() + 30
                while device.epoch <= epoch and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert device.epoch > epoch  # ... and moves past the epoch the nodes hold (resync)
                assert device.watcher.subscriptions >= 2
                while _server_epoch(server.address) != device.epoch and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert device.infer(sentences).plan_epoch == device.epoch
            finally:
                device.close()
    finally:
        planner.stop()
