"""Throughput against the peers a user would pick instead: coinfer, sentence-transformers, ONNX Runtime.

One cell per (sentences per request) x (concurrent clients). In each cell every system serves the
same requests (batches of a fixed, seeded list of 13-20-word sentences) from C client threads for a
fixed time; sentences/s and the p50 / p99 of request latency are recorded. The systems:

- `coinfer k=K ENGINE`: a real `coinfer server --split K [--engine ENGINE]` subprocess per (K, engine),
  kept up for the whole run; each client thread holds its own SplitModel (its own gRPC channel and,
  at k > 0, its own device half, computed in this process as an application would).
- `sentence-transformers`: SentenceTransformer(folder).encode(batch, batch_size=batch), one model
  shared by the C threads, as a user would serve it in one process.
- `onnxruntime`: the whole model (transformers' AutoModel of the same folder) exported once with
  torch.onnx.export (dynamic batch and sequence axes), one plain InferenceSession with default options
  and intra-op threads = cores shared by the C threads; tokenizer, mean pooling and normalisation as
  sentence-transformers does them, in numpy.

Every system's answers are checked against sentence-transformers' (cosine >= EQUAL_COSINE) before
timing, and the result recorded. The machine is noisy, so measurement is interleaved: within a cell,
round r runs every system once, in an order rotated by r, and a cell reports the medians over rounds.
Each coinfer server exposes Prometheus /metrics, read before and after each run: its batch-size
histogram gives the mean number of requests computed together (did batching merge requests?), its
latency histogram the server's own mean queue + compute time per request (the rest of a request's
latency is the client and the wire).
Each coinfer server's bare round trip (its `Info` call: no tensor, no compute) is timed once after it
starts; `transport_floor` turns the fastest k = 0 one into the best ratio to in-process ONNX Runtime
any server could reach at one client.

Engines come from `coinfer server --help`: when it has `--engine`, each choice it lists is tried
(onnxruntime only when importable here; compile only if the server starts and answers its first
request within `compile_timeout_s`), otherwise the server's one engine runs, named eager. A system that
cannot start is left out with its reason under `skipped`.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

from coinfer.lab.bench.common import closed_loop, median_time, print_report, pyplot, save_figure

EQUAL_COSINE = 0.9999
ST = "sentence-transformers"
ORT = "onnxruntime"
ALL_ENGINES = ("eager", "compile", "onnxruntime")

# Plain words for the benchmark's sentences: what matters is their token count (13-20 words, ~15-25
# tokens), not their meaning; seeded, so every system and every run sees the same text.
_WORDS = ("the a an edge server device model network signal battery phone camera sensor city river road "
          "morning evening winter summer small large quiet busy fast slow bright dark old new green blue "
          "runs sends reads writes moves waits finds keeps opens closes builds answers carries watches "
          "quickly slowly often never again together alone carefully early late near far over under "
          "through between after before during without with from into across along around behind "
          "people students engineers farmers doctors drivers children teachers workers travellers "
          "data message picture report story question answer window door garden market station bridge "
          "light noise weather traffic energy memory power distance minute hour week").split()


def make_sentences(n: int = 256, seed: int = 19, low: int = 13, high: int = 20) -> list[str]:
    """n sentences of low..high words, the same for a given seed on every machine."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def cell_grid(batches=(1, 8), clients=(1, 4, 16)) -> list[tuple[int, int]]:
    """(batch, clients) for every cell, batch-major (the order cells are measured and shown in)."""
    return [(b, c) for b in batches for c in clients]


def interleaved_order(systems: list[str], rounds: int) -> list[list[str]]:
    """Per round, every system once, the order rotated by one each round: noise that drifts over a
    cell (another process waking up) then falls on every system alike, not always on the last."""
    n = len(systems)
    return [[systems[(r + i) % n] for i in range(n)] for r in range(rounds)] if n else [[] for _ in range(rounds)]


