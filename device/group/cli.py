"""`coinfer group`: the device half computed by a tensor-parallel group of N processes.

Without --server the command is a demo: it prints the device half's output statistics, the largest
difference from the single-device half (DevicePart, loaded here for the comparison only), the
all-reduces' predicted and measured error in over-the-air mode, and the planner's view (assignment,
transceiver, expected MSE and latency). With --server the leader sends the group's output to a
`coinfer server` as `coinfer device` would and prints the answers.
"""
from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "group", help="compute the device half with a tensor-parallel group of N processes",
        description="Start N device processes (torch.distributed, gloo, loopback), shard the device half's "
                    "heads and FFN columns over them (Megatron-style, assigned by compute unless --heads/"
                    "--columns say otherwise), and run sentences through it with an exact or an emulated "
                    "over-the-air all-reduce. With --server the output goes to a coinfer server; without, "
                    "the command compares it with the single-device half and prints the statistics.")
    parser.add_argument("sentences", nargs="*", help="input sentences (default: --file, else a built-in demo set)")
    parser.add_argument("--file", help="read sentences from this file, one per line")
    parser.add_argument("--devices", type=int, default=2, help="group size N (default: %(default)s)")
    parser.add_argument("--model", default="minilm",
                        help="minilm, a local checkpoint folder, or random:bert-base|random:bart-base|"
                             "random:bert-tiny|random:bart-tiny (default: %(default)s)")
    parser.add_argument("--split", type=int, default=3, help="split point k >= 1 (default: %(default)s)")
    parser.add_argument("--mode", default="exact", choices=["exact", "aircomp"],
                        help="all-reduce: exact (gloo) or over-the-air emulation (default: %(default)s)")
    parser.add_argument("--design", default="mmse", choices=["mmse", "zf"],
                        help="over-the-air transceiver design (default: %(default)s)")
    parser.add_argument("--server", help="coinfer server address HOST:PORT (default: none, print statistics)")
    parser.add_argument("--gflops", type=_floats, default=None,
                        help="each device's compute speed, GFLOP/s, comma-separated (default: 50 each)")
    parser.add_argument("--heads", type=_ints, default=None, help="heads per device (default: by compute)")
    parser.add_argument("--columns", type=_ints, default=None, help="FFN columns per device (default: by compute)")
    parser.add_argument("--distances-m", type=_floats, default=None,
                        help="each device's distance to the receiver, m (default: 100 each)")
    parser.add_argument("--tx-power-w", type=float, default=0.2, help="per-device power limit, W (default: %(default)s)")
    parser.add_argument("--bandwidth-hz", type=float, default=1e7, help="channel bandwidth B (default: %(default)s)")
    parser.add_argument("--noise-psd-dbm-hz", type=float, default=-174.0,
                        help="noise power spectral density N0, dBm/Hz (default: %(default)s)")
    parser.add_argument("--fading", default="none", choices=["none", "rayleigh"],
                        help="block fading redrawn per request (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights, channel phases and noise")
    parser.add_argument("--epoch", type=int, default=0, help="plan epoch; must match the server's (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: %(default)s)")
    parser.add_argument("--codec", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                        help="activation codec to the server (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="sentences per request (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=0, help="truncate inputs to this many tokens")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="BART: tokens to generate at most")
    parser.add_argument("--max-message-mb", type=int, default=256, help="largest gRPC message, MiB")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-request deadline (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _per_device(values, n: int, default: float, flag: str) -> list[float]:
    from coinfer.errors import UsageError

    if values is None:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise UsageError(f"{flag} gives {len(values)} values for {n} devices")
    return values


def build_plan(args: argparse.Namespace, src, seq_len: int):
    """The planner's view of this group: devices, channel, assignment, design, expected MSE and latency."""
    from coinfer.errors import UsageError
    from coinfer.device.group import design as planning
    from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain

    n = args.devices
    gflops = _per_device(args.gflops, n, 50.0, "--gflops")
    distances = _per_device(args.distances_m, n, planning.DEFAULT_DISTANCE_M, "--distances-m")
    try:
        devices = [planning.GroupDevice(g * 1e9, path_loss_gain(d), args.tx_power_w)
                   for g, d in zip(gflops, distances)]
        channel = planning.GroupChannel(args.bandwidth_hz, dbm_per_hz_to_w_per_hz(args.noise_psd_dbm_hz))
        shape = planning.BlockShape.of(src)
        assignment = None
        if args.heads is not None or args.columns is not None:
            if args.heads is None or args.columns is None:
                raise UsageError("give both --heads and --columns, or neither")
            assignment = planning.Assignment(tuple(args.heads), tuple(args.columns))
        return planning.plan_group(shape, args.split, devices, channel, args.batch_size, seq_len, args.design,
                                   assignment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import numpy as np
    import torch

    from coinfer.samples import SENTENCES
    from coinfer.device.group.aircomp import AirReceiver
    from coinfer.device.client import InferenceError
    from coinfer.device.group.ranks import DeviceGroup
    from coinfer.device.group.runtime import GroupRuntime
    from coinfer.errors import UsageError
    from coinfer.models import resolve_model
    from coinfer.split import DevicePart, GenerationOptions, check_split

    if args.devices < 1:
        raise UsageError("--devices must be at least 1")
    if args.batch_size < 1 or args.threads < 1:
        raise UsageError("--batch-size and --threads must be at least 1")
    sentences = list(args.sentences)
    if not sentences and args.file:
        with open(args.file, encoding="utf-8") as handle:
            sentences = [line.strip() for line in handle if line.strip()]
    sentences = sentences or list(SENTENCES[:8])
    src = resolve_model(args.model, seed=args.seed)
    check_split(src, args.split)
    if args.split < 1:
        raise UsageError("split point 0 leaves the device no blocks to share: choose --split >= 1")
    max_length = min(args.max_length or src.max_seq_length, src.max_seq_length)
    seq_len = int(src.tokenizer(sentences[:args.batch_size], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")["input_ids"].shape[1])
    plan = build_plan(args, src, seq_len)

    def say(message: str) -> None:
        print(f"[group] {message}", file=sys.stderr, flush=True)

    receiver = AirReceiver([d.gain for d in plan.devices], [d.max_tx_power_w for d in plan.devices],
                           plan.channel.noise_power_w, args.design, args.fading, args.seed)
    say(f"starting {args.devices} ranks: {src.name} blocks 1..{args.split}, heads {list(plan.assignment.heads)}, "
        f"FFN columns {list(plan.assignment.columns)}, {args.mode} all-reduce")
    probe = args.mode == "aircomp"  # measure the over-the-air error against an exact sum as well
    with DeviceGroup(args.model, args.split, list(plan.assignment.heads), list(plan.assignment.columns),
                     seed=args.seed, receiver=receiver, threads=args.threads,
                     timeout_s=args.timeout_s) as group:
        runtime = GroupRuntime(group, args.mode, args.server, args.codec, args.epoch, max_length,
                               GenerationOptions(max_new_tokens=args.max_new_tokens),
                               args.max_message_mb << 20, args.timeout_s, probe=probe)
        reference = None if args.server else DevicePart(src, args.split)
        requests = []
        try:
            runtime.connect()
            for start in range(0, len(sentences), args.batch_size):
                chunk = sentences[start:start + args.batch_size]
                ids, mask = runtime.tokenize(chunk)
                first_record = len(group.records)
                result = runtime.infer_tokens(ids, mask)
                records = group.records[first_record:]
                entry = {"sentences": chunk, "seq_len": result.seq_len,
                         "group_compute_ms": result.device_compute_s * 1e3,
                         "rank_compute_ms": [t.compute_s * 1e3 for t in group.last_timings],
                         "rank_all_reduce_ms": [t.all_reduce_s * 1e3 for t in group.last_timings]}
                if reference is not None:
                    expected = reference(ids, mask)
                    out = result.output
                    valid = mask.bool() if out.dim() == 3 else torch.ones(out.shape[0], dtype=torch.bool)
                    entry.update(output_shape=list(out.shape), output_mean=float(out.mean()),
                                 output_std=float(out.std()),
                                 # real tokens only: padded positions are never read (and the single
                                 # device, which packs its batch, leaves them zero)
                                 max_abs_diff_vs_single_device=float((out - expected).abs()[valid].max()),
                                 mse_vs_single_device=float(((out - expected) ** 2)[valid].mean()))
                else:
                    entry.update(end_to_end_ms=result.end_to_end_s * 1e3, bytes_sent=result.bytes_sent,
                                 output_kind=result.output_kind, outputs=_answers(src, result))
                if records and records[0].design is not None:
                    entry["all_reduce"] = [{"tag": r.tag, "predicted_mse": r.predicted_mse,
                                            "measured_mse": r.measured_mse,
                                            "signal_power": r.exact_sq_sum / r.elements,
                                            "max_tx_power_w": max(r.tx_power_w)} for r in records]
                requests.append(entry)
                if not args.json:
                    _print_request(entry, say)
        except InferenceError as exc:
            print(f"coinfer group: server refused the request: {exc}", file=sys.stderr)
            return 1
        finally:
            runtime.close()
    summary = {"model": src.name, "split": args.split, "devices": args.devices, "mode": args.mode,
               "design": args.design, "threads_per_rank": args.threads, "plan": plan.to_dict(),
               "shard_parameters": group.shard_parameters, "requests": requests}
    air = [a for r in requests for a in r.get("all_reduce", [])]
    if air:
        summary["all_reduce_mse"] = {"predicted_mean": float(np.mean([a["predicted_mse"] for a in air])),
                                     "measured_mean": float(np.mean([a["measured_mse"] for a in air]))}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def _answers(src, result) -> list:
    if result.output_kind == "generated_tokens":
        if src.is_random:
            return [row.tolist() for row in result.output]
        return src.tokenizer.batch_decode(result.output, skip_special_tokens=True)
    return [{"dim": int(row.numel()), "norm": float(row.norm()), "head": [round(v, 4) for v in row[:4].tolist()]}
            for row in result.output]


def _print_request(entry: dict, say) -> None:
    line = f"{len(entry['sentences'])} sentences x {entry['seq_len']} tokens: group {entry['group_compute_ms']:.1f} ms"
    if "max_abs_diff_vs_single_device" in entry:
        line += (f", output mean {entry['output_mean']:+.4f} std {entry['output_std']:.4f}, "
                 f"max |group - single device| {entry['max_abs_diff_vs_single_device']:.2e} on real tokens, "
                 f"MSE {entry['mse_vs_single_device']:.2e}")
    else:
        line += f", end to end {entry['end_to_end_ms']:.1f} ms, {entry['bytes_sent']:,} bytes sent"
    print(line, flush=True)
    for sentence, answer in zip(entry["sentences"], entry.get("outputs", [])):
        print(f"  {sentence}\t=> {answer}", flush=True)
    for a in entry.get("all_reduce", []):
        print(f"  {a['tag']:<18} predicted MSE {a['predicted_mse']:.3e}  measured {a['measured_mse']:.3e}  "
              f"(signal power {a['signal_power']:.3e} per element)", flush=True)


def _print_summary(summary: dict) -> None:
    plan = summary["plan"]
    ar = plan["all_reduce"]
    print(f"plan: heads {plan['assignment']['heads']}, FFN columns {plan['assignment']['columns']}; "
          f"{ar['per_inference']} all-reduces of {ar['elements']:,} elements "
          f"({ar['digital_bytes_per_device']:,} bytes per device digitally)")
    print(f"  expected NMSE ({summary['design']}): attention {plan['expected_nmse']['attention']:.3e}, "
          f"FFN {plan['expected_nmse']['ffn']:.3e}")
    print(f"  modelled latency: digital all-reduce {plan['latency_s']['exact'] * 1e3:.2f} ms, "
          f"over the air {plan['latency_s']['aircomp'] * 1e3:.2f} ms "
          f"(airtime {ar['airtime_s'] * 1e3:.3f} ms per all-reduce)")
    if "all_reduce_mse" in summary:
        mse = summary["all_reduce_mse"]
        print(f"  all-reduce MSE per element, mean over calls: predicted {mse['predicted_mean']:.3e}, "
              f"measured {mse['measured_mean']:.3e}")
