"""The device's connection to the server: one long-lived bidirectional stream, replies matched by id.

A stream avoids a unary call's per-request setup (measured here: 5.9 ms against 9.75 ms for 3.1 MB
over loopback). Requests are written from a queue by gRPC's own thread; a reader thread resolves the
future waiting for each reply. If the stream breaks, every waiting request fails with the stream's
status and the next request opens a new stream.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, TimeoutError as FutureTimeout

import grpc

from coinfer import security
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, EPOCH_METADATA, client_options

_CLOSE = object()
# Targets that may resolve to several addresses (server replicas behind one name): gRPC's default
# pick_first would send everything to the first; round_robin connects to all and rotates calls.
ROUND_ROBIN_PREFIXES = ("dns:", "ipv4:", "ipv6:")




class InferenceError(Exception):
    """The server refused or failed a request; `code` is the grpc.StatusCode, `server_epoch` the plan
    epoch the server held when it refused (when it said)."""

    def __init__(self, code: grpc.StatusCode, message: str, server_epoch: int | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.server_epoch = server_epoch


def _from_rpc_error(exc: grpc.RpcError) -> InferenceError:
    epoch = None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == EPOCH_METADATA and value.isdigit():
            epoch = int(value)
    return InferenceError(_code_of(exc), _details_of(exc), epoch)


def _status_code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


class _Stream:
    def __init__(self, stub: pb_grpc.CoInferenceStub):
        self.outbox: queue.Queue = queue.Queue()
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.broken: grpc.RpcError | None = None
        # wait_for_ready: while the server restarts, the stream waits for it instead of failing at once
        self.call = stub.InferStream(iter(self.outbox.get, _CLOSE), wait_for_ready=True)
        self.reader = threading.Thread(target=self._read, name="coinfer-stream-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                with self.lock:
                    future = self.pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.RpcError as exc:
            self.broken = exc
        finally:
            with self.lock:
                waiting, self.pending = list(self.pending.values()), {}
                if self.broken is None:
                    self.broken = _ClosedStream()
            for future in waiting:
                if not future.done():
                    future.set_exception(InferenceError(_code_of(self.broken), _details_of(self.broken)))

    def submit(self, request: pb.InferRequest) -> Future:
        future: Future = Future()
        with self.lock:
            if self.broken is not None:
                raise InferenceError(_code_of(self.broken), _details_of(self.broken))
            self.pending[request.request_id] = future
        self.outbox.put(request)
        return future

    def forget(self, request_id: str) -> None:
        with self.lock:
            self.pending.pop(request_id, None)

    def close(self) -> None:
        self.outbox.put(_CLOSE)
        self.call.cancel()


class _ClosedStream(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "the server closed the stream"


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN


def _details_of(exc: grpc.RpcError) -> str:
    return (exc.details() if hasattr(exc, "details") else str(exc)) or "stream failed"


def _probe(address: str, timeout_s: float) -> str:
    """What a plain TCP connection to HOST:PORT finds, as a clause for an error message ("" when the
    address is not a plain HOST:PORT)."""
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or ":" in host and not address.startswith("["):
        return ""
    try:
        with socket.create_connection((host, int(port)), timeout=max(0.05, timeout_s)):
            pass
    except ConnectionRefusedError:
        return "; the connection was refused (nothing listens there)"
    except (TimeoutError, socket.timeout):
        return "; nothing answers there (a blackholed address: a firewall dropping packets, an unrouted host, " \
               "or a peer whose listen queue is full)"
    except OSError as exc:
        return f"; connecting failed ({exc.strerror or exc})"
    return ("; something accepts TCP connections there but no gRPC handshake completed (a stalled "
            "peer, not a gRPC server, TLS on one side only, or a channel emulator whose upstream is down)")


class InferenceClient:
    """Calls the CoInference service at `address` over one channel (stream or unary calls)."""

    def __init__(self, address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout_s: float = 60.0, use_stream: bool = True):
        self.address = address
        self.timeout_s = timeout_s
        self.use_stream = use_stream
        self.max_message_bytes = max_message_bytes
        self._stream: _Stream | None = None
        self._stream_lock = threading.RLock()  # reset() closes and reconnects under it
        self._connect()

    def _connect(self) -> None:
        options = client_options(self.max_message_bytes)
        if self.address.startswith(ROUND_ROBIN_PREFIXES):
            options.append(("grpc.lb_policy_name", "round_robin"))
        self.channel = security.channel(self.address, options)
        self.stub = pb_grpc.CoInferenceStub(self.channel)

    def _close_stream_and_channel(self) -> None:
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            self.channel.close()

    def reset(self) -> None:
        """Drop the stream and the connection: after a stalled call, the next one starts afresh."""
        with self._stream_lock:
            self._close_stream_and_channel()
            self._connect()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the channel to `address` is connected; InferenceError(UNAVAILABLE) naming the
        address, the wait and what a plain TCP connection there finds (refused, silent, or accepted)."""
        probe_s = min(0.5, timeout_s / 10)  # the probe's time comes out of timeout_s
        try:
            grpc.channel_ready_future(self.channel).result(timeout=max(0.01, timeout_s - probe_s))
        except grpc.FutureTimeoutError:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE,
                                 f"server unreachable: no server answered at {self.address} within "
                                 f"{timeout_s:g} s{_probe(self.address, probe_s)}") from None

    def info(self, timeout_s: float | None = None) -> pb.ServerInfo:
        try:
            return self.stub.Info(pb.InfoRequest(), timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise _from_rpc_error(exc) from None

    def _open_stream(self) -> _Stream:
        with self._stream_lock:
            if self._stream is None or self._stream.broken is not None:
                self._stream = _Stream(self.stub)
            return self._stream

    def infer(self, request: pb.InferRequest, timeout_s: float | None = None) -> pb.InferReply:
        """The server's reply; raises InferenceError for a refused, failed or timed-out request."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not self.use_stream:
            try:
                reply = self.stub.Infer(request, timeout=timeout_s, wait_for_ready=True)
            except grpc.RpcError as exc:
                raise _from_rpc_error(exc) from None
        else:
            stream = self._open_stream()
            future = stream.submit(request)
            try:
                reply = future.result(timeout=timeout_s)
            except FutureTimeout:
                stream.forget(request.request_id)
                raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"no reply to {request.request_id} within {timeout_s} s") from None
        if reply.HasField("error"):
            raise InferenceError(_status_code(reply.error.code), reply.error.message, reply.plan_epoch)
        return reply

    def close(self) -> None:
        self._close_stream_and_channel()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
