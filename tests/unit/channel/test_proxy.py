"""The emulator on real sockets (127.0.0.1), embedded in-process: rate accuracy, changes of p and g,
fading, traces, fairness, closing, leaks, gRPC through it.

Timing on a shared 2-core machine: load can only make a transfer slower, so a timing check may be
repeated (up to 3 attempts) and passes when one attempt is within tolerance; every attempt is shown
when none is.
"""
from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time

import grpc
import psutil
import pytest

from coinfer.channel import ChannelControlClient, ChannelEmulator
from coinfer.channel.gain import RayleighBlockFading
from coinfer.channel.measure import Sink, send_bytes, timed_transfer
from coinfer.radio import dbm_per_hz_to_w_per_hz, shannon_rate_bps

KiB, MiB = 1 << 10, 1 << 20
N0 = dbm_per_hz_to_w_per_hz(-174)


def gain_for_rate(rate_bps: float, bandwidth_hz: float, tx_power_w: float) -> float:
    """The g at which R(p) = rate_bps (inverse of the Shannon formula)."""
    return (2 ** (rate_bps / bandwidth_hz) - 1) * bandwidth_hz * N0 / tx_power_w


def retry_timing(measure, check, attempts: int = 3):
    """Run measure() until check(result) holds; returns the passing result or fails listing all."""
    results = []
    for _ in range(attempts):
        result = measure()
        results.append(result)
        if check(result):
            return result
    pytest.fail(f"no attempt within tolerance: {results}")


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def timeline_sink():
    with Sink(timeline=True) as s:
        yield s


def emulator(sink_port: int, **options) -> ChannelEmulator:
    return ChannelEmulator(upstream=f"127.0.0.1:{sink_port}", **options)


# -- rate accuracy ---------------------------------------------------------------------------------
# Each point takes 0.5-1.5 s: the issue asks for 5 % on transfers of 0.5 s and longer.
GRID = [(64 * KiB, 1e6, 0.0), (1 * MiB, 10e6, 0.0), (8 * MiB, 100e6, 0.0), (64 * MiB, 400e6, 0.0),
        (1 * MiB, 10e6, 0.05)]


@pytest.mark.parametrize("size, rate, delay", GRID, ids=[f"{s // KiB}KiB@{r / 1e6:g}Mbps+{d * 1e3:g}ms"
                                                         for s, r, d in GRID])
def test_transfer_time_matches_size_over_rate(sink, size, rate, delay):
    expected = size * 8 / rate + delay
    with emulator(sink.port, rate_bps=rate, delay_s=delay) as emu:
        elapsed = retry_timing(lambda: timed_transfer(emu.port, size, sink)[0],
                               lambda t: abs(t - expected) <= 0.05 * expected)
        assert emu.stats().bytes_up >= size
    print(f"{size} B at {rate:g} bit/s + {delay} s: {elapsed:.4f} s, expected {expected:.4f} s")


@pytest.mark.parametrize("size, rate", [(1500, 1e6), (16 * KiB, 10e6), (64 * KiB, 100e6)])
def test_small_transfers_are_accurate_too(sink, size, rate):
    # 5-13 ms transfers. Never faster than size/rate: an idle link earns no burst credit (a 4 ms
    # burst would show here). Slower only by the path's latency, a few ms at most when the machine
    # is busy.
    expected = size * 8 / rate
    with emulator(sink.port, rate_bps=rate) as emu:
        timed_transfer(emu.port, 100, sink)            # warm the path up
        time.sleep(0.05)                               # then idle: must earn no credit
        times = [timed_transfer(emu.port, size, sink)[0] for _ in range(5)]
    assert min(times) >= 0.95 * expected, times
    assert min(times) <= 1.05 * expected + 0.005, times


def test_delay_applies_one_way_in_each_direction(sink):
    reply_sink = Sink(reply=b"r")
    with reply_sink, emulator(reply_sink.port, unlimited=True, delay_s=0.04) as emu:
        def round_trip():
            with socket.create_connection(("127.0.0.1", emu.port)) as s:
                t0 = time.monotonic()
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                assert s.recv(10) == b"r"
                return time.monotonic() - t0
        # ping reaches the server after 40 ms (its EOF too), the reply comes back 40 ms later;
        # never sooner, and later only by the path's latency.
        retry_timing(round_trip, lambda t: 0.08 <= t <= 0.1, attempts=5)


