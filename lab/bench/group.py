"""Tensor-parallel device group: latency of the device half for N = 1, 2, 4 ranks on this machine, bytes
per all-reduce, and the modelled over-the-air all-reduce time against a digital one on the same channel.

Every rank is a process on this machine with --threads-per-rank torch threads; the machine's cores are
shared by all ranks, so N > 1 cannot be faster here than one process using every core (the numbers
show the cost of the sharding and the all-reduces, not a speed-up). The single-device half (DevicePart,
one process) is measured with 1 thread and with all cores for comparison. Over-the-air figures: the
emulation's wall time on loopback, its measured vs designed MSE, and the airtime the channel model
gives (ceil(M/2) complex symbols at B symbols/s) against a TDMA digital all-reduce of fp32 partials
at R_i = B log2(1 + g_i P_i / (N0 B)). On the largest group, a sweep of the noise level gives the
all-reduce NMSE (designed and measured), the device half's NMSE and, for BERT-family models, the
smallest cosine similarity of the final sentence embeddings to the exact ones (the server half runs
in this process for that). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def median_ms(values):
    return statistics.median(values) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_group", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--split", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--design", default="mmse", choices=["mmse", "zf"])
    parser.add_argument("--distance-m", type=float, default=100.0, help="every device's distance to the receiver")
    parser.add_argument("--tx-power-w", type=float, default=0.2)
    parser.add_argument("--bandwidth-hz", type=float, default=1e7)
    parser.add_argument("--noise-psd-dbm-hz", type=float, default=-174.0)
    parser.add_argument("--sweep-dbm-hz", type=float, nargs="*", default=[-184.0, -174.0, -164.0, -154.0, -144.0],
                        help="noise levels for the accuracy sweep, run on the largest group")
    args = parser.parse_args(argv)

    import coinfer  # noqa: F401 - first: it sets the OpenMP spin policy before torch loads
    import numpy as np
    import torch

    from coinfer.device.group.aircomp import AirReceiver
    from coinfer.device.group.ranks import DeviceGroup
    from coinfer.models import resolve_model
    from coinfer.device.group import design as planning
    from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain
    from coinfer.split import DevicePart, ServerPart

    src = resolve_model(args.model)
    text = " ".join(["tensor parallel devices add their partial sums over the air"] * 40)
    batch = src.tokenizer([text] * args.batch, padding="max_length", truncation=True, max_length=args.seq_len,
                          return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shape = planning.BlockShape.of(src)
    channel = planning.GroupChannel(args.bandwidth_hz, dbm_per_hz_to_w_per_hz(args.noise_psd_dbm_hz))
    gain = path_loss_gain(args.distance_m)

    def timed(fn, repeats):
        out, times = None, []
        for i in range(args.warmup + repeats):
            started = time.perf_counter()
            out = fn()
            if i >= args.warmup:
                times.append(time.perf_counter() - started)
        return out, times

    threads_before = torch.get_num_threads()
    single = DevicePart(src, args.split)
    single_ms = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        reference, times = timed(lambda: single(ids, mask), args.repeats)
        single_ms[f"threads_{threads}"] = median_ms(times)
    torch.set_num_threads(threads_before)
    cores = os.cpu_count() or 1

    def single_all_cores():
        """The single-device half on every core, timed right after a group forward: the machine is
        shared, so only measurements taken in the same moments compare fairly."""
        threads = torch.get_num_threads()
        torch.set_num_threads(cores)
        try:
            started = time.perf_counter()
            single(ids, mask)
            return time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)

    server = ServerPart(src, args.split) if src.family == "bert" else None
    final_reference = server(reference, mask) if server is not None else None

    def noise_sweep(group, receiver, ids, mask, reference):
        """Accuracy against noise: all-reduce NMSE (designed, measured), device-half and final error."""
        rows = []
        for n0 in args.sweep_dbm_hz:
            receiver.noise_power_w = dbm_per_hz_to_w_per_hz(n0) * args.bandwidth_hz
            start = len(group.records)
            out = group(ids, mask, mode="aircomp", probe=True)
            records = group.records[start:]
            power = [r.exact_sq_sum / r.elements for r in records]
            row = {"noise_psd_dbm_hz": n0,
                   "snr_db": 10 * np.log10(gain * args.tx_power_w / receiver.noise_power_w),
                   "all_reduce_nmse_predicted": float(np.mean([r.predicted_mse / p for r, p in zip(records, power)])),
                   "all_reduce_nmse_measured": float(np.mean([r.measured_mse / p for r, p in zip(records, power)])),
                   "device_half_nmse": float(((out - reference) ** 2).mean() / (reference ** 2).mean())}
            if server is not None:
                final = server(out, mask)
                row["sentence_embedding_cosine_min"] = float(
                    torch.nn.functional.cosine_similarity(final, final_reference, dim=-1).min())
            rows.append(row)
        receiver.noise_power_w = channel.noise_power_w
        return rows

    elements = args.batch * args.seq_len * shape.hidden
    payload = elements * 4  # fp32 partial per rank
    results = []
    for n in args.devices:
        assignment = planning.Assignment.by_compute(shape.heads, shape.ffn, [1.0] * n)
        receiver = AirReceiver([gain] * n, args.tx_power_w, channel.noise_power_w, args.design, seed=0)
        with DeviceGroup(args.model, args.split, list(assignment.heads), list(assignment.columns),
                         receiver=receiver, threads=args.threads_per_rank) as group:
            timings, paired, exact_times = [], [], []

            def exact_forward():
                started = time.perf_counter()
                out = group(ids, mask)
                exact_times.append(time.perf_counter() - started)
                timings.append(group.last_timings)
                paired.append(single_all_cores())
                return out

            out, _ = timed(exact_forward, args.repeats)
            timings, paired, exact_times = (x[args.warmup:] for x in (timings, paired, exact_times))
            entry = {
                "devices": n, "heads": list(assignment.heads), "columns": list(assignment.columns),
                "shard_parameters": group.shard_parameters,
                "exact": {
                    "forward_ms_median": median_ms(exact_times),
                    "single_device_all_cores_ms_median_same_period": median_ms(paired),
                    "group_over_single_ratio": statistics.median(exact_times) / statistics.median(paired),
                    "rank_compute_ms_median": [median_ms([t[r].compute_s for t in timings]) for r in range(n)],
                    "rank_all_reduce_ms_median": [median_ms([t[r].all_reduce_s for t in timings]) for r in range(n)],
                    "max_abs_diff_vs_single_device": float((out - reference).abs().max()),
                    # The planner's compute model, FLOPs / speed, read backwards: the speed this machine gave.
                    "rank_effective_gflops": [
                        args.split * (shape.attention_flops(h, args.batch, args.seq_len)
                                      + shape.ffn_flops(c, args.batch, args.seq_len)) / 1e9
                        / statistics.median(t[r].compute_s for t in timings)
                        for r, (h, c) in enumerate(zip(assignment.heads, assignment.columns))],
                },
            }
            if n > 1:
                start = len(group.records)
                out, air_times = timed(lambda: group(ids, mask, mode="aircomp", probe=True), args.repeats)
                records = group.records[start:]
                # Wall time of the emulated all-reduces (probe's extra exact all-reduce excluded).
                entry["aircomp_emulation"] = {
                    "forward_ms_median_with_probe": median_ms(air_times),
                    "all_reduce_wall_ms_median": statistics.median(r.wall_s for r in records) * 1e3,
                    "predicted_mse_mean": float(np.mean([r.predicted_mse for r in records])),
                    "measured_mse_mean": float(np.mean([r.measured_mse for r in records])),
                    "signal_power_mean": float(np.mean([r.exact_sq_sum / r.elements for r in records])),
                    "output_rmse_vs_single_device": float(((out - reference) ** 2).mean().sqrt()),
                }
            if n > 1 and n == max(args.devices) and args.sweep_dbm_hz:
                entry["noise_sweep"] = noise_sweep(group, receiver, ids, mask, reference)
        devices = [planning.GroupDevice(1.0, gain, args.tx_power_w) for _ in range(n)]
        digital = channel.digital_time_s(elements, devices, [True] * n) if n > 1 else 0.0
        air = channel.airtime_s(elements) if n > 1 else 0.0
        entry["all_reduce"] = {
            "per_inference": 2 * args.split if n > 1 else 0,
            "elements": elements,
            "payload_bytes_per_rank": payload,
            # gloo's CPU all-reduce moves about 2 (N - 1) / N of the payload in and out of each rank (ring).
            "gloo_bytes_per_rank_estimate": int(2 * (n - 1) / n * payload),
            "channel_model": {
                "airtime_ms": air * 1e3,
                "digital_tdma_ms": digital * 1e3,
                "digital_over_air_ratio": digital / air if air else None,
                "per_inference_airtime_ms": 2 * args.split * air * 1e3,
                "per_inference_digital_ms": 2 * args.split * digital * 1e3,
            },
        }
        results.append(entry)

    print(json.dumps({
        "benchmark": "device_group", "model": src.name, "split": args.split, "batch": args.batch,
        "seq_len": args.seq_len, "repeats": args.repeats, "threads_per_rank": args.threads_per_rank,
        "machine": {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "note": "all ranks share these cores: N > 1 cannot be faster here than one process on all cores"},
        "channel": {"bandwidth_hz": args.bandwidth_hz, "noise_psd_dbm_hz": args.noise_psd_dbm_hz,
                    "distance_m": args.distance_m, "gain": gain, "tx_power_w": args.tx_power_w,
                    "snr_db": 10 * np.log10(gain * args.tx_power_w / channel.noise_power_w),
                    "design": args.design},
        "single_device_ms_median": single_ms,
        "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
