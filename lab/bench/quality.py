"""Does the measured quality model predict the quality of a real split, on sentences it was not fitted on?

The model is fitted on the calibration sentences (coinfer.planner.calibration). Then, on the held-out
sentences (coinfer.samples.SENTENCES, disjoint from them), every split point k and every method, the
real halves are built as the device and the server build them (DevicePart / ServerPart, pruned with
Pruner.for_part at rho_d and rho_s) and their output is compared with the unpruned model's on a
joint (rho_d, rho_s) grid. Error = predicted - measured quality (mean over the held-out sentences),
reported per method for both loss spaces, over the grid points with every rho >= the method's
min_ratio (the planner's usable range; target MAE <= 0.02) and over the whole grid.
"""
from __future__ import annotations

import argparse
import sys
import time

from coinfer.lab.bench.common import print_report

TARGET_MAE = 0.02
DEFAULT_GRID = (0.4, 0.6, 0.8, 1.0)


def _split_quality(src, k: int, method: str, pairs, ids, mask) -> dict[tuple[float, float], float]:
    """Mean quality over the batch at each (rho_d, rho_s), from the real halves at split k."""
    import torch

    from coinfer.pruning import Pruner
    from coinfer.split import DevicePart, ServerPart

    device, server = DevicePart(src, k), ServerPart(src, k)
    dp, sp = Pruner.for_part(device, src, 1.0, method), Pruner.for_part(server, src, 1.0, method)
    dp.cache_size = sp.cache_size = len(pairs) + 1
    if src.family == "bart":
        from transformers.models.bart.modeling_bart import shift_tokens_right
        from transformers.modeling_outputs import BaseModelOutput

        decoder_ids = shift_tokens_right(ids, src.config.pad_token_id, src.config.decoder_start_token_id)

    @torch.inference_mode()
    def output():
        x = device(ids, mask)
        if device.runs_alone:
            return x
        if server.generator is None:
            return server(x, mask)
        hidden = server.segment(x, mask)
        return server.generator(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                                decoder_input_ids=decoder_ids).logits.argmax(-1)

    reference = output()
    out = {}
    for rho_d, rho_s in pairs:
        dp.apply(rho_d, method)
        sp.apply(rho_s, method)
        got = output()
        if src.family == "bart":
            valid = mask.bool()
            q = (((got == reference) & valid).sum(1).float() / valid.sum(1).float()).mean()
        else:
            q = torch.nn.functional.cosine_similarity(got.float(), reference.float(), dim=-1).mean()
        out[(rho_d, rho_s)] = float(q)
    return out


def _errors(rows, model, space: str, restricted: bool) -> dict:
    errors = {}
    for row in rows:
        m = row["method"]
        if restricted and not row["in_range"]:
            continue
        predicted = model.with_loss_space(space).predict(m, row["k"], row["rho_d"], row["rho_s"])
        errors.setdefault(m, []).append(predicted - row["measured"])
    return {m: {"mae": round(sum(abs(e) for e in es) / len(es), 5), "max_abs_error": round(max(abs(e) for e in es), 5),
                "bias": round(sum(es) / len(es), 5), "count": len(es)} for m, es in errors.items()}


