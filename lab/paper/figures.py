"""Writing the reproduction's results: one CSV and one PNG per figure (matplotlib, no display).

Only presentation lives here; the numbers come from paper_distortion / paper_autoencoder /
paper_sweeps / paper_quality / paper_e2e. Infeasible planner points are NaN, so lines break there.
Models with random weights say so in their panel titles.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

SCHEME_STYLE = {   # label, colour, marker
    "joint": ("joint design (convex)", "C0", "o"),
    "joint_sca": ("joint design (paper's SCA)", "k", "x"),
    "fixed_power": ("fixed power", "C1", "s"),
    "fixed_frequency": ("fixed frequency", "C2", "^"),
    "device_only_pruning": ("pruning device only", "C3", "v"),
    "server_only_pruning": ("pruning server only", "C4", "D"),
}
METHOD_COLOUR = {"magnitude": "C0", "random": "C3", "structured": "C2", "rd_bound": "C1"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise ValueError(f"{path}: no rows")
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def read_csv(path: Path) -> list[dict]:
    """Rows back with numbers as floats, booleans as bool, empty cells as None."""
    def conv(v: str):
        if v == "":
            return None
        if v in ("True", "False"):
            return v == "True"
        try:
            return float(v)
        except ValueError:
            return v
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def model_title(info: dict) -> str:
    title = info.get("label") or info.get("model")
    if info.get("random_weights"):
        title += "\n(random weights)"
    return title


# ---------------------------------------------------------------------------------------------

def plot_fig3(path: Path, curves: list[tuple[dict, list[dict]]]) -> None:
    """Top row: absolute distortions (log scale), the paper's reading. Bottom: relative to unpruned."""
    plt = _plt()
    n = len(curves)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 6.4), squeeze=False)
    for j, (info, pts) in enumerate(curves):
        rho = [p["rho"] for p in pts]
        top, bot = axes[0][j], axes[1][j]
        top.semilogy(rho, [p["output_l2"] or math.nan for p in pts], "o-", c="C3", label="output ||y-ŷ||₂")
        top.semilogy(rho, [p["param_fro"] or math.nan for p in pts], "s-", c="C0", label="parameter ||W-Ŵ||_F")
        top.semilogy(rho, [p["param_l1"] or math.nan for p in pts], "^--", c="C0", alpha=0.6,
                     label="parameter ||W-Ŵ||₁ (planner's D)")
        if any(p.get("theorem_bound") for p in pts):
            top.semilogy(rho, [p["theorem_bound"] or math.nan for p in pts], ":", c="k",
                         label="Theorem III.1 bound")
        top.set_title(model_title(info), fontsize=9)
        bot.plot(rho, [p["output_l2_rel"] for p in pts], "o-", c="C3", label="output, relative")
        bot.plot(rho, [p["param_fro_rel"] for p in pts], "s-", c="C0", label="parameter (F), relative")
        bot.plot(rho, [p["param_l1_rel"] for p in pts], "^--", c="C0", alpha=0.6, label="parameter (L1), relative")
        bot.set_xlabel("pruning ratio ρ (kept)")
        bot.set_ylim(-0.02, max(1.1, *(p["output_l2_rel"] * 1.05 for p in pts)))
        for ax in (top, bot):
            ax.grid(alpha=0.3)
        if j == 0:
            top.set_ylabel("absolute distortion")
            bot.set_ylabel("distortion / unpruned size")
    axes[0][0].legend(fontsize=7, loc="lower left")
    axes[1][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Fig. 3 — output vs parameter distortion, magnitude pruning (measured)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_qos(path: Path, rows: list[dict], axis: str, titles: dict) -> None:
    """Figs. 4/5: a panel per (model, pruning), distortion bound / L1 mass against the limit."""
    plt = _plt()
    panels = []
    for r in rows:
        key = (r["model"], r["pruning"])
        if key not in panels:
            panels.append(key)
    cols = 2
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 3.6 * nrows), squeeze=False)
    for i, (model, pruning) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        sub = [r for r in rows if r["model"] == model and r["pruning"] == pruning]
        for scheme, (label, colour, marker) in SCHEME_STYLE.items():
            pts = sorted((r["limit"], _nan(r["rel_distortion"])) for r in sub if r["scheme"] == scheme)
            if not pts:
                continue
            xs, ys = zip(*pts)
            # the joint design on top and thickest: benchmarks that tie with it would hide it otherwise
            style = {"joint": dict(ls="-", lw=3, ms=5, zorder=5, alpha=0.8),
                     "joint_sca": dict(ls="none", ms=7, zorder=6)}.get(scheme, dict(ls="--", lw=1.2, ms=4))
            ax.plot(xs, ys, marker=marker, c=colour, label=label, **style)
        joint = {r["limit"]: r["rel_distortion"] for r in sub if r["scheme"] == "joint" and r["feasible"]}
        power = {r["limit"]: r["rel_distortion"] for r in sub if r["scheme"] == "fixed_power" and r["feasible"]}
        if power and all(abs(d - joint.get(x, math.inf)) <= 0.01 * max(d, 1e-3) for x, d in power.items()):
            ax.text(0.98, 0.89, "fixed power: on the joint curve (p = P_max is optimal)", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, color=SCHEME_STYLE["fixed_power"][1])
        if not any(r["feasible"] for r in sub if r["scheme"] == "fixed_frequency"):
            ax.text(0.98, 0.97, "fixed frequency: infeasible everywhere", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, color=SCHEME_STYLE["fixed_frequency"][1])
        other = sub[0]["max_energy_j"] if axis == "delay" else sub[0]["max_delay_s"]
        fixed = f"E_max = {other:g} J" if axis == "delay" else f"T_max = {other:g} s"
        ax.set_title(f"({chr(97 + i)}) {titles.get(model, model)}, {pruning} pruning, {fixed}", fontsize=9)
        ax.set_xlabel("delay limit T_max (s)" if axis == "delay" else "energy limit E_max (J)")
        ax.set_ylabel("distortion bound D / ||W||₁")
        ax.grid(alpha=0.3)
    for j in range(len(panels), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Fig. {4 if axis == 'delay' else 5} — joint design vs benchmarks against the "
                 f"{'delay' if axis == 'delay' else 'energy'} limit (split k = 4; gaps = infeasible)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fig6(path: Path, rows: list[dict], titles: dict) -> None:
    """Fig. 6: the joint design's distortion at each split point; a row per model, a column per
    distortion model; a line per (delay, energy) limit pair; the chosen k starred."""
    plt = _plt()
    models = list(dict.fromkeys(r["model"] for r in rows))
    prunings = list(dict.fromkeys(r["pruning"] for r in rows))
    fig, axes = plt.subplots(len(models), len(prunings), figsize=(4.2 * len(prunings), 3.4 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, pruning in enumerate(prunings):
            ax = axes[i][j]
            sub = [r for r in rows if r["model"] == model and r["pruning"] == pruning]
            for n, qos in enumerate(dict.fromkeys((r["max_delay_s"], r["max_energy_j"]) for r in sub)):
                pts = sorted((int(r["split"]), _nan(r["rel_distortion"]), r["chosen"]) for r in sub
                             if (r["max_delay_s"], r["max_energy_j"]) == qos)
                ks = [p[0] for p in pts]
                ax.plot(ks, [p[1] for p in pts], "o-", ms=3, c=f"C{n}", label=f"T≤{qos[0]:g} s, E≤{qos[1]:g} J")
                for k, d, chosen in pts:
                    if chosen:
                        ax.plot([k], [d], "*", ms=14, c=f"C{n}", mec="k")
            L = max(int(r["split"]) for r in sub)
            ax.set_xticks(range(0, L + 1))
            last = "on-device" if any(r["where"] == "on_device" for r in sub) else "encoder on device"
            ax.set_xlabel(f"split point k (0 = on-server, {L} = {last})")
            ax.set_title(f"{titles.get(model, model)} — {pruning}", fontsize=9)
            ax.set_ylabel("D / ||W||₁")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Fig. 6 — distortion bound against the split point (joint design; ★ = planner's choice)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality(path: Path, rows: list[dict], e2e: list[dict] | None = None, k: int | None = None) -> None:
    """MiniLM: cosine to the unpruned embedding and retrieval accuracy against rho, per method; and
    (third panel) the same two measured end to end, device -> channel -> server, at the planner's plans."""
    plt = _plt()
    if e2e:
        fig = plt.figure(figsize=(11, 4.2 + 0.45 * len(e2e) + 1.2))
        grid = fig.add_gridspec(2, 2, height_ratios=[4.2, 0.45 * len(e2e) + 1.2])
        a, b, ax3 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    else:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        sub = sorted((r for r in rows if r["method"] == method), key=lambda r: r["rho_device"])
        rho = [r["rho_device"] for r in sub]
        c = METHOD_COLOUR.get(method, None)
        a.plot(rho, [r["cosine_mean"] for r in sub], "o-", c=c, label=f"{method} (mean)")
        a.plot(rho, [r["cosine_min"] for r in sub], ":", c=c, label=f"{method} (min)")
        b.plot(rho, [r["retrieval_acc"] for r in sub], "o-", c=c, label=method)
    if rows:
        b.axhline(rows[0]["retrieval_acc_ref"], c="gray", ls="--", label="unpruned")
    a.set_xlabel("pruning ratio ρ (kept), both halves")
    b.set_xlabel("pruning ratio ρ (kept), both halves")
    a.set_ylabel("cosine to unpruned embedding")
    b.set_ylabel("retrieval accuracy (top-1)")
    split = f", split k = {k}" if k is not None else ""
    a.set_title(f"all-MiniLM-L6-v2 (real weights){split}", fontsize=9)
    b.set_title("paraphrase retrieval, the project's 49 pairs", fontsize=9)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if e2e:
        ys = list(range(len(e2e)))[::-1]
        ax3.barh(ys, [p["cosine_mean"] for p in e2e], color="C0", alpha=0.7, label="cosine to unpruned (mean)")
        ax3.plot([p["retrieval_acc"] for p in e2e], ys, "D", c="C3", label="retrieval accuracy")
        ax3.axvline(e2e[0]["retrieval_acc_ref"], c="gray", ls="--", lw=1)
        labels = []
        for p in e2e:
            plan = f"k={int(p['split'])}, ρd={p['rho_device']:.2f}, ρs={p['rho_server']:.2f}"
            plan += ", device alone" if p["path"] == "device_only" else f", p={p['tx_power_w']:.2g} W"
            labels.append(f"{p['label']} (T≤{p['max_delay_s']:g} s, E≤{p['max_energy_j']:g} J): {plan}")
        for y, text in zip(ys, labels):   # inside the bars: long tick labels would squeeze the panels
            ax3.text(0.01, y, text, va="center", fontsize=7.5, color="white")
        ax3.set_yticks([])
        ax3.set_xlim(0, 1.0)
        ax3.set_xlabel("measured end to end, device → channel emulator → server processes")
        ax3.set_title("MiniLM at the planner's plans (magnitude pruning)", fontsize=9)
        ax3.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax3.grid(alpha=0.3, axis="x")
    fig.suptitle("Measured quality of split, pruned sentence embeddings", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
