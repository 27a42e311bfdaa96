"""`coinfer device --json-compact`: one short JSON line per answer for container logs (issue 18, item 6),
whose digest identifies the same vector `--json` prints in full. Real processes: one `coinfer server`,
two `coinfer device` runs against it (the session's shared MiniLM server at k = 2)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from embeddings import SENTENCES

SPLIT = 2   # a server of tests/conftest.py's split_servers
# non-ASCII is escaped in JSON (up to 12 bytes a character): the line must stay short all the same
INPUTS = [*SENTENCES, "Ünïcødé " + "\U0001d11e" * 60]
PLAN_KEYS = ("plan_epoch", "k", "rho_device", "rho_server", "prune_method", "codec", "predicted_quality", "clock")


def device(address: str, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """A `coinfer device` run, started now."""
    return subprocess.Popen([sys.executable, "-m", "coinfer", "device", "--server", address, "--split", str(SPLIT),
                             *flags, *INPUTS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def lines(proc: subprocess.Popen) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.splitlines()


@pytest.fixture(scope="module")
def answers(split_servers):
    """(full --json lines, compact lines) from one server; compact chosen by COINFER_JSON_COMPACT=1
    beside --json, so the environment variable and "compact wins over --json" are both exercised. The
    two device runs go side by side (each spends seconds importing torch)."""
    server = split_servers[SPLIT]
    runs = [device(server.address, "--json"),
            device(server.address, "--json", env={"COINFER_JSON_COMPACT": "1"})]
    try:
        return tuple(lines(run) for run in runs)
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()


def test_compact_lines_are_short_json_without_the_vector(answers):
    full, compact = answers
    assert len(compact) == len(full) == len(INPUTS)  # one line per answer, nothing else on stdout
    for line in compact:
        assert len(line.encode()) < 1000, line
        record = json.loads(line)
        assert "output" not in record and record["dim"] == 384 and len(record["head"]) == 3
        for key in ("request_id", "device_ms", "transfer_ms", "server_compute_ms", "end_to_end_ms",
                    "bytes_sent", "bytes_received", *PLAN_KEYS):
            assert key in record, key
        assert record["bytes_sent"] > 0 and record["end_to_end_ms"] > 0 and record["k"] == SPLIT
    assert min(len(line.encode()) for line in full) > 8000  # what the compact lines replace


def test_compact_digest_is_the_full_vectors_digest(answers):
    full, compact = answers
    for full_line, compact_line in zip(full, compact):
        whole, short = json.loads(full_line), json.loads(compact_line)
        vector = np.asarray(whole["output"], dtype="<f4")  # JSON floats are exact float32 values
        assert short["sha256_16"] == hashlib.sha256(vector.tobytes()).hexdigest()[:16]
        assert short["dim"] == vector.size
        assert short["norm"] == pytest.approx(float(np.linalg.norm(vector.astype(np.float64))), abs=1e-6)
        assert short["head"] == pytest.approx(vector[:3].tolist(), abs=1e-6)
        assert {k: short[k] for k in PLAN_KEYS} == {k: whole[k] for k in PLAN_KEYS}
    first = json.loads(compact[0])
    assert first["sentence"] == INPUTS[0]  # short sentences are kept whole; long ones are cut
    assert len(json.loads(compact[-1])["sentence"] or "") < len(INPUTS[-1])
