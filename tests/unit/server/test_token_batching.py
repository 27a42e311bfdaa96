"""Token-budget batching: requests of any batch size merge up to a cap on sequences and a budget of
padded tokens, similar lengths group together, a request over the budget runs alone; and, on the real
model, rows of a merged batch of mixed lengths equal each request computed alone."""
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from coinfer.server.batcher import DEFAULT_MAX_BATCH_SIZE, DynamicBatcher
from coinfer.split import OUTPUT_SENTENCE_EMBEDDING, GenerationOptions

from batching import batch_then_compare

HIDDEN = 4


class FakeHalf:
    """Records each batch it computes; answers row i with the masked mean of its input (so a row
    that came back to the wrong request shows); `gate` holds the first forward until set."""

    def __init__(self, compute_s: float = 0.0, gate: threading.Event | None = None):
        self.src = SimpleNamespace(config=SimpleNamespace(pad_token_id=0))
        self.state = SimpleNamespace(part=SimpleNamespace(output_kind=OUTPUT_SENTENCE_EMBEDDING),
                                     plan=SimpleNamespace(freq_hz=1e9))
        self.compute_s, self.gate = compute_s, gate
        self.batches: list[dict] = []
        self.lock = threading.Lock()

    def run(self, state, x, mask, generation):
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.compute_s)
        with self.lock:
            self.batches.append({"rows": int(x.shape[0]), "length": int(x.shape[1]),
                                 "lengths": [int(n) for n in mask.sum(1)]})
        weights = mask.unsqueeze(-1).float()
        out = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return out, 0.0, self.compute_s, SimpleNamespace(joules=1.0, source="fake")


def hidden(rows: int, length: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, length, HIDDEN, generator=generator), torch.ones(rows, length, dtype=torch.long)


def expected(x, mask):
    weights = mask.unsqueeze(-1).float()
    return (x * weights).sum(1) / weights.sum(1)


def submit_all(batcher, half, requests):
    return [batcher.submit(half.state, x, mask, GenerationOptions()) for x, mask in requests]


def test_the_default_cap_merges_batch_8_requests_from_16_clients():
    half = FakeHalf(compute_s=0.005)
    batcher = DynamicBatcher(half)  # the defaults: 64 sequences, 8192 tokens, no delay
    assert batcher.max_batch_size == DEFAULT_MAX_BATCH_SIZE >= 16
    sizes, errors = [], []

    def client(c: int) -> None:
        try:
            for r in range(6):
                x, mask = hidden(8, 18 + (c + r) % 5, seed=100 * c + r)
                result = batcher.submit(half.state, x, mask, GenerationOptions()).result(30)
                assert torch.allclose(result.output, expected(x, mask))
                sizes.append(result.batch_size)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        batcher.stop()
    assert not errors
    assert len(sizes) == 16 * 6
    assert sum(sizes) / len(sizes) > 1  # batch-8 requests really merged
    assert max(b["rows"] for b in half.batches) > 8


def test_a_request_over_the_token_budget_runs_alone():
    gate = threading.Event()
    half = FakeHalf(gate=gate)
    batcher = DynamicBatcher(half, max_batch_size=64, max_queue_delay_s=0.0, max_batch_tokens=100)
    try:
        blocker = batcher.submit(half.state, *hidden(1, 5, 0), GenerationOptions())
        time.sleep(0.05)  # the worker is now held in the blocker's forward: the rest queue up
        requests = [hidden(1, 10, 1), hidden(2, 60, 2), hidden(1, 10, 3), hidden(1, 150, 4), hidden(1, 10, 5)]
        futures = submit_all(batcher, half, requests)
        gate.set()
        results = [f.result(30) for f in futures]
        blocker.result(30)
    finally:
        batcher.stop()
    big_two, big_one = results[1], results[3]
    assert big_one.batch_size == 1 and big_one.batch_rows == 1  # 150 tokens > 100: alone
    assert big_two.batch_size == 1 and big_two.batch_tokens == 120  # 2 x 60 > 100: alone too
    assert {results[i].batch_size for i in (0, 2, 4)} == {3}  # the short ones merged
    for (x, mask), result in zip(requests, results):
        assert torch.allclose(result.output, expected(x, mask))


