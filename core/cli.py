"""The `coinfer` command: one entry point, one subcommand per job.

Each subcommand lives with the code it drives and registers itself through a `register(subparsers)`
function. Those modules import only argparse-level dependencies, so `coinfer --help` stays fast;
torch, transformers and grpc are imported when a subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from coinfer import __version__
from coinfer.errors import UsageError

# Modules that define subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "coinfer.server.cli",
    "coinfer.device.cli",
    "coinfer.device.group_cli",
    "coinfer.demo",
    "coinfer.bench.cli",
    "coinfer.planner.cli",
    "coinfer.planner.service_cli",
    "coinfer.channel.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinfer",
        description="Split inference of BERT/BART between an edge device and an edge server over gRPC.",
        epilog="Run `coinfer COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"coinfer {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity (stderr)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        print(f"coinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
