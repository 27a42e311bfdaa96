"""Server throughput against concurrent devices, with and without dynamic batching.

One `coinfer server` process per setting; N device threads, each with its own gRPC stream, send
precomputed hidden states (one short sentence each, as a phone would) back to back for a fixed time,
so what is measured is the server, not the devices. A device keeps `in_flight` requests outstanding
on its stream (the next sentence goes out while the last is computed); with one, eight devices fall
into two alternating groups of four, and batches never fill. The server runs as deployed, on all the
machine's cores (`server_threads` = 0); the clients only send and wait. Request ids are unique across
runs: the server answers a repeated id from its reply cache, which once made every run after the first
look faster than it was.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from coinfer.lab.bench.common import pyplot, save_figure

TARGET_SPEEDUP_AT_8 = 2.0


def run(model: str = "minilm", split: int = 3, devices=(1, 2, 4, 8), seconds: float = 5.0, seq_len: int = 0,
        max_batch_size: int = 8, max_queue_delay_ms: float = 0.0, server_threads: int = 0, in_flight: int = 2,
        out_dir: Path | None = None, progress=None) -> dict:
    from coinfer.codecs import encode
    from coinfer.samples import SENTENCES
    from coinfer.device.client import InferenceClient
    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.protos import coinfer_pb2 as pb
    from coinfer.split import DevicePart

    src = resolve_model(model)
    part = DevicePart(src, split)
    requests = []
    for i in range(max(devices)):
        ids, mask = src.tokenize([SENTENCES[i % len(SENTENCES)]], max_length=seq_len or None,
                                 padding="max_length" if seq_len else "longest")
        requests.append((encode(part(ids, mask)), encode(mask)))

    rows = []
    for batching in (False, True):
        size = max_batch_size if batching else 1
        delay = max_queue_delay_ms if batching else 0.0
        with ServiceProcess(["server", "--model", model, "--split", str(split), "--listen", "127.0.0.1:0",
                             "--max-batch-size", str(size), "--max-queue-delay-ms", str(delay),
                             *(["--threads", str(server_threads)] if server_threads else [])], "server",
                            stderr=open(os.devnull, "w")) as server:
            for n in devices:
                # ids unique across runs: the server answers a repeated id from its reply cache
                run_tag = f"b{int(batching)}n{n}"
                counts, batch_sizes, failures = [0] * n, [], []
                stop_at = time.perf_counter() + seconds

                def client(i: int, lane: int, conn: InferenceClient) -> None:
                    hidden, mask = requests[i]
                    sent = 0
                    while time.perf_counter() < stop_at:
                        sent += 1
                        try:
                            reply = conn.infer(pb.InferRequest(
                                request_id=f"{run_tag}-d{i}-{lane}-{sent}", split_point=split, model_id=src.name,
                                hidden_states=hidden, attention_mask=mask))
                        except Exception as exc:  # counted and reported, never silently dropped
                            failures.append(repr(exc))
                            return
                        counts[i] += 1
                        batch_sizes.append(reply.timing.batch_size)

                # warm the server (first calls pay for lazy initialisation), then measure
                with InferenceClient(server.address) as conn:
                    conn.wait_ready()
                    for _ in range(3):
                        conn.infer(pb.InferRequest(request_id=f"warm-{n}-{_}", split_point=split, model_id=src.name,
                                                   hidden_states=requests[0][0], attention_mask=requests[0][1]))
                # each device: one stream, `in_flight` requests outstanding on it
                connections = [InferenceClient(server.address) for _ in range(n)]
                stop_at = time.perf_counter() + seconds
                threads = [threading.Thread(target=client, args=(i, lane, connections[i]))
                           for i in range(n) for lane in range(in_flight)]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for conn in connections:
                    conn.close()
                elapsed = time.perf_counter() - started
                rows.append({"batching": batching, "max_batch_size": size, "max_queue_delay_ms": delay, "devices": n,
                             "in_flight_per_device": in_flight,
                             "requests": sum(counts), "throughput_rps": sum(counts) / elapsed,
                             "mean_batch_size": sum(batch_sizes) / max(1, len(batch_sizes)),
                             "failures": len(failures)})
                if progress:
                    progress(f"batching={'on' if batching else 'off'} devices={n}")
    compute_only = _compute_only_speedup(src, split, [r[0] for r in requests], [r[1] for r in requests],
                                         max_batch_size, server_threads)
    by = {(r["batching"], r["devices"]): r["throughput_rps"] for r in rows}
    top = max(devices)
    speedup = by[(True, top)] / by[(False, top)]
    result = {"model": src.name, "split": split, "seconds": seconds, "server_threads": server_threads or os.cpu_count(),
              "results": rows,
              f"speedup_at_{top}_devices": speedup, "target_speedup": TARGET_SPEEDUP_AT_8,
              "compute_only_speedup": compute_only,
              "meets_target": speedup >= TARGET_SPEEDUP_AT_8 and all(r["failures"] == 0 for r in rows)}
    if out_dir is not None:
        result["plot"] = _plot(rows, out_dir)
    return result


def _compute_only_speedup(src, split, hidden_msgs, mask_msgs, batch, threads) -> float:
    """What batching gains in compute alone, without serving overhead (a one-at-a-time server pays its
    per-request overhead on top, so a served gain can exceed this): `batch` forwards of one request each
    against one forward of all of them together (padded, as the batcher does), on `threads` threads."""
    import torch

    from coinfer.lab.bench.common import median_time
    from coinfer.codecs import decode
    from coinfer.server.batcher import pad_to
    from coinfer.split import ServerPart

    part = ServerPart(src, split)
    xs = [decode(h) for h in hidden_msgs][:batch]
    masks = [decode(m) for m in mask_msgs][:batch]
    length = max(x.shape[1] for x in xs)
    x_all = torch.cat([pad_to(x, length, 0.0) for x in xs])
    m_all = torch.cat([pad_to(m, length, 0) for m in masks])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        one_by_one = median_time(lambda: [part(x, m) for x, m in zip(xs, masks)], 10, 2)
        together = median_time(lambda: part(x_all, m_all), 10, 2)
    finally:
        torch.set_num_threads(previous)
    return one_by_one / together


def _plot(rows, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for batching in (False, True):
        points = [(r["devices"], r["throughput_rps"]) for r in rows if r["batching"] == batching]
        ax.plot(*zip(*points), marker="o", label="dynamic batching" if batching else "one request at a time")
    ax.set_xlabel("concurrent devices")
    ax.set_ylabel("server throughput (requests/s)")
    ax.set_title("Server batching")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "batching")
