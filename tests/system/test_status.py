"""`coinfer status ADDR`: a running server's Info or a planner's state, as a table or JSON, with the
process's security options, and a clear error when nothing answers (issue 16, item 6)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from coinfer.lab.launch import ServiceProcess, free_port

MODEL = ["--model", "random:bert-tiny", "--split", "1"]


def coinfer(*args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "coinfer", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def server():
    with ServiceProcess(["server", *MODEL, "--listen", "127.0.0.1:0"], name="server",
                        stderr=subprocess.STDOUT) as proc:
        yield proc


def test_server_status_as_json_counts_requests(server):
    out = coinfer("status", server.address, "--json")
    assert out.returncode == 0, out.stderr
    before = json.loads(out.stdout)
    assert before["kind"] == "server" and before["address"] == server.address
    state = before["state"]
    assert state["model_id"] == "random:bert-tiny" and state["split_point"] == 1 and state["plan_epoch"] == 0
    assert len(state["model_fingerprint"]) >= 16 and state["rho"] == 1.0 and state["device"] == "cpu"
    for key in ("prune_method", "freq_mode", "energy_source", "requests_computed", "replies_from_cache"):
        assert key in state
    done = coinfer("device", *MODEL, "--server", server.address, "one", "two")
    assert done.returncode == 0, done.stderr
    after = json.loads(coinfer("status", server.address, "--json").stdout)["state"]
    assert after["requests_computed"] == state["requests_computed"] + 1


def test_server_status_as_a_table(server):
    out = coinfer("status", server.address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"server at {server.address}"
    table = {line.split()[0]: line.split()[1] for line in lines[1:] if len(line.split()) >= 2}
    assert table["model_id"] == "random:bert-tiny" and table["split_point"] == "1"
    assert table["plan_epoch"] == "0" and "model_fingerprint" in table and "replies_from_cache" in table


def test_planner_status_shows_plan_estimates_and_subscribers():
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", "3", "--min-interval-s", "0"],
                        name="planner", stderr=subprocess.STDOUT) as planner:
        out = coinfer("status", planner.address, "--json")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["kind"] == "planner"
        state = result["state"]
        assert state["plan"]["split_point"] == 3 and state["plan"]["epoch"] >= 1
        assert "channel_gain" in state["estimates"] and "channel_gain" in state["planned_with"]
        assert state["subscribers"] == 0
        table = coinfer("status", planner.address)
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith(f"planner at {planner.address}\n")
        assert "  plan:" in table.stdout and "  estimates:" in table.stdout and "subscribers" in table.stdout


def test_nothing_listening_is_a_clear_error_within_the_timeout():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = coinfer("status", address, "--timeout-s", "2")
    assert out.returncode == 2, out.stderr
    assert f"coinfer status: error: nothing answered at {address} within 2 s" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - started < 15


def test_blackholed_address_is_a_clear_error_within_the_timeout():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)  # never accepted, never answered
    try:
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        out = coinfer("status", address, "--timeout-s", "2")
    finally:
        sock.close()
    assert out.returncode == 2, out.stderr
    assert f"nothing answered at {address} within 2 s" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - started < 15


def test_status_takes_the_security_options():
    env = {**os.environ, "COINFER_TOKEN": "s3cret"}
    with ServiceProcess(["server", *MODEL, "--listen", "127.0.0.1:0"], name="server", env=env,
                        stderr=subprocess.STDOUT) as secured:
        bare = {k: v for k, v in os.environ.items() if k != "COINFER_TOKEN"}
        refused = coinfer("status", secured.address, env=bare)
        assert refused.returncode == 2 and "--token" in refused.stderr, refused.stderr
        wrong = coinfer("status", secured.address, "--token", "nope", env=bare)
        assert wrong.returncode == 2 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr
        ok = coinfer("status", secured.address, "--json", env=env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["kind"] == "server"
        flag = coinfer("status", secured.address, "--token", "s3cret", env=bare)
        assert flag.returncode == 0 and flag.stdout.startswith("server at "), flag.stderr
