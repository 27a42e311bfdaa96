"""The real `coinfer server` process and the real device, over 127.0.0.1."""
import json
import subprocess
import sys

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinfer.codecs import encode
from coinfer.device.client import InferenceClient, InferenceError
from coinfer.device.runtime import DeviceRuntime
from coinfer.errors import UsageError
from coinfer.lab.launch import ServiceProcess
from coinfer.lab.monolithic import WholeModel
from coinfer.protos import coinfer_pb2 as pb
from coinfer.split import GenerationOptions

SPLIT = 2


@pytest.fixture(scope="module")
def minilm_server():
    with ServiceProcess(["server", "--model", "minilm", "--split", str(SPLIT), "--rho", "0.7",
                         "--listen", "127.0.0.1:0"], "server") as server:
        yield server


@pytest.fixture(scope="module")
def whole_minilm(minilm):
    whole = WholeModel(minilm)
    whole.prune(SPLIT, 0.5, 0.7)
    return whole


@pytest.fixture(scope="module")
def device(minilm, minilm_server):
    runtime = DeviceRuntime(minilm, SPLIT, rho=0.5, server=minilm_server.address)
    runtime.connect()
    yield runtime
    runtime.close()


def test_server_is_healthy_and_describes_its_plan(minilm_server):
    channel = grpc.insecure_channel(minilm_server.address)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="coinfer.v1.CoInference"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    with InferenceClient(minilm_server.address) as client:
        info = client.info()
    assert (info.model_id, info.split_point, info.num_blocks, info.family) == ("all-MiniLM-L6-v2", SPLIT, 6, "bert")
    assert abs(info.rho - 0.7) < 1e-9 and info.device == "cpu"
    channel.close()


@pytest.mark.parametrize("use_stream", [True, False])
def test_split_over_loopback_equals_whole_model(minilm, minilm_server, whole_minilm, sentences, use_stream):
    runtime = DeviceRuntime(minilm, SPLIT, rho=0.5, server=minilm_server.address, use_stream=use_stream)
    try:
        runtime.connect()
        for _ in range(2):
            ids, mask = runtime.tokenize(sentences)
            result = runtime.infer_tokens(ids, mask)
            assert (result.output - whole_minilm(ids, mask)).abs().max().item() <= 1e-5
            assert result.bytes_sent > ids.numel() * minilm.hidden_size * 4  # fp32 hidden states went out
            assert result.server_compute_s > 0 and result.end_to_end_s >= result.device_compute_s
    finally:
        runtime.close()


def test_messages_above_4_mib_work(device, whole_minilm):
    """16 x 256 tokens x 384 x fp32 = 6.3 MB, above gRPC's default 4 MiB limit."""
    batch = device.src.tokenizer(["word " * 300] * 16, padding="max_length", truncation=True, max_length=256,
                                 return_tensors="pt")
    result = device.infer_tokens(batch["input_ids"], batch["attention_mask"])
    assert result.bytes_sent > 4 * 2**20
    assert (result.output - whole_minilm(batch["input_ids"], batch["attention_mask"])).abs().max().item() <= 1e-5


def _request(minilm, **changes):
    hidden = torch.randn(2, 5, minilm.hidden_size)
    fields = dict(request_id="r1", plan_epoch=0, split_point=SPLIT, model_id=minilm.name,
                  hidden_states=encode(hidden), attention_mask=encode(torch.ones(2, 5, dtype=torch.long)))
    fields.update(changes)
    return pb.InferRequest(**fields)


