"""`coinfer channel` as a process of its own: what it prints, its control service, its errors."""
from __future__ import annotations

import math
import re
import socket
import subprocess
import sys

import pytest

from coinfer.channel import ChannelControlClient
from coinfer.channel.measure import Sink, timed_transfer
from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps
from coinfer.lab.launch import ServiceProcess, free_port, wait_for_port


def test_channel_process_prints_its_rate_and_obeys_its_control():
    listen, control = free_port(), free_port()
    with Sink() as sink, ServiceProcess(
            ["channel", "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{sink.port}",
             "--control", f"127.0.0.1:{control}", "--bandwidth-hz", "1e6", "--tx-power-w", "0.1",
             "--distance-m", "30", "--path-loss-exponent", "2.5"],
            name="channel", stderr=subprocess.STDOUT, expect=("listening", "control")) as proc:
        wait_for_port(listen, 30, proc.proc)  # a readiness probe: an empty connection
        wait_for_port(control, 30, proc.proc)
        proc.wait_for_output("control on")
        # The readiness probe's empty connection went through to the server.
        assert sink.next_result(5).nbytes == 0
        g = path_loss_gain(30, -40, 2.5)  # the CLI's default 40 dB loss at 1 m
        rate = shannon_rate_bps(1e6, dbm_per_hz_to_w_per_hz(-174), g, 0.1)
        log = proc.output()
        # It says where it listens and the rate the formula gives.
        assert f"listening on 127.0.0.1:{listen} -> 127.0.0.1:{sink.port}" in log
        printed = float(re.search(r"uplink ([\d.]+) Mbit/s", log).group(1)) * 1e6
        assert printed == pytest.approx(rate, rel=1e-5)
        assert f"control on 127.0.0.1:{control}" in log
        with ChannelControlClient(f"127.0.0.1:{control}") as client:
            assert client.stats().rate_bps == pytest.approx(rate)
            new = client.set_tx_power(0.05)
            assert new.rate_bps == pytest.approx(shannon_rate_bps(1e6, dbm_per_hz_to_w_per_hz(-174), g, 0.05))
            client.set_rate(8e6)
            elapsed, _ = timed_transfer(listen, 512 * 1024, sink)
            # The forced rate is applied (unshaped, this would take a millisecond). Only bounded
            # loosely here: the accuracy tests are in test_channel_proxy.
            assert 0.95 * 0.524 <= elapsed <= 2 * 0.524
            stats = client.stats()
            # Two connections: the readiness probe and the transfer.
            assert stats.bytes_up == 512 * 1024 and stats.connections_total == 2 and stats.mode == "fixed"
            assert client.use_radio().mode == "radio"
        # SIGTERM: a clean exit.
        assert proc.stop() == 0


@pytest.mark.parametrize("args, complaint", [
    (["--upstream", "127.0.0.1:9"], "--bandwidth-hz"),
    (["--upstream", "127.0.0.1:9", "--rate-bps", "0"], "--rate-bps must be > 0"),
    (["--upstream", "nowhere", "--unlimited"], "--upstream must be HOST:PORT"),
    (["--upstream", "127.0.0.1:9", "--bandwidth-hz", "1e6", "--tx-power-w", "0.1", "--gain", "1e-9",
      "--fading", "rayleigh"], "--coherence-s"),
    (["--upstream", "127.0.0.1:9", "--bandwidth-hz", "1e6", "--tx-power-w", "0.1", "--trace", "/no/such"],
     "--trace: cannot read"),
])
def test_bad_options_exit_2_naming_the_option(args, complaint):
    proc = subprocess.run([sys.executable, "-m", "coinfer", "channel", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert complaint in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("option", ["--listen", "--control"])
def test_busy_port_is_a_usage_error_naming_the_option(option):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "coinfer", "channel", option, f"127.0.0.1:{port}",
                               "--upstream", "127.0.0.1:9", "--unlimited"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {option}: cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_unlimited_process_reports_infinite_rate():
    listen, control = free_port(), free_port()
    with Sink() as sink, ServiceProcess(
            ["channel", "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{sink.port}",
             "--control", f"127.0.0.1:{control}", "--unlimited", "--delay-ms", "2"],
            name="channel", stderr=subprocess.STDOUT, expect=("listening", "control")) as proc:
        wait_for_port(control, 30, proc.proc)
        proc.wait_for_output("control on")
        assert "uplink unlimited" in proc.output() and "delay 2 ms" in proc.output()
        with ChannelControlClient(f"127.0.0.1:{control}") as client:
            stats = client.stats()
            assert math.isinf(stats.rate_bps) and stats.mode == "unlimited" and stats.delay_s == 0.002
            # No radio parameters were given: radio verbs are refused with a reason.
            with pytest.raises(ValueError, match="without radio parameters"):
                client.set_gain(1e-9)

