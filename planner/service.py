"""The planner as a gRPC service on asyncio: telemetry in (a client stream), plans out (a server stream
per subscriber: the current plan at once, then every new one), state and operator calls.

A subscriber waiting for its next plan is a suspended coroutine, so hundreds of nodes hold no thread.
The controller (estimates, P1 solves) is called on one worker thread, in arrival order, so a solve never
blocks the event loop and the health service keeps answering while it runs.
"""
from __future__ import annotations

import asyncio
import logging
import threading

import grpc

from coinfer.planner.controller import Controller, RateLimited
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.serving import StreamLimits, blocking_executor

log = logging.getLogger(__name__)
_CLOSED = object()
DEFAULT_MAX_SUBSCRIBERS = 4096
DEFAULT_MAX_STREAMS_PER_CONNECTION = 64


class PlanBroadcast:
    """Fan-out of plans to every subscriber, each with its own queue (a slow one delays no other).
    `publish` may be called from any thread; the queues live on the service's event loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.latest: ppb.Plan | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, plan: ppb.Plan) -> None:
        with self._lock:
            self.latest = plan
            subscribers = list(self._subscribers)
        for inbox in subscribers:
            self._loop.call_soon_threadsafe(inbox.put_nowait, plan)

    def subscribe(self) -> asyncio.Queue:
        """(On the loop.) A queue that gets the latest plan at once, then each new one."""
        inbox: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._subscribers.add(inbox)
            if self.latest is not None:
                inbox.put_nowait(self.latest)
        return inbox

    def unsubscribe(self, inbox: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers.discard(inbox)

    def close(self) -> None:
        """(On the loop.) End every subscription."""
        with self._lock:
            subscribers, self._subscribers = list(self._subscribers), set()
        for inbox in subscribers:
            inbox.put_nowait(_CLOSED)

    @property
    def count(self) -> int:
        return len(self._subscribers)


class PlannerService(ppb_grpc.PlannerServicer):
    def __init__(self, controller: Controller, broadcast: PlanBroadcast,
                 max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
                 max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION):
        self.controller = controller
        self.broadcast = broadcast
        # both long-lived calls of a node count: its plan subscription and its telemetry stream
        self.streams = StreamLimits(2 * max_subscribers, max_streams_per_connection, "planner streams")
        self._worker = blocking_executor(1, "coinfer-planner")

    async def _call(self, fn, *args):
        """`fn(*args)` on the controller's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def ReportTelemetry(self, request_iterator, context):
        release = await self.streams.admit(context)
        received = 0
        try:
            async for message in request_iterator:
                received += 1
                kind = message.WhichOneof("sample")
                observe = {"device": self.controller.observe_device, "server": self.controller.observe_server}.get(kind)
                if observe is None:
                    continue
                try:
                    await self._call(observe, getattr(message, kind))
                except ValueError as exc:  # a value no honest node sends: refused, nothing was used
                    log.warning("telemetry from %s refused: %s", message.node_id[:64], exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{kind}.{exc}")
                except Exception:  # one odd sample must not end the node's telemetry stream
                    log.exception("telemetry sample from %s could not be used", message.node_id[:64])
        finally:
            release()
        return ppb.TelemetryAck(received=received)

    async def WatchPlans(self, request, context):
        release = await self.streams.admit(context)
        try:
            # A node ahead of this planner (it restarted): move past the node's epoch before answering,
            # so that plans never go backwards for anyone.
            try:
                await self._call(self.controller.adopt_epoch, request.known_epoch, request.known_planner_id)
                if request.HasField("knobs"):
                    await self._call(self.controller.set_knobs, request.role, request.knobs)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            inbox = self.broadcast.subscribe()
            log.info("%s %s subscribed to plans", (request.role or "node")[:16], request.node_id[:64])
            try:
                while True:
                    plan = await inbox.get()
                    if plan is _CLOSED:
                        return
                    yield plan
            finally:
                self.broadcast.unsubscribe(inbox)
        finally:
            release()

    async def GetState(self, request, context):
        c = self.controller
        plan, estimates, planned_with, qos = await self._call(
            lambda: (c.plan, c.estimates().to_proto(), c.planned_with.to_proto(), c.qos))
        return ppb.PlannerState(plan=plan, estimates=estimates, planned_with=planned_with,
                                qos=ppb.QoS(max_delay_s=qos.max_delay_s, max_energy_j=qos.max_energy_j),
                                subscribers=self.broadcast.count)

    async def SetQoS(self, request, context):
        try:
            return await self._call(self.controller.set_qos, request.qos.max_delay_s, request.qos.max_energy_j)
        except ValueError as exc:  # outside its bounds: nothing was stored
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RateLimited as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def Replan(self, request, context):
        try:
            return await self._call(self.controller.replan, "operator_request")
        except RateLimited as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