def bad_requests(minilm):
    wrong_width = encode(torch.randn(2, 5, 7))
    nan = torch.randn(2, 5, minilm.hidden_size)
    nan[0, 0, 0] = float("nan")
    truncated = encode(torch.randn(2, 5, minilm.hidden_size))
    truncated.data = truncated.data[:-4]
    return [
        (dict(split_point=SPLIT + 1), grpc.StatusCode.FAILED_PRECONDITION, "split_point"),
        (dict(plan_epoch=9), grpc.StatusCode.FAILED_PRECONDITION, "plan_epoch"),
        (dict(model_id="gpt-huge"), grpc.StatusCode.NOT_FOUND, "model_id"),
        (dict(hidden_states=wrong_width), grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.shape"),
        (dict(hidden_states=encode(nan)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (dict(hidden_states=truncated), grpc.StatusCode.INVALID_ARGUMENT, "hidden_states.data"),
        (dict(attention_mask=encode(torch.ones(2, 4, dtype=torch.long))), grpc.StatusCode.INVALID_ARGUMENT,
         "attention_mask.shape"),
        (dict(input_ids=encode(torch.ones(2, 5, dtype=torch.long))), grpc.StatusCode.INVALID_ARGUMENT,
         "hidden_states: required"),
        (dict(request_id=""), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ]


@pytest.mark.parametrize("use_stream", [True, False])
def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(minilm, minilm_server, use_stream):
    with InferenceClient(minilm_server.address, use_stream=use_stream) as client:
        for i, (changes, code, field) in enumerate(bad_requests(minilm)):
            request = _request(minilm, **changes)
            if request.request_id:
                request.request_id = f"bad-{i}"
            with pytest.raises(InferenceError) as caught:
                client.infer(request)
            assert caught.value.code == code, caught.value
            assert field in caught.value.message
        # the same stream / channel still answers a good request
        reply = client.infer(_request(minilm, request_id=f"good-{use_stream}"))  # ids are one request each
        assert list(reply.output.shape) == [2, minilm.hidden_size]


def test_device_refuses_a_server_with_another_plan(minilm, minilm_server):
    runtime = DeviceRuntime(minilm, SPLIT + 1, server=minilm_server.address)
    try:
        with pytest.raises(UsageError, match="split point 2 \\(device has 3\\)"):
            runtime.connect()
    finally:
        runtime.close()


def test_bart_generation_through_a_real_server(tiny_bart, sentences):
    generation = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
    with ServiceProcess(["server", "--model", "random:bart-tiny", "--split", "1", "--rho", "0.6",
                         "--prune-method", "random", "--listen", "127.0.0.1:0"], "bart-server") as server:
        runtime = DeviceRuntime(tiny_bart, 1, rho=0.8, method="random", server=server.address,
                                generation=generation)
        try:
            runtime.connect()
            ids, mask = runtime.tokenize(sentences)
            result = runtime.infer_tokens(ids, mask)
        finally:
            runtime.close()
    whole = WholeModel(tiny_bart)
    whole.prune(1, 0.8, 0.6, "random")
    assert result.output_kind == "generated_tokens"
    assert torch.equal(result.output, whole(ids, mask, generation))


def test_device_command_reads_stdin_and_prints_json(minilm_server, whole_minilm, minilm, sentences):
    out = subprocess.run([sys.executable, "-m", "coinfer", "device", "--server", minilm_server.address,
                          "--split", str(SPLIT), "--rho", "0.5", "--batch-size", "2", "--json"],
                         input="\n".join(sentences) + "\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["sentence"] for r in records] == sentences
    batch = minilm.tokenizer(sentences[2:], padding=True, return_tensors="pt")
    expected = whole_minilm(batch["input_ids"], batch["attention_mask"])[0]
    assert (torch.tensor(records[2]["output"]) - expected).abs().max().item() <= 1e-5


def test_device_command_reports_a_plan_mismatch(minilm_server):
    out = subprocess.run([sys.executable, "-m", "coinfer", "device", "--server", minilm_server.address,
                          "--split", "4", "hello"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "split point 2 (device has 4)" in out.stderr


def test_prometheus_metrics_count_answers_and_refusals(minilm):
    import urllib.request

    from coinfer.lab.launch import free_port

    port = free_port()
    with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--metrics-listen",
                         f"127.0.0.1:{port}"], "metrics-server") as server:
        with InferenceClient(server.address) as client:
            requests = [_request(minilm, request_id=f"ok-{i}") for i in range(3)]
            for request in requests:
                client.infer(request)
            client.infer(requests[0])  # a retry (the same bytes): answered from the cache
            with pytest.raises(InferenceError):
                client.infer(_request(minilm, request_id="bad", split_point=SPLIT + 1))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'coinfer_server_requests_total{code="OK"} 3.0' in text
    assert 'coinfer_server_requests_total{code="FAILED_PRECONDITION"} 1.0' in text
    assert "coinfer_server_reply_cache_hits_total 1.0" in text
    assert "coinfer_server_latency_seconds_count 3.0" in text
