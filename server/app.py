"""Assembling and running the gRPC server process: inference service plus standard health checks."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from coinfer.protos import coinfer_pb2 as pb
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, server_options
from coinfer.serving import GrpcServer, start_grpc_server
from coinfer.server.batcher import DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.server.service import CoInferenceService, add_to_server

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInference"].full_name


@dataclass
class RunningServer:
    grpc: GrpcServer
    batcher: DynamicBatcher
    service: CoInferenceService | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace_s`."""
        stopped = self.grpc.stop(grace_s)
        if self.service is not None:
            self.service.drain()  # open streams end once answered, instead of holding on until grace_s
        stopped.wait()
        self.batcher.stop()


def start_server(half: ServerHalf, listen: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 workers: int = 16, max_batch_size: int = 8, max_queue_delay_s: float = 0.0,
                 telemetry=None, metrics=None) -> RunningServer:
    """Start serving `half` on `listen` (port 0 picks a free port); `telemetry` (a NodeTelemetry)
    receives a sample per answered request."""
    batcher = DynamicBatcher(half, max_batch_size, max_queue_delay_s)
    service = CoInferenceService(half, batcher, max_message_bytes, telemetry=telemetry, metrics=metrics)
    try:
        # requests parsed by the service: bytes that are no request get INVALID_ARGUMENT
        served = start_grpc_server(lambda server: add_to_server(service, server), listen, workers=workers,
                                   thread_prefix="coinfer-rpc", service_names=(SERVICE_NAME,),
                                   options=server_options(max_message_bytes))
    except OSError:
        batcher.stop()
        raise
    return RunningServer(served, batcher, service)
