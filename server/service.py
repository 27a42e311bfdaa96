"""The CoInference gRPC service on asyncio: validate a request, queue it for the server half, answer.

Every refusal carries the right status code and a message that names the field. Inside
`InferStream` a failed request is answered with an `error` reply and the stream stays open, so one
bad request never costs a device its other requests. A waiting stream is a suspended coroutine:
open streams are bounded by `--max-streams` (and per connection), not by threads. Decoding and checks
run on a small executor, forwards on the batcher's thread; the event loop only moves messages.
A request whose caller went away (cancelled, deadline passed, stream closed) leaves the queue and is
never computed.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError

from coinfer.codecs import WireError, decode, encode
from coinfer.openmp import single_threaded_here
from coinfer.protos import coinfer_pb2 as pb
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, EPOCH_METADATA
from coinfer.server.batcher import BatchItemError, DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.server.replies import Digest, ReplyCache, ReplyConflict
from coinfer.serving import StreamLimits, blocking_executor
from coinfer.split import GenerationOptions

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_NEW_TOKENS = 1024
MAX_BEAMS = 16
MAX_REQUEST_ID_BYTES = 128
DEFAULT_MAX_STREAMS = 4096
DEFAULT_MAX_STREAMS_PER_CONNECTION = 64
DEFAULT_MAX_QUEUED = 4096
_END_OF_REQUESTS = object()
_DRAIN = object()


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Received:
    """What arrived: the parsed request (None if the bytes were no InferRequest, with `error` saying
    why) and a digest of its bytes, which the reply cache checks a repeated request_id against."""
    request: pb.InferRequest | None
    digest: Digest
    error: str = ""

    @property
    def request_id(self) -> str:
        return self.request.request_id if self.request is not None else ""


def parse_request(data: bytes) -> Received:
    """The service parses requests itself: gRPC's own deserialiser answers INTERNAL and, on a stream,
    ends the stream and every request in flight on it."""
    digest = Digest(data)  # hashed once the request is queued (see _start)
    try:
        return Received(pb.InferRequest.FromString(data), digest)
    except DecodeError as exc:
        return Received(None, digest, str(exc))


@dataclass(eq=False)
class Pending:
    """One accepted request: the future of its reply and, when this call queued it, of its compute."""
    request_id: str
    reply: Future
    batch: Future | None = None


def _failed(request_id: str, exc: RequestError) -> Pending:
    future: Future = Future()
    future.set_exception(exc)
    return Pending(request_id, future)


def add_to_server(service: "CoInferenceService", server: grpc.aio.Server) -> None:
    """The CoInference handlers, with requests parsed by `parse_request`."""
    name = pb.DESCRIPTOR.services_by_name["CoInference"].full_name
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            service.Infer, request_deserializer=parse_request,
            response_serializer=pb.InferReply.SerializeToString),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            service.InferStream, request_deserializer=parse_request,
            response_serializer=pb.InferReply.SerializeToString),
        "Info": grpc.unary_unary_rpc_method_handler(
            service.Info, request_deserializer=pb.InfoRequest.FromString,
            response_serializer=pb.ServerInfo.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


class LoopCalls:
    """Calls handed from other threads to one event loop, which is woken once per burst: a batch
    answers many requests at once, and a wake-up per request (a write to the loop's self-pipe, then a
    fight for the GIL with the thread that is about to start the next batch) took 6 % of the batcher
    thread's time at 16 clients."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._calls: deque = deque()
        self._lock = threading.Lock()
        self._woken = False

    def call_soon(self, fn, *args) -> None:
        with self._lock:
            self._calls.append((fn, args))
            wake, self._woken = not self._woken, True
        if wake:
            self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls, self._woken = self._calls, deque(), False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one failed call must not drop the rest of the burst
                log.exception("a call handed to the event loop failed")


def _settled(future: Future, calls: LoopCalls) -> asyncio.Future:
    """An asyncio future that completes (with None) when `future` does. Cancelling it leaves `future`
    alone: a reply may be shared with a retry of the same request."""
    waiter = calls.loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(lambda _: calls.call_soon(wake))
    return waiter


