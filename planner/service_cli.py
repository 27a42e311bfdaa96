"""`coinfer planner`: the planner service (telemetry in, versioned plans out)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "planner", help="serve plans: re-solve P1 from telemetry and push them to device and server",
        description="Serve the planner over gRPC: devices and servers report telemetry and watch plans. "
                    "Estimates of channel gain, FLOPs per cycle, power coefficients and overhead are "
                    "smoothed from telemetry; when one moves beyond --drift for --hysteresis samples, "
                    "or the QoS changes, P1 is re-solved over the split points and a plan with the next "
                    "epoch is pushed. Prints 'listening on HOST:PORT' once serving.")
    parser.add_argument("--listen", default="127.0.0.1:50060",
                        help="address to bind; port 0 picks a free port (default: %(default)s)")
    parser.add_argument("--system", metavar="SYSTEM.yaml",
                        help="system file: overrides any value it names (keys as in scripts/examples/"
                             "paper_system.yaml); everything else is this machine, measured at start "
                             "(coinfer.planner.machine), and the nodes' telemetry")
    parser.add_argument("--max-delay-s", type=float, default=None,
                        help="delay limit per request (default: the system file's, else 0.6)")
    parser.add_argument("--max-energy-j", type=float, default=None,
                        help="energy limit per request (default: the system file's, else 10, which only "
                             "binds for large models)")
    parser.add_argument("--min-quality", type=float, default=0.98,
                        help="never push a plan whose predicted output quality (cosine to the unpruned "
                             "model's output, measured on a calibration set) is below this; 0 turns the "
                             "floor off (default: %(default)s)")
    parser.add_argument("--quality", choices=("measured", "off"), default="measured",
                        help="measured: profile output quality per pruning method at start (cached per "
                             "model fingerprint; see coinfer profile) and plan with it; off: the system "
                             "file's parameter-distortion model, no floor (the paper's P1) "
                             "(default: %(default)s)")
    parser.add_argument("--calibration", metavar="FILE",
                        help="calibration sentences, one per line (default: coinfer's own)")
    parser.add_argument("--model", default="minilm", help="the model being served (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="workload: sequences per request (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=32, help="workload: tokens per sequence (default: %(default)s)")
    parser.add_argument("--codec", default="fp32", help="activation codec of every plan (default: %(default)s)")
    parser.add_argument("--prune-method", default="auto", choices=["auto", "magnitude", "random", "structured"],
                        help="auto: pick per plan from each method's measured quality and speed (structured "
                             "saves time, magnitude keeps quality); or fix one for every plan "
                             "(default: %(default)s)")
    parser.add_argument("--split", default="auto", help="auto (search k) or a fixed split point (default: auto)")
    parser.add_argument("--delay-margin", type=float, default=0.15,
                        help="solve for (1 - margin) x the delay limit (default: %(default)s)")
    parser.add_argument("--drift", type=float, default=0.2,
                        help="relative change of an estimate that triggers a re-plan (default: %(default)s)")
    parser.add_argument("--hysteresis", type=int, default=3,
                        help="... when it persists for this many samples (default: %(default)s)")
    parser.add_argument("--min-interval-s", type=float, default=1.0,
                        help="at most one plan per interval, operator requests excepted (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from coinfer.errors import UsageError
    from coinfer.models import resolve_model
    from coinfer.planner.controller import Controller, ControllerSettings
    from coinfer.planner.profile import profile_from_config, profile_model
    from coinfer.planner.service import PlanBroadcast, PlannerService
    from coinfer import security
    from coinfer.planner.machine import describe, machine_system, merged
    from coinfer.system import load_yaml, parse_system

    security.current().check_exposure(args.listen, "--listen")  # before profiling the model
    split = args.split if args.split == "auto" else _int(args.split, "--split")
    if args.batch < 1 or args.seq_len < 1:
        raise UsageError("--batch and --seq-len must be >= 1")
    if not 0 <= args.delay_margin < 1 or args.drift <= 0 or args.hysteresis < 1 or args.min_interval_s < 0:
        raise UsageError("--delay-margin in [0, 1), --drift > 0, --hysteresis >= 1, --min-interval-s >= 0")
    if not 0 <= args.min_quality <= 1:
        raise UsageError(f"--min-quality: must be in [0, 1], got {args.min_quality:g}")
    if args.quality == "off" and args.prune_method == "auto":
        args.prune_method = "structured"  # nothing measured to choose by
    override = load_yaml(args.system) if args.system else None
    if override is not None and not isinstance(override, dict):
        raise UsageError(f"{args.system}: expected a mapping of system keys")
    start = merged(machine_system(), override)
    for key, value in (("max_delay_s", args.max_delay_s), ("max_energy_j", args.max_energy_j)):
        if value is not None:
            start["qos"][key] = value
    system = parse_system(start)
    print(f"[planner] {describe(system)}", file=sys.stderr, flush=True)
    src = resolve_model(args.model)
    print(f"[planner] profiling {src.name} for batch {args.batch} x {args.seq_len} tokens ...", file=sys.stderr,
          flush=True)
    profile = profile_model(src, args.batch, args.seq_len)
    quality = check = None
    if args.quality == "measured":
        from coinfer.planner.quality import QualityCheck, load_or_measure

        from coinfer.planner.profile_cli import read_calibration

        sentences = read_calibration(args.calibration) if args.calibration else None
        quality = load_or_measure(src, sentences=sentences,
                                  progress=lambda msg: print(f"[planner] quality: {msg}", file=sys.stderr,
                                                             flush=True))
        check = QualityCheck(src, sentences)
    settings = ControllerSettings(batch=args.batch, seq_len=args.seq_len, codec=args.codec,
                                  prune_method=args.prune_method, split=split, delay_margin=args.delay_margin,
                                  drift=args.drift, hysteresis=args.hysteresis, min_interval_s=args.min_interval_s,
                                  min_quality=args.min_quality)
    broadcast = PlanBroadcast()
    controller = Controller(system, profile, settings, broadcast.publish,
                            profile_at=lambda b, s: profile_from_config(src.config, src.family, src.name, b, s),
                            quality=quality, quality_check=check)
    controller.replan("start")

    service = PlannerService(controller, broadcast)
    try:
        return asyncio.run(_serve(service, broadcast, args.listen))
    finally:
        service.close()


async def _serve(service, broadcast, listen: str) -> int:
    import asyncio
    import logging

    from coinfer.errors import UsageError
    from coinfer.protos import planner_pb2_grpc as ppb_grpc
    from coinfer.serving import on_termination, start_grpc_server

    stop = on_termination()
    broadcast.bind(asyncio.get_running_loop())
    try:
        served = await start_grpc_server(lambda server: ppb_grpc.add_PlannerServicer_to_server(service, server),
                                         listen)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    print(f"listening on {listen.rpartition(':')[0]}:{served.port}", flush=True)
    logging.getLogger(__name__).info("first plan: %s", service.controller.plan)
    await stop.wait()
    await served.stop(2, before_close=broadcast.close)
    return 0


def _int(value: str, option: str) -> int:
    from coinfer.errors import UsageError

    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{option}: expected auto or an integer, got {value!r}") from None

