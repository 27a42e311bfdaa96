"""`python -m coinfer.healthcheck`: is a coinfer service up? For container HEALTHCHECKs and compose.

    python -m coinfer.healthcheck 127.0.0.1:50051                      # server or planner: gRPC health
    python -m coinfer.healthcheck 127.0.0.1:50051 --service coinfer.v1.CoInference
    python -m coinfer.healthcheck --channel-control 127.0.0.1:50053 --tcp 127.0.0.1:50052   # channel

* a gRPC address is asked the standard health service (grpc.health.v1.Health/Check) for --service
  ("" = the whole server, which the server and the planner both report): healthy when SERVING.
* the channel emulator has no health service: its control service answering GetStats shows the
  emulator's event loop is alive, and --tcp checks that the proxy port accepts connections.

Security follows the service's own: COINFER_TLS_CERT, COINFER_TLS_KEY, COINFER_TLS_CA, COINFER_MTLS,
COINFER_TLS_SERVER_NAME and COINFER_TOKEN are read from the environment (the container's, which the
service reads too). Over TLS, --tls-server-name names the certificate's host when it is not the address
checked (127.0.0.1 in a container). The health service needs no token; the channel's control does.

Exit status 0 when every check passes, else 1 with one line per failure on stderr (Docker reads 1 as
unhealthy and reserves 2, so a usage error exits 1 too). Imports only grpc and the stubs: it runs
every few seconds in a container, so it must start fast.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

UNHEALTHY = 1


def security_from_environment(environ=os.environ, server_name: str | None = None):
    """The TLS/token settings a service in this environment runs with (coinfer.security)."""
    from coinfer.security import Security

    def get(name: str) -> str | None:
        return environ.get(f"COINFER_{name}") or None

    return Security(cert=get("TLS_CERT"), key=get("TLS_KEY"), ca=get("TLS_CA"),
                    mtls=(get("MTLS") or "").lower() in ("1", "true", "yes"),
                    server_name=server_name or get("TLS_SERVER_NAME"), token=get("TOKEN"))


def _channel(address: str, security):
    import grpc

    return security.channel(address) if security is not None else grpc.insecure_channel(address)


def check_grpc_health(address: str, service: str = "", timeout_s: float = 3.0, security=None) -> str | None:
    """None when `address` reports `service` SERVING, else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(address, security) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return f"{address}: no health status for service {service!r}"
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return f"{address}: no gRPC health service there"
            return f"{address}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return None if status == "SERVING" else f"{address}: service {service!r} is {status}"


def check_channel_control(address: str, timeout_s: float = 3.0, security=None) -> str | None:
    """None when the channel emulator's control service answers GetStats, else why not."""
    import grpc

    from coinfer.protos import channel_pb2, channel_pb2_grpc

    with _channel(address, security) as channel:
        try:
            channel_pb2_grpc.ChannelControlStub(channel).GetStats(channel_pb2.ChannelStatsRequest(),
                                                                 timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"{address}: channel control GetStats failed: {exc.code().name}: {exc.details()}"
    return None


def check_tcp(address: str, timeout_s: float = 3.0) -> str | None:
    """None when something accepts a TCP connection at `address`, else why not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"{address}: expected HOST:PORT"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{address}: TCP connect failed: {exc.strerror or exc}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 1, not argparse's 2: Docker reserves 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(UNHEALTHY)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m coinfer.healthcheck",
                     description="Exit 0 when the coinfer service at the given addresses is healthy, 1 otherwise.")
    parser.add_argument("address", nargs="?", metavar="HOST:PORT",
                        help="a server or planner: ask its gRPC health service")
    parser.add_argument("--service", default="",
                        help="the service name to ask about (default: '', the whole server)")
    parser.add_argument("--channel-control", metavar="HOST:PORT",
                        help="a channel emulator's control address: call GetStats")
    parser.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT",
                        help="also require a TCP connection to be accepted here (repeatable)")
    parser.add_argument("--timeout-s", type=float, default=3.0, help="per check (default: %(default)s)")
    parser.add_argument("--tls-server-name", metavar="NAME",
                        help="over TLS: the host name in the service's certificate (default: "
                             "COINFER_TLS_SERVER_NAME, else the address)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.address or args.channel_control or args.tcp):
        parser.error("give a HOST:PORT to check, --channel-control, or --tcp")
    if args.timeout_s <= 0:
        parser.error("--timeout-s must be > 0")
    from coinfer.errors import UsageError

    security = security_from_environment(server_name=args.tls_server_name)
    checks = []
    if args.address:
        checks.append((f"gRPC health of {args.address}", check_grpc_health,
                       (args.address, args.service), {"security": security}))
    if args.channel_control:
        checks.append((f"channel control at {args.channel_control}", check_channel_control,
                       (args.channel_control,), {"security": security}))
    checks += [(f"TCP {address}", check_tcp, (address,), {}) for address in args.tcp]
    failed = False
    for what, check, check_args, kwargs in checks:
        try:
            problem = check(*check_args, timeout_s=args.timeout_s, **kwargs)
        except UsageError as exc:  # e.g. an unreadable certificate file
            problem = str(exc)
        if problem:
            failed = True
            print(f"coinfer healthcheck: unhealthy: {problem}", file=sys.stderr)
        else:
            print(f"coinfer healthcheck: ok: {what}")
    return UNHEALTHY if failed else 0


if __name__ == "__main__":
    sys.exit(main())