def summarise_runs(runs: list[dict]) -> dict:
    """A cell's numbers for one system: the medians over its rounds (each run measured alone)."""
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {"sentences_per_s": round(med("sentences_per_s"), 1), "p50_ms": round(med("p50_ms"), 1),
            "p99_ms": round(med("p99_ms"), 1), "requests": sum(r["requests"] for r in runs),
            "runs_sentences_per_s": [round(r["sentences_per_s"], 1) for r in runs]}


# --- the systems ------------------------------------------------------------------------------
def _normalized(x):
    import numpy as np

    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def min_cosine(a, b) -> float:
    import numpy as np

    a, b = _normalized(np.asarray(a, dtype=np.float64)), _normalized(np.asarray(b, dtype=np.float64))
    return float((a * b).sum(axis=1).min())


class SentenceTransformersSystem:
    name = ST

    def __init__(self, folder: Path):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu")

    def encode(self, _client: int, texts: list[str]):
        return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    def close(self) -> None:
        pass


class OrtSystem:
    """The whole model in one ONNX Runtime session; pooling and normalisation as the folder's
    sentence-transformers modules say (mean, normalised: all-MiniLM-L6-v2's)."""
    name = ORT

    def __init__(self, folder: Path, threads: int | None = None, work_dir: str | None = None):
        import onnxruntime as ort
        import torch
        from transformers import AutoModel, AutoTokenizer

        from coinfer.models import resolve_model

        src = resolve_model(str(folder))
        self.pooling, self.max_length = src.pooling, src.max_seq_length
        if self.pooling.mode != "mean":
            raise ValueError(f"the ONNX Runtime baseline pools by mean only; {folder} pools by {self.pooling.mode}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer's settings are state shared by threads
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

        class Body(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        self._tmp = tempfile.TemporaryDirectory(prefix="coinfer-ort-", dir=work_dir)
        path = os.path.join(self._tmp.name, "model.onnx")
        ids, mask = self._tokenize(["an example sentence to trace", "and a second, longer one to pad the first"])
        dynamic = {0: "batch", 1: "seq"}
        # the TorchScript exporter: dynamic_axes as documented; the dynamo exporter would need onnxscript
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on Python conditions it froze (mask shape checks): the check below covers them
            warnings.simplefilter("ignore")
            torch.onnx.export(Body(model), (torch.from_numpy(ids), torch.from_numpy(mask)), path,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes={n: dynamic for n in ("input_ids", "attention_mask", "last_hidden_state")},
                              opset_version=17, dynamo=False)
        options = ort.SessionOptions()  # defaults (ORT's own graph optimisations), nothing tuned
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ort_version = ort.__version__

    def _tokenize(self, texts):
        import numpy as np

        with self._tokenizer_lock:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="np")
        return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)

    def encode(self, _client: int, texts: list[str]):
        import numpy as np

        ids, mask = self._tokenize(texts)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return _normalized(pooled) if self.pooling.normalize else pooled

    def close(self) -> None:
        self.session = None
        self._tmp.cleanup()


def split_model_engine_supported() -> bool:
    import inspect

    from coinfer.device.api import SplitModel

    return "engine" in inspect.signature(SplitModel.__init__).parameters


