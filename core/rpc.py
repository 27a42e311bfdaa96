"""gRPC settings both ends must agree on."""
from __future__ import annotations

# gRPC's default 4 MiB limit is below one bert-base activation at batch 8 x 512 tokens (12.6 MB),
# so both ends raise it explicitly; a larger request is refused with RESOURCE_EXHAUSTED.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Trailing metadata on a refusal: the plan epoch the server holds (streams carry it in the reply).
EPOCH_METADATA = "coinfer-plan-epoch"


def message_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Message limits, and tolerance of the clients' keepalive pings (by default a server answers
    pings more frequent than every five minutes with GOAWAY)."""
    return message_options(max_message_bytes) + [
        # gRPC sets SO_REUSEPORT by default: a second service on a busy port would bind it too and take
        # half the connections. Off, a busy port is an error at start.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def client_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Message limits, plus reconnection that notices a restarted peer within a second (gRPC's
    default backoff grows to two minutes) and keepalive pings that notice a dead connection."""
    return message_options(max_message_bytes) + [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); IPv6 hosts may be bracketed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)
