"""Faults with counts: a device keeps sending while a peer dies, stalls or restarts.

Each test drives a DeviceRuntime from a few threads (requests in flight together on its one stream)
and counts, per request its caller made: sent, answered, errored-to-caller, lost (sent - answered -
errored: a call that never came back) and duplicated (an answer delivered twice). Lost and duplicated
must be 0, and every answer must be the right one for its input (misdelivered: 0). The counts are
printed (pytest -s) and attached to every assertion.

Faults: the server SIGKILLed and restarted on the same port mid-stream; the channel emulator killed
and restarted; the planner killed (device and server keep the last plan); a peer that accepts and
never answers (the device's call ends within its deadline, then the device recovers when the real
server comes up there). Also: a repeated request id is computed once, even while the first is still
being computed.
"""
from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
import torch

from coinfer.codecs import decode, encode
from coinfer.device.runtime import DeviceRuntime
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.lab.launch import free_port

SPLIT = 2
SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "Short one.",
    "A server that dies must not take the device's requests with it.",
    "Retries re-send the same request id.",
    "The reply cache answers a retry without computing it again.",
    "Eight words in this sentence, give or take.",
    "The channel emulator is a TCP proxy that shapes bytes to a radio rate.",
]


def _server_args(port: int, *extra: str) -> list[str]:
    return ["server", "--model", "minilm", "--split", str(SPLIT), "--listen", f"127.0.0.1:{port}", *extra]


@dataclass
class Tally:
    """What the callers saw, request by request."""

    name: str
    sent: int = 0
    answered: int = 0
    errored: int = 0
    duplicated: int = 0
    misdelivered: int = 0
    errors: list = field(default_factory=list)
    ids: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def lost(self) -> int:
        return self.sent - self.answered - self.errored

    def __str__(self) -> str:
        errors = sorted({f"{type(e).__name__}: {str(e)[:120]}" for e in self.errors})[:3]
        return (f"[{self.name}] sent={self.sent} answered={self.answered} errored={self.errored} "
                f"lost={self.lost} duplicated={self.duplicated} misdelivered={self.misdelivered}"
                + (f" errors={errors}" if errors else ""))


