"""`coinfer status ADDR`: what a running server or planner says about itself, for operators.

A server answers `CoInference.Info` (model, fingerprint, split point, plan epoch, pruning, device,
frequency mode, energy source, requests computed, replies from its cache); a planner answers
`Planner.GetState` (its current plan, its estimates now and those the plan was solved with, the QoS,
its subscribers). Which kind listens at ADDR is found by asking: a planner answers `Info` with
UNIMPLEMENTED. It is a gRPC client like any other, with this process's token and TLS options.
"""
from __future__ import annotations

import argparse

KIND_SERVER = "server"
KIND_PLANNER = "planner"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show what a running server or planner says about itself",
        description="Ask the coinfer server or planner at ADDR for its state and print it as a table (or "
                    "--json): a server's Info (model, fingerprint, split, epoch, rho, method, device, "
                    "frequency mode, energy source, requests computed, cache hits) or a planner's state "
                    "(current plan, estimates, QoS, subscribers). Exit status 2 when nothing answers.")
    parser.add_argument("address", metavar="ADDR", help="HOST:PORT of a coinfer server (or channel emulator "
                                                        "in front of one) or planner")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--timeout-s", type=float, default=5.0,
                        help="give up when nothing answers within this many seconds (default: %(default)s)")
    parser.set_defaults(func=run)


def _fields(message) -> dict:
    """Every field of a message (defaults included), sub-messages as nested dicts, in declared order."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` before
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            out[field.name] = list(value)
        elif field.message_type is not None:
            out[field.name] = _fields(value)
        else:
            out[field.name] = value
    return out


def _format(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if value == "":
        return "-"
    return str(value)


def _table(values: dict, indent: str = "  ") -> list[str]:
    width = max((len(k) for k, v in values.items() if not isinstance(v, dict)), default=0)
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_table(value, indent + "  "))
        else:
            lines.append(f"{indent}{key:<{width}}  {_format(value)}")
    return lines


def query(address: str, timeout_s: float = 5.0) -> dict:
    """{"address", "kind": "server" | "planner", "state": {...}}; UsageError when nothing (coinfer) answers."""
    import time

    import grpc

    from coinfer import security
    from coinfer.errors import UsageError
    from coinfer.protos import coinfer_pb2, coinfer_pb2_grpc, planner_pb2, planner_pb2_grpc

    if timeout_s <= 0:
        raise UsageError(f"--timeout-s must be > 0, got {timeout_s:g}")
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        return max(0.05, deadline - time.monotonic())

    def failed(exc: grpc.RpcError) -> UsageError:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return UsageError(f"{address} refused the call ({code.name}: {exc.details()}): give its --token "
                              "(or COINFER_TOKEN) and TLS options")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return UsageError(f"nothing answered at {address} within {timeout_s:g} s ({code.name}: {exc.details()})")
        return UsageError(f"{address}: {code.name}: {exc.details()}")

    try:
        channel = security.channel(address)
    except ValueError as exc:
        raise UsageError(f"{address}: {exc}") from None
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise UsageError(f"nothing answered at {address} within {timeout_s:g} s (no server or planner "
                             "listening there, or its handshake never completed)") from None
        asks = ((KIND_SERVER, lambda: coinfer_pb2_grpc.CoInferenceStub(channel).Info(
                    coinfer_pb2.InfoRequest(), timeout=remaining())),
                (KIND_PLANNER, lambda: planner_pb2_grpc.PlannerStub(channel).GetState(
                    planner_pb2.StateRequest(), timeout=remaining())))
        for kind, ask in asks:  # UNIMPLEMENTED: not this kind of service, ask the next
            try:
                return {"address": address, "kind": kind, "state": _fields(ask())}
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise failed(exc) from None
        raise UsageError(f"{address} answers gRPC but is neither a coinfer server nor a planner "
                         "(CoInference.Info and Planner.GetState are both UNIMPLEMENTED)")


def run(args: argparse.Namespace) -> int:
    import json

    result = query(args.address, args.timeout_s)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['kind']} at {result['address']}")
    print("\n".join(_table(result["state"])))
    return 0