def test_downlink_rate(sink):
    reply = bytes(1 * MiB)
    with Sink(reply=reply) as server, emulator(server.port, unlimited=True, downlink_bps=10e6) as emu:
        def fetch():
            with socket.create_connection(("127.0.0.1", emu.port)) as s:
                t0 = time.monotonic()
                s.shutdown(socket.SHUT_WR)
                got = 0
                while chunk := s.recv(1 << 16):
                    got += len(chunk)
                assert got == len(reply)
                return time.monotonic() - t0
        expected = len(reply) * 8 / 10e6
        retry_timing(fetch, lambda t: abs(t - expected) <= 0.05 * expected)
        assert emu.stats().bytes_down >= len(reply)


# -- changes take effect on the next bytes ---------------------------------------------------------
def test_power_and_gain_changes_through_the_control_service(sink):
    b, p1 = 1e6, 0.1
    g = gain_for_rate(8e6, b, p1)
    with emulator(sink.port, bandwidth_hz=b, tx_power_w=p1, gain=g, control="127.0.0.1:0") as emu, \
            ChannelControlClient(emu.control_address) as control:
        size = 512 * KiB
        r1 = control.stats().rate_bps
        assert r1 == pytest.approx(8e6, rel=1e-9)
        retry_timing(lambda: timed_transfer(emu.port, size, sink)[0],
                     lambda t: abs(t - size * 8 / r1) <= 0.05 * size * 8 / r1)
        # Half the power: the rate the formula gives, on the very next transfer.
        stats = control.set_tx_power(p1 / 2)
        r2 = shannon_rate_bps(b, N0, g, p1 / 2)
        assert stats.rate_bps == pytest.approx(r2) and stats.tx_power_w == p1 / 2
        retry_timing(lambda: timed_transfer(emu.port, size // 2, sink)[0],
                     lambda t: abs(t - size * 4 / r2) <= 0.05 * size * 4 / r2)
        # A gain 3 dB up: again the formula's rate.
        stats = control.set_gain(gain_db=10 * math.log10(g) + 3)
        r3 = shannon_rate_bps(b, N0, g * 10 ** 0.3, p1 / 2)
        assert stats.rate_bps == pytest.approx(r3) and stats.gain_source == "fixed"
        retry_timing(lambda: timed_transfer(emu.port, size, sink)[0],
                     lambda t: abs(t - size * 8 / r3) <= 0.05 * size * 8 / r3)
        assert control.set_gain(distance_m=20.0).distance_m == 20.0
        with pytest.raises(ValueError, match="tx power"):
            control.set_tx_power(-1.0)


def test_power_change_mid_transfer_changes_the_rate_of_the_following_bytes(timeline_sink):
    b, p1 = 1e6, 0.1
    g = gain_for_rate(12e6, b, p1)
    p2 = (2 ** (4e6 / b) - 1) * b * N0 / g          # the power that gives 4 Mbit/s
    with emulator(timeline_sink.port, bandwidth_hz=b, tx_power_w=p1, gain=g, control="127.0.0.1:0") as emu, \
            ChannelControlClient(emu.control_address) as control:
        control.wait_ready()

        def attempt():
            control.set_tx_power(p1)
            size = int(12e6 / 8 * 0.5 + 4e6 / 8 * 0.6)  # 0.5 s at 12 Mbit/s then 0.6 s at 4
            sender = threading.Thread(target=send_bytes, args=(emu.port, size))
            sender.start()
            time.sleep(0.5)
            t_call = time.monotonic()
            control.set_tx_power(p2)
            t_done = time.monotonic()
            sender.join()
            got = timeline_sink.next_result()
            before = (got.bytes_by(t_call - 0.05) - got.bytes_by(t_call - 0.35)) * 8 / 0.3
            after = (got.bytes_by(t_done + 0.35) - got.bytes_by(t_done + 0.05)) * 8 / 0.3
            return before, after
        # The bytes right after the call go at the new rate, the ones before at the old.
        retry_timing(attempt, lambda r: abs(r[0] / 12e6 - 1) <= 0.08 and abs(r[1] / 4e6 - 1) <= 0.08)


def test_silent_radio_sends_nothing_until_power_returns(sink):
    with emulator(sink.port, bandwidth_hz=1e6, tx_power_w=0.0, gain=1e-9) as emu:
        assert emu.stats().rate_bps == 0.0
        sender = threading.Thread(target=send_bytes, args=(emu.port, 10_000))
        sender.start()
        time.sleep(0.3)
        assert emu.stats().bytes_up == 0          # p = 0: nothing on the air
        emu.set_tx_power(0.1)
        sender.join(10)
        assert sink.next_result(10).nbytes == 10_000


# -- fading and traces -----------------------------------------------------------------------------
def predicted_end(t_start: float, bits: float, rate_of_block, coherence: float) -> float:
    """When `bits` sent from t_start are through, with rate_of_block(k) in block k (clock from 0)."""
    t = t_start
    while True:
        k = math.floor(t / coherence)
        block_end = (k + 1) * coherence
        r = rate_of_block(k)
        if r * (block_end - t) >= bits:
            return t + bits / r
        bits -= r * (block_end - t)
        t = block_end


def test_rayleigh_fading_follows_its_seed(sink):
    b, p, coherence, seed = 1e6, 0.1, 0.1, 11
    g0 = gain_for_rate(8e6, b, p)                   # ~8 Mbit/s at the mean gain
    fading = RayleighBlockFading(coherence, seed)

    def rate_of_block(k):
        return shannon_rate_bps(b, N0, g0 * fading.factor_of_block(k), p)

    with emulator(sink.port, bandwidth_hz=b, tx_power_w=p, gain=g0, fading="rayleigh",
                  coherence_s=coherence, seed=seed) as emu:
        origin = emu.clock_origin
        # The gain it reports is the seed's sequence.
        for _ in range(3):
            s = emu.stats()
            k = math.floor(s.uptime_s / coherence)
            assert s.gain in (pytest.approx(g0 * fading.factor_of_block(k)),
                              pytest.approx(g0 * fading.factor_of_block(k + 1)))
            time.sleep(0.13)

        def attempt():
            size = 1 * MiB
            elapsed, got = timed_transfer(emu.port, size, sink)
            t_start = got.t_last - elapsed - origin
            expected = predicted_end(t_start, size * 8, rate_of_block, coherence) - t_start
            return elapsed, expected
        # The transfer lasts what the seeded sequence of rates says, block by block.
        retry_timing(attempt, lambda r: abs(r[0] - r[1]) <= 0.05 * r[1])


def test_trace_mode_follows_the_trace(tmp_path, timeline_sink):
    b, p = 1e6, 0.1
    rates = [(0.0, 12e6), (0.6, 3e6), (1.1, 12e6)]
    trace = tmp_path / "gain.csv"
    trace.write_text("time_s,gain\n" + "".join(f"{t},{gain_for_rate(r, b, p)!r}\n" for t, r in rates))
    with emulator(timeline_sink.port, bandwidth_hz=b, tx_power_w=p, trace=str(trace)) as emu:
        origin = emu.clock_origin
        send_bytes(emu.port, int(12e6 / 8 * 0.6 + 3e6 / 8 * 0.5 + 12e6 / 8 * 0.3))
        got = timeline_sink.next_result()
        stats = emu.stats()
        assert stats.gain_source == "trace"
        # The time-weighted mean rate is the trace's, integrated up to now.
        u = stats.uptime_s
        assert stats.mean_rate_bps == pytest.approx((12e6 * 0.6 + 3e6 * 0.5 + 12e6 * (u - 1.1)) / u, rel=1e-4)

    def rate_between(a, z):
        return (got.bytes_by(origin + z) - got.bytes_by(origin + a)) * 8 / (z - a)
    # Each stretch of the trace gets its own rate (margins of 50 ms around the steps).
    assert rate_between(0.15, 0.55) == pytest.approx(12e6, rel=0.08)
    assert rate_between(0.65, 1.05) == pytest.approx(3e6, rel=0.08)
    assert rate_between(1.15, 1.35) == pytest.approx(12e6, rel=0.1)


# -- sharing ---------------------------------------------------------------------------------------
def test_connections_share_the_uplink_fairly(timeline_sink):
    rate, size = 16e6, 1 * MiB
    with emulator(timeline_sink.port, rate_bps=rate) as emu:
        def attempt():
            starts = []
            senders = [threading.Thread(target=lambda: starts.append(send_bytes(emu.port, size)))
                       for _ in range(2)]
            for t in senders:
                t.start()
            for t in senders:
                t.join()
            a, b = timeline_sink.next_result(), timeline_sink.next_result()
            total = max(a.t_last, b.t_last) - min(starts)
            # While both are sending, each gets half the link.
            lo, hi = max(a.t_first, b.t_first) + 0.02, min(a.t_last, b.t_last) - 0.02
            share = (a.bytes_by(hi) - a.bytes_by(lo)) / max(1, a.bytes_by(hi) - a.bytes_by(lo)
                                                           + b.bytes_by(hi) - b.bytes_by(lo))
            return total, share, hi - lo
        # Together they take the time of both payloads at the one rate, and share it half and half
        # over (at least) half a second of overlap.
        retry_timing(attempt, lambda r: abs(r[0] / (2 * size * 8 / rate) - 1) <= 0.05
                     and abs(r[1] - 0.5) <= 0.05 and r[2] >= 0.5)


def test_a_small_message_is_not_stuck_behind_a_bulk_transfer(sink):
    with Sink() as bulk_sink, emulator(sink.port, rate_bps=8e6) as emu:
        bulk = threading.Thread(target=send_bytes, args=(emu.port, 1 * MiB))
        bulk.start()                              # ~1 s of backlog on the link
        time.sleep(0.2)

        def small():
            elapsed, _ = timed_transfer(emu.port, 1000, sink)
            return elapsed
        # Round robin: 1000 B wait one bulk quantum (1 ms), not the ~0.8 s of backlog.
        retry_timing(small, lambda t: t <= 0.015)
        bulk.join()


# -- closing ---------------------------------------------------------------------------------------
@pytest.fixture
def raw_server():
    """A listening socket whose accepted connections the test holds directly."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        yield listener


def test_client_close_reaches_the_server_and_back(raw_server):
    with emulator(raw_server.getsockname()[1], rate_bps=10e6) as emu:
        client = socket.create_connection(("127.0.0.1", emu.port))
        server, _ = raw_server.accept()
        server.settimeout(5)
        client.sendall(b"hello")
        client.close()
        assert server.recv(100) == b"hello"
        assert server.recv(100) == b""            # the client's close arrives as EOF
        server.close()
        wait_until(lambda: emu.stats().connections_active == 0)


def test_server_close_reaches_the_client(raw_server):
    with emulator(raw_server.getsockname()[1], rate_bps=10e6) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as client:
            client.settimeout(5)
            server, _ = raw_server.accept()
            server.sendall(b"bye")
            server.close()
            assert client.recv(100) == b"bye"
            assert client.recv(100) == b""
        wait_until(lambda: emu.stats().connections_active == 0)


def test_server_reset_closes_the_client(raw_server):
    with emulator(raw_server.getsockname()[1], rate_bps=10e6) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as client:
            client.settimeout(5)
            server, _ = raw_server.accept()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            server.close()                        # linger 0: an RST, not a FIN
            try:
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass
        wait_until(lambda: emu.stats().connections_active == 0)


def test_half_closed_connection_drains_both_ways(raw_server):
    payload, reply = os.urandom(300 * KiB), os.urandom(200 * KiB)
    with emulator(raw_server.getsockname()[1], rate_bps=20e6, downlink_bps=20e6, delay_s=0.01) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as client:
            client.settimeout(10)
            server, _ = raw_server.accept()
            server.settimeout(10)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)      # half-close while ~100 ms of bytes are queued
            got = recv_all(server)
            assert got == payload                 # every byte before the FIN arrived, in order
            server.sendall(reply)                 # the other direction still works
            server.close()
            assert recv_all(client) == reply
        wait_until(lambda: emu.stats().connections_active == 0)


def test_switching_modes_mid_stream_keeps_every_byte_in_order(raw_server):
    # Unlimited without delay moves bytes with splice(2), limited rates through the queue. Each
    # switch to unlimited comes with a full queue and full socket buffers behind it: the queued
    # bytes must still go first. Nothing may be lost or reordered.
    payload = os.urandom(48 * MiB)
    with emulator(raw_server.getsockname()[1], rate_bps=50e6) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as client:
            server, _ = raw_server.accept()
            server.settimeout(20)
            received = []
            reader = threading.Thread(target=lambda: received.append(recv_all(server)))
            reader.start()
            sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
            sender.start()
            deadline = time.monotonic() + 30
            while sender.is_alive():
                assert time.monotonic() < deadline, "the stream stalled"
                emu.set_rate(50e6)
                time.sleep(0.08)
                emu.set_unlimited()
                time.sleep(0.003)
            sender.join(20)
            reader.join(20)
            server.close()
    assert received and len(received[0]) == len(payload)
    assert received[0] == payload


def test_unreachable_upstream_closes_the_client():
    port = free_closed_port()
    with ChannelEmulator(upstream=f"127.0.0.1:{port}", rate_bps=1e6) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as client:
            client.settimeout(5)
            try:
                assert client.recv(10) == b""
            except ConnectionResetError:
                pass
        wait_until(lambda: emu.stats().connections_failed == 1 and emu.stats().connections_active == 0)


@pytest.mark.parametrize("options", [dict(rate_bps=400e6, delay_s=0.001), dict(unlimited=True)],
                         ids=["shaped+delay", "unlimited-splice"])
def test_nothing_leaks_after_1000_connections(options):
    proc = psutil.Process()
    with EchoServer() as echo, ChannelEmulator(upstream=f"127.0.0.1:{echo.port}", **options) as emu:
        asyncio.run(many_echo_clients(emu.port, 20, 10))        # warm up, then let it settle
        wait_until(lambda: emu.stats().connections_active == 0)
        fds, threads = settled(lambda: (proc.num_fds(), proc.num_threads()))
        asyncio.run(many_echo_clients(emu.port, 1000, 50))
        wait_until(lambda: emu.stats().connections_active == 0)
        # Every socket, pipe and thread opened for those connections is gone again.
        wait_until(lambda: proc.num_fds() <= fds and proc.num_threads() <= threads,
                   message=lambda: f"fds {fds} -> {proc.num_fds()}, threads {threads} -> {proc.num_threads()}")
        stats = emu.stats()
        assert stats.connections_total == 1020 and stats.bytes_up == stats.bytes_down == 1020 * 100


def test_start_stop_releases_threads_and_sockets():
    # The demo starts and stops emulators in-process: each stop must take its loop thread, its
    # control server's threads and every socket with it.
    proc = psutil.Process()

    def cycle():
        with emulator(free_closed_port(), rate_bps=1e6, control="127.0.0.1:0") as emu, \
                ChannelControlClient(emu.control_address) as control:
            assert control.set_tx_power(0.1).tx_power_w == 0.1
    cycle()                                           # grpc's process-wide threads start here
    fds, threads = proc.num_fds(), proc.num_threads()
    for _ in range(3):
        cycle()
    wait_until(lambda: proc.num_fds() <= fds and proc.num_threads() <= threads,
               message=lambda: f"fds {fds} -> {proc.num_fds()}, threads {threads} -> {proc.num_threads()}")


async def many_echo_clients(port: int, count: int, concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def one(i):
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            message = i.to_bytes(4, "big") * 25
            writer.write(message)
            writer.write_eof()
            assert await reader.read() == message
            writer.close()
            await writer.wait_closed()
    await asyncio.gather(*(one(i) for i in range(count)))


class EchoServer:
    """Echoes until EOF, then closes; an asyncio loop on its own thread."""

    def __enter__(self):
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def handle(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        async def main():
            self.stop = asyncio.Event()
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await self.stop.wait()
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
        self.thread.start()
        started.wait(5)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)
        self.loop.close()


# -- gRPC through the proxy ------------------------------------------------------------------------
def test_grpc_call_through_the_emulator():
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    executor = ThreadPoolExecutor(2)
    server = grpc.server(executor, options=[("grpc.max_receive_message_length", 8 * MiB)])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    # A raw-bytes echo method, to time a large message through the link.
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request[:10])})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ChannelEmulator(upstream=f"127.0.0.1:{port}", rate_bps=10e6, delay_s=0.005) as emu, \
                grpc.insecure_channel(f"127.0.0.1:{emu.port}",
                                      options=[("grpc.max_send_message_length", 8 * MiB)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            echo = channel.unary_unary("/test.Echo/Echo")
            message = os.urandom(1 * MiB)

            def call():
                t0 = time.monotonic()
                assert echo(message, timeout=30) == message[:10]
                return time.monotonic() - t0
            # 1 MiB at 10 Mbit/s plus a round trip of delays: gRPC's framing adds well under 1 %.
            expected = len(message) * 8 / 10e6 + 2 * 0.005
            retry_timing(call, lambda t: abs(t - expected) <= 0.05 * expected)
            assert emu.stats().bytes_up > len(message)
    finally:
        server.stop(0).wait()
        executor.shutdown()


# -- helpers ---------------------------------------------------------------------------------------
def wait_until(condition, timeout_s: float = 5.0, message=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met in {timeout_s}s" + (f": {message()}" if message else ""))
        time.sleep(0.02)


def settled(read, timeout_s: float = 5.0):
    """read() once it gives the same value twice, 100 ms apart (sockets close asynchronously)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = read()
        if again == value:
            return value
        value = again
    return value


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
