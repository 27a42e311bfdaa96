"""Input hygiene and what operators see, through real processes (issue 16, items 5 and 6): input that is
not UTF-8 or is empty, inputs over the length limit, a --timeout-s that bounds connecting, a clear
"server unreachable", and one INFO log line per request on device and server."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from coinfer.lab.launch import ServiceProcess, free_port

MODEL = ["--model", "random:bert-tiny", "--split", "1"]
LONG = " ".join(["word"] * 1000)  # ~1000 tokens, over bert-tiny's 512


def coinfer(*args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "coinfer", *args], capture_output=True, timeout=timeout, **kwargs)


def text(out) -> str:
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else out


@pytest.fixture(scope="module")
def server():
    with ServiceProcess(["--log-level", "INFO", "server", *MODEL, "--listen", "127.0.0.1:0"], name="server",
                        stderr=subprocess.STDOUT) as proc:
        yield proc


@pytest.fixture
def blackhole():
    """A listening socket that never accepts nor answers: connections hang in their handshake."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


# --- input that is not UTF-8, or empty -----------------------------------------------------------
def test_file_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"hello\nworld\nabc \xffdef\n")
    out = coinfer("device", *MODEL, "--server", f"127.0.0.1:{free_port()}", "--file", str(path))
    err = text(out.stderr)
    assert out.returncode == 2, err
    assert f"--file {path} line 3: not UTF-8 (byte 0xff at offset 4)" in err
    assert "Traceback" not in err


def test_stdin_not_utf8_names_the_line():
    out = coinfer("device", *MODEL, "--server", f"127.0.0.1:{free_port()}", input=b"fine\n\n\xfe\xfe\n")
    err = text(out.stderr)
    assert out.returncode == 2, err
    assert "stdin line 3: not UTF-8 (byte 0xfe at offset 0)" in err and "Traceback" not in err


