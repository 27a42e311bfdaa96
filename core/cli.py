"""The `coinfer` command: one entry point, one subcommand per job.

Each subcommand lives with the code it drives and registers itself through a `register(subparsers)`
function. Those modules import only argparse-level dependencies, so `coinfer --help` stays fast;
torch, transformers and grpc are imported when a subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from coinfer import __version__
from coinfer import security
from coinfer.errors import UsageError
from coinfer.security import add_security_arguments

# Modules that define subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "coinfer.server.cli",
    "coinfer.device.cli",
    "coinfer.device.group.cli",
    "coinfer.lab.demo",
    "coinfer.lab.bench.cli",
    "coinfer.planner.cli",
    "coinfer.planner.profile_cli",
    "coinfer.planner.service_cli",
    "coinfer.channel.cli",
    "coinfer.status",
]


ENV_PREFIX = "COINFER_"
# Commands that serve or call gRPC services take the security options (TLS, mTLS, token).
SECURE_COMMANDS = ("server", "device", "planner", "channel", "group", "status")


def apply_environment(parser: argparse.ArgumentParser, command: str | None, environ=os.environ) -> None:
    """Let COINFER_<OPTION> set any option's default (e.g. COINFER_MODEL, COINFER_LISTEN,
    COINFER_MAX_BATCH_SIZE), the way containers are configured; a command-line flag still wins.
    Only the command being run reads the environment (COINFER_SPLIT=auto is right for `planner`,
    wrong for `server`), and a variable satisfies a required option. The value is checked by the
    option's own type, and a bad one is a usage error naming the variable."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                apply_environment(action.choices[command], None, environ)
            continue
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = ENV_PREFIX + action.dest.upper()
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                parser.error(f"{name}={raw!r}: expected true or false")
            value = raw.lower() in ("1", "true", "yes")
        else:
            try:
                value = action.type(raw) if action.type else raw
            except (TypeError, ValueError):
                parser.error(f"{name}={raw!r}: not a valid value for {action.option_strings[-1]}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"{name}={raw!r}: choose from {', '.join(map(str, action.choices))}")
        action.default = value
        action.required = False


def _command_in(argv: list[str], commands) -> str | None:
    """The subcommand named in argv (top-level options come before it)."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token == "--log-level":
            skip_next = True
        elif not token.startswith("-"):
            return token if token in commands else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinfer",
        description="Split inference of BERT/BART between an edge device and an edge server over gRPC.",
        epilog="Run `coinfer COMMAND --help` for the options of one command. Every option can also be "
               "set from the environment as COINFER_<OPTION> (e.g. COINFER_LISTEN, COINFER_MODEL); "
               "a flag on the command line wins.",
    )
    parser.add_argument("--version", action="version", version=f"coinfer {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity (stderr)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for name, sub in subparsers.choices.items():
        if name in SECURE_COMMANDS:
            add_security_arguments(sub)
    apply_environment(parser, _command_in(sys.argv[1:] if argv is None else argv, subparsers.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    security.configure(security.from_args(args))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if logging.INFO < logging.getLevelName(args.log_level) <= logging.WARNING:
        # plan changes (one line each) and ignored knobs show at the default level; per-request lines
        # stay at INFO on their own loggers (--log-level INFO)
        logging.getLogger("coinfer.plan").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        print(f"coinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> None:
    """The `coinfer` command (console script and `python -m coinfer`): main(), then a quick exit.

    An interpreter that has imported torch and transformers takes 1-2 s to tear itself down after the
    command is done, paid by every server, planner and device that stops and every one-shot command.
    Once the command returns, nothing is left for that teardown to do: non-daemon threads are joined,
    exit handlers run and stdio flushed as a normal exit would, and the process ends there."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse (--help, a usage error) and sys.exit in a command
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging.shutdown, temporary folders' finalizers, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
