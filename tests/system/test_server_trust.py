"""The server never freezes and never believes a stranger (issue 15), each tried as a hostile client
built from the protos would, against real `coinfer server` processes on loopback."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinfer.codecs import encode
from coinfer.device.client import InferenceClient, InferenceError
from coinfer.lab.launch import ServiceProcess, free_port
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc

MODEL, SPLIT, HIDDEN = "random:bert-tiny", 1, 64
# gRPC shares one connection among channels to the same target; each of these channels gets its own
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def request(request_id: str, rows: int = 1, seq: int = 8, hidden: torch.Tensor | None = None) -> pb.InferRequest:
    hidden = torch.randn(rows, seq, HIDDEN) if hidden is None else hidden
    return pb.InferRequest(request_id=request_id, plan_epoch=0, split_point=SPLIT, model_id=MODEL,
                           hidden_states=encode(hidden),
                           attention_mask=encode(torch.ones(hidden.shape[0], hidden.shape[1], dtype=torch.long)))


@pytest.fixture(scope="module")
def tiny_server():
    with ServiceProcess(["server", "--model", MODEL, "--split", str(SPLIT), "--threads", "1",
                         "--listen", "127.0.0.1:0", "--max-streams", "200"], "trust-server") as server:
        yield server


def test_idle_streams_hold_no_thread_health_info_and_infer_still_answer(tiny_server):
    """16 idle streams froze the threaded server; 100 must not slow anything down."""
    async def scenario():
        channels = [grpc.aio.insecure_channel(tiny_server.address, OWN_CONNECTION) for _ in range(4)]
        streams = [pb_grpc.CoInferenceStub(channels[i % 4]).InferStream() for i in range(100)]
        for call in streams:
            await call.wait_for_connection()
        async with grpc.aio.insecure_channel(tiny_server.address) as probe:
            started = time.perf_counter()
            status = await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
            info = await pb_grpc.CoInferenceStub(probe).Info(pb.InfoRequest(), timeout=5)
            reply = await pb_grpc.CoInferenceStub(probe).Infer(request("idle-streams-fresh"), timeout=5)
            elapsed = time.perf_counter() - started
        threads = psutil.Process(tiny_server.proc.pid).num_threads()
        for call in streams:
            call.cancel()
        for channel in channels:
            await channel.close()
        return status, info, reply, elapsed, threads

    status, info, reply, elapsed, threads = asyncio.run(scenario())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert info.split_point == SPLIT and list(reply.output.shape) == [1, HIDDEN]
    assert elapsed < 5
    assert threads < 60  # a thread per stream would be over 100


def test_streams_beyond_the_limit_are_refused_not_hung():
    with ServiceProcess(["server", "--model", MODEL, "--split", str(SPLIT), "--threads", "1",
                         "--listen", "127.0.0.1:0", "--max-streams", "3",
                         "--max-streams-per-connection", "2"], "limited-server") as server:
        async def scenario():
            async with grpc.aio.insecure_channel(server.address, OWN_CONNECTION) as a, \
                    grpc.aio.insecure_channel(server.address, OWN_CONNECTION) as b:
                held = [pb_grpc.CoInferenceStub(a).InferStream(), pb_grpc.CoInferenceStub(a).InferStream()]
                for call in held:
                    await call.wait_for_connection()
                await asyncio.sleep(0.3)
                third_on_a = pb_grpc.CoInferenceStub(a).InferStream()
                with pytest.raises(grpc.aio.AioRpcError) as per_connection:
                    await asyncio.wait_for(third_on_a.read(), 10)
                held.append(pb_grpc.CoInferenceStub(b).InferStream())
                await held[-1].wait_for_connection()
                await asyncio.sleep(0.3)
                fourth = pb_grpc.CoInferenceStub(b).InferStream()
                with pytest.raises(grpc.aio.AioRpcError) as overall:
                    await asyncio.wait_for(fourth.read(), 10)
                health = await health_pb2_grpc.HealthStub(b).Check(health_pb2.HealthCheckRequest(), timeout=5)
                for call in held:
                    call.cancel()
                return per_connection.value, overall.value, health
        per_connection, overall, health = asyncio.run(scenario())
    assert per_connection.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams-per-connection 2" in per_connection.details()
    assert overall.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams 3" in overall.details()
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("use_stream", [True, False])
def test_a_reused_request_id_with_another_payload_is_refused_never_answered(tiny_server, use_stream):
    first = request(f"reused-{use_stream}")
    other = request(f"reused-{use_stream}")  # same id and epoch, other hidden states
    with InferenceClient(tiny_server.address, use_stream=use_stream) as client:
        answer = client.infer(first)
        with pytest.raises(InferenceError) as caught:
            client.infer(other)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS and "request_id" in caught.value.message
        assert client.infer(first).output == answer.output  # a true retry still gets the cached answer
    with InferenceClient(tiny_server.address, use_stream=use_stream) as stranger:  # another connection
        with pytest.raises(InferenceError) as caught:
            stranger.infer(other)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_a_reused_id_while_the_first_is_in_flight_is_refused(tiny_server):
    big = request("in-flight-twin", rows=64, seq=128)
    twin = request("in-flight-twin", rows=4, seq=8)
    with InferenceClient(tiny_server.address) as first_client, InferenceClient(tiny_server.address) as other:
        streams = first_client._open_stream(), other._open_stream()
        replies = [f.result(60) for f in (streams[0].submit(big), streams[1].submit(twin))]  # both in flight
    # whichever the server took first is computed; the other, under the same id with other contents,
    # is refused (on a slow machine the second stream can overtake the first)
    refused = [r for r in replies if r.HasField("error")]
    assert len(refused) == 1, replies
    assert refused[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0] and "request_id" in refused[0].error.message


def test_request_ids_are_bounded(tiny_server):
    with InferenceClient(tiny_server.address, use_stream=False) as client:
        with pytest.raises(InferenceError) as caught:
            client.infer(request("x" * 129))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id: at most 128 bytes" in caught.value.message
        assert list(client.infer(request("y" * 128)).output.shape) == [1, HIDDEN]


def amplifying_int4(request_id: str, rows: int) -> pb.InferRequest:
    """An int4 tensor [1, rows, 1] with 4096-wide groups: a small message that expands 4096-fold."""
    hidden = pb.Tensor(dtype=pb.UINT8, shape=[1, rows, 1], codec=pb.INT4_GROUP, logical_dtype=pb.FLOAT32,
                       group_size=4096, data=bytes(rows * 2048), scales=bytes(rows * 2))
    return pb.InferRequest(request_id=request_id, plan_epoch=0, split_point=SPLIT, model_id=MODEL,
                           hidden_states=hidden, attention_mask=encode(torch.ones(1, rows, dtype=torch.long)))


def long_shape(request_id: str) -> pb.InferRequest:
    hidden = pb.Tensor(dtype=pb.FLOAT32, shape=[1] * 200_000, data=b"\0\0\0\0")
    return pb.InferRequest(request_id=request_id, plan_epoch=0, split_point=SPLIT, model_id=MODEL,
                           hidden_states=hidden, attention_mask=encode(torch.ones(1, 1, dtype=torch.long)))


def test_amplifying_tensors_are_refused_before_allocation_and_memory_stays_flat():
    with ServiceProcess(["server", "--model", MODEL, "--split", str(SPLIT), "--threads", "1",
                         "--listen", "127.0.0.1:0"], "amplify-server") as server:
        process = psutil.Process(server.proc.pid)
        with InferenceClient(server.address, use_stream=True) as client:
            for i in range(20):  # warm up: allocator arenas, caches
                client.infer(request(f"warm-{i}"))
            before = process.memory_info().rss
            refusals = set()
            for i in range(1000):
                bad = amplifying_int4(f"amp-{i}", 64) if i % 10 else long_shape(f"shape-{i}")
                with pytest.raises(InferenceError) as caught:
                    client.infer(bad)
                refusals.add((caught.value.code, caught.value.message.split(":")[0]))
            after = process.memory_info().rss
            assert list(client.infer(request("after-amp")).output.shape) == [1, HIDDEN]
    assert refusals == {(grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.group_size"),
                        (grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.shape")}
    assert after <= 1.10 * before, (before, after)


def test_requests_whose_callers_left_are_never_computed():
    """A long forward holds the batcher; 20 callers give up after 50 ms; none of them is computed, and
    a new caller's request is answered right after the long one."""
    with ServiceProcess(["server", "--model", "random:bert-base", "--split", "1", "--threads", "1",
                         "--max-batch-size", "1", "--listen", "127.0.0.1:0"], "cancel-server") as server:
        hidden = torch.randn(4, 512, 768)
        long = pb.InferRequest(request_id="long", plan_epoch=0, split_point=1, model_id="random:bert-base",
                               hidden_states=encode(hidden), attention_mask=encode(torch.ones(4, 512, dtype=torch.long)))
        small = lambda i: pb.InferRequest(  # noqa: E731
            request_id=f"gone-{i}", plan_epoch=0, split_point=1, model_id="random:bert-base",
            hidden_states=encode(torch.randn(1, 8, 768)), attention_mask=encode(torch.ones(1, 8, dtype=torch.long)))
        with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 2**28)]) as channel:
            stub = pb_grpc.CoInferenceStub(channel)
            computed_before = stub.Info(pb.InfoRequest(), timeout=30).requests_computed
            long_call = stub.Infer.future(long, timeout=120)
            time.sleep(0.5)  # the long forward has started
            for i in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Infer(small(i), timeout=0.05)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert long_call.result().request_id == "long"
            started = time.perf_counter()
            fresh_request = small(0)
            fresh_request.request_id = "fresh"
            fresh = stub.Infer(fresh_request, timeout=60)
            waited = time.perf_counter() - started
            computed = stub.Info(pb.InfoRequest(), timeout=30).requests_computed - computed_before
    assert fresh.request_id == "fresh"
    assert computed == 2, f"{computed - 2} of the 20 abandoned requests were computed"
    assert waited < 5


