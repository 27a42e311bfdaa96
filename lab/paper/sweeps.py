"""Paper Figs. 4, 5 and 6 from the planner: distortion bound against the delay limit, the energy limit
and the split point, for the joint design and the paper's benchmark schemes.

Everything here is coinfer's own planner (`coinfer.planner.sweep`) on model profiles; nothing is
re-derived. The distortion reported is the bound the planner minimises, D = a_d phi(rho_d) +
a_s phi(rho_s), also divided by the model's whole prunable L1 mass so models compare (`rel_distortion`:
the fraction of the weights' L1 mass the plan removes). An infeasible point is a row with
feasible False and no distortion; the plots leave it as a gap.

Models: BERT-base and BART-base *shapes* (the paper's models; FLOPs and parameter counts from their
configs, Laplace weight scales from the config's initializer, i.e. random weights) and MiniLM with its
real weights. The paper splits "at the 4-th layer" for Figs. 4-5, so k = 4 there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coinfer.system import QoS, System, default_system, load_yaml, parse_system

PAPER_SPLIT = 4                       # paper section VI: "We set the split point at the 4-th layer"
SCHEMES = ("joint", "fixed_power", "fixed_frequency", "device_only_pruning", "server_only_pruning")
PRUNING = ("magnitude", "random")     # the paper's two pruning criteria, as distortion models

REPO = Path(__file__).resolve().parents[2]  # lab/paper/sweeps.py
SYSTEM_YAML = REPO / "scripts" / "examples" / "paper_system.yaml"


def load_system(path: str | Path | None = None) -> System:
    """The paper system: the YAML when it is there (a source checkout), else its mirror, coinfer.system's
    default system."""
    path = Path(path) if path else SYSTEM_YAML
    if path.exists():
        return parse_system(load_yaml(str(path)))
    return default_system()


def paper_profiles(batch: int = 1, seq_len: int = 128, with_minilm: bool = True) -> dict:
    """name -> ModelProfile. BERT/BART shapes from their configs (random weights: the Laplace scale
    of their initializer); MiniLM from its real weights."""
    from coinfer.models import resolve_model
    from coinfer.planner.profile import profile_from_config, profile_model

    out = {}
    for spec, family in (("random:bert-base", "bert"), ("random:bart-base", "bart")):
        src = resolve_model(spec)
        out[spec] = profile_from_config(src.config, family, spec, batch, seq_len)
    if with_minilm:
        out["minilm"] = profile_model(resolve_model("minilm"), batch, seq_len)
        out["minilm"].name = "minilm"     # rows are keyed by the spec, like the random shapes
    return out


def total_l1(profile) -> float:
    return float(sum(profile.block_l1) + profile.head_l1)


def with_model(system: System, model: str) -> System:
    from dataclasses import replace

    return replace(system, distortion=replace(system.distortion, model=model))


def with_qos(system: System, max_delay_s: float | None = None, max_energy_j: float | None = None) -> System:
    from dataclasses import replace

    q = system.qos
    return replace(system, qos=QoS(q.max_delay_s if max_delay_s is None else max_delay_s,
                                   q.max_energy_j if max_energy_j is None else max_energy_j))


def _row(profile, sol, **extra) -> dict:
    row = dict(extra)
    row.update(model=profile.name, feasible=bool(sol.feasible), split=sol.split)
    keys = ("rho_device", "rho_server", "f_device_hz", "f_server_hz", "tx_power_w", "delay_s", "energy_j",
            "distortion")
    for k in keys:
        row[k] = getattr(sol, k) if sol.feasible else None
    row["rel_distortion"] = sol.distortion / total_l1(profile) if sol.feasible else None
    return row


def qos_sweep(profile, system: System, axis: str, values, *, k: int = PAPER_SPLIT, codec: str = "fp32",
              pruning=PRUNING, schemes=SCHEMES, sca_check: bool = True) -> list[dict]:
    """Figs. 4 (axis 'delay') and 5 (axis 'energy'): P1 at split k for each limit on `axis`, the other
    limit held at the system's. With sca_check the joint design is also solved by the paper's SCA
    (scheme 'joint_sca'), which must land on the same optimum."""
    from coinfer.planner.sweep import solve

    if axis not in ("delay", "energy"):
        raise ValueError(f"axis must be delay or energy, got {axis!r}")
    rows = []
    for model in pruning:
        for value in values:
            sysm = with_qos(with_model(system, model), **{"max_delay_s" if axis == "delay" else "max_energy_j": value})
            base = profile.scenario(sysm, k, codec)
            runs = [(s, "convex") for s in schemes] + ([("joint", "sca")] if sca_check else [])
            for scheme, solver in runs:
                sol = solve(base.with_scheme(scheme), solver)
                sol.split = k
                rows.append(_row(profile, sol, figure="fig4" if axis == "delay" else "fig5",
                                 pruning=model, axis=axis, limit=float(value),
                                 scheme=scheme if solver == "convex" else "joint_sca",
                                 max_delay_s=sysm.qos.max_delay_s, max_energy_j=sysm.qos.max_energy_j))
    return rows


def split_sweep(profile, system: System, *, codec: str = "fp32", pruning=("magnitude", "random", "rd_bound"),
                qos=None) -> list[dict]:
    """Fig. 6: the joint design at every split point k = 0..L (k = 0 on-server, k = L on-device for
    BERT; for BART, k = L still sends the encoder output to the server's decoder), one curve per
    distortion model and per (delay, energy) limit pair in `qos` (default: the system's)."""
    from coinfer.planner.sweep import plan_splits

    rows = []
    for model in pruning:
        for t_max, e_max in (qos or [(system.qos.max_delay_s, system.qos.max_energy_j)]):
            sysm = with_qos(with_model(system, model), t_max, e_max)
            res = plan_splits(profile, sysm, codec=codec)
            for sol in res.table:
                k = sol.split
                where = ("on_server" if k == 0 else
                         "on_device" if k == profile.num_blocks and profile.family != "bart" else "co_inference")
                rows.append(_row(profile, sol, figure="fig6", pruning=model, scheme="joint", where=where,
                                 chosen=k == res.split, max_delay_s=t_max, max_energy_j=e_max,
                                 sent_bits=res.sent_bits[k]))
    return rows


@dataclass
class SchemeCheck:
    """Joint vs benchmarks over a sweep: where a benchmark is feasible the joint design must be too,
    and no worse; SCA must match the convex optimum. Distortions compared as fractions of the model's
    L1 mass, to the planner's own tie tolerance (1e-6 relative, 1e-9 absolute)."""
    points: int
    joint_worse: list            # (model, pruning, axis, limit, scheme, joint, scheme) where joint is worse
    joint_infeasible: list       # (model, pruning, axis, limit, scheme) where a scheme is feasible and joint is not
    sca_gap_max: float           # largest SCA - convex gap, as a fraction of the model's L1 mass
    infeasible_by_scheme: dict   # scheme -> number of infeasible points
    strictly_better: dict        # scheme -> points where joint is better by more than 1 % of the scheme's D


def _worse(a: float, b: float, rel: float = 1e-6, absolute: float = 1e-9) -> bool:
    return a > b + rel * max(abs(a), abs(b)) + absolute


def check_schemes(rows: list[dict]) -> SchemeCheck:
    by_point: dict = {}
    for r in rows:
        by_point.setdefault((r["model"], r["pruning"], r["axis"], r["limit"]), {})[r["scheme"]] = r
    worse, infeasible, gap, counts, better = [], [], 0.0, {}, {}
    for key, point in by_point.items():
        joint = point["joint"]
        for scheme, r in point.items():
            counts[scheme] = counts.get(scheme, 0) + (not r["feasible"])
            if scheme in ("joint", "joint_sca") or not r["feasible"]:
                continue
            if not joint["feasible"]:
                infeasible.append((*key, scheme))
                continue
            if _worse(joint["rel_distortion"], r["rel_distortion"]):
                worse.append((*key, scheme, joint["rel_distortion"], r["rel_distortion"]))
            if joint["rel_distortion"] < 0.99 * r["rel_distortion"]:
                better[scheme] = better.get(scheme, 0) + 1
        sca = point.get("joint_sca")
        if sca and sca["feasible"] and joint["feasible"]:
            gap = max(gap, sca["rel_distortion"] - joint["rel_distortion"])
    return SchemeCheck(len(by_point), worse, infeasible, gap, counts, better)
