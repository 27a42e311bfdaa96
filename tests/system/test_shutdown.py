"""Graceful shutdown on SIGTERM: the server finishes what is in flight, refuses new connections and
exits 0; the planner and the channel emulator exit 0 too, with a client connected."""
from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch

from coinfer.codecs import decode, encode
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc

SPLIT = 2
GRACE_S = 8.0


def _refused(port: int) -> bool:
    """True when nothing accepts TCP connections on the port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def _wait_refused(port: int, timeout_s: float) -> float:
    """Seconds until the port refuses connections."""
    started = time.monotonic()
    while not _refused(port):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"port {port} still accepts connections {timeout_s} s after SIGTERM")
        time.sleep(0.01)
    return time.monotonic() - started


def _exit_code(service: ServiceProcess, timeout_s: float) -> int:
    return service.proc.wait(timeout=timeout_s)


def test_server_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(minilm):
    server = ServiceProcess(["server", "--model", "minilm", "--split", str(SPLIT), "--listen", "127.0.0.1:0",
                             "--grace-s", str(GRACE_S)], "server")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.CoInferenceStub(channel)
            info = stub.Info(pb.InfoRequest(), timeout=30, wait_for_ready=True)

            def request(i: int) -> pb.InferRequest:
                # big enough that the batch of them takes a second or more to compute, one after another
                x = torch.randn(16, 256, minilm.hidden_size, generator=torch.Generator().manual_seed(i))
                return pb.InferRequest(request_id=f"in-flight-{i}", plan_epoch=info.plan_epoch, split_point=SPLIT,
                                       model_id=info.model_id, hidden_states=encode(x),
                                       attention_mask=encode(torch.ones(16, 256, dtype=torch.long)))

            def streamed(ids):  # a stream that sends its requests, then half-closes
                return list(stub.InferStream(iter([request(i) for i in ids]), timeout=60))

            with ThreadPoolExecutor(4) as pool:
                unary = [pool.submit(stub.Infer, request(i), timeout=60) for i in range(3)]
                stream = pool.submit(streamed, [3, 4])
                time.sleep(0.5)  # on the wire and queued at the server
                assert not all(f.done() for f in unary), "the requests finished before the signal: make them bigger"
                assert not _refused(server.port)
                server.proc.send_signal(signal.SIGTERM)
                refused_after = _wait_refused(server.port, 5.0)
                still_in_flight = sum(not f.done() for f in (*unary, stream))
                # a new connection's call fails fast, not after its deadline
                with grpc.insecure_channel(server.address) as late:
                    with pytest.raises(grpc.RpcError) as caught:
                        pb_grpc.CoInferenceStub(late).Info(pb.InfoRequest(), timeout=5)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                replies = [f.result(timeout=60) for f in unary] + stream.result(timeout=60)
            print(f"\nSIGTERM: new connections refused after {refused_after * 1e3:.1f} ms with {still_in_flight} "
                  f"requests in flight; {len(replies)} of 5 answered")
            assert still_in_flight > 0, "nothing was in flight when new connections were refused"
            assert sorted(r.request_id for r in replies) == [f"in-flight-{i}" for i in range(5)]
            for reply in replies:
                assert not reply.HasField("error"), reply.error
                assert list(decode(reply.output).shape) == [16, minilm.hidden_size]
        assert _exit_code(server, GRACE_S + 10) == 0
    finally:
        server.stop()


def test_server_sigterm_ends_a_device_stream_once_its_requests_are_answered(minilm):
    # A device keeps one stream open for good. On SIGTERM the server answers what is in flight on it
    # and ends it, instead of waiting out its whole grace period for a stream that stays open
    # (docker stop's 10 s would otherwise SIGKILL a server whose grace is 10 s).
    from coinfer.device.client import InferenceClient

    grace_s = 20.0
    server = ServiceProcess(["server", "--model", "minilm", "--split", str(SPLIT), "--listen", "127.0.0.1:0",
                             "--grace-s", str(grace_s)], "server")
    try:
        with InferenceClient(server.address, timeout_s=60) as client:  # the device's stream client
            info = client.info()
            requests = [pb.InferRequest(
                request_id=f"on-the-stream-{i}", plan_epoch=info.plan_epoch, split_point=SPLIT,
                model_id=info.model_id, attention_mask=encode(torch.ones(16, 256, dtype=torch.long)),
                hidden_states=encode(torch.randn(16, 256, minilm.hidden_size))) for i in range(2)]
            with ThreadPoolExecutor(2) as pool:
                pending = [pool.submit(client.infer, r) for r in requests]
                time.sleep(0.3)
                assert not all(f.done() for f in pending), "answered before the signal: make them bigger"
                signalled = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                replies = [f.result(timeout=60) for f in pending]
            assert [r.request_id for r in replies] == ["on-the-stream-0", "on-the-stream-1"]
            assert all(list(r.output.shape) == [16, minilm.hidden_size] for r in replies)
            code = _exit_code(server, grace_s - 5)  # raises if it waits out the grace period
            print(f"\nSIGTERM with a device stream open: exit {code} after {time.monotonic() - signalled:.2f} s "
                  f"(grace {grace_s:g} s)")
            assert code == 0
    finally:
        server.stop()


def test_planner_sigterm_with_a_watcher_connected_exits_0():
    planner = ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", str(SPLIT)], "planner")
    try:
        with grpc.insecure_channel(planner.address) as channel:
            plans = ppb_grpc.PlannerStub(channel).WatchPlans(ppb.WatchRequest(node_id="d", role="device"), timeout=60)
            first = next(plans)  # a live subscription
            assert first.epoch >= 1
            ended = threading.Event()

            def drain():
                try:
                    for _ in plans:
                        pass
                except grpc.RpcError:
                    pass
                ended.set()

            threading.Thread(target=drain, daemon=True).start()
            planner.proc.send_signal(signal.SIGTERM)
            assert _exit_code(planner, 15) == 0
            assert ended.wait(10), "the subscriber's stream did not end"
        assert _refused(planner.port)
    finally:
        planner.stop()


def test_channel_sigterm_with_a_connection_open_exits_0():
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4)
    port = upstream.getsockname()[1]
    channel = ServiceProcess(["channel", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}", "--unlimited",
                              "--control", "127.0.0.1:0"], "channel", expect=("listening", "control"))
    try:
        with socket.create_connection(("127.0.0.1", channel.port), timeout=5) as client:
            server_side, _ = upstream.accept()  # the proxy joined the device to the "server"
            with server_side:
                client.sendall(b"hello")
                assert server_side.recv(5) == b"hello"
                channel.proc.send_signal(signal.SIGTERM)
                assert _exit_code(channel, 15) == 0
        assert _refused(channel.port)
    finally:
        channel.stop()
        upstream.close()
