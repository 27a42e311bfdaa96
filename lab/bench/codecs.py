"""Activation codecs: bytes on the wire and the error they cause in the final output, at each k.

The device half, the codec round trip and the server half run in this process (the wire format is
what is measured, not the network): the final sentence embeddings through each codec are compared
with the fp32 path by cosine similarity.
"""
from __future__ import annotations

from pathlib import Path

from coinfer.lab.bench.common import pyplot, save_figure

TARGET_INT8_BYTE_RATIO = 3.9
TARGET_INT8_COSINE = 0.999


def run(model: str = "minilm", batch: int = 8, seq_len: int = 128, out_dir: Path | None = None,
        progress=None) -> dict:
    import torch

    from coinfer.codecs import CODECS, decode, encode
    from coinfer.samples import SENTENCES
    from coinfer.models import resolve_model
    from coinfer.split import DevicePart, ServerPart

    src = resolve_model(model)
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    ids, mask = src.tokenize(sentences, max_length=seq_len, padding="max_length")
    rows = []
    for k in range(1, src.num_blocks):
        device, server = DevicePart(src, k), ServerPart(src, k)
        hidden = device(ids, mask)
        reference = server(hidden, mask)
        fp32_bytes = None
        for codec in CODECS:
            message = encode(hidden, codec)
            wire_bytes = len(message.data) + len(message.scales)
            fp32_bytes = fp32_bytes or wire_bytes
            out = server(decode(message), mask)
            cosine = torch.nn.functional.cosine_similarity(out, reference, dim=1)
            rows.append({"split": k, "codec": codec, "wire_bytes": wire_bytes,
                         "bytes_ratio_vs_fp32": fp32_bytes / wire_bytes,
                         "min_cosine_vs_fp32": cosine.min().item(),
                         "max_abs_diff_vs_fp32": (out - reference).abs().max().item()})
            if progress:
                progress(f"codecs k={k} {codec}")
    int8 = [r for r in rows if r["codec"] == "int8"]
    result = {"model": src.name, "batch": batch, "seq_len": seq_len, "results": rows,
              "int8_min_bytes_ratio": min(r["bytes_ratio_vs_fp32"] for r in int8),
              "int8_min_cosine": min(r["min_cosine_vs_fp32"] for r in int8),
              "targets": {"int8_bytes_ratio": TARGET_INT8_BYTE_RATIO, "int8_cosine": TARGET_INT8_COSINE}}
    result["meets_target"] = (result["int8_min_bytes_ratio"] >= TARGET_INT8_BYTE_RATIO
                              and result["int8_min_cosine"] >= TARGET_INT8_COSINE)
    if out_dir is not None:
        result["plot"] = _plot(rows, out_dir)
    return result


def _plot(rows, out_dir) -> str:
    plt = pyplot()
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    first_k = rows[0]["split"]
    left.bar(codecs, [next(r["wire_bytes"] for r in rows if r["codec"] == c and r["split"] == first_k) / 1e6
                      for c in codecs])
    left.set_ylabel("MB on the wire per request")
    left.set_title("Bytes per codec")
    for codec in codecs:
        points = [(r["split"], 1 - r["min_cosine_vs_fp32"]) for r in rows if r["codec"] == codec and codec != "fp32"]
        if points:
            right.semilogy(*zip(*points), marker="o", label=codec)
    right.axhline(1 - TARGET_INT8_COSINE, color="grey", linestyle="--", label="target (int8)")
    right.set_xlabel("split point k")
    right.set_ylabel("1 - cosine similarity to fp32")
    right.set_title("Output error per codec")
    right.legend(fontsize=7)
    return save_figure(fig, out_dir, "codecs")
