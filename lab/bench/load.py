"""Load test: concurrent devices -> channel emulator -> server; prints one JSON object.

    scripts/load_test [--requests 10000] [--devices 8] [--rate-bps R]

Starts a `coinfer server` and a `coinfer channel` (unlimited unless --rate-bps) on 127.0.0.1, then
--devices device processes (each a DeviceRuntime with its own connection and device half) sending
--requests requests in all, one at a time each. Reports requests, errors, latency percentiles (each
caller's wall time per request, retries included), throughput, and the server's resident memory
(psutil) after a warm-up and at the end of the run, with the growth in percent (target < 10 %).
Exit status 0 when there were no errors and the growth is under the target.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

SENTENCES = [
    "Short one.",
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "A load test sends many requests from several devices at once, through the channel emulator.",
    "Batching on the server puts requests of different lengths together and pads them.",
    "Memory must stay flat: a server that grows with every request dies eventually, however slowly it grows.",
    "Eight words in this sentence, give or take.",
    "What the device sends is a tensor of hidden states, shaped batch by sequence by hidden size, as raw bytes.",
]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/load_test", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="requests in all, over every device")
    parser.add_argument("--devices", type=int, default=8, help="concurrent devices (processes)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--split", type=int, default=2)
    parser.add_argument("--rate-bps", type=float, help="uplink rate of the channel emulator (default: unlimited)")
    parser.add_argument("--warmup", type=int, default=400,
                        help="requests before the start RSS is read (allocator pools settle; not counted)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="each request's deadline, retries included")
    parser.add_argument("--growth-target-pct", type=float, default=10.0)
    parser.add_argument("--server-log", help="file for the server's and channel's stderr (default: discarded)")
    parser.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)  # internal: one device process
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.worker:
        return device_process(args)
    if args.requests < 1 or args.devices < 1 or args.warmup < 0:
        parser.error("--requests and --devices must be >= 1, --warmup >= 0")

    import psutil

    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.protos import coinfer_pb2 as pb
    from coinfer.protos import coinfer_pb2_grpc as pb_grpc

    src = resolve_model(args.model)
    log = open(args.server_log, "w") if args.server_log else open(os.devnull, "w")
    services, workers = [], []
    try:
        server = ServiceProcess(["server", "--model", args.model, "--split", str(args.split),
                                 "--listen", "127.0.0.1:0"], "server", stderr=log)
        services.append(server)
        shaping = ["--rate-bps", str(args.rate_bps)] if args.rate_bps else ["--unlimited"]
        channel = ServiceProcess(["channel", "--listen", "127.0.0.1:0", "--upstream", server.address,
                                  "--control", "127.0.0.1:0", *shaping], "channel", expect=("listening", "control"),
                                 stderr=log)
        services.append(channel)
        server_proc = psutil.Process(server.proc.pid)
        rss_before_warmup = server_proc.memory_info().rss

        # one process per device: its own connection (gRPC shares one between channels of a process)
        shares = [args.requests // args.devices + (i < args.requests % args.devices) for i in range(args.devices)]
        warmups = [args.warmup // args.devices + (i < args.warmup % args.devices) for i in range(args.devices)]
        for i, (count, warmup) in enumerate(zip(shares, warmups)):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "coinfer.lab.bench.load", "--worker", channel.address, "--model", args.model,
                 "--split", str(args.split), "--requests", str(count), "--warmup", str(warmup),
                 "--timeout-s", str(args.timeout_s), "--seed", str(i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for worker in workers:  # each has warmed up (model loaded, connection made, first requests done)
            line = worker.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a device process failed to start (exit {worker.wait()})")
        rss_start = server_proc.memory_info().rss
        peak = [rss_start]
        curve: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:  # the peak and the curve, not only the two ends
            while not done.wait(0.5):
                rss = server_proc.memory_info().rss
                peak[0] = max(peak[0], rss)
                curve.append((time.perf_counter() - started, rss))

        with _stub(server.address, pb_grpc) as stub:
            info_start = stub.Info(pb.InfoRequest(), timeout=30)
        started = time.perf_counter()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [json.loads(worker.stdout.readline() or "null") for worker in workers]
        duration = time.perf_counter() - started
        done.set()
        sampler.join()
        rss_end = server_proc.memory_info().rss
        if any(r is None for r in results):
            raise RuntimeError("a device process died during the run")
        with _stub(server.address, pb_grpc) as stub:
            info_end = stub.Info(pb.InfoRequest(), timeout=30)
        from coinfer.channel import ChannelControlClient

        control = ChannelControlClient(channel.endpoints["control"])
        try:
            stats = control.stats()
        finally:
            control.close()
        measured = {"latencies": sorted(x for r in results for x in r["latencies"]),
                    "errors": sum((Counter(r["errors"]) for r in results), Counter()),
                    "retries": sum(r["retries"] for r in results), "duration_s": duration}

        lat = measured["latencies"]
        errors = sum(measured["errors"].values())
        growth = 100.0 * (rss_end - rss_start) / rss_start
        mb = 1024 * 1024
        report = {
            "requests": args.requests,
            "devices": args.devices,
            "answered": len(lat),
            "errors": errors,
            "error_codes": dict(measured["errors"]),
            "device_retries": measured["retries"],
            "duration_s": round(measured["duration_s"], 2),  # from "go" to the last answer
            "throughput_rps": round(len(lat) / measured["duration_s"], 1),
            "latency_ms": {"p50": round(percentile(lat, 50) * 1e3, 2), "p99": round(percentile(lat, 99) * 1e3, 2),
                           "mean": round(sum(lat) / max(1, len(lat)) * 1e3, 2),
                           "max": round((lat[-1] if lat else float("nan")) * 1e3, 2)},
            "server_rss_mb": {"before_warmup": round(rss_before_warmup / mb, 1), "start": round(rss_start / mb, 1),
                              "end": round(rss_end / mb, 1), "peak": round(peak[0] / mb, 1)},
            # about ten points of (seconds since the start, MB): the server's reply cache keeps each
            # reply 60 s, so the RSS rises for the first minute and then should stay flat
            "server_rss_curve_mb": [[round(t, 1), round(r / mb, 1)] for t, r in curve[:: max(1, len(curve) // 10)]],
            "rss_growth_pct": round(growth, 2),
            "rss_growth_target_pct": args.growth_target_pct,
            "warmup_requests": args.warmup,
            "server": {"requests_computed": info_end.requests_computed - info_start.requests_computed,
                       "replies_from_cache": info_end.replies_from_cache - info_start.replies_from_cache},
            "channel": {"mode": stats.mode, "bytes_up": stats.bytes_up, "bytes_down": stats.bytes_down,
                        "connections_total": stats.connections_total},
            "model": src.name, "split": args.split,
        }
        report["ok"] = errors == 0 and growth < args.growth_target_pct
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
        for service in reversed(services):
            service.stop()
        log.close()


def device_process(args) -> int:
    """One device: warm up, say "ready", wait for "go", send its requests, print one JSON line."""
    import torch

    from coinfer.device.runtime import DeviceRuntime
    from coinfer.models import resolve_model

    torch.set_num_threads(1)  # several device processes share the cores
    device = DeviceRuntime(resolve_model(args.model), args.split, server=args.worker, timeout_s=args.timeout_s)
    try:
        for i in range(args.warmup):
            device.infer([SENTENCES[(i + args.seed) % len(SENTENCES)]])
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        latencies, errors, retries = [], Counter(), 0
        for i in range(args.requests):
            started = time.perf_counter()
            try:
                result = device.infer([SENTENCES[(i + args.seed) % len(SENTENCES)]])
            except Exception as exc:  # counted; the device goes on
                errors[getattr(getattr(exc, "code", None), "name", type(exc).__name__)] += 1
                continue
            latencies.append(time.perf_counter() - started)
            retries += result.retries
        print(json.dumps({"latencies": latencies, "errors": dict(errors), "retries": retries}), flush=True)
        return 0
    finally:
        device.close()


class _stub:
    """A CoInference stub on a channel of its own, closed on exit."""

    def __init__(self, address: str, pb_grpc):
        import grpc

        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoInferenceStub(self.channel)

    def __enter__(self):
        return self.stub

    def __exit__(self, *exc) -> None:
        self.channel.close()


if __name__ == "__main__":
    sys.exit(main())
