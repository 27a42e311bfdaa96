"""Stream capacity: does a server with a thousand idle device streams, and a planner with hundreds of
subscribed nodes, still answer at once? Prints one JSON object.

* server: `coinfer server` (random:bert-tiny, k = 1, so a forward costs little and what is measured
  is the service) with --max-streams N; N idle InferStream calls are opened over several connections
  and held. The (N+1)th must be refused with RESOURCE_EXHAUSTED (proof that all N are open and that a
  limit answers rather than hangs). With them open: p50/p99 of the health check, of Info and of a fresh
  unary Infer, against the same with no stream open; RSS per idle stream.
* planner: `coinfer planner` with M emulated nodes, each holding a WatchPlans subscription (which got
  its first plan) and an open telemetry stream. With them open: p50/p99 of health, GetState and a fresh
  subscription's first plan.

Loopback only; every loop is bounded in count and time; every process started is stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

TARGET_P99_MS = 100.0
# gRPC shares one connection among channels to the same target; each channel here gets its own
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _percentiles(samples_s: list[float]) -> dict:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 3), "p99_ms": round(p99 * 1e3, 3), "n": len(ordered)}


async def _timed(call, repeats: int) -> dict:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


async def _server_section(streams: int, per_channel: int, repeats: int) -> dict:
    import grpc
    import torch
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from coinfer.codecs import encode
    from coinfer.lab.launch import ServiceProcess
    from coinfer.protos import coinfer_pb2 as pb
    from coinfer.protos import coinfer_pb2_grpc as pb_grpc

    with ServiceProcess(["server", "--model", "random:bert-tiny", "--split", "1", "--threads", "1",
                         "--listen", "127.0.0.1:0", "--max-streams", str(streams),
                         "--max-streams-per-connection", str(per_channel)], "capacity-server") as server:
        probe = grpc.aio.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(probe)
        stub = pb_grpc.CoInferenceStub(probe)
        counter = iter(range(10**9))

        def fresh_request() -> pb.InferRequest:
            return pb.InferRequest(request_id=f"capacity-{next(counter)}", plan_epoch=0, split_point=1,
                                   model_id="random:bert-tiny", hidden_states=encode(torch.randn(1, 8, 64)),
                                   attention_mask=encode(torch.ones(1, 8, dtype=torch.long)))

        async def measure() -> dict:
            return {
                "health": await _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10), repeats),
                "info": await _timed(lambda: stub.Info(pb.InfoRequest(), timeout=10), repeats),
                "fresh_infer": await _timed(lambda: stub.Infer(fresh_request(), timeout=10), repeats),
            }

        await stub.Info(pb.InfoRequest(), timeout=30)
        idle = await measure()
        rss_before = _rss(server.proc.pid)
        channels = [grpc.aio.insecure_channel(server.address, OWN_CONNECTION)
                    for _ in range(-(-streams // per_channel))]
        opened = []
        started = time.perf_counter()
        for i in range(streams):
            call = pb_grpc.CoInferenceStub(channels[i // per_channel]).InferStream()
            await call.wait_for_connection()
            opened.append(call)
        open_s = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the server settle every stream's coroutine
        rss_after = _rss(server.proc.pid)
        loaded = await measure()
        # one more than the limit, on a fresh connection: refused, not queued
        extra_channel = grpc.aio.insecure_channel(server.address, OWN_CONNECTION)
        extra = pb_grpc.CoInferenceStub(extra_channel).InferStream()
        try:
            await asyncio.wait_for(extra.read(), timeout=10)
            refused = "answered"
        except grpc.aio.AioRpcError as exc:
            refused = exc.code().name
        except asyncio.TimeoutError:
            refused = "hung"
        for call in opened:
            call.cancel()
        for channel in channels + [extra_channel, probe]:
            await channel.close()
    return {"streams_open": streams, "streams_per_connection": per_channel, "open_s": round(open_s, 2),
            "one_more_stream": refused, "no_streams": idle, "with_streams": loaded,
            "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1),
            "rss_per_idle_stream_kib": round((rss_after - rss_before) / streams / 1024, 2)}


async def _planner_section(nodes: int, per_channel: int, repeats: int) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from coinfer.lab.launch import ServiceProcess
    from coinfer.protos import planner_pb2 as ppb
    from coinfer.protos import planner_pb2_grpc as ppb_grpc

    with ServiceProcess(["planner", "--model", "random:bert-tiny", "--listen", "127.0.0.1:0"],
                        "capacity-planner") as planner:
        probe = grpc.aio.insecure_channel(planner.address)
        health = health_pb2_grpc.HealthStub(probe)
        stub = ppb_grpc.PlannerStub(probe)

        async def first_plan() -> None:
            call = stub.WatchPlans(ppb.WatchRequest(node_id="probe", role="device"), timeout=10)
            await call.read()
            call.cancel()

        async def measure() -> dict:
            return {
                "health": await _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10), repeats),
                "get_state": await _timed(lambda: stub.GetState(ppb.StateRequest(), timeout=10), repeats),
                "fresh_subscription": await _timed(first_plan, repeats),
            }

        await stub.GetState(ppb.StateRequest(), timeout=60)
        idle = await measure()
        rss_before = _rss(planner.proc.pid)
        # a node holds two streams (plans and telemetry): per_channel // 2 nodes share a connection
        nodes_per_channel = max(1, per_channel // 2)
        channels = [grpc.aio.insecure_channel(planner.address, OWN_CONNECTION)
                    for _ in range(-(-nodes // nodes_per_channel))]
        watches, reports = [], []
        started = time.perf_counter()
        for i in range(nodes):
            node = ppb_grpc.PlannerStub(channels[i // nodes_per_channel])
            watch = node.WatchPlans(ppb.WatchRequest(node_id=f"node-{i}", role="device"))
            await watch.read()  # subscribed: the current plan arrived
            watches.append(watch)
            report = node.ReportTelemetry()
            await report.wait_for_connection()
            reports.append(report)
        open_s = time.perf_counter() - started
        await asyncio.sleep(1.0)
        state = await stub.GetState(ppb.StateRequest(), timeout=10)
        rss_after = _rss(planner.proc.pid)
        loaded = await measure()
        for call in watches + reports:
            call.cancel()
        for channel in channels + [probe]:
            await channel.close()
    return {"nodes": nodes, "subscribers_seen": state.subscribers, "open_s": round(open_s, 2),
            "no_nodes": idle, "with_nodes": loaded,
            "rss_per_node_kib": round((rss_after - rss_before) / nodes / 1024, 2)}


def _verdict(result: dict) -> dict:
    worst = {}
    for section, key in (("server", "with_streams"), ("planner", "with_nodes")):
        if section in result:
            for name, cell in result[section][key].items():
                worst[f"{section}.{name}"] = cell["p99_ms"]
    return {"target_p99_ms": TARGET_P99_MS, "worst_p99_ms": max(worst.values()) if worst else None,
            "meets_target": bool(worst) and max(worst.values()) < TARGET_P99_MS
            and result.get("server", {}).get("one_more_stream", "RESOURCE_EXHAUSTED") == "RESOURCE_EXHAUSTED"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/stream_capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000, help="idle device streams on the server (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=500, help="emulated nodes on the planner (default: %(default)s)")
    parser.add_argument("--per-connection", type=int, default=64,
                        help="streams per client connection, the server's default limit (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=200, help="calls timed per measure (default: %(default)s)")
    parser.add_argument("--only", choices=("server", "planner"), help="one section only")
    args = parser.parse_args(argv)
    if min(args.streams, args.nodes, args.per_connection, args.repeats) < 1:
        parser.error("every count must be >= 1")
    result: dict = {}
    if args.only in (None, "server"):
        print(f"[capacity] server: opening {args.streams} idle streams ...", file=sys.stderr, flush=True)
        result["server"] = asyncio.run(_server_section(args.streams, args.per_connection, args.repeats))
    if args.only in (None, "planner"):
        print(f"[capacity] planner: subscribing {args.nodes} nodes ...", file=sys.stderr, flush=True)
        result["planner"] = asyncio.run(_planner_section(args.nodes, args.per_connection, args.repeats))
    result.update(_verdict(result))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