class CoinferSystem:
    """A `coinfer server` subprocess at split k with one engine, and a pool of SplitModels (one per
    client thread, grown as cells need more clients) in this process."""

    def __init__(self, model: str, split: int, engine: str | None, server_args=(), ready_timeout_s: float = 180.0,
                 stderr=None):
        from coinfer.lab.launch import ServiceProcess, free_port

        self.model, self.split, self.engine = model, split, engine
        self.name = f"coinfer k={split} {engine or 'eager'}"
        self.metrics = f"127.0.0.1:{free_port()}"
        args = ["server", "--model", model, "--split", str(split), "--listen", "127.0.0.1:0",
                "--metrics-listen", self.metrics, *(["--engine", engine] if engine else []), *server_args]
        self.server = ServiceProcess(args, f"bench-{self.name.replace(' ', '-')}", ready_timeout_s=ready_timeout_s,
                                     stderr=stderr)
        # the device half's engine: the server's when SplitModel takes one; at k = 0 it computes nothing
        self.device_engine = None if split == 0 else engine if engine and split_model_engine_supported() else "eager"
        self.pool = []
        self.start_s = None  # seconds from launch to its first answers
        self.warm_request_ms = None
        self.bare_rpc_ms = None
        self._grow = threading.Lock()

    def clients(self, n: int, timeout_s: float = 180.0) -> None:
        from coinfer.device.api import SplitModel

        with self._grow:
            while len(self.pool) < n:
                extra = {"engine": self.device_engine} if self.device_engine and self.engine else {}
                self.pool.append(SplitModel(server=self.server.address, model=self.model, timeout_s=timeout_s,
                                            **extra))

    def encode(self, client: int, texts: list[str]):
        return self.pool[client].encode(texts, batch_size=len(texts), normalize_embeddings=True)

    def measure_bare_rpc_ms(self, calls: int = 200) -> float:
        """Median round trip of the server's `Info` call (no tensors, no compute): the least a request
        pays for crossing into the server process on this machine."""
        from coinfer.device.client import InferenceClient

        with InferenceClient(self.server.address) as client:  # the warm-up call connects
            self.bare_rpc_ms = round(median_time(client.info, calls) * 1e3, 3)
        return self.bare_rpc_ms

    def counters(self) -> dict[str, float]:
        """The server's batch and latency histograms' _sum and _count (Prometheus text format)."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as reply:
            return parse_counters(reply.read().decode())

    def close(self) -> None:
        for model in self.pool:
            model.close()
        self.server.stop()


def parse_counters(text: str) -> dict[str, float]:
    """{'coinfer_server_batch_requests_sum': ..., '..._count': ...}, the same of the server's latency
    (queue + compute) and of any other coinfer_server_batch* histogram (a rows or tokens one, should
    the server grow it) from a /metrics page."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(coinfer_server_(?:batch\w*|latency_seconds)_(?:sum|count))(?:\{[^}]*\})?\s+(\S+)", line)
        if match:
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(2))
    return out


def histogram_means(before: dict, after: dict) -> dict[str, float | None]:
    """Per histogram, the mean of what it observed between two readings."""
    out = {}
    for key in after:
        if key.endswith("_sum"):
            base = key[:-4]
            count = after.get(base + "_count", 0.0) - before.get(base + "_count", 0.0)
            total = after[key] - before.get(key, 0.0)
            out[base] = round(total / count, 3) if count > 0 else None
    return out


def server_engines(help_text: str) -> list[str] | None:
    """The engines `coinfer server --help` offers, or None when it has no --engine (one engine)."""
    if "--engine" not in help_text:
        return None
    match = re.search(r"--engine\s+\{([^}]*)\}", help_text)
    return [e.strip() for e in match.group(1).split(",")] if match else list(ALL_ENGINES)


def _help(command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "coinfer", command, "--help"], capture_output=True, text=True,
                          timeout=120)
    return done.stdout


