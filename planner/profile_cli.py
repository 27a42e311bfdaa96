"""`coinfer profile`: measure a model's output quality under pruning (the planner's quality floor).

Imports here stay argparse-level; torch and the model load when the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = (
    "Measure how much each pruning method changes the model's answer, so the planner can keep a quality "
    "floor. A calibration set (48 built-in sentences, or --calibration FILE: one sentence a line) runs "
    "in-process through the real model code. For every split point k = 0..L and kept ratio rho it prunes "
    "the device's blocks [0, k) (device side) or the server's blocks [k, L) and BART's decoder (server "
    "side) at rho, leaving the rest unpruned, and compares the output with the unpruned model's: cosine "
    "of the sentence embedding for encoders, teacher-forced top-1 token agreement for BART (mean over "
    "the sentences, its 10th percentile and the worst sentence). Each side is fitted with a convex, "
    "non-increasing loss, and predicted quality(k, rho_d, rho_s) composes the two sides; the planner's "
    "floor (--min-quality) is on the worst sentence, and each pruned plan is measured on the calibration "
    "set before it is pushed. min_ratio is the lowest ratio where the fit holds; "
    "speed sigma is the share of a block's time that shrinks with rho (structured ~1; magnitude ~0, "
    "dense kernels do not skip zeros). The result is cached per model fingerprint.")


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="measure output quality against pruning ratio (the quality model)",
                              description=DESCRIPTION)
    p.add_argument("--model", default="minilm",
                   help="minilm, random:bert-base|bert-tiny|bart-base|bart-tiny, or a local folder "
                        "(default: %(default)s)")
    p.add_argument("--calibration", metavar="FILE", help="calibration sentences, one a line (default: built-in)")
    p.add_argument("--methods", default="structured,magnitude",
                   help="prune methods, comma-separated: structured, magnitude, random (default: %(default)s)")
    p.add_argument("--ratios", default=None,
                   help="kept-ratio grid, comma-separated (default: 0.3,0.4,...,1.0; 1.0 is always added)")
    p.add_argument("--cache-dir", default=None,
                   help="where measured models are cached (default: $COINFER_CACHE_DIR, else ~/.cache/coinfer/quality)")
    p.add_argument("--refresh", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print the model as one JSON object")
    p.set_defaults(func=run)


def read_calibration(path: str) -> list[str]:
    """--calibration FILE: one sentence a line, # starts a comment (the planner reads it the same way,
    so both find the same cached profile)."""
    from coinfer.errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as exc:
        raise UsageError(f"--calibration {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise UsageError(f"--calibration {path}: {exc.strerror or exc}") from exc
    sentences = [line for line in lines if line and not line.startswith("#")]
    if not sentences:
        raise UsageError(f"--calibration {path}: no sentences (one a line; # starts a comment)")
    return sentences


def format_table(model, shown=(0.3, 0.5, 0.7, 0.9)) -> str:
    shown = [r for r in model.ratios if any(abs(r - s) < 1e-9 for s in shown)] or list(model.ratios[:-1])
    idx = [model.ratios.index(r) for r in shown]
    head = " ".join(f"{r:>6g}" for r in shown)
    lines = [f"{model.model_name} ({model.metric} with the unpruned model, {model.sentences} calibration "
             f"sentences, mean; loss space {model.loss_space}; measured in {model.seconds:.1f} s)"]
    for m in model.methods:
        lines.append("")
        lines.append(f"{m}: speed sigma {model.speed[m]:.2f}, min_ratio {model.min_ratio[m]:g}")
        lines.append(f"  {'k':>3}  device quality at rho {head}   |  server quality at rho {head}")
        for k in range(model.num_blocks + 1):
            cells = []
            for side in ("device", "server"):
                curve = model.curves[m].get(side, {}).get(k)
                cells.append(" ".join(f"{curve[i]:6.3f}" for i in idx) if curve else f"{'-':>{7 * len(idx) - 1}}")
            lines.append(f"  {k:>3}  {'':>22}{cells[0]}   |  {'':>22}{cells[1]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from coinfer.errors import UsageError
    from coinfer.models import resolve_model
    from coinfer.planner.quality import DEFAULT_RATIOS, load_or_measure

    kw = {"methods": tuple(m.strip() for m in args.methods.split(",") if m.strip())}
    if args.ratios:
        try:
            kw["ratios"] = tuple(float(r) for r in args.ratios.split(",") if r.strip())
        except ValueError as exc:
            raise UsageError(f"--ratios {args.ratios!r}: not comma-separated numbers") from exc
    else:
        kw["ratios"] = DEFAULT_RATIOS
    if args.calibration:
        kw["sentences"] = read_calibration(args.calibration)
    src = resolve_model(args.model)
    model = load_or_measure(src, cache_dir=args.cache_dir, refresh=args.refresh,
                            progress=lambda message: print(f"[profile] {message}", file=sys.stderr), **kw)
    if args.json:
        print(json.dumps(model.to_dict(), indent=2))
    else:
        print(format_table(model))
    return 0
