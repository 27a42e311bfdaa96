"""The CoInference gRPC service: validate a request, run the server half, answer.

Every refusal carries the right status code and a message that names the field. Inside
`InferStream` a failed request is answered with an `error` reply and the stream stays open, so one
bad request never costs a device its other requests.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError

from coinfer.codecs import WireError, decode, encode
from coinfer.openmp import single_threaded_here
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, EPOCH_METADATA
from coinfer.server.batcher import BatchItemError, DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.server.replies import ReplyCache
from coinfer.split import GenerationOptions

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_NEW_TOKENS = 1024
MAX_BEAMS = 16
_END_OF_REQUESTS = object()
_DRAIN = object()


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _failed(exc: RequestError) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future


class UnparsedRequest:
    """Bytes that are not an InferRequest. The service refuses them itself, with INVALID_ARGUMENT:
    gRPC's own deserialiser answers INTERNAL and, on a stream, ends the stream and every request in
    flight on it."""

    request_id = ""
    plan_epoch = 0

    def __init__(self, error: str):
        self.error = error


def parse_request(data: bytes):
    try:
        return pb.InferRequest.FromString(data)
    except DecodeError as exc:
        return UnparsedRequest(str(exc))


def add_to_server(service: "CoInferenceService", server: grpc.Server) -> None:
    """pb_grpc.add_CoInferenceServicer_to_server, with requests parsed by `parse_request`."""
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
    server.add_registered_method_handlers(name, handlers)


class CoInferenceService(pb_grpc.CoInferenceServicer):
    def __init__(self, half: ServerHalf, batcher: DynamicBatcher,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = MAX_BATCH,
                 max_in_flight_per_stream: int = 32, telemetry=None, metrics=None):
        self.half = half
        self.metrics = metrics  # a ServerMetrics, when the process exports Prometheus metrics
        self.telemetry = telemetry  # a ServerTelemetry, when a planner listens
        self.batcher = batcher
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.max_in_flight_per_stream = max_in_flight_per_stream
        self.replies = ReplyCache()
        self.computed = 0  # requests this server computed (a cached answer is not counted again)
        self._count_lock = threading.Lock()
        self._draining = threading.Event()
        self._streams: set[queue.Queue] = set()  # each open stream's event queue
        self._streams_lock = threading.Lock()

    def drain(self) -> None:
        """Shutting down: refuse new requests as UNAVAILABLE (transient) and end each stream once nothing
        is in flight on it. A device holds its stream open for good, so otherwise the server would wait
        out its whole grace period; the device sees the stream end and opens another (elsewhere, or
        here once the server is back)."""
        self._draining.set()
        with self._streams_lock:
            for events in self._streams:
                events.put((_DRAIN, None))

    # --- validation --------------------------------------------------------------------------
    def _inputs(self, request: pb.InferRequest, state) -> tuple[torch.Tensor, torch.Tensor, GenerationOptions]:
        src, plan = self.half.src, state.plan
        if not request.request_id:
            raise _invalid("request_id: required (a retry re-sends the same id)")
        if not request.model_id:
            raise _invalid("model_id: required")
        if request.model_id != src.name:
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

    def _start(self, request: pb.InferRequest) -> Future:
        """A future of the request's reply (it raises RequestError on failure). A retry of a request
        already answered, or still being computed, gets that same reply: nothing is computed twice."""
        if isinstance(request, UnparsedRequest):
            return _failed(_invalid(f"request: not an InferRequest ({request.error})"))
        if self._draining.is_set():
            # a request on a stream being drained: transient, so the device re-sends it (on a new
            # stream, to the server that takes over) instead of keeping this one busy till the end
            return _failed(RequestError(grpc.StatusCode.UNAVAILABLE, "request: the server is shutting down; re-send it"))
        key = (request.request_id, request.plan_epoch)
        reply, owner = self.replies.claim(key)
        if not owner:
            if self.metrics is not None:
                self.metrics.cache_hits.inc()
            return reply
        try:
            batch_future, decode_s = self._submit(request)
        except RequestError as exc:
            self.replies.release(key)  # a refused request is not an answer to remember
            reply.set_exception(exc)
            return reply
        except Exception as exc:  # a bug; the future must still end, or a stream waits for it forever
            log.exception("request %s: accepting it failed", request.request_id[:40])
            self.replies.release(key)
            reply.set_exception(RequestError(grpc.StatusCode.INTERNAL, f"request: the server failed: {exc!r}"))
            return reply

        def finish(done: Future) -> None:
            try:
                reply.set_result(self._reply(request, done, decode_s))
                with self._count_lock:
                    self.computed += 1
            except RequestError as exc:
                self.replies.release(key)
                reply.set_exception(exc)
            except Exception as exc:  # as above: never leave the reply unresolved
                log.exception("request %s: answering it failed", request.request_id[:40])
                self.replies.release(key)
                reply.set_exception(RequestError(grpc.StatusCode.INTERNAL, f"request: the server failed: {exc!r}"))

        batch_future.add_done_callback(finish)
        return reply

    def Infer(self, request, context):
        try:
            return self._start(request).result()
        except RequestError as exc:
            # the epoch held travels with every refusal, so a device can tell "re-send" from "wait"
            context.set_trailing_metadata(((EPOCH_METADATA, str(self.half.plan.epoch)),))
            if self.metrics is not None:
                self.metrics.refused(exc.code.name)
            context.abort(exc.code, exc.message)

    def InferStream(self, request_iterator, context):
        """Requests of one stream may be in flight together (and batch together); replies go out as
        they complete, matched by request_id. At most `max_in_flight_per_stream` wait at once."""
        events: queue.Queue = queue.Queue()
        slots = threading.BoundedSemaphore(self.max_in_flight_per_stream)
        read = [0]  # requests taken off the stream so far

        def read_requests() -> None:
            submitted = 0
            try:
                for request in request_iterator:
                    slots.acquire()  # back-pressure: stop reading while the stream has too much in flight
                    submitted += 1
                    read[0] = submitted
                    # the id only: the reply's future lives on in the reply cache, and this callback with it
                    # (holding the request kept every request's tensors for the cache's lifetime)
                    self._start(request).add_done_callback(lambda f, rid=request.request_id: events.put((rid, f)))
            except grpc.RpcError:
                pass  # the client went away; what is in flight finishes and is dropped
            finally:
                events.put((_END_OF_REQUESTS, submitted))

        with self._streams_lock:
            self._streams.add(events)
        threading.Thread(target=read_requests, name="coinfer-stream-requests", daemon=True).start()
        answered, total = 0, None
        try:
            while total is None or answered < total:
                if self._draining.is_set() and answered == read[0]:
                    return  # shutting down, nothing in flight: end the stream (see drain)
                request_id, outcome = events.get()
                if request_id is _DRAIN:
                    continue
                if request_id is _END_OF_REQUESTS:
                    total = outcome
                    continue
                answered += 1
                slots.release()
                try:
                    yield outcome.result()
                except RequestError as exc:
                    yield self._error_reply(request_id, exc)
        finally:
            with self._streams_lock:
                self._streams.discard(events)

    def Info(self, request, context):
        plan, src = self.half.plan, self.half.src
        return pb.ServerInfo(model_id=src.name, family=src.family, num_blocks=src.num_blocks,
                             split_point=plan.split, plan_epoch=plan.epoch, rho=plan.rho,
                             prune_method=plan.method, device=str(self.half.device),
                             max_message_bytes=self.max_message_bytes, output_kind=self.half.output_kind,
                             freq_cap_hz=plan.freq_hz, freq_mode=self.half.freq.mode,
                             energy_source=self.half.meter.source, requests_computed=self.computed,
                             replies_from_cache=self.replies.hits)