# --- the run ----------------------------------------------------------------------------------
def run(model: str = "minilm", batches=(1, 8), clients=(1, 4, 16), splits=(0, 3), engines=None,
        duration_s: float = 3.0, rounds: int = 3, n_sentences: int = 256, compile_timeout_s: float = 180.0,
        slow_request_s: float = 2.0,
        server_args=(), out_dir: Path | None = None, progress=None, json_line: bool = True) -> dict:
    """The `throughput` section. engines: those to try (default: all the server offers). compile is
    left out (with the reason) when its server, device halves and first answers take more than
    compile_timeout_s, or its warm requests more than slow_request_s. json_line: print a one-line
    JSON summary on stdout at the end."""
    from coinfer.models import resolve_model

    src = resolve_model(model)
    if src.folder is None:
        raise ValueError(f"{model}: the peers load a checkpoint folder; random:* models have none")
    sentences = make_sentences(n_sentences)
    check = sentences[:8]
    help_text = _help("server")
    offered = server_engines(help_text)
    # without --engine the server has one engine, the eager forward
    wanted = ["eager"] if offered is None else [e for e in (engines or offered) if e in offered]
    skipped: dict[str, str] = {}
    systems: dict[str, object] = {}
    equality: dict[str, float] = {}
    quiet = open(os.devnull, "w")

    def note(text: str) -> None:
        _echo(f"[throughput] {text}")

    try:
        note("loading sentence-transformers")
        st = systems[ST] = SentenceTransformersSystem(src.folder)
        reference = st.encode(0, check)
        equality[ST] = 1.0
        try:
            note("exporting the whole model to ONNX")
            ort_system = OrtSystem(src.folder)
            systems[ORT] = ort_system
        except ImportError as exc:
            skipped[ORT] = f"onnxruntime not importable here ({exc}); install coinfer[onnx]"
        for split in splits:
            for engine in wanted:
                name = f"coinfer k={split} {engine}"
                if engine == "onnxruntime" and not _importable("onnxruntime"):
                    skipped[name] = "onnxruntime not importable: the server cannot run that engine"
                    continue
                bounded = engine == "compile"
                note(f"starting {name}")
                started = time.perf_counter()
                try:
                    system = CoinferSystem(model, split, engine if offered is not None else None, server_args,
                                           ready_timeout_s=compile_timeout_s if bounded else 300.0, stderr=quiet)
                except (TimeoutError, RuntimeError) as exc:
                    skipped[name] = f"server did not start: {exc}"
                    continue
                try:
                    system.clients(1, timeout_s=compile_timeout_s if bounded else 300.0)
                    for texts in (check[:1], check):  # the first answers pay for lazy set-up (compile: tracing)
                        system.encode(0, texts)
                    # every client's SplitModel now, so that building device halves (compile: compiling
                    # them) counts in the bound and never in a cell
                    system.clients(max(clients), timeout_s=compile_timeout_s if bounded else 300.0)
                    if bounded and time.perf_counter() - started > compile_timeout_s:
                        raise TimeoutError(f"start, {max(clients)} device halves and first answers took "
                                           f"{time.perf_counter() - started:.0f} s (> {compile_timeout_s:.0f} s)")
                    # warm requests of new shapes: an engine still compiling per shape shows here
                    warm = []
                    for texts in (check[2:3], check[1:6], check[:7]):
                        began = time.perf_counter()
                        system.encode(0, texts)
                        warm.append(time.perf_counter() - began)
                    system.warm_request_ms = round(statistics.median(warm) * 1e3, 1)
                    if bounded and statistics.median(warm) > slow_request_s:
                        raise TimeoutError(f"warm requests of new shapes take {system.warm_request_ms:.0f} ms "
                                           f"(median; > {slow_request_s * 1e3:.0f} ms): still compiling per shape")
                except Exception as exc:  # a slow or broken engine is a finding, not the end of the run
                    system.close()
                    skipped[name] = f"{type(exc).__name__}: {exc}"
                    continue
                system.start_s = round(time.perf_counter() - started, 1)
                system.measure_bare_rpc_ms()
                systems[name] = system
        for name, system in systems.items():
            if name != ST:
                equality[name] = round(min_cosine(system.encode(0, check), reference), 7)
                single = system.encode(0, check[:1])  # batch 1: no padding at all, another path through the graph
                equality[name] = min(equality[name], round(min_cosine(single, reference[:1]), 7))
        unequal = {n: c for n, c in equality.items() if c < EQUAL_COSINE}
        for name in unequal:  # timing a system that answers differently would compare nothing
            skipped[name] = f"answers differ from sentence-transformers' (min cosine {unequal[name]})"
            systems.pop(name).close()

        names = list(systems)
        cells = []
        for batch, n in cell_grid(batches, clients):
            for name in names:
                if isinstance(systems[name], CoinferSystem):
                    systems[name].clients(n)
                # warm this shape and thread count (not timed)
                closed_loop(systems[name].encode, batch, n, sentences, 0.0, min_requests=2)
            runs = {name: [] for name in names}
            counted: dict[str, dict] = {name: {} for name in names}  # batch histograms, summed over rounds
            for order in interleaved_order(names, rounds):
                for name in order:
                    system = systems[name]
                    counting = isinstance(system, CoinferSystem)
                    before = system.counters() if counting else {}
                    runs[name].append(closed_loop(system.encode, batch, n, sentences, duration_s))
                    if counting:
                        for key, value in system.counters().items():
                            counted[name][key] = counted[name].get(key, 0.0) + value - before.get(key, 0.0)
            cell = {"batch": batch, "clients": n, "systems": {}}
            for name in names:
                row = summarise_runs(runs[name])
                if isinstance(systems[name], CoinferSystem):
                    means = histogram_means({}, counted[name])
                    row["server_mean_batch_requests"] = means.pop("coinfer_server_batch_requests", None)
                    # the server's own share of a request's latency: the rest is the client and the wire
                    seconds = means.pop("coinfer_server_latency_seconds", None)
                    row["server_mean_ms"] = round(seconds * 1e3, 1) if seconds is not None else None
                    if means:  # any other batch histogram the server has (rows, tokens)
                        row["server_mean_batch_other"] = means
                cell["systems"][name] = row
            cells.append(cell)
            _echo(format_cell(cell))
            if progress:
                progress(f"batch={batch} clients={n}")
        info = {name: {"server_flags": (["--engine", s.engine] if s.engine and offered is not None else [])
                       + list(server_args), "device_engine": s.device_engine, "start_s": s.start_s,
                       "warm_request_ms": s.warm_request_ms, "bare_rpc_ms": s.bare_rpc_ms}
                for name, s in systems.items() if isinstance(s, CoinferSystem)}
    finally:
        for system in systems.values():
            try:
                system.close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                pass
        quiet.close()

    result = {"benchmark": "throughput", "model": src.name, "cores": os.cpu_count(), "duration_s": duration_s,
              "rounds": rounds, "sentences": {"count": len(sentences), "words": "13-20", "seed": 19,
                                              "example": sentences[0]},
              "engines_offered_by_server": offered, "engines_tried": wanted,
              "split_model_engine_option": split_model_engine_supported(),
              "systems": names, "coinfer": info, "skipped": skipped,
              "equality": {"reference": ST, "min_cosine": equality, "threshold": EQUAL_COSINE,
                           "all_equal": all(c >= EQUAL_COSINE for c in equality.values())},
              "ort": {"session": "default SessionOptions, intra_op_num_threads = cores, CPUExecutionProvider",
                      "export": "torch.onnx.export (TorchScript), opset 17, dynamic batch and seq axes",
                      "version": _version("onnxruntime")},
              "versions": {"sentence_transformers": _version("sentence_transformers"), "torch": _version("torch")},
              "cells": cells}
    result.update(compare(cells))
    result["transport_floor"] = transport_floor(cells, info)
    if out_dir is not None and cells:
        result["plot"] = plot(cells, names, out_dir, src.name)
    if json_line:
        print(json_summary(result), flush=True)
    return result


