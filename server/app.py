"""Assembling and running the gRPC server process: inference service plus standard health checks."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, message_options
from coinfer.server.half import ServerHalf
from coinfer.server.service import CoInferenceService

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInference"].full_name


def start_server(half: ServerHalf, listen: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 workers: int = 16) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Start serving `half` on `listen` (port 0 picks a free port); returns (server, port, health)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coinfer-rpc"),
                         options=message_options(max_message_bytes))
    pb_grpc.add_CoInferenceServicer_to_server(CoInferenceService(half, max_message_bytes), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def serve_until_signalled(server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float) -> None:
    """Block until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish, and return."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait()