def test_argument_not_utf8_names_the_argument():
    out = subprocess.run([sys.executable, "-m", "coinfer", "device", *MODEL, "--server", f"127.0.0.1:{free_port()}",
                          "ok", b"caf\xe9"], capture_output=True, timeout=120)
    err = text(out.stderr)
    assert out.returncode == 2, err
    assert "argument 2: not UTF-8 (byte 0xe9 at offset 3)" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_empty_input_says_so(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    out = coinfer("device", *MODEL, "--server", f"127.0.0.1:{free_port()}", "--file", str(path), "--timeout-s", "2")
    err = text(out.stderr)
    assert out.returncode == 2, err
    assert "no input" in err and "held no sentences" in err and "Traceback" not in err


def test_empty_stdin_says_so():
    out = coinfer("device", *MODEL, "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2", input=b"")
    assert out.returncode == 2 and "no input: stdin" in text(out.stderr)


def test_python_runtime_refuses_text_that_is_not_utf8(server):
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.errors import UsageError
    from coinfer.models import resolve_model

    runtime = DeviceRuntime(resolve_model("random:bert-tiny"), 1, server=server.address, timeout_s=30)
    try:
        with pytest.raises(UsageError, match=r"input 1: not UTF-8 \(byte 0xe9 at 3\)"):
            runtime.infer(["fine", "caf\udce9"])  # what os.fsdecode makes of b"caf\xe9"
        with pytest.raises(UsageError, match="no input sentences"):
            runtime.infer([])
    finally:
        runtime.close()


# --- inputs over the length limit ----------------------------------------------------------------
def test_long_input_is_truncated_with_a_warning_and_flagged_in_json(server):
    out = coinfer("device", *MODEL, "--server", server.address, "--json", "short one", LONG, "another short")
    err = text(out.stderr)
    assert out.returncode == 0, err
    records = [json.loads(line) for line in text(out.stdout).splitlines()]
    assert [r["truncated"] for r in records] == [False, True, False]
    assert "1 of 3 inputs longer than the limit of 512 tokens, truncated" in err and "WARNING" in err
    # each record says what produced it: the static plan (k=1, nothing pruned) and the device's clock
    assert {(r["plan_epoch"], r["k"], r["rho_device"], r["rho_server"], r["codec"]) for r in records} == \
        {(0, 1, 1.0, 1.0, "fp32")}
    assert records[0]["predicted_quality"] == 1.0 and records[0]["clock"] in ("cpufreq", "fixed")


def test_python_result_says_which_rows_were_truncated(server):
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.models import resolve_model

    runtime = DeviceRuntime(resolve_model("random:bert-tiny"), 1, server=server.address, timeout_s=30)
    try:
        runtime.connect()
        assert runtime.infer(["a", LONG, "b", LONG]).truncated == (1, 3)
        assert runtime.infer(["a", "b"]).truncated == ()
        # exactly at the limit is not truncated: 510 words + [CLS] + [SEP] = 512 tokens
        assert runtime.infer([" ".join(["word"] * 510)]).truncated == ()
        assert runtime.infer([" ".join(["word"] * 511)]).truncated == (0,)
    finally:
        runtime.close()


# --- connecting: bounded by --timeout-s, and a message naming the address ------------------------
def _unreachable(address: str, *extra: str, timeout_s: float = 3.0):
    started = time.monotonic()
    out = coinfer("device", *MODEL, "--server", address, "--timeout-s", str(timeout_s), *extra, "hello")
    return out, time.monotonic() - started


def test_timeout_bounds_connecting_when_nothing_listens():
    address = f"127.0.0.1:{free_port()}"
    baseline = time.monotonic()
    coinfer("device", "--help")
    startup_s = time.monotonic() - baseline
    out, elapsed = _unreachable(address)
    err = text(out.stderr)
    assert out.returncode == 1, err
    assert f"server unreachable: no server answered at {address} within 3 s" in err and "Traceback" not in err
    assert "the connection was refused (nothing listens there)" in err
    assert elapsed < 3.0 + startup_s + 12.0, (elapsed, startup_s)  # model load included; was 34 s


def test_timeout_bounds_connecting_to_a_blackholed_address(blackhole):
    out, elapsed = _unreachable(blackhole)
    err = text(out.stderr)
    assert out.returncode == 1, err
    assert f"server unreachable: no server answered at {blackhole} within 3 s" in err
    # the first connection fills the listen queue; later ones go unanswered (Linux), or are accepted and stall
    assert "; nothing answers there (a blackholed address" in err or "no gRPC handshake completed" in err, err
    assert "Traceback" not in err
    assert elapsed < 25.0, elapsed


def test_unreachable_through_the_channel_emulator_points_at_its_upstream():
    dead = f"127.0.0.1:{free_port()}"
    with ServiceProcess(["channel", "--listen", "127.0.0.1:0", "--upstream", dead, "--control", "127.0.0.1:0",
                         "--rate-bps", "1e9"], name="channel", stderr=subprocess.STDOUT,
                        expect=("listening", "control")) as emulator:
        out, _ = _unreachable(emulator.address, "--channel-control", emulator.endpoints["control"])
    err = text(out.stderr)
    assert out.returncode == 1, err
    assert f"no server answered at {emulator.address}" in err
    assert f"{emulator.address} is a channel emulator (control {emulator.endpoints['control']}): check its --upstream" in err


# --- one INFO line per request on device and server ----------------------------------------------
def test_one_info_line_per_request_on_device_and_server(server):
    out = coinfer("--log-level", "INFO", "device", *MODEL, "--server", server.address, "--batch-size", "2",
                  "one", "two", "three")
    err = text(out.stderr)
    assert out.returncode == 0, err
    lines = [line for line in err.splitlines() if "coinfer.device.runtime INFO request " in line]
    assert len(lines) == 2, err  # three sentences in batches of two: two requests
    assert "2 sentences" in lines[0] and "1 sentences" in lines[1]
    for line in lines:
        assert "k=1, epoch 0" in line and "end to end" in line and "bytes sent" in line
    ids = [line.split("INFO request ")[1][:8] for line in lines]
    for request_id in ids:
        server.wait_for_output(f"coinfer.server.service INFO request {request_id}: ", timeout_s=10)
    server_lines = [line for line in server.output().splitlines() if any(f"request {i}:" in line for i in ids)]
    assert len(server_lines) == 2, server_lines
    assert all("k=1, epoch 0" in line and "bytes in" in line and "compute" in line for line in server_lines)


def test_default_level_prints_no_per_request_lines(server):
    out = coinfer("device", *MODEL, "--server", server.address, "one", "two")
    err = text(out.stderr)
    assert out.returncode == 0, err
    assert "request" not in err, err