@pytest.mark.parametrize("command", [["server", "--model", MODEL, "--split", str(SPLIT)], ["planner", "--model", MODEL]])
def test_a_busy_port_is_an_error_naming_the_option(command):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "coinfer", *command, "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert f"--listen: cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_a_second_server_on_the_port_of_a_running_one_is_refused(tiny_server):
    done = subprocess.run([sys.executable, "-m", "coinfer", "server", "--model", MODEL, "--split", str(SPLIT),
                           "--listen", tiny_server.address], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and "--listen: cannot listen on" in done.stderr


@pytest.mark.parametrize("command", [["server", "--model", MODEL, "--split", str(SPLIT)], ["planner"],
                                     ["channel", "--upstream", "127.0.0.1:9", "--unlimited", "--listen",
                                      "127.0.0.1:0", "--control"]])
def test_an_exposed_service_without_tls_or_token_refuses_to_start(command):
    if command[0] == "channel":
        argv = [*command, "0.0.0.0:0"]
        option = "--control"
    else:
        argv = [*command, "--listen", "0.0.0.0:0"]
        option = "--listen"
    done = subprocess.run([sys.executable, "-m", "coinfer", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{option} 0.0.0.0:0: reachable beyond loopback" in done.stderr and "--insecure" in done.stderr


def test_metrics_ask_for_the_token_when_one_is_set():
    port = free_port()
    with ServiceProcess(["server", "--model", MODEL, "--split", str(SPLIT), "--listen", "127.0.0.1:0",
                         "--token", "s3cret", "--metrics-listen", f"127.0.0.1:{port}"], "metrics-token") as _:
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        wrong = urllib.request.Request(url, headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=10)
        right = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        assert "coinfer_server_plan_epoch" in urllib.request.urlopen(right, timeout=10).read().decode()


def test_stream_capacity_script_reports_a_server_and_planner_that_keep_answering():
    """scripts/stream_capacity, small: every stream open (one more refused), p99 under its target."""
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "stream_capacity"
    done = subprocess.run([str(script), "--streams", "80", "--nodes", "40", "--per-connection", "16",
                           "--repeats", "30"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["server"]["one_more_stream"] == "RESOURCE_EXHAUSTED"
    assert result["planner"]["subscribers_seen"] == 40
    assert result["meets_target"], result


def test_a_server_refuses_an_infeasible_plan_and_keeps_its_own(tmp_path):
    """Finding 3, the node half: a plan that says it is infeasible is never applied."""
    system = tmp_path / "impossible.yaml"
    system.write_text("""weight_bits: 16
device: {max_freq_hz: 2.0e9, flops_per_cycle: 8, pue: 1.0, power_coeff: 1.0e-28, max_tx_power_w: 0.2}
server: {max_freq_hz: 1.5e9, flops_per_cycle: 1024, pue: 1.5, power_coeff: 5.0e-27}
channel: {bandwidth_hz: 1.0e7, noise_psd_w_per_hz: 3.98e-21, gain: 1.0e-9}
qos: {max_delay_s: 1.0e-6, max_energy_j: 1.0e-6}
distortion: {model: magnitude, min_ratio: 0.05}
""")
    with ServiceProcess(["planner", "--model", MODEL, "--split", str(SPLIT), "--system", str(system),
                         "--listen", "127.0.0.1:0"], "impossible-planner") as planner:
        with ServiceProcess(["--log-level", "INFO", "server", "--model", MODEL, "--split", str(SPLIT),
                             "--listen", "127.0.0.1:0", "--planner", planner.address],
                            "following-server", stderr=subprocess.STDOUT) as server:
            server.wait_for_output("refused: the planner says it is infeasible", timeout_s=60)
            with InferenceClient(server.address) as client:
                info = client.info()
                assert info.plan_epoch == 0 and info.rho == 1.0  # the command line's plan, still
                assert list(client.infer(request("after-refusal")).output.shape) == [1, HIDDEN]
