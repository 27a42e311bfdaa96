"""Assembling a gRPC service process: servicers, the standard health service, security, and a clean stop.

The server and the planner are built the same way; each passes a function that adds its servicers.
"""
from __future__ import annotations

import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coinfer import security
from coinfer.rpc import server_options


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace_s: float) -> threading.Event:
        """Report NOT_SERVING and refuse new calls; the event is set once in-flight calls are done."""
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace_s)


def start_grpc_server(add_servicers: Callable[[grpc.Server], None], listen: str, *, workers: int,
                      thread_prefix: str, service_names: tuple[str, ...] = (),
                      options: list | None = None) -> GrpcServer:
    """Serve on `listen` (port 0 picks a free port) under the configured security, with health
    reporting SERVING for "" and each of `service_names`. OSError when the address cannot be bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_prefix),
                         options=options if options is not None else server_options(),
                         interceptors=security.current().interceptors())
    add_servicers(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = security.current().bind(server, listen)
    except RuntimeError as exc:  # grpc's way of saying it could not bind
        raise OSError(f"cannot listen on {listen}: {str(exc).split(';')[0]}") from None
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    for name in ("",) + tuple(service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, port, health_servicer)


def wait_for_termination_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
