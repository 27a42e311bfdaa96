"""`coinfer demo --closed-loop`: planner, server, channel emulator and device, with plans applied live.

Four real processes' worth of parts on loopback: the planner, the server and the channel emulator
run as their own processes; the device runs here. The device sends requests back to back (batch of
4 sentences, 32 tokens each) while the planner re-plans from their telemetry and both halves apply
each plan as it arrives. Phases:

1. calibration: the planner starts from the system file's guesses and re-plans as it measures this
   machine (FLOPs per cycle, channel, overhead); requests in this phase are not counted;
2. steady state under the delay limit (0.36 s: the uplink of a 4 x 32-token request takes 0.12 s at
   full power, so the limit leaves room to save energy);
3. with `--scenario step-fade`: the channel gain drops by 6 dB mid-run; the planner sees the uplink
   slow down in the device's telemetry and pushes a new plan (more power, more pruning).

P1 minimises distortion; among equally good points the planner takes the least energy, which spends
the slack in the delay limit (lower power and clocks), so a channel change is felt at once.

The JSON summary gives the plans (epoch, reason, when applied) and the fraction of requests over the
delay limit before the drop, between the drop and the new plan, and after it.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The loopback system: both halves are this machine's CPU (FLOPs per cycle are learnt from telemetry);
# an uplink at 20 dB SNR (2 MHz at -114 dB and 0.2 W: 13.3 Mbit/s; about 9 Mbit/s after the 6 dB fade,
# where the rate falls almost in proportion): a 4 x 32-token fp32 request takes 0.12 s to send at full
# power, about 0.18 s after the fade. A 10 dB fade needed pruning below the quality floor on a slower
# machine: the demo's fade is one the real knobs (power, clocks) can answer.
# What the planner is told; everything else (FLOPs per cycle) it measures on this machine at start
# (coinfer.planner.machine) and then from telemetry. A guess of C would make its first plans wrong: with
# 8 FLOPs/cycle the unpruned model looked too slow for the limit and only pruning below the quality
# floor would do, so no plan at all could be pushed.
LOOPBACK_SYSTEM = {
    "weight_bits": 16,
    "device": {"max_freq_hz": 2.0e9, "pue": 1.0, "power_coeff": 1.0e-28, "max_tx_power_w": 0.2},
    "server": {"max_freq_hz": 2.0e9, "pue": 1.5, "power_coeff": 1.0e-28},
    "channel": {"bandwidth_hz": 2.0e6, "noise_psd_w_per_hz": 3.98e-21, "gain": 10 ** (-11.4)},
    "qos": {"max_delay_s": 0.36, "max_energy_j": 10.0},
    "distortion": {"model": "magnitude", "min_ratio": 0.05},
    "scheme": "joint",
}
GAIN_DB = -114.0
FADE_DB = 6.0
BATCH, SEQ_LEN = 4, 32
# Plans aim at (1 - margin) of the limit: this machine is shared, and a forward now and then takes
# twice its usual time.
DELAY_MARGIN = 0.2


def run_closed_loop(args) -> int:
    import yaml

    from coinfer.channel import ChannelControlClient
    from coinfer.samples import SENTENCES
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.protos import planner_pb2 as ppb
    from coinfer.protos import planner_pb2_grpc as ppb_grpc

    from coinfer import security

    import torch

    src = resolve_model(args.model, seed=args.seed)
    split = args.split
    # Here the device, the server, the channel emulator and the planner share this machine's cores, where
    # a real deployment has two machines. So the device (this process) computes on one thread and the
    # server's idle OpenMP workers spin only briefly (GOMP_SPINCOUNT below): otherwise a worker still
    # spinning after one half's forward takes the time the others need, the overhead the planner measures
    # beyond the modelled stages grew to ~0.1 s and its compute estimates swung (15-18 plans a run).
    torch.set_num_threads(1)
    json_mode = args.json
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[closed-loop {time.monotonic() - t0:6.2f}s] {message}", file=sys.stderr if json_mode else sys.stdout,
              flush=True)

    plans_seen: list[dict] = []

    def on_plan(plan) -> None:
        entry = {"epoch": plan.epoch, "reason": plan.reason, "applied_at_s": time.monotonic() - t0,
                 "split": plan.split_point, "rho_device": plan.rho_device, "rho_server": plan.rho_server,
                 "tx_power_w": plan.tx_power_w, "f_device_hz": plan.f_device_hz, "f_server_hz": plan.f_server_hz,
                 "feasible": plan.feasible, "predicted_delay_s": plan.predicted_delay_s,
                 "delay_limit_s": plan.delay_limit_s}
        plans_seen.append(entry)
        say(f"plan {plan.epoch} ({plan.reason}): k={plan.split_point} rho_d={plan.rho_device:.3f} "
            f"rho_s={plan.rho_server:.3f} p={plan.tx_power_w:.3g} W f_d={plan.f_device_hz / 1e9:.2f} GHz "
            f"f_s={plan.f_server_hz / 1e9:.2f} GHz predicted {plan.predicted_delay_s * 1e3:.0f} ms "
            f"{'' if plan.feasible else '(INFEASIBLE: fastest fallback)'}")

    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coinfer-loop-")))
        system_file = folder / "system.yaml"
        system_file.write_text(yaml.safe_dump(LOOPBACK_SYSTEM))
        quiet = stack.enter_context(open(folder / "services.log", "w"))
        say("starting planner, server and channel emulator processes")
        planner = stack.enter_context(ServiceProcess(
            ["planner", "--listen", "127.0.0.1:0", "--system", str(system_file), "--model", args.model,
             "--batch", str(BATCH), "--seq-len", str(SEQ_LEN), "--split", str(split), "--min-interval-s", "0.5",
             "--delay-margin", str(DELAY_MARGIN)],
            "planner", stderr=quiet))
        server = stack.enter_context(ServiceProcess(
            ["server", "--model", args.model, "--split", str(split), "--listen", "127.0.0.1:0",
             "--planner", planner.address, "--seed", str(args.seed),
             # this machine's clocks cannot be set: the planner's caps are emulated (compute stretched)
             "--emulate-frequency"], "server", stderr=quiet,
            env={**os.environ, "GOMP_SPINCOUNT": "100"}))
        channel = stack.enter_context(ServiceProcess(
            ["channel", "--listen", "127.0.0.1:0", "--upstream", server.address, "--control", "127.0.0.1:0",
             "--bandwidth-hz", str(LOOPBACK_SYSTEM["channel"]["bandwidth_hz"]), "--tx-power-w", "0.2",
             "--gain-db", str(GAIN_DB), "--delay-ms", "2"], "channel", expect=("listening", "control"), stderr=quiet))
        device = DeviceRuntime(src, split, server=channel.address, channel_control=channel.endpoints["control"],
                               timeout_s=60.0, emulate_frequency=True)
        stack.callback(device.close)
        device.plan_listeners.append(on_plan)
        device.follow(planner.address, "device")
        if device.watcher.wait_for_plan(60) is None:
            raise RuntimeError("no plan from the planner within 60 s")
        planner_channel = security.channel(planner.address)
        stack.callback(planner_channel.close)
        planner_stub = ppb_grpc.PlannerStub(planner_channel)
        control = ChannelControlClient(channel.endpoints["control"])
        stack.callback(control.close)

        ids, mask = src.tokenize([SENTENCES[i % len(SENTENCES)] for i in range(BATCH)], max_length=SEQ_LEN,
                                 padding="max_length")
        records: list[dict] = []

        def send_for(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                started = time.monotonic() - t0
                result = device.infer_tokens(ids, mask)
                records.append({"start_s": started, "end_s": time.monotonic() - t0, "e2e_s": result.end_to_end_s,
                                "epoch": result.plan_epoch, "resends": result.resends,
                                "transfer_s": result.transfer_s, "device_s": result.device_compute_s,
                                "server_s": result.server_compute_s})

        say("calibrating: the planner measures this machine")
        send_for(args.calibrate_s)
        limit = LOOPBACK_SYSTEM["qos"]["max_delay_s"]
        qos_at = time.monotonic() - t0
        say(f"steady state under the {limit * 1e3:.0f} ms delay limit")
        drop_at = None
        if args.scenario == "step-fade":
            send_for(args.duration / 2)
            drop_at = time.monotonic() - t0
            stats = control.set_gain(gain_db=GAIN_DB - FADE_DB)
            say(f"channel gain drops by {FADE_DB:g} dB: R(p) now {stats.rate_bps / 1e6:.2f} Mbit/s")
            send_for(args.duration / 2)
        else:
            send_for(args.duration)
        state = planner_stub.GetState(ppb.StateRequest())

    new_plan = next((p for p in plans_seen if drop_at is not None and p["applied_at_s"] > drop_at), None)

    def fraction_over(chosen: list[dict]) -> float | None:
        return sum(r["e2e_s"] > limit for r in chosen) / len(chosen) if chosen else None

    before = [r for r in records if r["start_s"] >= qos_at and (drop_at is None or r["end_s"] <= drop_at)]
    during = [r for r in records if drop_at is not None and r["start_s"] >= drop_at
              and (new_plan is None or r["start_s"] < new_plan["applied_at_s"])]
    after = [r for r in records if new_plan is not None and r["start_s"] >= new_plan["applied_at_s"]]
    summary = {
        "scenario": args.scenario or "steady", "model": src.name, "split": split, "batch": BATCH, "seq_len": SEQ_LEN,
        "delay_limit_s": limit, "measured_from_s": qos_at, "drop_at_s": drop_at,
        "fade_db": FADE_DB if drop_at is not None else None,
        "new_plan_after_drop_s": (new_plan["applied_at_s"] - drop_at) if new_plan else None,
        "new_plan": new_plan,
        "plans": plans_seen,
        "requests": {"total": len(records), "before_drop": len(before), "until_new_plan": len(during),
                     "after_new_plan": len(after), "resent": sum(r["resends"] > 0 for r in records)},
        "fraction_over_limit": {"before_drop": fraction_over(before), "until_new_plan": fraction_over(during),
                                "after_new_plan": fraction_over(after)},
        "delay_p50_s": {name: statistics.median(r["e2e_s"] for r in chosen) if chosen else None
                        for name, chosen in (("before_drop", before), ("until_new_plan", during),
                                             ("after_new_plan", after))},
        "records": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in records],
        "estimates": {"channel_gain": state.estimates.channel_gain,
                      "device_flops_per_cycle": state.estimates.device_flops_per_cycle,
                      "server_flops_per_cycle": state.estimates.server_flops_per_cycle,
                      "overhead_s": state.estimates.overhead_s},
    }
    if json_mode:
        print(json.dumps(summary))
    else:
        f = summary["fraction_over_limit"]
        say(f"{len(records)} requests; over the {limit * 1e3:.0f} ms limit: before the drop "
            f"{_pct(f['before_drop'])}, until the new plan {_pct(f['until_new_plan'])}, after it "
            f"{_pct(f['after_new_plan'])}")
    return 0


def _pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"
