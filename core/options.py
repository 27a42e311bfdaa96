"""Command-line options that several coinfer commands share, spelled the same everywhere."""
from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, rho_help: str) -> None:
    """Options both halves take, spelled the same on both."""
    parser.add_argument("--model", default="minilm",
                        help="minilm (embedded all-MiniLM-L6-v2), a local checkpoint folder, or "
                             "random:bert-base|random:bart-base|random:bert-tiny|random:bart-tiny "
                             "(default: %(default)s)")
    parser.add_argument("--split", type=int, default=3,
                        help="split point k: the device runs blocks 1..k (default: %(default)s)")
    parser.add_argument("--rho", type=float, default=1.0, help=rho_help)
    parser.add_argument("--prune-method", default="magnitude", choices=["magnitude", "random", "structured"],
                        help="magnitude / random: unstructured, zeroes weights; structured: removes whole "
                             "attention heads and FFN neurons, so compute falls with rho (default: %(default)s)")
    parser.add_argument("--epoch", type=int, default=0,
                        help="plan epoch; device and server must agree (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of random-weight models and random pruning (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: all cores)")
    parser.add_argument("--max-message-mb", type=int, default=256,
                        help="largest gRPC message accepted and sent, MiB (default: %(default)s)")


def add_frequency_arguments(parser: argparse.ArgumentParser) -> None:
    """How a half treats clock caps it cannot set (no writable cpufreq, no NVML permission)."""
    parser.add_argument("--emulate-frequency", action="store_true",
                        help="stretch compute to emulate clock caps the hardware cannot set; for experiments "
                             "and the paper reproduction (default: such caps are ignored, the clock is reported "
                             "to the planner as fixed and compute runs at full speed)")


def add_planner_arguments(parser: argparse.ArgumentParser, role: str, follows: str) -> None:
    """How a half follows a planner, spelled the same on device and server."""
    parser.add_argument("--planner", metavar="HOST:PORT",
                        help=f"follow this planner's plans ({follows}) and report telemetry to it")
    parser.add_argument("--min-rho", type=float, default=0.0,
                        help="refuse a planner's plan that would prune this half below this ratio (the last "
                             "good plan stays in force; plans that say they are infeasible are always "
                             "refused) (default: %(default)s)")
    parser.add_argument("--node-id", default=role, help="name in telemetry (default: %(default)s)")
