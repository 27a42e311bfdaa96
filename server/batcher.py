"""Dynamic batching of concurrent requests into one forward of the server half.

Triton's dynamic batcher is the model: requests queue; one worker takes the oldest and as many
compatible requests (of any batch size) as fit both limits, waiting at most `max_queue_delay_s` after
the oldest for more, pads them to one length (padding masked out), runs them together and answers each
with its own rows. The limits are `max_batch_size` sequences and `max_batch_tokens` tokens, counted as
the padded tensor the batch builds: all its rows times its longest length. That bounds the memory of
the padded input and of the embedding stage, which compute on padding; the encoder blocks compute
packed (coinfer.packing), on real tokens only. Among compatible requests the worker takes those whose
length is closest to the oldest's first, so batches group similar lengths and build little padding. A
request alone over a limit runs alone. With the default delay of 0 a lone request starts at once, and
batches form by themselves while the model is busy, so batching costs a single device no latency.

A request whose own rows come out non-finite fails alone; if a whole batch raises, its requests are
re-run one by one so that only the request at fault fails. A request whose future is cancelled while it
waits (its caller went away) leaves the queue and is never computed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from coinfer.server.half import PlanChanged
from coinfer.split import OUTPUT_GENERATED_TOKENS, GenerationOptions

log = logging.getLogger(__name__)

# 64 sequences: batch-8 requests from many clients merge (a cap of 8 never merged them); 8192 tokens:
# 64 sentences of 128 tokens or 16 of 512. A CPU's throughput per token is flat well before that, so a
# larger batch would only make its first requests wait longer.
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_TOKENS = 8192


class BatchItemError(Exception):
    """One request of a batch failed: `kind` is "input" (its own data), "plan" (the server moved to
    another plan before computing it) or "internal"."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class BatchResult:
    output: torch.Tensor
    queue_s: float
    compute_s: float
    batch_size: int       # requests computed together
    batch_rows: int       # sequences computed together
    energy_j: float       # this request's share (by rows) of the batch's energy
    energy_source: str
    freq_hz: float
    batch_tokens: int = 0  # rows x longest length of the padded batch: what max_batch_tokens bounds


@dataclass(eq=False)  # identity: a queue removes this item, not one with equal tensors
class _Item:
    state: object         # the HalfState the request was accepted under
    x: torch.Tensor
    mask: torch.Tensor
    generation: GenerationOptions
    enqueued: float
    future: Future
    _key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._key = (id(self.state), self.x.dim(), self.x.dtype, self.generation)  # once: the queue is scanned often

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def length(self) -> int:
        return int(self.x.shape[1])

    def key(self) -> tuple:
        """Requests batch together only when they are computed the same way."""
        return self._key


def pad_to(tensor: torch.Tensor, length: int, value) -> torch.Tensor:
    """`tensor` [B, S, ...] right-padded with `value` to [B, length, ...]."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad_shape = (tensor.shape[0], missing, *tensor.shape[2:])
    return torch.cat([tensor, torch.full(pad_shape, value, dtype=tensor.dtype)], dim=1)


class DynamicBatcher:
    def __init__(self, half, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_queue_delay_s: float = 0.0,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")
        self.half = half
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
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

    def submit(self, state, x: torch.Tensor, mask: torch.Tensor, generation: GenerationOptions) -> Future:
        future: Future = Future()
        item = _Item(state, x, mask, generation, time.perf_counter(), future)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            self._queue.append(item)
            self._cond.notify()
        future.add_done_callback(lambda done: done.cancelled() and self._discard(item))
        return future

    def _discard(self, item: _Item) -> None:
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                pass  # already taken: the worker skips it

    def __len__(self) -> int:
        return len(self._queue)

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
            batch, rows, longest = [first], first.rows, first.length
            deadline = first.enqueued + self.max_queue_delay_s
            while rows < self.max_batch_size and (rows + 1) * longest <= self.max_batch_tokens:
                added, rows, longest = self._add_fitting(first, batch, rows, longest)
                if added:
                    continue  # the limits may still leave room for requests that arrive meanwhile
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._stopped:
                    break
                self._cond.wait(remaining)
            return batch

    def _add_fitting(self, first: _Item, batch: list[_Item], rows: int, longest: int) -> tuple[bool, int, int]:
        """Moves into `batch` the queued requests compatible with `first` that fit both limits beside it,
        closest in length to `first` first (the oldest on a tie). One sorted pass does what choosing the
        closest fitting request again and again would: a batch only grows, so a request that does not
        fit now never fits later in the same batch. The oldest request always leads the next batch, so
        one passed over here is never starved. Returns whether any was added, and the new rows and
        longest length."""
        key = first.key()
        candidates = sorted((item for item in self._queue if item.key() == key),
                            key=lambda item: abs(item.length - first.length))  # stable: the oldest on a tie
        taken = []
        for item in candidates:
            if rows + item.rows > self.max_batch_size:
                continue
            if (rows + item.rows) * max(longest, item.length) > self.max_batch_tokens:
                continue
            taken.append(item)
            rows, longest = rows + item.rows, max(longest, item.length)
            if rows >= self.max_batch_size:
                break
        if taken:  # one rebuild of the queue, not a removal (a scan) per request taken
            gone = set(map(id, taken))
            self._queue = deque(item for item in self._queue if id(item) not in gone)
            batch.extend(taken)
        return bool(taken), rows, longest

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            # from here a request can no longer be cancelled; one cancelled just now is dropped
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                self._compute(batch, started)
            except PlanChanged as exc:  # accepted under a plan the server has left: the device re-sends
                for item in batch:
                    item.future.set_exception(BatchItemError(str(exc), "plan"))
            except Exception:  # never let the worker die: answer the batch one by one instead
                log.exception("batch of %d failed; retrying its requests one at a time", len(batch))
                for item in batch:
                    try:
                        self._compute([item], time.perf_counter())
                    except Exception as exc:
                        if not item.future.done():
                            kind = "plan" if isinstance(exc, PlanChanged) else "internal"
                            item.future.set_exception(BatchItemError(f"{type(exc).__name__}: {exc}", kind))

    def _compute(self, batch: list[_Item], started: float) -> None:
        length = max(item.x.shape[1] for item in batch)
        tokens = batch[0].x.dim() == 2  # token ids at k = 0, hidden states otherwise
        x = torch.cat([pad_to(item.x, length, self.pad_token_id if tokens else 0.0) for item in batch])
        mask = torch.cat([pad_to(item.mask, length, 0) for item in batch])
        output, _, compute_s, energy = self.half.run(batch[0].state, x, mask, batch[0].generation)
        self.batches += 1
        self.requests += len(batch)
        rows_total = int(x.shape[0])
        offset = 0
        for item in batch:
            rows = output[offset:offset + item.rows]
            offset += item.rows
            if item.state.part.output_kind == OUTPUT_GENERATED_TOKENS:
                rows = self._trim_padding(rows)
            elif not torch.isfinite(rows).all():
                item.future.set_exception(BatchItemError(
                    "hidden_states: the server half produced non-finite values from this input "
                    "(values too large?)", "input"))
                continue
            item.future.set_result(BatchResult(
                rows.clone(), started - item.enqueued, compute_s, len(batch), rows_total,
                energy.joules * item.rows / rows_total, energy.source, batch[0].state.plan.freq_hz,
                rows_total * length))

    def _trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop trailing columns that are padding in every row: what this request alone would return."""
        keep = tokens.shape[1]
        while keep > 1 and bool((tokens[:, keep - 1] == self.pad_token_id).all()):
            keep -= 1
        return tokens[:, :keep]
