"""Dynamic batching of concurrent requests into one forward of the server half.

Triton's dynamic batcher is the model: requests queue; one worker takes as many compatible requests
as fit in `max_batch_size` sequences, waiting at most `max_queue_delay_s` after the oldest for more,
pads them to one length (padding masked out), runs them together and answers each with its own rows.
With the default delay of 0 a lone request starts at once, and batches form by themselves while the
model is busy, so batching costs a single device no latency.

A request whose own rows come out non-finite fails alone; if a whole batch raises, its requests are
re-run one by one so that only the request at fault fails.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from coinfer.split import OUTPUT_GENERATED_TOKENS, GenerationOptions

log = logging.getLogger(__name__)


class BatchItemError(Exception):
    """One request of a batch failed; `field` names the input at fault when it is known."""

    def __init__(self, message: str, caused_by_input: bool):
        super().__init__(message)
        self.caused_by_input = caused_by_input


@dataclass
class BatchResult:
    output: torch.Tensor
    queue_s: float
    compute_s: float
    batch_size: int   # requests computed together


@dataclass(eq=False)  # identity: a queue removes this item, not one with equal tensors
class _Item:
    x: torch.Tensor
    mask: torch.Tensor
    generation: GenerationOptions
    enqueued: float
    future: Future

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def key(self) -> tuple:
        """Requests batch together only when they are computed the same way."""
        return (self.x.dim(), self.x.dtype, self.generation)


def _pad_to(tensor: torch.Tensor, length: int, value) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad_shape = (tensor.shape[0], missing, *tensor.shape[2:])
    return torch.cat([tensor, torch.full(pad_shape, value, dtype=tensor.dtype)], dim=1)


class DynamicBatcher:
    def __init__(self, half, max_batch_size: int = 8, max_queue_delay_s: float = 0.0):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.half = half
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.requests = 0
        self._worker = threading.Thread(target=self._run, name="coinfer-batcher", daemon=True)
        self._worker.start()

    @property
    def pad_token_id(self) -> int:
        return int(getattr(self.half.src.config, "pad_token_id", 0) or 0)

    def submit(self, x: torch.Tensor, mask: torch.Tensor, generation: GenerationOptions) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            self._queue.append(_Item(x, mask, generation, time.perf_counter(), future))
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._worker.join(timeout=30)

    # --- the worker --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = first.enqueued + self.max_queue_delay_s
            while rows < self.max_batch_size:
                fitting = next((item for item in self._queue
                                if item.key() == first.key() and rows + item.rows <= self.max_batch_size), None)
                if fitting is not None:
                    self._queue.remove(fitting)
                    batch.append(fitting)
                    rows += fitting.rows
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._stopped:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                self._compute(batch, started)
            except Exception:  # never let the worker die: answer the batch one by one instead
                log.exception("batch of %d failed; retrying its requests one at a time", len(batch))
                for item in batch:
                    try:
                        self._compute([item], time.perf_counter())
                    except Exception as exc:
                        if not item.future.done():
                            item.future.set_exception(BatchItemError(f"{type(exc).__name__}: {exc}", False))

    def _compute(self, batch: list[_Item], started: float) -> None:
        length = max(item.x.shape[1] for item in batch)
        tokens = batch[0].x.dim() == 2  # token ids at k = 0, hidden states otherwise
        x = torch.cat([_pad_to(item.x, length, self.pad_token_id if tokens else 0.0) for item in batch])
        mask = torch.cat([_pad_to(item.mask, length, 0) for item in batch])
        output, _, compute_s = self.half.run(x, mask, batch[0].generation)
        self.batches += 1
        self.requests += len(batch)
        offset = 0
        for item in batch:
            rows = output[offset:offset + item.rows]
            offset += item.rows
            if self.half.output_kind == OUTPUT_GENERATED_TOKENS:
                rows = self._trim_padding(rows)
            elif not torch.isfinite(rows).all():
                item.future.set_exception(BatchItemError(
                    "hidden_states: the server half produced non-finite values from this input "
                    "(values too large?)", caused_by_input=True))
                continue
            item.future.set_result(BatchResult(rows.clone(), started - item.enqueued, compute_s, len(batch)))

    def _trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop trailing columns that are padding in every row: what this request alone would return."""
        keep = tokens.shape[1]
        while keep > 1 and bool((tokens[:, keep - 1] == self.pad_token_id).all()):
            keep -= 1
        return tokens[:, :keep]
