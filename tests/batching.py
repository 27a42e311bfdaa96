"""Shared by the batcher's unit and system tests: submit requests to one DynamicBatcher together and
compare each answer with the same request computed alone."""
from coinfer.server.batcher import DynamicBatcher
from coinfer.split import GenerationOptions


def batch_then_compare(half, requests, tolerance: float = 1e-5, **batcher_options) -> list:
    """Submits every (inputs, mask) of `requests` at once, waits for them, stops the batcher, and asserts
    that each answer has the shape of, and is within `tolerance` of, the request run alone. Returns the
    batched results (their batch sizes are the caller's to check)."""
    batcher = DynamicBatcher(half, **batcher_options)
    try:
        futures = [batcher.submit(half.state, x, mask, GenerationOptions()) for x, mask in requests]
        results = [f.result(60) for f in futures]
    finally:
        batcher.stop()
    for (x, mask), result in zip(requests, results):
        alone, _, _, _ = half.run(half.state, x, mask, GenerationOptions())
        assert result.output.shape == alone.shape
        assert (result.output - alone).abs().max().item() <= tolerance
    return results
