"""Running the whole reproduction (scripts/reproduce_paper): every figure's rows, CSV, PNG, the claims
and a summary JSON. `quick` keeps it to CI time: fewer points, shorter training, tiny shapes in
place of the random-weight bert-base / bart-base in Fig. 3, one end-to-end plan.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PARTS = ("fig3", "fig4", "fig5", "fig6", "quality", "e2e")
BERT, BART, MINILM = "random:bert-base", "random:bart-base", "minilm"
TITLES = {BERT: "BERT-base shape (random weights)", BART: "BART-base shape (random weights)",
          MINILM: "all-MiniLM-L6-v2 (real weights)"}
QUALITY_SPLIT = 3          # MiniLM's middle, the demo's split
MINILM_QOS = (0.08, 0.02)  # a request budget that binds for MiniLM (2.9 GFLOPs): 80 ms, 20 mJ


@dataclass
class Settings:
    quick: bool
    ae_epochs: int
    fig3_ratios: list
    fig3_models: list
    fig3_sentences: int            # how many of the pair set's sentences feed the transformers
    limits: dict                   # (model, axis) -> limit values
    fig6_scales: list              # multiples of the system's (delay, energy) limits for Fig. 6's lines
    quality_ratios: list
    e2e_points: list = field(default_factory=list)   # (label, max_delay_s, max_energy_j, split)

    @staticmethod
    def make(quick: bool) -> "Settings":
        if quick:
            n = 6
            return Settings(
                quick=True, ae_epochs=200, fig3_ratios=[0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0],
                fig3_models=[MINILM, "random:bert-tiny", "random:bart-tiny"], fig3_sentences=32,
                limits=_limits(n), fig6_scales=[1.0], quality_ratios=[0.3, 0.5, 0.7, 0.9, 1.0],
                e2e_points=[("k=3 fixed", *MINILM_QOS, 3)])
        return Settings(
            quick=False, ae_epochs=600,
            fig3_ratios=[round(0.05 * i, 2) for i in range(1, 20)] + [0.97, 0.99, 1.0],
            fig3_models=[MINILM, BERT, BART], fig3_sentences=98,
            limits=_limits(23), fig6_scales=[0.8, 1.0, 1.25],
            quality_ratios=[round(0.1 * i, 1) for i in range(1, 10)] + [0.95, 1.0],
            e2e_points=[("default system", 0.6, 0.4, "auto"), ("k=3 fixed", *MINILM_QOS, 3),
                        ("best k", *MINILM_QOS, "auto"), ("best k", 0.05, 0.05, "auto"),
                        ("best k", 0.08, 0.01, "auto")])


def _limits(n: int) -> dict:
    # BART-base (36 GFLOPs with its decoder) needs a wider energy range than BERT-base (22 GFLOPs)
    return {(BERT, "delay"): np.linspace(0.1, 1.2, n), (BART, "delay"): np.linspace(0.1, 1.2, n),
            (BERT, "energy"): np.linspace(0.05, 1.0, n), (BART, "energy"): np.linspace(0.05, 3.0, n)}


def run(out: Path, quick: bool = False, system_path: str | None = None, parts=PARTS, log=print,
        threads: int | None = None) -> dict:
    import torch

    from coinfer.lab.paper import claims as claims_mod
    from coinfer.lab.paper import figures as figs
    from coinfer.lab.paper.sweeps import SYSTEM_YAML, load_system, paper_profiles

    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    st = Settings.make(quick)
    system = load_system(system_path)
    summary = {"quick": quick, "system_file": _shown(Path(system_path or SYSTEM_YAML)), "system": system.to_dict(),
               "workload": {"batch": 1, "seq_len": 128, "codec": "fp32"}, "figures": {}, "timings_s": {},
               "claims": []}
    t_all = time.perf_counter()
    profiles = None
    if any(p in parts for p in ("fig4", "fig5", "fig6", "e2e")):
        profiles = paper_profiles()

    def record(name: str, rows: list[dict], plot, t0: float, claims: list[dict]) -> None:
        csv_path, png_path = out / f"{name}.csv", out / f"{name}.png"
        figs.write_csv(csv_path, rows)
        plot(png_path)
        summary["figures"][name] = {"csv": csv_path.name, "png": png_path.name, "rows": len(rows)}
        summary["timings_s"][name] = round(time.perf_counter() - t0, 2)
        summary["claims"] += [dict(c, figure=name) for c in claims]
        log(f"[reproduce] {name}: {len(rows)} rows, {summary['timings_s'][name]} s")

    if "fig3" in parts:
        t0 = time.perf_counter()
        rows, curves = fig3_rows(st, log)
        record("fig3_distortion", rows, lambda p: figs.plot_fig3(p, curves), t0, claims_mod.fig3_claims(rows))
        summary["fig3_training"] = curves_info(curves)
    for part, axis, name in (("fig4", "delay", "fig4_delay"), ("fig5", "energy", "fig5_energy")):
        if part in parts:
            from coinfer.lab.paper.sweeps import qos_sweep

            t0 = time.perf_counter()
            rows = []
            for model in (BART, BERT):   # the paper's panel order: BART (a, b), BERT (c, d)
                rows += qos_sweep(profiles[model], system, axis, st.limits[(model, axis)])
            record(name, rows, lambda p, rows=rows, axis=axis: figs.plot_qos(p, rows, axis, TITLES), t0,
                   claims_mod.qos_claims(rows, BERT))
    if "fig6" in parts:
        from coinfer.lab.paper.sweeps import split_sweep

        t0 = time.perf_counter()
        base = fig6_base_qos(system)
        rows = []
        for model in (BERT, BART, MINILM):
            t_max, e_max = base[model]
            qos = [(round(t_max * s, 6), round(e_max * s, 6)) for s in st.fig6_scales]
            rows += split_sweep(profiles[model], system, qos=qos)
        record("fig6_split", rows, lambda p: figs.plot_fig6(p, rows, TITLES), t0,
               claims_mod.fig6_claims(rows, BERT, base))
    e2e_rows = []
    if "e2e" in parts:
        from coinfer.lab.paper.e2e import e2e_points

        t0 = time.perf_counter()
        prof = profiles[MINILM]
        for p in e2e_points(prof, system, st.e2e_points):
            row = p.to_dict()
            row["rho_overall"] = overall_ratio(prof, p.split, p.rho_device, p.rho_server)
            e2e_rows.append(row)
        figs.write_csv(out / "e2e_minilm.csv", e2e_rows)
        summary["figures"]["e2e_minilm"] = {"csv": "e2e_minilm.csv", "png": "quality_minilm.png",
                                            "rows": len(e2e_rows)}
        summary["timings_s"]["e2e_minilm"] = round(time.perf_counter() - t0, 2)
        summary["claims"] += [dict(c, figure="e2e_minilm") for c in claims_mod.e2e_claims(e2e_rows)]
        log(f"[reproduce] e2e_minilm: {len(e2e_rows)} plans, {summary['timings_s']['e2e_minilm']} s")
    if "quality" in parts:
        from coinfer.models import resolve_model
        from coinfer.lab.paper.quality import quality_vs_rho

        t0 = time.perf_counter()
        rows = [dict(p.to_dict(), split=QUALITY_SPLIT) for p in
                quality_vs_rho(resolve_model(MINILM), QUALITY_SPLIT, st.quality_ratios)]
        record("quality_minilm", rows, lambda p: figs.plot_quality(p, rows, e2e_rows, QUALITY_SPLIT), t0,
               claims_mod.quality_claims(rows))
    summary["timings_s"]["total"] = round(time.perf_counter() - t_all, 2)
    summary["settings"] = {"ae_epochs": st.ae_epochs, "fig3_ratios": st.fig3_ratios, "fig3_models": st.fig3_models,
                           "fig3_sentences": st.fig3_sentences, "fig6_scales": st.fig6_scales,
                           "quality_ratios": st.quality_ratios, "e2e_points": st.e2e_points,
                           "limits": {f"{m}/{a}": [float(x) for x in v] for (m, a), v in st.limits.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def fig6_base_qos(system) -> dict:
    """Fig. 6's (delay, energy) limits per model: the system's for the paper's models; for MiniLM, a
    budget its size makes binding (at the system's it needs no pruning at any k: the curve is flat 0)."""
    q = (round(system.qos.max_delay_s, 6), round(system.qos.max_energy_j, 6))
    return {BERT: q, BART: q, MINILM: MINILM_QOS}


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (summaries are committed)."""
    from coinfer.lab.paper.sweeps import REPO

    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def overall_ratio(profile, k: int, rho_d: float, rho_s: float) -> float:
    """The whole model's kept ratio of prunable weights under a plan (device blocks at rho_d)."""
    n_d = sum(profile.block_prunable[:k])
    n_s = sum(profile.block_prunable[k:]) + profile.head_prunable
    return (rho_d * n_d + rho_s * n_s) / (n_d + n_s)


def fig3_rows(st: Settings, log) -> tuple[list[dict], list[tuple[dict, list[dict]]]]:
    import torch

    from coinfer.lab.paper.autoencoder import (ENCODER_WIDTHS, autoencoder_curve, build_autoencoder,
                                                   load_digits_unit, train_autoencoder)
    from coinfer.lab.paper.distortion import transformer_curve
    from coinfer.lab.paper.pairs import passages, queries

    rows, curves = [], []
    x_train, x_test = load_digits_unit()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # these nets are tiny: one thread is faster than two
    try:
        for name in ENCODER_WIDTHS:
            model = build_autoencoder(name)
            history = train_autoencoder(model, x_train, epochs=st.ae_epochs)
            test_mse = float(torch.nn.functional.mse_loss(model(x_test), x_test))
            info = {"model": name, "label": f"{name} autoencoder (digits)", "random_weights": False,
                    "kind": "autoencoder", "train_mse": history[-1], "test_mse": test_mse,
                    "test_variance": float(x_test.var(0).mean()), "epochs": st.ae_epochs,
                    "inputs": len(x_test)}
            pts = [p.to_dict() for p in autoencoder_curve(model, x_test, st.fig3_ratios)]
            log(f"[reproduce] fig3: {name} trained, test MSE {test_mse:.5f}")
            curves.append((info, pts))
    finally:
        torch.set_num_threads(threads)
    sentences = (queries() + passages())[:st.fig3_sentences]
    for spec in st.fig3_models:
        pts, info = transformer_curve(spec, sentences, st.fig3_ratios)
        info.update(kind="transformer", label=TITLES.get(spec, spec).replace(" (random weights)", ""))
        log(f"[reproduce] fig3: {spec} pruned at {len(pts)} ratios")
        curves.append((info, [p.to_dict() for p in pts]))
    for info, pts in curves:
        for p in pts:
            rows.append(dict(model=info["model"], kind=info["kind"], random_weights=info["random_weights"], **p))
    return rows, curves


def curves_info(curves) -> list[dict]:
    return [{k: v for k, v in info.items()} for info, _ in curves]


def main(argv=None) -> int:
    """scripts/reproduce_paper: run the reproduction, print the claims' verdicts."""
    from coinfer.lab.paper.sweeps import REPO

    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # models load from local folders only
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="scripts/reproduce_paper",
        description="Reproduce the paper's figures (arXiv 2505.09214, section VI) with coinfer's runtime and "
                    "planner. Writes, into --out, fig3_distortion, fig4_delay, fig5_energy, fig6_split, "
                    "quality_minilm (.csv and .png each), e2e_minilm.csv and summary.json (system, settings, "
                    "timings and every claim checked with its numbers).")
    parser.add_argument("--quick", action="store_true", help="CI-sized run: fewer points, tiny shapes in Fig. 3")
    parser.add_argument("--out", default=str(REPO / "results" / "paper"), help="output folder (default: %(default)s)")
    parser.add_argument("--system", default=None,
                        help="system YAML (default: scripts/examples/paper_system.yaml)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    summary = run(Path(args.out), quick=args.quick, system_path=args.system, parts=args.only, log=log,
                  threads=args.threads)
    print(f"{'holds':<6} {'figure':<16} claim")
    for c in summary["claims"]:
        print(f"{'yes' if c['holds'] else 'NO':<6} {c['figure']:<16} {c['claim']}")
    print(f"written to {args.out} in {summary['timings_s']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