def _drive(device: DeviceRuntime, tally: Tally, count: int, threads: int = 3, reference=None,
           budget_s: float = 180.0) -> None:
    """`count` requests from `threads` callers; a call still out after `budget_s` stays counted as lost."""
    numbers = iter(range(count))
    take = threading.Lock()

    def caller() -> None:
        while True:
            with take:
                i = next(numbers, None)
            if i is None:
                return
            sentence = SENTENCES[i % len(SENTENCES)]
            with tally.lock:
                tally.sent += 1
            try:
                result = device.infer([sentence])
            except Exception as exc:  # errored-to-caller: the caller was told
                with tally.lock:
                    tally.errored += 1
                    tally.errors.append(exc)
                continue
            with tally.lock:
                tally.answered += 1
                if result.request_id in tally.ids:
                    tally.duplicated += 1
                tally.ids.add(result.request_id)
                if reference is not None and not torch.allclose(result.output, reference[sentence], atol=1e-4):
                    tally.misdelivered += 1  # another request's answer, or a corrupted one

    workers = [threading.Thread(target=caller, name=f"{tally.name}-caller", daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + budget_s
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def _check(tally: Tally, sent: int, errored: int = 0) -> None:
    print(f"\n{tally}")
    assert tally.sent == sent, tally
    assert tally.lost == 0, tally
    assert tally.duplicated == 0, tally
    assert tally.misdelivered == 0, tally
    assert tally.errored == errored, tally
    assert tally.answered == sent - errored, tally


def _info(address: str) -> pb.ServerInfo:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.CoInferenceStub(channel).Info(pb.InfoRequest(), timeout=30, wait_for_ready=True)


@pytest.fixture(scope="module")
def steady_server():
    with ServiceProcess(_server_args(0), "steady-server") as server:
        yield server


@pytest.fixture(scope="module")
def reference(minilm, steady_server):
    """Each sentence's embedding, from a quiet server: what every answer under a fault must equal."""
    device = DeviceRuntime(minilm, SPLIT, server=steady_server.address, timeout_s=60)
    try:
        return {s: device.infer([s]).output for s in SENTENCES}
    finally:
        device.close()


# --- the faults ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_server_killed_and_restarted_mid_stream(minilm, reference, how):
    # SIGKILL: replies in flight are gone with the process; SIGTERM: a rolling restart, the server
    # answers what is in flight, refuses what comes after as UNAVAILABLE (re-sent), ends the stream
    port = free_port()
    tally = Tally(f"server {how} + restart")
    server = ServiceProcess(_server_args(port), "server-1")
    device = DeviceRuntime(minilm, SPLIT, server=f"127.0.0.1:{port}", timeout_s=90, attempt_timeout_s=10)
    restarted = None
    try:
        driver = threading.Thread(target=_drive, args=(device, tally, 90), kwargs=dict(reference=reference))
        driver.start()
        _wait_until(lambda: tally.answered >= 20, 120, "no answers before the fault")
        in_flight = tally.sent - tally.answered - tally.errored
        server.proc.send_signal(getattr(signal, how))
        assert server.proc.wait(30) == (0 if how == "SIGTERM" else -signal.SIGKILL)
        restarted = ServiceProcess(_server_args(port), "server-2")  # the same port: the device's address
        driver.join(200)
        _check(tally, 90)
        print(f"in flight at the kill: {in_flight}; device retries: {device.retries}")
        computed_after = _info(restarted.address).requests_computed
        print(f"the restarted server computed {computed_after}")
        assert in_flight > 0 and 0 < computed_after < tally.sent, tally  # the fault split the run
        if how == "SIGKILL":  # the replies in flight died with the process: re-sent, same ids
            assert device.retries > 0, f"the kill hit no request: {tally}"
    finally:
        device.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_channel_emulator_killed_and_restarted(minilm, steady_server, reference):
    port = free_port()
    # 8 Mbit/s: a request's hidden states spend ~20-30 ms on the wire, so with three callers the link
    # is busy when the emulator dies (unshaped, the kill could fall between sends and test nothing)
    args = ["channel", "--listen", f"127.0.0.1:{port}", "--upstream", steady_server.address, "--rate-bps", "8e6"]
    tally = Tally("channel SIGKILL + restart")
    channel = ServiceProcess(args, "channel-1")
    device = DeviceRuntime(minilm, SPLIT, server=channel.address, timeout_s=90, attempt_timeout_s=10)
    restarted = None
    before = _info(steady_server.address)
    try:
        driver = threading.Thread(target=_drive, args=(device, tally, 90), kwargs=dict(reference=reference))
        driver.start()
        _wait_until(lambda: tally.answered >= 20, 120, "no answers before the fault")
        channel.proc.kill()
        channel.proc.wait()
        restarted = ServiceProcess(args, "channel-2")
        driver.join(200)
        _check(tally, 90)
        after = _info(steady_server.address)
        computed = after.requests_computed - before.requests_computed
        from_cache = after.replies_from_cache - before.replies_from_cache
        print(f"device retries: {device.retries}; server computed {computed}, answered {from_cache} from its cache")
        assert device.retries > 0, f"the kill hit no request: {tally}"
        # the server never went away: each request computed exactly once, a retry of one whose reply
        # died with the channel is answered from the reply cache
        assert computed == tally.answered, (computed, str(tally))
    finally:
        device.close()
        channel.stop()
        if restarted is not None:
            restarted.stop()


def test_planner_killed_device_and_server_keep_the_last_plan(minilm, reference):
    tally = Tally("planner SIGKILL")
    # --drift high: no re-plan from telemetry, so the plan in force stays the one set here
    planner = ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", str(SPLIT), "--drift", "1000"],
                             "planner")
    server = device = None
    try:
        with grpc.insecure_channel(planner.address) as channel:
            # a tight delay limit: caps near full speed, no pruning (the default QoS stretches a
            # request to ~0.5 s under emulated frequency caps)
            plan = ppb_grpc.PlannerStub(channel).SetQoS(
                ppb.SetQoSRequest(qos=ppb.QoS(max_delay_s=0.05, max_energy_j=100)), timeout=60)
        dense = plan.rho_device == plan.rho_server == 1.0
        server = ServiceProcess(_server_args(0, "--planner", planner.address), "planned-server")
        device = DeviceRuntime(minilm, SPLIT, server=server.address, timeout_s=60, attempt_timeout_s=10)
        device.follow(planner.address, "device")
        plan = device.watcher.wait_for_plan(60)
        assert plan is not None, "the device got no plan"
        _wait_until(lambda: _info(server.address).plan_epoch == plan.epoch, 60, "the server got no plan")
        driver = threading.Thread(target=_drive, args=(device, tally, 60),
                                  kwargs=dict(reference=reference if dense else None))
        driver.start()
        _wait_until(lambda: tally.answered >= 15, 120, "no answers before the fault")
        planner.proc.kill()
        planner.proc.wait()
        driver.join(200)
        _check(tally, 60)
        _wait_until(lambda: not device.watcher.connected.is_set(), 30, "the device never noticed the planner die")
        info = _info(server.address)
        print(f"plan epoch {plan.epoch} held: device {device.epoch}, server {info.plan_epoch}")
        assert device.epoch == info.plan_epoch == plan.epoch
        after = device.infer([SENTENCES[0]])  # and it goes on serving with no planner at all
        assert after.plan_epoch == plan.epoch
    finally:
        if device is not None:
            device.close()
        if server is not None:
            server.stop()
        planner.stop()


class StalledPeer:
    """A TCP listener that accepts connections and never answers: a hung server."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted.append(conn)  # held open, never read, never written

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_stalled_peer_ends_the_call_within_its_deadline_then_the_device_recovers(minilm, reference):
    port = free_port()
    tally = Tally("stalled peer, then the real server")
    timeout_s = 4.0
    stall = StalledPeer(port)
    device = DeviceRuntime(minilm, SPLIT, server=f"127.0.0.1:{port}", timeout_s=timeout_s, attempt_timeout_s=1.0)
    server = None
    try:
        started = time.monotonic()
        _drive(device, tally, 4, threads=2, budget_s=timeout_s + 10)
        elapsed = time.monotonic() - started
        print(f"\n{tally}; {elapsed:.1f} s for two rounds of two calls")
        assert stall.accepted, "the device never reached the stalled peer"
        assert tally.errored == 4 and tally.lost == 0, tally
        for exc in tally.errors:  # a clear error: a deadline, and how hard the device tried
            assert getattr(exc, "code", None) == grpc.StatusCode.DEADLINE_EXCEEDED, exc
            assert "deadline" in str(exc), exc
        # two rounds of calls, each bounded by its deadline (+ slack for a loaded machine), not hung
        assert elapsed < 2 * timeout_s + 4, tally

        stall.close()
        server = ServiceProcess(_server_args(port), "server-after-stall")
        _drive(device, tally, 30, reference=reference)
        _check(tally, 34, errored=4)
    finally:
        stall.close()
        device.close()
        if server is not None:
            server.stop()


# --- exactly once ----------------------------------------------------------------------------------
def test_a_repeated_request_id_is_computed_once_even_while_computing(minilm, steady_server):
    # big enough that the retries arrive while the first copy is still being computed
    x = torch.randn(16, 256, minilm.hidden_size, generator=torch.Generator().manual_seed(0))
    info = _info(steady_server.address)
    request = pb.InferRequest(request_id="repeated-id", plan_epoch=info.plan_epoch, split_point=SPLIT,
                              model_id=info.model_id, hidden_states=encode(x),
                              attention_mask=encode(torch.ones(16, 256, dtype=torch.long)))
    # each copy on a connection of its own, as a retry after a reset would come
    channels = [grpc.insecure_channel(steady_server.address) for _ in range(3)]
    try:
        stubs = [pb_grpc.CoInferenceStub(c) for c in channels]
        for c in channels:
            grpc.channel_ready_future(c).result(timeout=30)

        def unary(stub):
            reply = stub.Infer(request, timeout=60)
            return reply, time.monotonic()

        def streamed(stub):
            (reply,) = list(stub.InferStream(iter([request]), timeout=60))
            return reply, time.monotonic()

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(unary, stubs[0])
            time.sleep(0.05)
            retries_sent = time.monotonic()
            retries = [pool.submit(unary, stubs[1]), pool.submit(streamed, stubs[2])]
            (reply, first_done), *others = [f.result() for f in (first, *retries)]
        after = _info(steady_server.address)
        computed = after.requests_computed - info.requests_computed
        from_cache = after.replies_from_cache - info.replies_from_cache
        print(f"\nthree copies of one id: computed {computed}, from the cache {from_cache}; the retries went "
              f"out {first_done - retries_sent:.2f} s before the first copy was answered")
        assert first_done - retries_sent > 0.1, "the first copy was done before the retries: make it bigger"
        assert computed == 1 and from_cache == 2, (computed, from_cache)
        for other, _ in others:
            assert not other.HasField("error")
            assert other.output == reply.output  # the very same answer
        assert list(decode(reply.output).shape) == [16, minilm.hidden_size]

        late = stubs[1].Infer(request, timeout=60)  # a retry after the answer: from the cache too
        final = _info(steady_server.address)
        assert late.output == reply.output
        assert final.requests_computed - info.requests_computed == 1
        assert final.replies_from_cache - info.replies_from_cache == 3
    finally:
        for c in channels:
            c.close()


def test_replies_kept_for_retries_do_not_keep_the_requests(minilm):
    # The reply cache keeps each reply's future for its TTL (60 s). A stream's completion callback
    # on that future once held the whole request, so every request's tensors stayed that long too:
    # the load test's server grew 45 % over 10,000 requests. Here each request carries 2 MB in an
    # unknown field (kept by the parsed message, nothing to compute): held, 100 of them show.
    import psutil

    with ServiceProcess(_server_args(0), "cache-server") as server:
        info = _info(server.address)
        padding = b"\xfa\x06" + _varint(2 << 20) + bytes(2 << 20)  # field 111, length-delimited
        base = dict(plan_epoch=info.plan_epoch, split_point=SPLIT, model_id=info.model_id,
                    hidden_states=encode(torch.randn(1, 4, minilm.hidden_size)),
                    attention_mask=encode(torch.ones(1, 4, dtype=torch.long)))
        rss = psutil.Process(server.proc.pid).memory_info
        with grpc.insecure_channel(server.address) as channel:
            stream = channel.stream_stream("/coinfer.v1.CoInference/InferStream")

            def run(prefix: str, count: int) -> None:
                # one at a time on one stream: what is in flight (and the allocator's high-water mark
                # with it) stays at one request, so only what the server keeps adds up
                answered = threading.Semaphore(0)

                def messages():
                    for i in range(count):
                        yield pb.InferRequest(request_id=f"{prefix}-{i}", **base).SerializeToString() + padding
                        answered.acquire()

                replies = []
                for raw in stream(messages(), timeout=120):
                    replies.append(pb.InferReply.FromString(raw))
                    answered.release()
                assert len(replies) == count and not any(r.HasField("error") for r in replies)

            run("warm", 10)
            before = rss().rss
            run("big", 100)
            grown_mb = (rss().rss - before) / 2**20
        print(f"\nserver RSS after 100 streamed 2 MB requests: {grown_mb:+.1f} MB")
        assert grown_mb < 60, f"the server holds on to the requests: {grown_mb:.0f} MB for 200 MB sent"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_load_script_smoke():
    # scripts/load_test end to end at a tiny size (the full 10,000-request run is a script, not a test)
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "load_test"
    out = subprocess.run([str(script), "--requests", "100", "--devices", "2", "--warmup", "10"],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout)
    print(f"\nload_test --requests 100 --devices 2: {json.dumps(report)}")
    assert report["requests"] == report["answered"] == 100 and report["errors"] == 0, report
    assert report["channel"]["connections_total"] == 2, "each device has a connection of its own"
    assert report["server"]["requests_computed"] == 100
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["server_rss_mb"]["start"] > 0 and "rss_growth_pct" in report
