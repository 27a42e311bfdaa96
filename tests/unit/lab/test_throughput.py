"""The throughput benchmark's pieces (coinfer.lab.bench.throughput): cells, interleaving, the statistics,
the server's batch counters, and the ONNX Runtime baseline answering as sentence-transformers does. The
benchmark itself (servers, minutes of load) runs with `coinfer bench --only throughput`, not here."""
import importlib.util
import random
import threading
import time

import numpy as np
import pytest

from coinfer.lab.bench import common, suite, throughput as tp


def test_cells_are_every_batch_with_every_client_count_batch_major():
    assert tp.cell_grid() == [(1, 1), (1, 4), (1, 16), (8, 1), (8, 4), (8, 16)]
    assert tp.cell_grid((2,), (3, 5)) == [(2, 3), (2, 5)]


def test_interleaving_runs_every_system_once_per_round_and_rotates_who_goes_first():
    systems = ["a", "b", "c", "d"]
    order = tp.interleaved_order(systems, 4)
    assert len(order) == 4
    for round_ in order:
        assert sorted(round_) == systems
    assert [r[0] for r in order] == systems  # over n rounds each system leads once...
    for position in range(4):  # ...and sits in every position once
        assert sorted(r[position] for r in order) == systems
    assert tp.interleaved_order(systems, 6)[4] == order[0]
    assert tp.interleaved_order([], 2) == [[], []]


def test_percentile_matches_numpy_linear_interpolation():
    rng = random.Random(3)
    for n in (1, 2, 7, 100):
        xs = [rng.uniform(0, 50) for _ in range(n)]
        for q in (0, 1, 50, 90, 99, 100):
            assert common.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-12)
    assert np.isnan(common.percentile([], 50))


def test_a_cell_reports_the_median_over_rounds_and_all_requests():
    runs = [{"sentences_per_s": s, "p50_ms": p, "p99_ms": p * 3, "requests": 10}
            for s, p in ((100.0, 5.0), (300.0, 9.0), (200.0, 7.0))]
    row = tp.summarise_runs(runs)
    assert row["sentences_per_s"] == 200.0 and row["p50_ms"] == 7.0 and row["p99_ms"] == 21.0
    assert row["requests"] == 30 and row["runs_sentences_per_s"] == [100.0, 300.0, 200.0]


def test_sentences_are_fixed_and_13_to_20_words():
    a, b = tp.make_sentences(64), tp.make_sentences(64)
    assert a == b and len(set(a)) == 64
    assert all(13 <= len(s.split()) <= 20 for s in a)
    assert tp.make_sentences(8, seed=1) != a[:8]


def test_measure_counts_every_clients_sentences_and_latencies():
    calls, lock = {}, threading.Lock()

    def encode(client, texts):
        time.sleep(0.01)
        with lock:
            calls.setdefault(client, []).append(list(texts))

    sentences = tp.make_sentences(20)
    result = common.closed_loop(encode, 3, 4, sentences, 0.15)
    assert sorted(calls) == [0, 1, 2, 3]
    sent = sum(len(t) for c in calls.values() for t in c)
    assert result["requests"] == sum(len(c) for c in calls.values())
    assert all(len(t) == 3 for c in calls.values() for t in c)  # the list wraps around: always full batches
    assert 0 < result["sentences_per_s"] <= sent / 0.15  # over the run, which lasts at least its time
    assert 10 <= result["p50_ms"] <= result["p99_ms"]
    assert calls[0][0] != calls[1][0]  # clients start at different places
    # a warm-up: no time, but every client answers min_requests times
    calls.clear()
    common.closed_loop(encode, 1, 3, sentences, 0.0, min_requests=2)
    assert {c: len(v) for c, v in calls.items()} == {0: 2, 1: 2, 2: 2}


def test_measure_raises_what_a_client_raised():
    def encode(client, texts):
        if client == 1:
            raise RuntimeError("server gone")

    with pytest.raises(RuntimeError, match="server gone"):
        common.closed_loop(encode, 1, 2, ["x"], 0.05)


def test_batch_counters_from_a_prometheus_page():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    hist = Histogram("coinfer_server_batch_requests", "requests computed together", buckets=(1, 2, 4, 8),
                     registry=registry)
    for x in (1, 1, 2):
        hist.observe(x)
    before = tp.parse_counters(generate_latest(registry).decode())
    assert before == {"coinfer_server_batch_requests_sum": 4.0, "coinfer_server_batch_requests_count": 3.0}
    for x in (4, 4, 4, 4):
        hist.observe(x)
    after = tp.parse_counters(generate_latest(registry).decode())
    assert tp.histogram_means(before, after) == {"coinfer_server_batch_requests": 4.0}
    assert tp.histogram_means(after, after) == {"coinfer_server_batch_requests": None}  # nothing computed between
    other = tp.parse_counters('coinfer_server_batch_rows_sum{a="b"} 16.0\ncoinfer_server_batch_rows_count 2.0\n'
                              "coinfer_server_latency_seconds_sum 3.0\ncoinfer_server_latency_seconds_count 4.0\n"
                              "coinfer_server_requests_total 9.0\n")
    assert tp.histogram_means({}, other) == {"coinfer_server_batch_rows": 8.0, "coinfer_server_latency_seconds": 0.75}


