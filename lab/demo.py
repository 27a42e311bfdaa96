"""`coinfer demo`: a real split over loopback, end to end, with a table a person can read.

It starts `coinfer server` and `coinfer channel` (the wireless channel emulator, in front of the
server) as separate processes on free loopback ports, runs the device half in this process through
the channel on a fixed set of sentences, and checks every answer against the whole model run in one
process with the same pruning. Each row shows the measured transfer next to the channel's prediction
S / R(p) (plus the propagation delay, both ways).
"""
from __future__ import annotations

import argparse

from coinfer.lab.bench.common import percentile
from coinfer.options import add_model_arguments
from coinfer.samples import SENTENCES



def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run server, channel emulator and device over loopback and print a table",
        description="Start `coinfer server` and the channel emulator in front of it on free 127.0.0.1 "
                    "ports, run the device half here on a fixed set of sentences, and print per request: "
                    "device compute, transfer (measured, and predicted from the emulated rate R(p)), "
                    "server compute, end-to-end time and bytes sent, plus the largest difference from "
                    "the whole model run in one process with the same pruning.")
    add_model_arguments(parser, "remaining-parameter ratio of both halves, in (0, 1] (default: 1)")
    parser.add_argument("--rho-device", type=float, default=None, help="device ratio (default: --rho)")
    parser.add_argument("--rho-server", type=float, default=None, help="server ratio (default: --rho)")
    parser.add_argument("--codec", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "int4"],
                        help="activation codec on the wire (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=12, help="requests to send (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="sentences per request (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="BART: tokens to generate (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="requests sent first and left out of the numbers (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object instead of the table")
    loop = parser.add_argument_group("closed loop (planner + server + channel + device, plans applied live)")
    loop.add_argument("--closed-loop", action="store_true",
                      help="also start the planner; device and server follow its plans (see coinfer.lab.closed_loop)")
    loop.add_argument("--scenario", choices=["step-fade"],
                      help="step-fade: the channel gain drops by 10 dB halfway through --duration")
    loop.add_argument("--duration", type=float, default=16.0,
                      help="seconds of requests after the delay limit is set (default: %(default)s)")
    loop.add_argument("--calibrate-s", type=float, default=5.0,
                      help="seconds the planner measures the machine before the limit is set (default: %(default)s)")
    channel = parser.add_argument_group("channel emulator (device -> server)")
    channel.add_argument("--no-channel", action="store_true", help="connect the device straight to the server")
    channel.add_argument("--bandwidth-hz", type=float, default=1e6, help="uplink bandwidth B (default: %(default)g)")
    channel.add_argument("--tx-power-w", type=float, default=0.1, help="transmit power p (default: %(default)g)")
    channel.add_argument("--gain-db", type=float, default=-100.0,
                         help="channel power gain g in dB (default: %(default)g: R(p) = 11.3 Mbit/s with the "
                              "other defaults)")
    channel.add_argument("--delay-ms", type=float, default=2.0, help="one-way propagation delay (default: %(default)g)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    import torch

    from coinfer.device.runtime import DeviceRuntime
    from coinfer.errors import UsageError
    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.lab.monolithic import WholeModel
    from coinfer.split import GenerationOptions, check_split

    if args.requests < 1 or args.batch_size < 1:
        raise UsageError("--requests and --batch-size must be at least 1")
    if args.scenario and not args.closed_loop:
        raise UsageError("--scenario needs --closed-loop")
    if args.closed_loop:
        from coinfer.lab.closed_loop import run_closed_loop

        if args.no_channel:
            raise UsageError("--closed-loop needs the channel emulator (drop --no-channel)")
        return run_closed_loop(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    rho_device = args.rho if args.rho_device is None else args.rho_device
    rho_server = args.rho if args.rho_server is None else args.rho_server
    src = resolve_model(args.model, seed=args.seed)
    check_split(src, args.split)

    def say(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    say(f"starting the server process: {src.name}, blocks {args.split + 1}..{src.num_blocks}, rho={rho_server}")
    server_args = ["server", "--model", args.model, "--split", str(args.split), "--rho", str(rho_server),
                   "--prune-method", args.prune_method, "--seed", str(args.seed), "--epoch", str(args.epoch),
                   "--listen", "127.0.0.1:0", "--max-message-mb", str(args.max_message_mb)]
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    generation = GenerationOptions(max_new_tokens=args.max_new_tokens)
    with contextlib.ExitStack() as running:
        server = running.enter_context(ServiceProcess(server_args, "server"))
        target, channel = server.address, None
        if not args.no_channel:
            channel = running.enter_context(ServiceProcess(
                ["channel", "--listen", "127.0.0.1:0", "--upstream", server.address, "--control", "127.0.0.1:0",
                 "--bandwidth-hz", str(args.bandwidth_hz), "--tx-power-w", str(args.tx_power_w),
                 "--gain-db", str(args.gain_db), "--delay-ms", str(args.delay_ms)],
                "channel", expect=("listening", "control")))
            target = channel.address
            say(f"channel emulator on {channel.address} -> server {server.address}")
        say(f"server listening on {server.address}; loading the device half (blocks 1..{args.split})")
        device = DeviceRuntime(src, args.split, rho_device, args.prune_method, target, args.codec,
                               args.epoch, generation=generation, max_message_bytes=args.max_message_mb << 20)
        say("loading the whole model in this process as the reference")
        whole = WholeModel(src)
        whole.prune(args.split, rho_device, rho_server, args.prune_method)
        try:
            device.connect()
            for _ in range(max(0, args.warmup)):  # first calls pay for lazy initialisation on both sides
                device.infer(SENTENCES[:args.batch_size])
            rate_bps, delay_s = _channel_rate(channel)
            rows, max_diff, ok = [], 0.0, 0
            for i in range(args.requests):
                batch = [SENTENCES[(i * args.batch_size + j) % len(SENTENCES)] for j in range(args.batch_size)]
                input_ids, mask = device.tokenize(batch)
                result = device.infer_tokens(input_ids, mask)
                expected = whole(input_ids, mask, generation)
                if result.output.shape == expected.shape:
                    diff = (result.output.float() - expected.float()).abs().max().item()
                    ok += 1
                else:
                    diff = float("inf")
                max_diff = max(max_diff, diff)
                predicted = result.bytes_sent * 8 / rate_bps + 2 * delay_s if rate_bps else None
                rows.append((batch[0], result, diff, predicted))
        finally:
            device.close()

    latencies = [r.end_to_end_s * 1e3 for _, r, _, _ in rows]
    summary = {
        "model": src.name, "split": args.split, "rho_device": rho_device, "rho_server": rho_server,
        "prune_method": args.prune_method, "codec": args.codec, "requests": len(rows), "ok": ok,
        "max_abs_diff_vs_monolithic": max_diff,
        "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                       "mean": sum(latencies) / len(latencies)},
        "bytes_sent": sum(r.bytes_sent for _, r, _, _ in rows),
        "device_compute_ms_p50": percentile([r.device_compute_s * 1e3 for _, r, _, _ in rows], 50),
        "transfer_ms_p50": percentile([r.transfer_s * 1e3 for _, r, _, _ in rows], 50),
        "server_compute_ms_p50": percentile([r.server_compute_s * 1e3 for _, r, _, _ in rows], 50),
        "channel": None if channel is None else {
            "rate_bps": rate_bps, "delay_s": delay_s, "bandwidth_hz": args.bandwidth_hz,
            "tx_power_w": args.tx_power_w, "gain_db": args.gain_db,
            "predicted_transfer_ms_p50": percentile([p * 1e3 for _, _, _, p in rows], 50)},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        _print_table(rows, summary)
    return 0 if ok == len(rows) else 1


def _channel_rate(channel) -> tuple[float | None, float]:
    """The emulated uplink rate R(p) and one-way delay, as the emulator reports them."""
    if channel is None:
        return None, 0.0
    from coinfer.channel import ChannelControlClient

    control = ChannelControlClient(channel.endpoints["control"])
    try:
        stats = control.stats()
    finally:
        control.close()
    return stats.rate_bps, stats.delay_s


def _print_table(rows, summary) -> None:
    header = f"{'#':>3}  {'input':<30} {'tokens':>6} {'device ms':>9} {'transfer ms':>11} {'S/R(p) ms':>9} " \
             f"{'server ms':>9} {'e2e ms':>8} {'bytes sent':>10} {'max|diff|':>9}"
    print(header)
    print("-" * len(header))
    for i, (sentence, r, diff, predicted) in enumerate(rows, 1):
        text = sentence if len(sentence) <= 30 else sentence[:27] + "..."
        shown = f"{predicted * 1e3:>9.1f}" if predicted is not None else f"{'-':>9}"
        print(f"{i:>3}  {text:<30} {r.seq_len:>6} {r.device_compute_s * 1e3:>9.1f} {r.transfer_s * 1e3:>11.1f} "
              f"{shown} {r.server_compute_s * 1e3:>9.1f} {r.end_to_end_s * 1e3:>8.1f} {r.bytes_sent:>10,} "
              f"{diff:>9.1e}")
    lat = summary["latency_ms"]
    print("-" * len(header))
    channel = summary["channel"]
    if channel:
        print(f"channel: R(p) = {channel['rate_bps'] / 1e6:.2f} Mbit/s (B = {channel['bandwidth_hz']:g} Hz, "
              f"p = {channel['tx_power_w']:g} W, g = {channel['gain_db']:g} dB), delay {channel['delay_s'] * 1e3:g} ms "
              f"each way; S/R(p) column = bytes sent x 8 / R(p) + both delays")
    else:
        print("channel: none (device connected straight to the server)")
    print(f"{summary['model']} split at k={summary['split']}, rho device/server "
          f"{summary['rho_device']}/{summary['rho_server']} ({summary['prune_method']}), codec {summary['codec']}: "
          f"{summary['ok']}/{summary['requests']} ok, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
          f"{summary['bytes_sent']:,} bytes sent, max |split - whole model| = "
          f"{summary['max_abs_diff_vs_monolithic']:.2e}")