class CoInferenceService:
    def __init__(self, half: ServerHalf, batcher: DynamicBatcher,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = MAX_BATCH,
                 max_in_flight_per_stream: int = 32, telemetry=None, metrics=None,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION,
                 max_queued: int = DEFAULT_MAX_QUEUED, decode_workers: int = 2):
        self.half = half
        self.metrics = metrics  # a ServerMetrics, when the process exports Prometheus metrics
        self.telemetry = telemetry  # a NodeTelemetry, when a planner listens
        self.batcher = batcher
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.max_in_flight_per_stream = max_in_flight_per_stream
        self.max_queued = max_queued
        self.streams = StreamLimits(max_streams, max_streams_per_connection, "InferStream")
        self.replies = ReplyCache()
        self.computed = 0  # requests this server computed (a cached answer is not counted again)
        self.abandoned = 0  # requests whose caller went away before they were computed
        self._queued = 0    # accepted and not yet answered
        self._count_lock = threading.Lock()
        self._draining = False
        self._outboxes: set[asyncio.Queue] = set()  # each open stream's event queue
        self._pool = blocking_executor(decode_workers, "coinfer-decode")
        self._calls: LoopCalls | None = None  # made on the event loop, at the first call
        half.src.fingerprint  # noqa: B018 - computed now (it reads every weight), not in the first Info

    def drain(self) -> None:
        """Shutting down (on the event loop): refuse new requests as UNAVAILABLE (transient) and end each
        stream once nothing is in flight on it. A device holds its stream open for good, so otherwise the
        server would wait out its whole grace period; the device sees the stream end and opens another
        (elsewhere, or here once the server is back)."""
        self._draining = True
        for outbox in self._outboxes:
            outbox.put_nowait(_DRAIN)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- validation --------------------------------------------------------------------------
    def _inputs(self, request: pb.InferRequest, state) -> tuple[torch.Tensor, torch.Tensor, GenerationOptions]:
        src, plan = self.half.src, state.plan
        if not request.request_id:
            raise _invalid("request_id: required (a retry re-sends the same id)")
        if not request.model_id:
            raise _invalid("model_id: required")
        if request.model_fingerprint:  # identity by content: the same weights at another path agree
            if request.model_fingerprint != src.fingerprint:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model_fingerprint: this server holds {src.name!r} ({src.fingerprint}), "
                                   f"not {request.model_fingerprint}")
        elif request.model_id != src.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model_id: this server holds {src.name!r}, not {request.model_id!r}")
        if request.split_point != plan.split:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"split_point: request was computed for k={request.split_point}, "
                               f"this server holds k={plan.split} (plan epoch {plan.epoch})")
        if request.plan_epoch != plan.epoch:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"plan_epoch: request has epoch {request.plan_epoch}, "
                               f"this server holds epoch {plan.epoch} (k={plan.split})")
        expected = "input_ids" if plan.split == 0 else "hidden_states"
        payload = request.WhichOneof("payload")
        if payload != expected:
            raise _invalid(f"{expected}: required at split point k={plan.split}"
                           + (f" (got {payload})" if payload else ""))
        if not request.HasField("attention_mask"):
            raise _invalid("attention_mask: required")

        max_positions = int(getattr(src.config, "max_position_embeddings", 512))
        limit = self.max_batch * max_positions * max(src.hidden_size, 1)
        x = self._decode(getattr(request, payload), payload, limit)
        mask = self._decode(request.attention_mask, "attention_mask", self.max_batch * max_positions)

        if payload == "hidden_states":
            if x.dim() != 3 or x.shape[-1] != src.hidden_size:
                raise _invalid(f"hidden_states.shape: expected [batch, seq, {src.hidden_size}], got {list(x.shape)}")
            if not x.is_floating_point():
                raise _invalid("hidden_states.dtype: must be a float type")
            x = x.float()
            if not np.isfinite(x.numpy()).all():  # numpy's check is ~15x faster than torch's on one thread
                raise _invalid("hidden_states: contains NaN or Inf")
        else:
            if x.dim() != 2 or x.is_floating_point() or x.dtype == torch.bool:
                raise _invalid(f"input_ids: expected integer [batch, seq], got {x.dtype} {list(x.shape)}")
            x = x.long()
            vocab = int(src.config.vocab_size)
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
                raise _invalid(f"input_ids: token ids must be in [0, {vocab})")
        batch, seq = x.shape[0], x.shape[1]
        if batch == 0 or seq == 0:
            raise _invalid(f"{payload}.shape: empty batch or sequence {list(x.shape)}")
        if batch > self.max_batch:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{payload}.shape: batch {batch} exceeds this server's limit {self.max_batch}")
        if seq > max_positions:
            raise _invalid(f"{payload}.shape: sequence length {seq} exceeds the model's {max_positions}")
        if list(mask.shape) != [batch, seq]:
            raise _invalid(f"attention_mask.shape: expected [{batch}, {seq}], got {list(mask.shape)}")
        if mask.is_floating_point():
            raise _invalid("attention_mask.dtype: must be an integer or bool type")
        mask = mask.long()
        if ((mask != 0) & (mask != 1)).any():
            raise _invalid("attention_mask: values must be 0 or 1")
        if (mask.sum(dim=1) == 0).any():
            raise _invalid("attention_mask: every sequence needs at least one token")

        options = request.generate
        if options.max_new_tokens > MAX_NEW_TOKENS:
            raise _invalid(f"generate.max_new_tokens: at most {MAX_NEW_TOKENS}")
        if options.num_beams > MAX_BEAMS:
            raise _invalid(f"generate.num_beams: at most {MAX_BEAMS}")
        if options.max_new_tokens and options.min_new_tokens > options.max_new_tokens:
            raise _invalid("generate.min_new_tokens: must not exceed max_new_tokens")
        generation = GenerationOptions(options.max_new_tokens, options.num_beams, options.min_new_tokens)
        return x, mask, generation

    @staticmethod
    def _decode(tensor: pb.Tensor, field: str, max_elements: int) -> torch.Tensor:
        try:
            value = decode(tensor, field, max_elements=max_elements)
        except WireError as exc:
            raise _invalid(str(exc)) from None
        except (RuntimeError, ValueError, OverflowError) as exc:
            # what decode's own checks let through (e.g. zero elements with dimensions torch cannot
            # stride) is still this field's fault, not the server's
            raise _invalid(f"{field}: cannot be decoded ({exc})") from None
        if value.numel() == 0:  # nothing to compute; and torch cannot even stride some empty shapes
            raise _invalid(f"{field}.shape: {list(tensor.shape)} has no elements")
        return value

    # --- serving -----------------------------------------------------------------------------
    def _submit(self, request: pb.InferRequest) -> tuple[Future, float]:
        """Validate and queue one request under the current plan; (future of its BatchResult, seconds
        spent decoding)."""
        received = time.perf_counter()
        single_threaded_here()  # decoding and checks start no OpenMP pool beside the batcher's
        state = self.half.state
        if request.plan_epoch != state.plan.epoch:  # the first request under a plan waiting for it
            state = self.half.commit(request.plan_epoch) or state
        x, mask, generation = self._inputs(request, state)
        return self.batcher.submit(state, x, mask, generation), time.perf_counter() - received

    def _reply(self, request: pb.InferRequest, future: Future, decode_s: float) -> pb.InferReply:
        try:
            result = future.result()
        except BatchItemError as exc:
            code = {"input": grpc.StatusCode.INVALID_ARGUMENT, "plan": grpc.StatusCode.FAILED_PRECONDITION}.get(
                exc.kind, grpc.StatusCode.INTERNAL)
            raise RequestError(code, str(exc)) from None
        out = result.output if result.output.dtype == torch.long else result.output.float()
        reply = pb.InferReply(
            request_id=request.request_id, plan_epoch=request.plan_epoch, output=encode(out),
            timing=pb.ServerTiming(queue_s=result.queue_s, compute_s=result.compute_s, decode_s=decode_s,
                                   batch_size=result.batch_size, batch_rows=result.batch_rows,
                                   energy_j=result.energy_j, energy_source=result.energy_source,
                                   freq_hz=result.freq_hz))
        if log.isEnabledFor(logging.INFO):  # one line per answered request (--log-level INFO)
            shape = list(request.attention_mask.shape)
            log.info("request %s: %s tokens, k=%d, epoch %d, queue %.1f ms, decode %.1f ms, compute %.1f ms "
                     "(batch of %d, %d rows), %d bytes in, %d bytes out", request.request_id[:8],
                     " x ".join(map(str, shape)) or "?", request.split_point, request.plan_epoch,
                     result.queue_s * 1e3, decode_s * 1e3, result.compute_s * 1e3, result.batch_size,
                     result.batch_rows, request.ByteSize(), reply.ByteSize())
        if self.telemetry is not None:
            self.telemetry.report_server(request, reply)
        if self.metrics is not None:
            self.metrics.answered(reply.timing)
            self.metrics.epoch.set(self.half.plan.epoch)
        return reply

    def _error_reply(self, request_id: str, exc: RequestError) -> pb.InferReply:
        if self.metrics is not None:
            self.metrics.refused(exc.code.name)
        return pb.InferReply(request_id=request_id, plan_epoch=self.half.plan.epoch,
                             error=pb.Error(code=exc.code.value[0], message=exc.message))

    def _start(self, received: Received) -> Pending:
        """Accept one request (on the decode executor). A retry of a request already answered, or still
        being computed, gets that same reply: nothing is computed twice. The same request_id with other
        bytes is refused: it is another request, and must never get this one's answer."""
        request = received.request
        if request is None:
            return _failed("", _invalid(f"request: not an InferRequest ({received.error})"))
        request_id = request.request_id
        id_bytes = len(request_id.encode())
        if id_bytes > MAX_REQUEST_ID_BYTES:
            return _failed(request_id[:MAX_REQUEST_ID_BYTES],
                           _invalid(f"request_id: at most {MAX_REQUEST_ID_BYTES} bytes, got {id_bytes}"))
        if self._draining:
            # a request on a stream being drained: transient, so the device re-sends it (on a new
            # stream, to the server that takes over) instead of keeping this one busy till the end
            return _failed(request_id, RequestError(grpc.StatusCode.UNAVAILABLE,
                                                    "request: the server is shutting down; re-send it"))
        key = (request_id, request.plan_epoch)
        try:
            reply, owner = self.replies.claim(key, received.digest)
        except ReplyConflict:
            return _failed(request_id, RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id: {request_id!r} was already used under epoch {request.plan_epoch} for a "
                "request with other contents; a new request needs a new id"))
        if not owner:
            if self.metrics is not None:
                self.metrics.cache_hits.inc()
            return Pending(request_id, reply)
        with self._count_lock:
            full = self._queued >= self.max_queued
            if not full:
                self._queued += 1
        if full:
            self.replies.release(key)
            reply.set_exception(RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: {self._queued} requests are queued here, the limit (--max-queued "
                f"{self.max_queued}); retry later"))
            return Pending(request_id, reply)
        try:
            batch_future, decode_s = self._submit(request)
        except Exception as exc:
            self._unqueue()
            self.replies.release(key)  # a refused request is not an answer to remember
            if not isinstance(exc, RequestError):  # a bug; the reply must still end
                log.exception("request %s: accepting it failed", request_id[:40])
                exc = RequestError(grpc.StatusCode.INTERNAL, f"request: the server failed: {exc!r}")
            reply.set_exception(exc)
            return Pending(request_id, reply)

        received.digest.value()  # now, beside the forward; a later repeat of the key compares against it

        def finish(done: Future) -> None:
            self._unqueue()
            try:
                if done.cancelled():
                    raise RequestError(grpc.StatusCode.CANCELLED,
                                       "request: its caller went away before it was computed")
                answer = self._reply(request, done, decode_s)
                with self._count_lock:
                    self.computed += 1
                reply.set_result(answer)
            except RequestError as exc:
                self.replies.release(key)
                reply.set_exception(exc)
            except Exception as exc:  # never leave the reply unresolved
                log.exception("request %s: answering it failed", request_id[:40])
                self.replies.release(key)
                reply.set_exception(RequestError(grpc.StatusCode.INTERNAL, f"request: the server failed: {exc!r}"))

        batch_future.add_done_callback(finish)
        return Pending(request_id, reply, batch_future)

    def _unqueue(self) -> None:
        with self._count_lock:
            self._queued -= 1

    def _abandon(self, pending: Pending) -> None:
        """Its caller went away: if it is still queued, it leaves the queue uncomputed."""
        if pending.batch is not None and pending.batch.cancel():
            with self._count_lock:
                self.abandoned += 1

    async def _accept(self, received: Received) -> Pending:
        accepting = asyncio.get_running_loop().run_in_executor(self._pool, self._start, received)
        try:
            return await asyncio.shield(accepting)
        except asyncio.CancelledError:  # the caller left while it was decoded: abandon it once queued
            accepting.add_done_callback(
                lambda done: done.cancelled() or done.exception() is not None or self._abandon(done.result()))
            raise

    async def Infer(self, received: Received, context: grpc.aio.ServicerContext) -> pb.InferReply:
        pending = await self._accept(received)
        try:
            await _settled(pending.reply, self._loop_calls())
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
            self._abandon(pending)
            raise
        try:
            return pending.reply.result()
        except RequestError as exc:
            # the epoch held travels with every refusal, so a device can tell "re-send" from "wait"
            context.set_trailing_metadata(((EPOCH_METADATA, str(self.half.plan.epoch)),))
            if self.metrics is not None:
                self.metrics.refused(exc.code.name)
            await context.abort(exc.code, exc.message)

    async def InferStream(self, requests, context: grpc.aio.ServicerContext) -> None:
        """Requests of one stream may be in flight together (and batch together); replies go out as
        they complete, matched by request_id. At most `max_in_flight_per_stream` wait at once."""
        release = await self.streams.admit(context)
        calls = self._loop_calls()
        outbox: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_in_flight_per_stream)
        in_flight: set[Pending] = set()

        async def read() -> None:
            try:
                async for received in requests:
                    await slots.acquire()  # back-pressure: stop reading while too much is in flight
                    pending = await self._accept(received)
                    in_flight.add(pending)
                    pending.reply.add_done_callback(
                        lambda _, p=pending: calls.call_soon(outbox.put_nowait, p))
            except grpc.RpcError:
                pass  # the client went away; the stream's end abandons what is in flight
            finally:
                outbox.put_nowait(_END_OF_REQUESTS)

        self._outboxes.add(outbox)
        reader = asyncio.create_task(read())
        try:
            ended = False
            while not ended or in_flight:
                if self._draining and not in_flight:
                    return  # shutting down, nothing in flight: end the stream (see drain)
                item = await outbox.get()
                if item is _DRAIN:
                    continue
                if item is _END_OF_REQUESTS:
                    ended = True
                    continue
                in_flight.discard(item)
                slots.release()
                try:
                    reply = item.reply.result()
                except RequestError as exc:
                    reply = self._error_reply(item.request_id, exc)
                await context.write(reply)
        finally:
            reader.cancel()
            for pending in in_flight:
                self._abandon(pending)
            self._outboxes.discard(outbox)
            release()

    def _loop_calls(self) -> LoopCalls:
        """The LoopCalls of the running event loop (one per loop: a server runs on one)."""
        loop = asyncio.get_running_loop()
        if self._calls is None or self._calls.loop is not loop:
            self._calls = LoopCalls(loop)
        return self._calls

    async def Info(self, request, context) -> pb.ServerInfo:
        plan, src = self.half.plan, self.half.src
        return pb.ServerInfo(model_id=src.name, family=src.family, num_blocks=src.num_blocks,
                             split_point=plan.split, plan_epoch=plan.epoch, rho=plan.rho,
                             prune_method=plan.method, device=str(self.half.device),
                             max_message_bytes=self.max_message_bytes, output_kind=self.half.output_kind,
                             freq_cap_hz=plan.freq_hz, freq_mode=self.half.freq.mode,
                             energy_source=self.half.meter.source, requests_computed=self.computed,
                             replies_from_cache=self.replies.hits, model_fingerprint=src.fingerprint)