def test_engines_are_read_from_the_servers_help():
    assert tp.server_engines("usage: coinfer server [--threads THREADS]\n") is None
    text = "  --engine {eager,compile,onnxruntime}\n                        the forward's engine"
    assert tp.server_engines(text) == ["eager", "compile", "onnxruntime"]
    assert tp.server_engines("  --engine ENGINE  eager or onnxruntime") == list(tp.ALL_ENGINES)


def test_comparison_takes_coinfer_k0s_best_engine_per_cell():
    def cell(batch, clients, **rates):
        return {"batch": batch, "clients": clients,
                "systems": {name.replace("_", " ").replace("k0", "k=0"): {"sentences_per_s": r}
                            for name, r in rates.items()}}

    cells = [cell(1, 1, coinfer_k0_eager=100.0, coinfer_k0_onnxruntime=150.0, onnxruntime=120.0),
             cell(8, 16, coinfer_k0_eager=300.0, coinfer_k0_onnxruntime=200.0, onnxruntime=400.0)]
    for c in cells:
        c["systems"]["sentence-transformers"] = {"sentences_per_s": 100.0}
    out = tp.compare(cells)
    assert [b["system"] for b in out["coinfer_k0_best"]] == ["coinfer k=0 onnxruntime", "coinfer k=0 eager"]
    assert out["k0_vs_onnxruntime_min_ratio"] == 0.75
    assert out["k0_vs_sentence_transformers_min_ratio"] == 1.5
    assert out["meets_target"] is False
    assert tp.compare([])["meets_target"] is False  # nothing measured meets nothing


def test_transport_floor_bounds_one_client_cells_by_the_fastest_bare_round_trip():
    cells = [{"batch": b, "clients": c, "systems": {"onnxruntime": {"p50_ms": 4.0 * b, "sentences_per_s": 1.0}}}
             for b, c in ((1, 1), (1, 4), (8, 1))]
    info = {"coinfer k=0 onnxruntime": {"bare_rpc_ms": 1.0}, "coinfer k=0 eager": {"bare_rpc_ms": 2.0},
            "coinfer k=3 eager": {"bare_rpc_ms": 0.1}}  # only k = 0 servers answer what k = 0 pays
    out = tp.transport_floor(cells, info)
    assert out == {"bare_rpc_ms": 1.0, "one_client_ratio_ceiling": {"1x1": 0.8, "8x1": round(32 / 33, 3)}}
    assert tp.transport_floor(cells, {"coinfer k=3 eager": {"bare_rpc_ms": 0.1}}) is None


def test_plot_and_cell_line(tmp_path):
    cells = [{"batch": b, "clients": c, "systems": {
        "onnxruntime": {"sentences_per_s": 10.0 * c, "p50_ms": 5.0, "p99_ms": 9.0},
        "coinfer k=0 eager": {"sentences_per_s": 12.0 * c, "p50_ms": 4.0, "p99_ms": 8.0,
                              "server_mean_batch_requests": 1.5}}} for b, c in tp.cell_grid()]
    name = tp.plot(cells, ["onnxruntime", "coinfer k=0 eager"], tmp_path)
    assert (tmp_path / name).stat().st_size > 1000
    line = tp.format_cell(cells[-1])
    assert line.startswith("[throughput] batch  8 x 16 clients:") and "batch 1.50" in line and "\n" not in line


def test_the_default_suite_leaves_throughput_out_and_only_runs_it():
    assert "throughput" in suite.SECTIONS and "throughput" not in suite.chosen()
    assert suite.chosen(["throughput"]) == ["throughput"]
    assert suite.chosen(["memory", "split"]) == ["split", "memory"]


def test_without_onnxruntime_the_baseline_says_so_before_loading_anything(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when missing
    assert tp._importable("onnxruntime") is False
    with pytest.raises(ImportError):  # run() records this as the baseline's reason under `skipped`
        tp.OrtSystem("/nonexistent")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime is not installed (extra coinfer[onnx]): no ONNX Runtime baseline to check")
def test_onnx_runtime_baseline_answers_as_sentence_transformers(tmp_path):
    from coinfer.models import resolve_model

    folder = resolve_model("minilm").folder
    texts = ["The edge server finishes what the device started.", "short",
             tp.make_sentences(1)[0], "A much longer sentence that pads the others in the batch, " * 3]
    st = tp.SentenceTransformersSystem(folder)
    ort = tp.OrtSystem(folder, threads=1, work_dir=str(tmp_path))
    try:
        reference = st.encode(0, texts)
        assert tp.min_cosine(ort.encode(0, texts), reference) >= tp.EQUAL_COSINE
        # one at a time too: no padding, shapes other than the traced one
        for i, text in enumerate(texts):
            assert tp.min_cosine(ort.encode(0, [text]), reference[i:i + 1]) >= tp.EQUAL_COSINE
    finally:
        ort.close()
