"""Assembling and running the gRPC server process: inference service plus standard health checks."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from coinfer.protos import coinfer_pb2 as pb
from coinfer.rpc import DEFAULT_MAX_MESSAGE_BYTES, server_options
from coinfer.server.batcher import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, DynamicBatcher
from coinfer.server.half import ServerHalf
from coinfer.server.service import (DEFAULT_MAX_QUEUED, DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_CONNECTION,
                                    CoInferenceService, add_to_server)
from coinfer.serving import GrpcServer, start_grpc_server

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoInference"].full_name


@dataclass(frozen=True)
class ServerLimits:
    """What one server holds at once; beyond each, a call is refused with RESOURCE_EXHAUSTED."""
    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    max_queued: int = DEFAULT_MAX_QUEUED


@dataclass
class RunningServer:
    grpc: GrpcServer
    batcher: DynamicBatcher
    service: CoInferenceService

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace_s`; open streams
        end once answered, instead of holding on until grace_s."""
        await self.grpc.stop(grace_s, before_close=self.service.drain)
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
        self.service.close()


async def start_server(half: ServerHalf, listen: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                       max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_queue_delay_s: float = 0.0, telemetry=None,
                       metrics=None, limits: ServerLimits = ServerLimits(),
                       max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> RunningServer:
    """Start serving `half` on `listen` (port 0 picks a free port); `telemetry` (a NodeTelemetry)
    receives a sample per answered request."""
    batcher = DynamicBatcher(half, max_batch_size, max_queue_delay_s, max_batch_tokens)
    service = CoInferenceService(half, batcher, max_message_bytes, telemetry=telemetry, metrics=metrics,
                                 max_streams=limits.max_streams,
                                 max_streams_per_connection=limits.max_streams_per_connection,
                                 max_queued=limits.max_queued)
    try:
        served = await start_grpc_server(lambda server: add_to_server(service, server), listen,
                                         service_names=(SERVICE_NAME,), options=server_options(max_message_bytes))
    except BaseException:
        batcher.stop()
        service.close()
        raise
    return RunningServer(served, batcher, service)
