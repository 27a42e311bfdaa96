"""`coinfer solve` (P1 at one split point, from a scenario file) and `coinfer plan` (every split point
of a model, from its profile and a system file). Heavy modules load only when a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys

SCHEME_CHOICES = ("joint", "fixed_power", "fixed_frequency", "device_only_pruning", "server_only_pruning",
                  "on_device", "on_server")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "solve", help="solve P1 (pruning ratios, frequencies, power) for one scenario file",
        description="Minimise the distortion bound at one split point under the delay and energy limits "
                    "of SCENARIO.yaml (keys: spec system-model.md section 7; SI units). An infeasible "
                    "QoS is an answer: feasible false, why, and the least limits that would be feasible.")
    p.add_argument("scenario", metavar="SCENARIO.yaml")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--solver", default="convex", choices=("convex", "sca"),
                   help="convex: exact reformulation, global optimum; sca: the paper's SCA (default: %(default)s)")
    p.add_argument("--scheme", choices=SCHEME_CHOICES[:5], help="override the file's scheme")
    p.set_defaults(func=run_solve)

    p = subparsers.add_parser(
        "plan", help="choose the split point and solve P1 there, from a model's profile",
        description="Profile the model (FLOPs, parameters, weight scales, hidden-state sizes), build the "
                    "scenario of every split point with a system file (the scenario keys without "
                    "segments and embedding_bits), solve P1 at each, and print the per-k table and "
                    "the chosen plan.")
    p.add_argument("--model", default="minilm",
                   help="minilm, random:bert-base|bert-tiny|bart-base|bart-tiny, or a local folder "
                        "(default: %(default)s)")
    p.add_argument("--split", default="auto", help="auto (search k = 0..L) or one split point K")
    p.add_argument("--system", metavar="SYSTEM.yaml", help="system file (default: built-in, see "
                                                           "coinfer.system.DEFAULT_SYSTEM)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--decoder-len", type=int, default=None,
                   help="BART: decoder tokens per request (default: --seq-len)")
    p.add_argument("--codec", default="fp32", help="activation codec: fp32, fp16, bf16, int8, int4")
    p.add_argument("--solver", default="convex", choices=("convex", "sca"))
    p.add_argument("--scheme", choices=SCHEME_CHOICES, help="override the system's scheme")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_plan)


def _json(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False, default=float)


def run_solve(args: argparse.Namespace) -> int:
    from coinfer.planner.scenario import parse_scenario
    from coinfer.planner.sweep import solve
    from coinfer.system import load_yaml

    scn = parse_scenario(load_yaml(args.scenario))
    if args.scheme:
        scn = scn.with_scheme(args.scheme)
    sol = solve(scn, args.solver)
    if args.json:
        print(_json(sol.to_dict()))
    else:
        print(f"scenario {args.scenario}  scheme {scn.scheme}  solver {args.solver}")
        print(_describe(sol, scn.system.qos))
    return 0


def _describe(sol, qos) -> str:
    if not sol.feasible:
        lines = [f"INFEASIBLE ({sol.status}): {sol.reason}"]
        lines.append(f"  least feasible delay limit at this energy limit: {_opt(sol.min_feasible_delay_s, 's')}")
        lines.append(f"  least feasible energy limit at this delay limit: {_opt(sol.min_feasible_energy_j, 'J')}")
        return "\n".join(lines)
    d, e = sol.stage_delays_s, sol.stage_energies_j
    lines = [
        f"feasible ({sol.status}), solved in {sol.solve_time_s * 1e3:.2f} ms"
        + (f", {sol.iterations} SCA iterations" if sol.iterations is not None else ""),
        f"  ratios       device {sol.rho_device:.6f}   server {sol.rho_server:.6f}",
        f"  frequencies  device {sol.f_device_hz / 1e9:.4f} GHz   server {sol.f_server_hz / 1e9:.4f} GHz",
        f"  tx power     {sol.tx_power_w:.5g} W",
        f"  delay        {sol.delay_s:.6g} s <= {qos.max_delay_s:g}   (device {d['device']:.4g}, "
        f"upload {d['upload']:.4g}, server {d['server']:.4g})",
        f"  energy       {sol.energy_j:.6g} J <= {qos.max_energy_j:g}   (device {e['device']:.4g}, "
        f"upload {e['upload']:.4g}, server {e['server']:.4g})",
        f"  distortion   {sol.distortion:.6g}",
    ]
    return "\n".join(lines)


def _opt(v, unit) -> str:
    return "none (no value of this limit helps)" if v is None else f"{v:.6g} {unit}"


def run_plan(args: argparse.Namespace) -> int:
    from coinfer.errors import UsageError
    from coinfer.planner.sweep import plan_splits
    from coinfer.system import default_system, load_yaml, parse_system

    split = args.split
    if split != "auto":
        try:
            split = int(split)
        except ValueError:
            raise UsageError(f"--split: expected auto or an integer, got {args.split!r}") from None
    for name in ("batch", "seq_len"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
    system = parse_system(load_yaml(args.system)) if args.system else default_system()
    from coinfer.models import resolve_model
    from coinfer.planner.profile import profile_model

    src = resolve_model(args.model)
    if split != "auto" and not 0 <= split <= src.num_blocks:   # before reading any weights
        raise UsageError(f"--split: split point {split} out of range 0..{src.num_blocks} for {src.name}")
    profile = profile_model(src, args.batch, args.seq_len, args.decoder_len,
                            measure_curves=system.distortion.model == "measured")
    result = plan_splits(profile, system, split=split, codec=args.codec, solver=args.solver,
                         scheme=args.scheme)
    if args.json:
        out = result.to_dict()
        out.update(model=profile.name, family=profile.family, num_blocks=profile.num_blocks,
                   batch=args.batch, seq_len=args.seq_len, system=system.to_dict(),
                   profile={"total_flops": profile.total_flops, "params_total": profile.params_total,
                            "block_flops": profile.block_flops, "weights": profile.weights})
        print(_json(out))
        return 0
    print(f"model {profile.name} ({profile.family}, L = {profile.num_blocks}), batch {args.batch} x "
          f"{args.seq_len} tokens, {profile.total_flops / 1e9:.3f} GFLOPs, codec {args.codec}, "
          f"scheme {result.scheme}, solver {args.solver}")
    print(f"{'k':>3} {'ok':>3} {'distortion':>12} {'delay_s':>9} {'energy_j':>9} {'rho_d':>7} {'rho_s':>7} "
          f"{'f_d_GHz':>8} {'f_s_GHz':>8} {'p_W':>7} {'sent_Mbit':>9} {'binding':>8}")
    for r in result.table:
        sent = result.sent_bits[r.split] / 1e6
        if r.feasible:
            print(f"{r.split:>3} {'yes':>3} {r.distortion:>12.5g} {r.delay_s:>9.4g} {r.energy_j:>9.4g} "
                  f"{r.rho_device:>7.4f} {r.rho_server:>7.4f} {r.f_device_hz / 1e9:>8.4f} "
                  f"{r.f_server_hz / 1e9:>8.4f} {r.tx_power_w:>7.4f} {sent:>9.4g} {r.binding:>8}")
            print(f"{'':>7} why: {r.explanation}")
        else:
            print(f"{r.split:>3} {'no':>3} {'-':>12}  would need max_delay_s >= "
                  f"{_short(r.min_feasible_delay_s)} or max_energy_j >= {_short(r.min_feasible_energy_j)}"
                  f"   (sent {sent:.4g} Mbit)")
    if result.feasible:
        print(f"chosen split k = {result.split} (least distortion; ties go to less energy, then less delay): "
              f"{result.explanation}")
        print(_describe(result.plan, system.qos))
    else:
        print(f"INFEASIBLE at every split point; least delay limit {_opt(result.min_feasible_delay_s, 's')}, "
              f"least energy limit {_opt(result.min_feasible_energy_j, 'J')}")
    return 0


def _short(v) -> str:
    return "(none)" if v is None else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    """`python -m coinfer.planner.cli`: the planner's commands alone (same behaviour as `coinfer`)."""
    from coinfer.errors import UsageError

    parser = argparse.ArgumentParser(prog="coinfer-planner")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"coinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
