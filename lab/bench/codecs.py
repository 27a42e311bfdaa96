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


MARKERS = {"fp32": "s", "fp16": "o", "bf16": "^", "int8": "D", "int4": "v"}


def _plot(rows, out_dir) -> str:
    """Bytes per codec, and 1 - cosine to the fp32 path per codec and k on a log axis. A distance of 0
    (fp32 always, being the reference; fp16 where it rounds to nothing) has no place on a log axis: it
    is drawn on a floor a decade below the smallest distance, marked "0 (exact)"."""
    import math

    from matplotlib.ticker import FixedLocator

    plt = pyplot()
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    first_k = rows[0]["split"]
    at_first_k = [next(r for r in rows if r["codec"] == c and r["split"] == first_k) for c in codecs]
    bars = left.bar(codecs, [r["wire_bytes"] / 1e6 for r in at_first_k])
    left.bar_label(bars, [f"{r['bytes_ratio_vs_fp32']:.2f}x" for r in at_first_k], fontsize=7)
    left.set_ylabel(f"MB on the wire per request (k={first_k})")
    left.set_title("Bytes per codec (fp32 / codec on the bars)", fontsize=10)
    distance = {id(r): max(0.0, 1 - r["min_cosine_vs_fp32"]) for r in rows}
    smallest = min((d for d in distance.values() if d > 0), default=1 - TARGET_INT8_COSINE)
    floor = 10.0 ** (math.floor(math.log10(min(smallest, 1 - TARGET_INT8_COSINE))) - 1)
    for codec in codecs:
        points = [(r["split"], distance[id(r)] or floor) for r in rows if r["codec"] == codec]
        exact = [r["split"] for r in rows if r["codec"] == codec and distance[id(r)] == 0]
        label = codec + (" (the reference)" if codec == "fp32" else
                         " (exact at every k)" if len(exact) == len(points) else
                         f" (exact at k={','.join(map(str, exact))})" if exact else "")
        right.semilogy(*zip(*points), marker=MARKERS.get(codec, "o"), label=label,
                       markerfacecolor="none" if codec == "fp32" else None, markersize=9 if codec == "fp32" else 6)
    right.axhline(1 - TARGET_INT8_COSINE, color="grey", linestyle="--", label="target (int8)")
    right.axhline(floor * 3, color="black", linewidth=0.6, linestyle=":")  # the axis is broken here
    top = max([1 - TARGET_INT8_COSINE, *distance.values()])
    decades = range(math.floor(math.log10(floor)) + 1, math.ceil(math.log10(top)) + 1)
    right.set_ylim(floor / 2, 10.0 ** decades[-1] * 2)
    right.yaxis.set_major_locator(FixedLocator([floor] + [10.0 ** d for d in decades]))
    right.yaxis.set_minor_locator(FixedLocator([]))
    right.set_yticklabels(["0 (exact)"] + [f"$10^{{{d}}}$" for d in decades])
    right.set_xlabel("split point k")
    right.set_ylabel("1 - cosine similarity to fp32 (min over batch)")
    right.set_title("Output error per codec")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, out_dir, "codecs")
