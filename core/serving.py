"""Assembling a gRPC service process on asyncio (grpc.aio): servicers, the standard health service,
security, explicit limits, and a clean stop.

The server, the planner and the channel emulator's control service are built the same way. On asyncio
a waiting stream is a suspended coroutine, not a thread, so a thousand idle devices cost memory but
block nothing, and the health service always answers. Compute never runs on the event loop: the
server's forwards run on its batcher's thread, and other blocking work goes to a small executor.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import signal
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coinfer import security
from coinfer.rpc import server_options


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace_s: float, before_close: Callable[[], None] | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish within `grace_s`;
        `before_close` runs once new calls are refused (e.g. to end idle streams at once)."""
        await self.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        if before_close is not None:
            before_close()
        await stopping


async def start_grpc_server(add_servicers: Callable[[grpc.aio.Server], None], listen: str, *,
                            service_names: tuple[str, ...] = (), options: list | None = None,
                            option_name: str = "--listen") -> GrpcServer:
    """Serve on `listen` (port 0 picks a free port) under this process's security, with health reporting
    SERVING for "" and each of `service_names`. A busy port, or an address that cannot be bound, is an
    OSError naming `option_name`; so is an exposed address without TLS or a token (security.check_exposure)."""
    security.current().check_exposure(listen, option_name)
    server = grpc.aio.server(options=options if options is not None else server_options(),
                             interceptors=security.current().interceptors())
    add_servicers(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = security.current().bind(server, listen)
    except RuntimeError as exc:  # grpc's way of saying it could not bind
        raise OSError(f"{option_name}: cannot listen on {listen} ({str(exc).split(';')[0]})") from None
    if port == 0:
        raise OSError(f"{option_name}: cannot listen on {listen} (in use, or not an address of this machine)")
    await server.start()
    for name in ("",) + tuple(service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, port, health_servicer)


def on_termination() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (the event loop's own handlers: no thread waits).
    Installed at once: call it before announcing the address, or a SIGTERM sent as soon as the
    'listening' line appears kills the process with the default action (exit -15, nothing drained)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def termination_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    await on_termination().wait()


class BackgroundLoop:
    """An asyncio event loop on a daemon thread, for an aio service inside a threaded program (the channel
    emulator's control service, tests): `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self, name: str = "coinfer-aio"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable, timeout_s: float | None = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class StreamLimits:
    """How many long-lived calls (streams) a service holds at once, in all and per connection.

    A call over a limit is refused with RESOURCE_EXHAUSTED saying which limit and its value, instead of
    waiting for a slot; `admit` returns the release callback to run when the call ends."""

    def __init__(self, max_streams: int, max_per_connection: int, what: str = "streams"):
        if max_streams < 1 or max_per_connection < 1:
            raise ValueError("stream limits must be >= 1")
        self.max_streams, self.max_per_connection, self.what = max_streams, max_per_connection, what
        self.open = 0
        self._by_peer: collections.Counter[str] = collections.Counter()

    async def admit(self, context: grpc.aio.ServicerContext) -> Callable[[], None]:
        peer = context.peer() or "unknown"
        if self.open >= self.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.what}: this service holds {self.open} open, its limit "
                                f"(--max-streams {self.max_streams}); retry later or use another")
        if self._by_peer[peer] >= self.max_per_connection:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.what}: this connection holds {self._by_peer[peer]} open, the limit per "
                                f"connection (--max-streams-per-connection {self.max_per_connection})")
        self.open += 1
        self._by_peer[peer] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1
                self._by_peer[peer] -= 1
                if self._by_peer[peer] <= 0:
                    del self._by_peer[peer]
        return release


def blocking_executor(workers: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A small pool for the blocking parts of a request (decoding, solving) off the event loop."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
