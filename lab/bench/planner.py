"""Planner timings: one DPP re-solve, a whole split sweep, SCA, and the first build.

  first_build_s      building (DPP-compiling) the joint problem and solving it once, in a fresh cache
  resolve_median_s   one re-solve of that compiled problem with new parameter values (cvxpy + Clarabel)
  solve_median_s     one whole `solve` call (re-solve + re-evaluation, polish and back-off)
  sweep_13_median_s  the 13-point split sweep of BERT-base (k = 0..12), problems already compiled
  sweep_13_first_s   the same sweep in a fresh cache (compiles the k = 0 and k = L shapes too)
  sca_*              the paper's SCA on the spec's example scenario: time, iterations, gap to convex

Targets (issue 3): resolve <= 5 ms, sweep <= 100 ms.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

from coinfer.lab.bench.common import print_report

TARGETS = {"resolve_median_s": 0.005, "sweep_13_median_s": 0.100}


def run(repeat: int = 200, sweeps: int = 20, out_dir=None, progress=None) -> dict:
    warnings.simplefilter("ignore", UserWarning)
    started = time.perf_counter()
    import cvxpy  # noqa: F401 - import cost reported apart from the build
    from transformers import BertConfig

    from coinfer.planner import convex
    from coinfer.planner.profile import profile_from_config
    from coinfer.planner.scenario import SPEC_EXAMPLE_SCENARIO as SCENARIO, parse_scenario
    from coinfer.system import DEFAULT_SYSTEM, parse_system
    from coinfer.planner.sweep import plan_splits, solve
    import_s = time.perf_counter() - started

    scenario = parse_scenario(SCENARIO)
    convex.clear_cache()
    started = time.perf_counter()
    first = solve(scenario)
    first_build_s = time.perf_counter() - started

    # vary the channel gain and the delay limit, as re-planning from telemetry would
    variants = []
    for i in range(repeat):
        changed = copy.deepcopy(SCENARIO)
        changed["channel"]["gain"] = 1e-9 * (0.5 + (i % 17) / 16)
        changed["qos"]["max_delay_s"] = 0.3 + 0.1 * (i % 11) / 10
        variants.append(parse_scenario(changed))
    problem = convex.get_problem(scenario)
    resolve = [_time(lambda s=s: problem.solve(s)) for s in variants]
    if progress:
        progress("planner re-solves")
    whole = [_time(lambda s=s: solve(s)) for s in variants]

    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    profile = profile_from_config(config, "bert", "bert-base", 1, 128)
    system = parse_system(dict(DEFAULT_SYSTEM, qos={"max_delay_s": 0.06, "max_energy_j": 0.03}))
    convex.clear_cache()
    started = time.perf_counter()
    sweep = plan_splits(profile, system)
    sweep_first = time.perf_counter() - started
    sweep_times = [_time(lambda: plan_splits(profile, system)) for _ in range(sweeps)]
    if progress:
        progress("planner sweeps")

    solve(scenario, "sca")  # compile the SCA subproblem once
    sca_times, sca = [], None
    for _ in range(5):
        started = time.perf_counter()
        sca = solve(scenario, "sca")
        sca_times.append(time.perf_counter() - started)
    result = {
        "import_s": import_s, "first_build_s": first_build_s,
        "resolve_median_s": statistics.median(resolve),
        "resolve_p90_s": sorted(resolve)[int(0.9 * len(resolve))],
        "solve_median_s": statistics.median(whole),
        "sweep_13_median_s": statistics.median(sweep_times), "sweep_13_first_s": sweep_first,
        "sweep_13_feasible_points": sum(r.feasible for r in sweep.table), "sweep_13_chosen_split": sweep.split,
        "sca_median_s": statistics.median(sca_times), "sca_iterations": sca.iterations, "sca_status": sca.status,
        "sca_gap_to_convex_rel": (sca.distortion - first.distortion) / first.distortion,
        "repeat": repeat, "targets": TARGETS,
    }
    result["meets_target"] = all(result[key] <= limit for key, limit in TARGETS.items())
    return result


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> int:
    """scripts/bench_planner."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench_planner",
        description="Planner timings, printed as one JSON object (see coinfer.lab.bench.planner for what each "
                    "number is). Targets (issue 3): resolve <= 5 ms, sweep <= 100 ms; medians over --repeat runs "
                    "(machines are shared). Also part of `coinfer bench`.")
    parser.add_argument("--repeat", type=int, default=200, help="re-solves to time (default: %(default)s)")
    parser.add_argument("--sweeps", type=int, default=20, help="sweeps to time (default: %(default)s)")
    args = parser.parse_args(argv)
    return print_report(run(args.repeat, args.sweeps), machine=False)


if __name__ == "__main__":
    sys.exit(main())
