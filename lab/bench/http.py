"""HTTP overhead: `/v1/embeddings` on `coinfer device --http` against the same load sent straight over gRPC.

One `coinfer server` (127.0.0.1) and one `coinfer device --http` in front of it run as their own
processes; this process holds a SplitModel on the same server. For each number of concurrent clients
(threads), the same requests (batches of short sentences) go for a few seconds through the openai
client to the HTTP service, and for as long through SplitModel.encode, cells interleaved so that the
machine's noise hits both alike. `ratio` = HTTP sentences/s over gRPC sentences/s (target >= 0.9: the
HTTP layer must not be the bottleneck).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

from coinfer.lab.bench.common import closed_loop, print_report

TARGET_RATIO = 0.9


def run(model: str = "minilm", split: int = 3, clients=(1, 4, 16), batch: int = 8, duration_s: float = 3.0,
        rounds: int = 2, warmup_s: float = 1.0) -> dict:
    import openai

    from coinfer.device.api import SplitModel
    from coinfer.lab.launch import ServiceProcess

    quiet = open(os.devnull, "w")
    sentences = [f"sentence number {i} of the http benchmark" for i in range(batch * 64)]
    with ServiceProcess(["server", "--model", model, "--split", str(split), "--listen", "127.0.0.1:0"],
                        "bench-server", stderr=quiet) as server, \
            ServiceProcess(["device", "--server", server.address, "--model", model, "--http", "127.0.0.1:0"],
                           "bench-http", stderr=quiet) as http, \
            SplitModel(server=server.address, model=model) as direct:
        name = direct.model_name
        pool = [openai.OpenAI(base_url=f"http://{http.address}/v1", api_key="unused", max_retries=0, timeout=120)
                for _ in range(max(clients))]

        def via_http(i, texts):
            pool[i].embeddings.create(model=name, input=texts)

        def via_grpc(_i, texts):
            direct.encode(texts, normalize_embeddings=True)

        closed_loop(via_http, batch, 1, sentences, warmup_s)
        closed_loop(via_grpc, batch, 1, sentences, warmup_s)
        cells = []
        for n in clients:
            http_runs, grpc_runs = [], []
            for r in range(rounds):
                order = [("grpc", via_grpc, grpc_runs), ("http", via_http, http_runs)]
                for _, call, runs in (order if r % 2 == 0 else order[::-1]):
                    runs.append(closed_loop(call, batch, n, sentences, duration_s)["sentences_per_s"])
            http_rate, grpc_rate = statistics.median(http_runs), statistics.median(grpc_runs)
            cells.append({"clients": n, "http_sentences_per_s": round(http_rate, 1),
                          "grpc_sentences_per_s": round(grpc_rate, 1), "ratio": round(http_rate / grpc_rate, 3),
                          "http_runs": [round(x, 1) for x in http_runs], "grpc_runs": [round(x, 1) for x in grpc_runs]})
    worst = min(c["ratio"] for c in cells)
    return {"benchmark": "http_overhead", "model": name, "split": split, "batch": batch, "duration_s": duration_s,
            "rounds": rounds, "cells": cells, "min_ratio": worst, "target_ratio": TARGET_RATIO,
            "meets_target": worst >= TARGET_RATIO}


def main(argv=None) -> int:
    """scripts/bench_http."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench_http", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="HTTP overhead: /v1/embeddings on `coinfer device --http` (openai client, N threads) against "
                    "the same load\nsent straight over gRPC through SplitModel.encode from N threads, cells "
                    "interleaved. Prints one JSON\nobject; `ratio` = HTTP / gRPC sentences per second (target >= 0.9).")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--split", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per cell")
    parser.add_argument("--batch", type=int, default=8, help="sentences per request")
    parser.add_argument("--duration-s", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=2, help="cells per (clients, path), interleaved")
    args = parser.parse_args(argv)
    return print_report(run(args.model, args.split, tuple(args.clients), args.batch, args.duration_s, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
