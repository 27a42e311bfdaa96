"""Assembling and running the gRPC server process: inference service plus standard health checks."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coinfer import security
from coinfer.protos import coinfer_pb2 as pb
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, server_options
from coinfer.server.batcher import DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.server.service import CoInferenceService, add_to_server

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInference"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    batcher: DynamicBatcher
    service: CoInferenceService | None = None

    def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace_s`."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace_s)
        if self.service is not None:
            self.service.drain()  # open streams end once answered, instead of holding on until grace_s
        stopped.wait()
        self.batcher.stop()


def start_server(half: ServerHalf, listen: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 workers: int = 16, max_batch_size: int = 8, max_queue_delay_s: float = 0.0,
                 telemetry=None, metrics=None) -> RunningServer:
    """Start serving `half` on `listen` (port 0 picks a free port); `telemetry` (a NodeTelemetry)
    receives a sample per answered request."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coinfer-rpc"),
                         options=server_options(max_message_bytes), interceptors=security.current().interceptors())
    batcher = DynamicBatcher(half, max_batch_size, max_queue_delay_s)
    service = CoInferenceService(half, batcher, max_message_bytes, telemetry=telemetry, metrics=metrics)
    add_to_server(service, server)  # requests parsed by the service: bytes that are no request get INVALID_ARGUMENT
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = security.current().bind(server, listen)
    if port == 0:
        batcher.stop()
        raise OSError(f"cannot listen on {listen}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, batcher, service)


def wait_for_termination_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