def test_every_merged_batch_keeps_within_both_limits():
    gate = threading.Event()
    half = FakeHalf(gate=gate)
    budget, cap = 256, 12
    batcher = DynamicBatcher(half, max_batch_size=cap, max_queue_delay_s=0.0, max_batch_tokens=budget)
    generator = torch.Generator().manual_seed(0)
    shapes = [(int(torch.randint(1, 9, (1,), generator=generator)), int(torch.randint(1, 65, (1,), generator=generator)))
              for _ in range(60)]
    try:
        blocker = batcher.submit(half.state, *hidden(1, 3, 0), GenerationOptions())
        time.sleep(0.05)
        requests = [hidden(rows, length, i) for i, (rows, length) in enumerate(shapes)]
        futures = submit_all(batcher, half, requests)
        gate.set()
        results = [f.result(30) for f in futures]
        blocker.result(30)
    finally:
        batcher.stop()
    merged = [r for r in results if r.batch_size > 1]
    assert merged  # something did merge
    for result in merged:
        assert result.batch_rows <= cap and result.batch_tokens <= budget
    assert sum(r.batch_size for r in results) > len(results)
    for (x, mask), result in zip(requests, results):
        assert torch.allclose(result.output, expected(x, mask), atol=1e-6)


def test_similar_lengths_group_together():
    gate = threading.Event()
    half = FakeHalf(gate=gate)
    batcher = DynamicBatcher(half, max_batch_size=3, max_queue_delay_s=0.0)
    try:
        blocker = batcher.submit(half.state, *hidden(1, 3, 0), GenerationOptions())
        time.sleep(0.05)
        lengths = [10, 50, 11, 52, 12, 49]
        futures = submit_all(batcher, half, [hidden(1, n, i) for i, n in enumerate(lengths)])
        gate.set()
        [f.result(30) for f in futures]
        blocker.result(30)
    finally:
        batcher.stop()
    groups = [sorted(b["lengths"]) for b in half.batches[1:]]
    assert groups == [[10, 11, 12], [49, 50, 52]]


def test_a_cancelled_request_leaves_the_queue():
    gate = threading.Event()
    half = FakeHalf(gate=gate)
    batcher = DynamicBatcher(half, max_queue_delay_s=0.0)
    try:
        blocker = batcher.submit(half.state, *hidden(1, 3, 0), GenerationOptions())
        time.sleep(0.05)
        kept = batcher.submit(half.state, *hidden(1, 7, 1), GenerationOptions())
        dropped = batcher.submit(half.state, *hidden(1, 9, 2), GenerationOptions())
        assert dropped.cancel()
        gate.set()
        assert kept.result(30).batch_size == 1
        blocker.result(30)
    finally:
        batcher.stop()
    assert all(9 not in b["lengths"] for b in half.batches)


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        DynamicBatcher(FakeHalf(), max_batch_tokens=0)


@pytest.fixture(scope="module")
def token_half(minilm):
    from coinfer.server.half import ServerHalf

    return ServerHalf(minilm, 0)


def test_merged_rows_of_mixed_lengths_equal_each_request_alone(token_half, minilm):
    """Token ids (k = 0) of different lengths merge, are padded by the batcher and computed packed."""
    sentences = ["Short.", "A sentence of a middling length about edge servers and radio links.",
                 "Another one, and this one goes on for a good while longer than the others do, "
                 "with clauses, commas and a few more words about batching, padding and packing."]
    requests = [minilm.tokenize([s]) for s in sentences] + [minilm.tokenize(sentences[:2])]
    results = batch_then_compare(token_half, requests, max_queue_delay_s=0.3)
    assert {r.batch_size for r in results} == {4}
