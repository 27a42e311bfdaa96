"""`coinfer server`: serve the server half of a split model over gRPC."""
from __future__ import annotations

import argparse

from coinfer.options import add_frequency_arguments, add_model_arguments, add_planner_arguments

# the service's limits, repeated here as literals so that `coinfer --help` imports no grpc or torch
DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_QUEUED = 4096, 64, 4096


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "server", help="serve the server half (blocks k+1..L and the head) over gRPC",
        description="Load blocks k+1..L of the model and its head (pooling, or BART's decoder), prune "
                    "them to --rho, and serve device requests over gRPC until SIGTERM. Prints one line, "
                    "'listening on HOST:PORT', to stdout once ready.")
    add_model_arguments(parser, "remaining-parameter ratio of the server half, in (0, 1] (default: 1)")
    parser.add_argument("--listen", default="127.0.0.1:50051",
                        help="address to bind; port 0 picks a free port (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU), cpu, or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "fp16", "bf16"],
                        help="precision of the server half's weights and compute; answers are float32 "
                             "either way. auto: fp32 on the CPU, bf16 (else fp16) on CUDA; fp16 needs CUDA "
                             "(default: %(default)s)")
    parser.add_argument("--engine", default="eager", choices=["eager", "compile", "onnxruntime"],
                        help="what computes the half's blocks (and pooling): eager torch; torch.compile (compiled at "
                             "load, eager if it fails); or onnxruntime (exported once, cached under "
                             "$COINFER_ONNX_CACHE or ~/.cache/coinfer/onnx; needs pip install 'coinfer[onnx]'). "
                             "BART's decoder stays eager (default: %(default)s)")
    parser.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS,
                        help="device streams held open at once; one more is refused with RESOURCE_EXHAUSTED "
                             "(an idle stream costs memory, no thread) (default: %(default)s)")
    parser.add_argument("--max-streams-per-connection", type=int, default=DEFAULT_MAX_STREAMS_PER_CONNECTION,
                        help="streams one client connection may hold (default: %(default)s)")
    parser.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                        help="requests accepted and not yet answered; one more is refused with "
                             "RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="sequences computed together at most, from requests of any batch size; 1 turns "
                             "batching off (default: %(default)s)")
    parser.add_argument("--max-batch-tokens", type=int, default=8192,
                        help="tokens computed together at most, counted as sequences x the longest one (the "
                             "padded batch); a request over it runs alone. 8192 holds 64 sentences of 128 tokens "
                             "or 16 of 512, beyond which a CPU's throughput per token no longer rises and a "
                             "batch only makes its first requests wait (default: %(default)s)")
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                        help="how long the oldest queued request may wait for others to batch with; 0 "
                             "starts at once and batches only what queued while busy (default: %(default)s)")
    add_planner_arguments(parser, "server", "split, rho, frequency cap")
    add_frequency_arguments(parser)
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics")
    parser.add_argument("--max-freq-hz", type=float, default=3.0e9,
                        help="F_s, the clock a frequency cap is relative to; plans from a planner set it "
                             "(default: %(default)g)")
    parser.add_argument("--plan-switch-grace-s", type=float, default=2.0,
                        help="a new plan from the planner swaps in when the first request under it arrives, "
                             "or after this long; until then requests under the previous plan are still "
                             "answered, not refused and re-sent. 0 swaps at once (default: %(default)s)")
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="on SIGTERM, time allowed for in-flight requests (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    import torch

    from coinfer.engines import check_engine
    from coinfer.errors import UsageError
    from coinfer.models import resolve_model
    from coinfer.pruning import check_method, check_ratio
    from coinfer.server.app import ServerLimits
    from coinfer.server.half import ServerHalf, pick_device, resolve_dtype
    from coinfer.split import check_split

    from coinfer import security

    # refused before minutes of loading: an exposed address needs TLS or a token (or --insecure)
    security.current().check_exposure(args.listen, "--listen")
    if args.threads:
        torch.set_num_threads(args.threads)
    for option in ("max_batch_size", "max_batch_tokens", "max_streams", "max_streams_per_connection", "max_queued"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.max_queue_delay_ms < 0:
        raise UsageError(f"--max-queue-delay-ms must be >= 0, got {args.max_queue_delay_ms:g}")
    limits = ServerLimits(args.max_streams, args.max_streams_per_connection, args.max_queued)
    check_ratio(args.rho, "--rho")
    check_method(args.prune_method)
    check_engine(args.engine)  # a missing onnxruntime is named before minutes of loading
    resolve_dtype(args.dtype, pick_device(args.device))  # before loading anything
    src = resolve_model(args.model, seed=args.seed)
    check_split(src, args.split)
    print(f"[server] loading blocks {args.split + 1}..{src.num_blocks} of {src.name} ...", file=sys.stderr, flush=True)
    if args.plan_switch_grace_s < 0:
        raise UsageError("--plan-switch-grace-s must be >= 0")
    half = ServerHalf(src, args.split, args.rho, args.prune_method, args.epoch, args.device, args.max_freq_hz,
                      dtype=args.dtype, switch_grace_s=args.plan_switch_grace_s,
                      emulate_frequency=args.emulate_frequency, engine=args.engine)
    if args.engine != "eager":
        print(f"[server] engine: {half.state.engine.describe()}", file=sys.stderr, flush=True)
    if half.freq.mode == "emulated":
        print(f"[server] frequency caps are emulated ({half.freq.reason}); energy from {half.meter.source}",
              file=sys.stderr, flush=True)
    elif half.freq.mode == "fixed" and args.planner:
        print(f"[server] clock {half.freq.describe()}: plans' frequency caps are ignored "
              f"(--emulate-frequency stretches compute instead); energy from {half.meter.source}",
              file=sys.stderr, flush=True)
    if args.planner:
        half.follow(args.planner, args.node_id, min_rho=args.min_rho)
    metrics = None
    if args.metrics_listen:
        from coinfer.server.metrics import ServerMetrics

        metrics = ServerMetrics()
        try:
            metrics.serve(args.metrics_listen)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--metrics-listen {args.metrics_listen}: {exc}") from None
    try:
        return asyncio.run(_serve(half, args, limits, metrics))
    finally:
        if metrics is not None:
            metrics.stop()


async def _serve(half, args, limits, metrics) -> int:
    import logging
    import sys

    from coinfer.errors import UsageError
    from coinfer.server.app import start_server
    from coinfer.serving import on_termination

    stop = on_termination()
    try:
        running = await start_server(half, args.listen, args.max_message_mb * 1024 * 1024, args.max_batch_size,
                                     args.max_queue_delay_ms / 1e3, half.telemetry, metrics, limits,
                                     max_batch_tokens=args.max_batch_tokens)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    host = args.listen.rpartition(":")[0]
    print(f"listening on {host}:{running.port}", flush=True)
    logging.getLogger(__name__).info("serving %s k=%d rho=%.3f on %s", half.src.name, half.plan.split,
                                     half.plan.rho, half.device)
    await stop.wait()
    half.stop_following()
    await running.stop(args.grace_s)
    half.close_telemetry()
    print("[server] stopped", file=sys.stderr, flush=True)
    return 0