def compare(cells: list[dict]) -> dict:
    """coinfer k=0 (its best engine per cell) against each peer: the worst ratio over cells, and what
    the issue asks to see about batching at the heaviest cell."""
    ratios = {ORT: [], ST: []}
    best = []
    for cell in cells:
        k0 = {n: r for n, r in cell["systems"].items() if n.startswith("coinfer k=0 ")}
        if not k0:
            continue
        name, row = max(k0.items(), key=lambda kv: kv[1]["sentences_per_s"])
        best.append({"batch": cell["batch"], "clients": cell["clients"], "system": name,
                     "sentences_per_s": row["sentences_per_s"],
                     "server_mean_batch_requests": row.get("server_mean_batch_requests")})
        for peer in ratios:
            if peer in cell["systems"]:
                ratios[peer].append(row["sentences_per_s"] / cell["systems"][peer]["sentences_per_s"])
    out = {"coinfer_k0_best": best}
    for peer, key in ((ORT, "k0_vs_onnxruntime_min_ratio"), (ST, "k0_vs_sentence_transformers_min_ratio")):
        out[key] = round(min(ratios[peer]), 3) if ratios[peer] else None
    present = [v for v in (out["k0_vs_onnxruntime_min_ratio"], out["k0_vs_sentence_transformers_min_ratio"])
               if v is not None]
    out["meets_target"] = bool(present) and all(v >= 1.0 for v in present) and len(present) == 2
    return out


