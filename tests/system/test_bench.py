"""`coinfer bench --quick` runs every section in CI time and writes JSON, plots and a summary.

Targets are measured, not asserted here: timing targets belong to benchmark runs, not unit tests.
"""
import json
import subprocess
import sys


def test_quick_bench_writes_every_section(tmp_path):
    out = subprocess.run([sys.executable, "-m", "coinfer", "bench", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["quick"] is True and report["machine"]["logical_cores"] >= 1
    for name in ("split", "codecs", "pruning", "batching", "planner", "channel", "memory"):
        section = report["sections"][name]
        assert "error" not in section, section.get("traceback")
    for name in ("split", "codecs", "pruning", "batching", "channel", "memory"):
        assert (tmp_path / report["sections"][name]["plot"]).stat().st_size > 1000
    assert len(report["summary"]) == 10 and all(row["value"] != "n/a" for row in report["summary"])
    split = report["sections"]["split"]["results"][0]
    assert split["max_abs_diff"] <= 1e-5 and split["ratio"] > 0
    assert "| measure | value | target | met |" in (tmp_path / "summary.md").read_text()
    # each process's own peak (not one inherited from the benchmark's process): a half holds less than the whole
    memory = report["sections"]["memory"]
    whole_peak, blocks = memory["whole"]["peak_rss_mb"], memory["num_blocks"]
    inner = [row for row in memory["results"] if 0 < row["split"] < blocks]
    assert inner, memory["results"]
    for row in inner:
        assert row["device"]["peak_rss_mb"] < whole_peak and row["server"]["peak_rss_mb"] < whole_peak, row
        # the halves hold the whole model between them, nothing twice and nothing left out
        assert row["device"]["parameters"] + row["server"]["parameters"] == memory["whole"]["parameters"], row


def test_hardware_report_names_what_is_missing():
    out = subprocess.run([sys.executable, "-m", "coinfer", "bench", "--hardware"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    machine = json.loads(out.stdout)
    for probe in ("nvml", "rapl", "cpufreq", "cuda"):
        assert machine[probe]["available"] or machine[probe]["reason"]


def test_quick_throughput_section_runs_every_system_end_to_end(tmp_path):
    """The opt-in throughput section, in its --quick form: real coinfer servers at k = 0 and 3, the
    peers in this process, every answer compared before timing, one cell per batch x clients."""
    out = subprocess.run([sys.executable, "-m", "coinfer", "bench", "--quick", "--only", "throughput",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    section = json.loads((tmp_path / "bench.json").read_text())["sections"]["throughput"]
    assert "error" not in section, section.get("traceback")
    assert section["equality"]["all_equal"], section["equality"]
    assert {"coinfer k=0 eager", "coinfer k=3 eager", "sentence-transformers"} <= set(section["systems"])
    assert [(c["batch"], c["clients"]) for c in section["cells"]] == [(1, 1), (1, 4), (8, 1), (8, 4)]
    for cell in section["cells"]:
        for name, numbers in cell["systems"].items():
            assert numbers["sentences_per_s"] > 0 and numbers["requests"] >= 1, (cell["batch"], cell["clients"], name)
    assert (tmp_path / section["plot"]).stat().st_size > 1000
    # the bare round trip to each server was measured, and bounds what one client can reach
    assert all(row["bare_rpc_ms"] > 0 for row in section["coinfer"].values()), section["coinfer"]
    if "onnxruntime" in section["systems"]:
        ceilings = section["transport_floor"]["one_client_ratio_ceiling"]
        assert set(ceilings) == {"1x1", "8x1"} and all(0 < c < 1 for c in ceilings.values()), ceilings
