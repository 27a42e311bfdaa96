"""The planner as a gRPC service: telemetry in (a client stream), plans out (a server stream per
subscriber: the current plan at once, then every new one), state and operator calls."""
from __future__ import annotations

import logging
import queue
import threading

import grpc

from coinfer.planner.controller import Controller
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc

log = logging.getLogger(__name__)
_CLOSED = object()


class PlanBroadcast:
    """Fan-out of plans to every subscriber, each with its own queue (a slow one delays no other)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: set[queue.Queue] = set()
        self.latest: ppb.Plan | None = None

    def publish(self, plan: ppb.Plan) -> None:
        with self._lock:
            self.latest = plan
            for subscriber in self._subscribers:
                subscriber.put(plan)

    def subscribe(self) -> queue.Queue:
        inbox: queue.Queue = queue.Queue()
        with self._lock:
            self._subscribers.add(inbox)
            if self.latest is not None:
                inbox.put(self.latest)
        return inbox

    def unsubscribe(self, inbox: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(inbox)
        inbox.put(_CLOSED)

    def close(self) -> None:
        with self._lock:
            subscribers, self._subscribers = list(self._subscribers), set()
        for inbox in subscribers:
            inbox.put(_CLOSED)

    @property
    def count(self) -> int:
        return len(self._subscribers)


class PlannerService(ppb_grpc.PlannerServicer):
    def __init__(self, controller: Controller, broadcast: PlanBroadcast):
        self.controller = controller
        self.broadcast = broadcast

    def ReportTelemetry(self, request_iterator, context):
        received = 0
        for message in request_iterator:
            received += 1
            kind = message.WhichOneof("sample")
            try:
                if kind == "device":
                    self.controller.observe_device(message.device)
                elif kind == "server":
                    self.controller.observe_server(message.server)
            except Exception:  # one odd sample must not end the node's telemetry stream
                log.exception("telemetry sample from %s could not be used", message.node_id)
        return ppb.TelemetryAck(received=received)

    def WatchPlans(self, request, context):
        # A node ahead of this planner (it restarted): move past the node's epoch before answering,
        # so that plans never go backwards for anyone.
        self.controller.adopt_epoch(request.known_epoch, request.known_planner_id)
        inbox = self.broadcast.subscribe()
        context.add_callback(lambda: self.broadcast.unsubscribe(inbox))
        log.info("%s %s subscribed to plans", request.role or "node", request.node_id)
        while True:
            plan = inbox.get()
            if plan is _CLOSED:
                return
            yield plan

    def GetState(self, request, context):
        c = self.controller
        return ppb.PlannerState(plan=c.plan, estimates=c.estimates().to_proto(),
                                planned_with=c.planned_with.to_proto(),
                                qos=ppb.QoS(max_delay_s=c.qos.max_delay_s, max_energy_j=c.qos.max_energy_j),
                                subscribers=self.broadcast.count)

    def SetQoS(self, request, context):
        try:
            return self.controller.set_qos(request.qos.max_delay_s, request.qos.max_energy_j)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def Replan(self, request, context):
        return self.controller.replan("operator_request")