def transport_floor(cells: list[dict], info: dict) -> dict | None:
    """What crossing a process costs at one client: the fastest bare round trip to a k = 0 server, and
    for each one-client cell the best throughput ratio to in-process ONNX Runtime that any server could
    reach if its forward were exactly as fast and everything but that round trip were free:
    ort_ms / (ort_ms + bare_rpc_ms), with ort_ms the in-process median latency."""
    floors = [row["bare_rpc_ms"] for name, row in info.items()
              if name.startswith("coinfer k=0 ") and row.get("bare_rpc_ms")]
    if not floors:
        return None
    floor = min(floors)
    ceilings = {}
    for cell in cells:
        ort = cell["systems"].get(ORT)
        if cell["clients"] == 1 and ort is not None:
            ceilings[f"{cell['batch']}x1"] = round(ort["p50_ms"] / (ort["p50_ms"] + floor), 3)
    return {"bare_rpc_ms": floor, "one_client_ratio_ceiling": ceilings}


def format_cell(cell: dict) -> str:
    """One line per cell: each system's sentences/s and p50/p99 ms."""
    parts = []
    for name, row in cell["systems"].items():
        merged, server = row.get("server_mean_batch_requests"), row.get("server_mean_ms")
        parts.append(f"{name} {row['sentences_per_s']:.0f}/s ({row['p50_ms']:.0f}/{row['p99_ms']:.0f} ms"
                     + (f", server {server:.0f} ms" if server is not None else "")
                     + (f", batch {merged:.2f}" if merged is not None else "") + ")")
    return f"[throughput] batch {cell['batch']:>2} x {cell['clients']:>2} clients: " + " | ".join(parts)


def json_summary(result: dict) -> str:
    """One JSON line for stdout: sentences/s per cell and system, and the comparison."""
    import json

    return json.dumps({"throughput_sentences_per_s": {
        f"batch {c['batch']} x {c['clients']} clients": {n: r["sentences_per_s"] for n, r in c["systems"].items()}
        for c in result["cells"]},
        "k0_vs_onnxruntime_min_ratio": result.get("k0_vs_onnxruntime_min_ratio"),
        "k0_vs_sentence_transformers_min_ratio": result.get("k0_vs_sentence_transformers_min_ratio"),
        "skipped": result["skipped"], "min_cosine": result["equality"]["min_cosine"]})


def plot(cells: list[dict], names: list[str], out_dir: Path, model: str = "all-MiniLM-L6-v2") -> str:
    """Sentences/s: one bar group per cell, one bar per system."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.25 * len(cells) * len(names))), 4.5))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(cells))]
        ys = [c["systems"].get(name, {}).get("sentences_per_s", 0.0) for c in cells]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"batch {c['batch']}\n{c['clients']} client{'s' if c['clients'] > 1 else ''}" for c in cells])
    ax.set_ylabel("sentences / s")
    ax.set_title(f"Throughput, {model} (medians of interleaved rounds)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out_dir, "throughput")


def _echo(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)  # above the suite's progress bar, not through it


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def main(argv=None) -> int:
    """python -m coinfer.lab.bench.throughput: the section alone, its whole result as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m coinfer.lab.bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--engines", nargs="+", help="default: every engine `coinfer server --help` offers")
    parser.add_argument("--duration-s", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per system and cell")
    parser.add_argument("--out", help="folder for throughput.png")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    return print_report(run(args.model, tuple(args.batches), tuple(args.clients), tuple(args.splits), args.engines,
                            args.duration_s, args.rounds, out_dir=out, json_line=False))


if __name__ == "__main__":
    sys.exit(main())