def run(model: str = "minilm", methods=("structured", "magnitude"), grid=DEFAULT_GRID, ratios=None,
        plot: str | None = None, progress=None) -> dict:
    from coinfer.models import resolve_model
    from coinfer.planner import quality
    from coinfer.planner.calibration import CALIBRATION_SENTENCES
    from coinfer.samples import SENTENCES

    say = progress or (lambda message: None)
    held_out = [s for s in SENTENCES if s not in CALIBRATION_SENTENCES]
    src = resolve_model(model)
    started = time.perf_counter()
    fitted = quality.measure_quality(src, methods=methods, ratios=ratios or quality.DEFAULT_RATIOS, progress=say)
    profile_s = time.perf_counter() - started
    ids, mask = src.tokenize(held_out, max_length=fitted.max_tokens)
    L = src.num_blocks
    grid = tuple(sorted(set(float(g) for g in grid) | {1.0}))
    rows = []
    for method in fitted.methods:
        lo = fitted.min_ratio[method]
        for k in range(L + 1):
            has_d = quality.side_present(src.family, L, k, "device")
            has_s = quality.side_present(src.family, L, k, "server")
            pairs = sorted({(rd if has_d else 1.0, rs if has_s else 1.0) for rd in grid for rs in grid} - {(1.0, 1.0)})
            say(f"held-out: {method} k={k}: {len(pairs)} joint points")
            for (rho_d, rho_s), measured in _split_quality(src, k, method, pairs, ids, mask).items():
                rows.append({"method": method, "k": k, "rho_d": rho_d, "rho_s": rho_s, "measured": measured,
                             "in_range": min(rho_d, rho_s) >= lo - 1e-9})
    spaces = {space: {"in_range": _errors(rows, fitted, space, True), "whole_grid": _errors(rows, fitted, space, False)}
              for space in quality.LOSS_SPACES}
    chosen = spaces[fitted.loss_space]["in_range"]
    result = {
        "model": src.name, "metric": fitted.metric, "loss_space": fitted.loss_space,
        "profile_s": round(profile_s, 2), "calibration_sentences": fitted.sentences, "held_out_sentences": len(held_out),
        "grid": list(grid), "ratios": list(fitted.ratios), "min_ratio": fitted.min_ratio,
        "speed": {m: round(s, 3) for m, s in fitted.speed.items()},
        "errors": spaces, "target_mae": TARGET_MAE,
        "meets_target": all(m in chosen and chosen[m]["mae"] <= TARGET_MAE for m in fitted.methods),
    }
    if plot:
        result["plot"] = _plot(rows, fitted, plot)
    return result


def _plot(rows, model, path: str) -> str:
    from coinfer.lab.bench.common import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for method, color in zip(model.methods, ("tab:blue", "tab:orange", "tab:green")):
        for in_range, marker, alpha in ((True, "o", 0.8), (False, "x", 0.35)):
            pts = [(r["measured"], model.predict(method, r["k"], r["rho_d"], r["rho_s"]))
                   for r in rows if r["method"] == method and r["in_range"] == in_range]
            if pts:
                label = f"{method} (rho >= {model.min_ratio[method]:g})" if in_range else f"{method}, below min_ratio"
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, marker=marker, color=color, alpha=alpha,
                           label=label)
    lo = min([r["measured"] for r in rows]
             + [model.predict(r["method"], r["k"], r["rho_d"], r["rho_s"]) for r in rows] + [1.0])
    ax.plot([lo, 1], [lo, 1], color="black", linewidth=0.8, label="y = x")
    ax.set_xlabel(f"measured {model.metric} (held-out sentences, real halves)")
    ax.set_ylabel(f"predicted {model.metric} ({model.loss_space})")
    ax.set_title(f"{model.model_name}: quality model, every k, joint (rho_d, rho_s)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_quality", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\nFits the quality model on the calibration sentences, then "
                    "measures the real split on held-out sentences over a joint (rho_d, rho_s) grid at every k and "
                    "compares. Prints one JSON object.")
    parser.add_argument("--model", default="minilm", help="model spec (default: %(default)s)")
    parser.add_argument("--methods", default="structured,magnitude", help="comma-separated (default: %(default)s)")
    parser.add_argument("--grid", default=",".join(f"{g:g}" for g in DEFAULT_GRID),
                        help="joint grid of rho_d and rho_s, comma-separated (default: %(default)s)")
    parser.add_argument("--ratios", default=None, help="the profile's ratio grid (default: the profile's)")
    parser.add_argument("--plot", metavar="PATH", help="save a predicted-vs-measured scatter (PNG)")
    args = parser.parse_args(argv)
    from coinfer.errors import UsageError

    try:
        result = run(args.model, tuple(m for m in args.methods.split(",") if m),
                     tuple(float(g) for g in args.grid.split(",")),
                     tuple(float(r) for r in args.ratios.split(",")) if args.ratios else None,
                     args.plot, progress=lambda message: print(message, file=sys.stderr))
    except (UsageError, ValueError) as exc:
        print(f"bench_quality: error: {exc}", file=sys.stderr)
        return 2
    return print_report(result)


if __name__ == "__main__":
    sys.exit(main())
