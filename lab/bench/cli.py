"""`coinfer bench`: run the benchmark suite on this machine and write JSON and PNG plots to a folder."""
from __future__ import annotations

import argparse

from coinfer.lab.bench.suite import OPT_IN, SECTIONS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="run the benchmark suite; write JSON and plots",
        description="Measure, side by side in one run: split overhead over loopback against the whole "
                    "model; bytes and output error per activation codec; compute time against rho per "
                    "pruning method; server throughput against concurrent devices with and without "
                    "batching; planner solve times; the channel emulator's accuracy; memory per half. "
                    "Only when named with --only: throughput, coinfer (k = 0 and 3, each engine) against "
                    "sentence-transformers and the whole model in ONNX Runtime, batch 1 and 8 x 1, 4, 16 "
                    "clients. Writes bench.json, one PNG per section and summary.md to --out. Every result "
                    "records the machine it ran on.")
    parser.add_argument("--out", default="results/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short version (CI time): fewer repeats and points")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}; default: all but "
                             f"{', '.join(OPT_IN)})")
    parser.add_argument("--hardware", action="store_true",
                        help="print the machine report (CPU, cores, GPU, driver, RAPL/NVML/cpufreq) and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from coinfer.lab.hardware import describe

    if args.hardware:
        print(json.dumps(describe(), indent=2))
        return 0
    from coinfer.lab.bench.suite import run_suite

    report = run_suite(args.out, quick=args.quick, only=args.only)
    # A missed target is a measurement, not a failure; a section that crashed is.
    return 1 if any("error" in section for section in report["sections"].values()) else 0
