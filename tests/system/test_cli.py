"""The `coinfer` command as a user runs it: help, the demo, and clear errors."""
import json
import subprocess
import sys


def coinfer(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "coinfer", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_help_lists_the_commands():
    out = coinfer("--help")
    assert out.returncode == 0
    for command in ("server", "device", "demo"):
        assert command in out.stdout


def test_demo_json_matches_the_whole_model():
    out = coinfer("demo", "--json", "--requests", "4", "--batch-size", "2", "--split", "4", "--rho", "0.6")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["requests"] == 4 and summary["ok"] == 4
    assert summary["max_abs_diff_vs_monolithic"] <= 1e-5
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["bytes_sent"] > 4 * 2 * 384 * 4  # four requests of fp32 hidden states at least
    channel = summary["channel"]  # the device went through the channel emulator: no faster than R(p)
    assert 11.0e6 < channel["rate_bps"] < 11.6e6  # B log2(1 + g p / (B N0)) with the demo's defaults
    assert summary["transfer_ms_p50"] >= 0.9 * channel["predicted_transfer_ms_p50"]


def test_demo_without_channel_goes_straight_to_the_server():
    out = coinfer("demo", "--json", "--requests", "2", "--no-channel", "--model", "random:bert-tiny", "--split", "2")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["channel"] is None and summary["ok"] == 2


def test_demo_table_has_a_row_per_request():
    out = coinfer("demo", "--requests", "3", "--model", "random:bert-tiny", "--split", "1")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 3
    assert "3/3 ok" in out.stdout


def test_bad_split_point_is_a_usage_error():
    out = coinfer("server", "--split", "9", "--listen", "127.0.0.1:0")
    assert out.returncode == 2
    assert "0..6" in out.stderr and "Traceback" not in out.stderr


def test_bad_ratio_is_a_usage_error():
    out = coinfer("server", "--rho", "1.5", "--listen", "127.0.0.1:0")
    assert out.returncode == 2 and "--rho" in out.stderr


def test_unknown_model_is_a_usage_error():
    out = coinfer("device", "--model", "/no/such/folder", "hello")
    assert out.returncode == 2 and "never downloads" in out.stderr


def test_options_come_from_the_environment_and_flags_win():
    import os

    env = {**os.environ, "COINFER_SPLIT": "9"}
    out = coinfer("server", "--listen", "127.0.0.1:0", env=env)
    assert out.returncode == 2 and "split point 9" in out.stderr  # the environment set --split
    out = coinfer("server", "--listen", "127.0.0.1:0", "--split", "8", env=env)
    assert out.returncode == 2 and "split point 8" in out.stderr  # the flag won
    out = coinfer("server", env={**os.environ, "COINFER_MAX_BATCH_SIZE": "many"})
    assert out.returncode == 2 and "COINFER_MAX_BATCH_SIZE" in out.stderr


def test_the_environment_only_reaches_the_command_being_run():
    import os

    env = {**os.environ, "COINFER_SPLIT": "auto"}  # right for `planner`, not an integer for `server`
    assert coinfer("plan", "--help", env=env).returncode == 0
    out = coinfer("server", "--listen", "127.0.0.1:0", env=env)
    assert out.returncode == 2 and "COINFER_SPLIT" in out.stderr
