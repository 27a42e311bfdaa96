"""Server batching: each caller gets its own rows, and one bad request fails alone."""
import threading

import pytest
import torch

from coinfer.codecs import encode
from coinfer.device.client import InferenceClient, InferenceError
from coinfer.device.runtime import DeviceRuntime
from coinfer.lab.launch import ServiceProcess
from coinfer.lab.monolithic import WholeModel
from coinfer.protos import coinfer_pb2 as pb
from coinfer.server.batcher import BatchItemError, DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.split import GenerationOptions

from batching import batch_then_compare

SPLIT = 2
TEXTS = [f"request number {i} asks about {topic}" for i, topic in enumerate(
    ["rain", "trains", "bread", "cats", "radio links", "pruning", "servers", "energy and power at the edge"])]


def test_concurrent_devices_get_their_own_results(minilm):
    whole = WholeModel(minilm)
    with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--max-batch-size", "8",
                         "--max-queue-delay-ms", "20"], "server") as server:
        devices = [DeviceRuntime(minilm, SPLIT, server=server.address) for _ in TEXTS]
        results: dict[int, list] = {i: [] for i in range(len(TEXTS))}
        errors = []

        def work(i: int) -> None:
            try:
                for repeat in range(3):
                    text = [TEXTS[i]] * (1 + (i + repeat) % 2)  # batch 1 or 2, lengths differ per device
                    ids, mask = devices[i].tokenize(text)
                    results[i].append((ids, mask, devices[i].infer_tokens(ids, mask)))
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

        try:
            for device in devices:
                device.connect()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(TEXTS))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
        finally:
            for device in devices:
                device.close()
    assert not errors
    batch_sizes = []
    for i, runs in results.items():
        assert len(runs) == 3
        for ids, mask, result in runs:
            assert (result.output - whole(ids, mask)).abs().max().item() <= 1e-5, f"device {i}"
            batch_sizes.append(result.server_batch_size)
    assert max(batch_sizes) >= 2  # concurrent devices were computed together


def request(minilm, request_id: str, scale: float = 1.0, seq: int = 6) -> pb.InferRequest:
    generator = torch.Generator().manual_seed(hash(request_id) % 2**31)
    hidden = torch.randn(1, seq, minilm.hidden_size, generator=generator) * scale
    return pb.InferRequest(request_id=request_id, split_point=SPLIT, model_id=minilm.name,
                           hidden_states=encode(hidden), attention_mask=encode(torch.ones(1, seq, dtype=torch.long)))


def test_one_stream_pipelines_and_batches_and_a_bad_request_fails_alone(minilm):
    """Several threads share one client (one stream); requests wait 100 ms to batch together."""
    with ServiceProcess(["server", "--split", str(SPLIT), "--listen", "127.0.0.1:0", "--max-batch-size", "8",
                         "--max-queue-delay-ms", "100"], "server") as server:
        with InferenceClient(server.address) as client:
            client.wait_ready()
            outcome = {}
            requests = [request(minilm, f"good-{i}", seq=4 + i) for i in range(5)] + \
                       [request(minilm, "overflow", scale=1e30)]

            def send(req):
                try:
                    outcome[req.request_id] = client.infer(req)
                except InferenceError as exc:
                    outcome[req.request_id] = exc

            threads = [threading.Thread(target=send, args=(r,)) for r in requests]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            again = client.infer(request(minilm, "after"))
    bad = outcome.pop("overflow")
    assert isinstance(bad, InferenceError) and bad.code.name == "INVALID_ARGUMENT"
    assert "hidden_states" in bad.message and "non-finite" in bad.message
    assert all(isinstance(r, pb.InferReply) for r in outcome.values())
    assert max(r.timing.batch_size for r in outcome.values()) >= 3  # they really were computed together
    assert list(again.output.shape) == [1, minilm.hidden_size]


@pytest.fixture(scope="module")
def half(minilm):
    return ServerHalf(minilm, SPLIT)


def test_batched_rows_equal_unbatched_rows(half, minilm):
    inputs = [(torch.randn(b, s, minilm.hidden_size), torch.ones(b, s, dtype=torch.long))
              for b, s in [(1, 3), (2, 9), (1, 5), (3, 4)]]
    for x, mask in inputs:
        mask[0, -1] = 0 if mask.shape[1] > 3 else 1  # some requests carry their own padding
    results = batch_then_compare(half, inputs, max_batch_size=8, max_queue_delay_s=0.2)
    assert {r.batch_size for r in results} == {4}


def test_a_batch_never_exceeds_the_size_limit(half, minilm):
    batcher = DynamicBatcher(half, max_batch_size=3, max_queue_delay_s=0.2)
    try:
        futures = [batcher.submit(half.state, torch.randn(2, 4, minilm.hidden_size), torch.ones(2, 4, dtype=torch.long),
                                  GenerationOptions()) for _ in range(4)]
        results = [f.result(60) for f in futures]
    finally:
        batcher.stop()
    assert all(r.batch_size == 1 for r in results)  # two rows each: a second one would make four


def test_an_exception_in_a_batch_is_retried_one_by_one(half, minilm):
    batcher = DynamicBatcher(half, max_batch_size=8, max_queue_delay_s=0.2)
    try:
        good = batcher.submit(half.state, torch.randn(1, 4, minilm.hidden_size), torch.ones(1, 4, dtype=torch.long),
                              GenerationOptions())
        # a hidden width the blocks cannot take (validation normally stops it before the batcher)
        broken = batcher.submit(half.state, torch.randn(1, 4, minilm.hidden_size + 1),
                                torch.ones(1, 4, dtype=torch.long),
                                GenerationOptions())
        assert good.result(60).output.shape == (1, minilm.hidden_size)
        with pytest.raises(BatchItemError):
            broken.result(60)
    finally:
        batcher.stop()
