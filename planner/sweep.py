"""Solving: one scenario with a chosen solver, or P1 at every split point of a model (paper Fig. 6).

The planner service calls `plan_splits(profile, system)` with a ModelProfile (coinfer.planner.profile)
and a System (or a plain dict, parsed strictly).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from coinfer.errors import UsageError
from coinfer.planner.result import Solution
from coinfer.planner.scenario import Scenario
from coinfer.system import P1_SCHEMES, System, check_scheme, parse_system

SOLVERS = ("convex", "sca")


def solve(scn: Scenario, solver: str = "convex") -> Solution:
    """P1 at this scenario's split point with `solver` (convex: global optimum; sca: the paper's)."""
    if scn.scheme not in P1_SCHEMES:
        raise UsageError(f"scheme {scn.scheme!r} fixes the split point; solve a split sweep (coinfer plan)")
    if solver == "convex":
        from coinfer.planner.convex import solve_convex
        return solve_convex(scn)
    if solver == "sca":
        from coinfer.planner.sca import solve_sca
        return solve_sca(scn)
    raise UsageError(f"--solver: unknown solver {solver!r} (one of {', '.join(SOLVERS)})")


@dataclass
class SweepResult:
    feasible: bool
    split: int | None                  # the chosen k
    plan: Solution | None              # the solution at the chosen k
    table: list[Solution]              # one row per split point solved
    scheme: str
    solver: str
    codec: str
    solve_time_s: float
    reason: str | None = None
    min_feasible_delay_s: float | None = None   # infeasible everywhere: least limits over all k
    min_feasible_energy_j: float | None = None
    sent_bits: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"feasible": self.feasible, "split": self.split,
               "plan": self.plan.to_dict() if self.plan else None,
               "scheme": self.scheme, "solver": self.solver, "codec": self.codec,
               "solve_time_s": self.solve_time_s,
               "table": [dict(r.to_dict(), sent_bits=self.sent_bits.get(r.split)) for r in self.table]}
        if not self.feasible:
            out.update(reason=self.reason, min_feasible_delay_s=self.min_feasible_delay_s,
                       min_feasible_energy_j=self.min_feasible_energy_j)
        return out


def _better(a: Solution, b: Solution, scale: float) -> bool:
    """Is a better than b: lower distortion; within solver accuracy a tie, broken by energy then delay.

    Ties: 1e-6 relative, or 1e-9 of the model's whole L1 mass (what ratios a hair below 1 leave).
    """
    tol = 1e-6 * max(abs(a.distortion), abs(b.distortion)) + 1e-9 * scale
    if abs(a.distortion - b.distortion) > tol:
        return a.distortion < b.distortion
    return (a.energy_j, a.delay_s) < (b.energy_j, b.delay_s)


def plan_splits(profile, system: System | dict, *, split: str | int = "auto", codec: str = "fp32",
                solver: str = "convex", scheme: str | None = None) -> SweepResult:
    """Solve P1 at every split point (or only `split`) and pick the least distortion.

    scheme: any of SCHEMES (default: the system's). on_device / on_server restrict k to L / 0 and
    solve the joint problem there.
    """
    t0 = time.perf_counter()
    if isinstance(system, dict):
        system = parse_system(system)
    scheme = check_scheme(scheme or system.scheme, "--scheme")
    L = profile.num_blocks
    if scheme == "on_device":
        ks, p1 = [L], "joint"
    elif scheme == "on_server":
        ks, p1 = [0], "joint"
    else:
        ks, p1 = list(range(L + 1)), scheme
    if split != "auto":
        k = int(split)
        if not 0 <= k <= L:
            raise UsageError(f"--split: split point {k} out of range 0..{L} for {profile.name}")
        if k not in ks:
            raise UsageError(f"--split {k} contradicts scheme {scheme} (k = {ks[0]})")
        ks = [k]
    if system.distortion.model == "measured" and profile.block_curves is None:
        raise UsageError("distortion.model measured needs a profile with measured curves")
    system = replace(system, scheme=p1)
    rows, sent = [], {}
    for k in ks:
        scn = profile.scenario(system, k, codec)
        sent[k] = scn.embedding_bits
        sol = solve(scn, solver)
        sol.scheme = scheme
        rows.append(sol)
    feasible = [r for r in rows if r.feasible]
    scale = sum(profile.block_l1) + profile.head_l1
    best = None
    for r in feasible:
        if best is None or _better(r, best, scale):
            best = r
    res = SweepResult(feasible=best is not None, split=best.split if best else None, plan=best, table=rows,
                      scheme=scheme, solver=solver, codec=codec, solve_time_s=time.perf_counter() - t0,
                      sent_bits=sent)
    if best is None:
        ts = [r.min_feasible_delay_s for r in rows if r.min_feasible_delay_s is not None]
        es = [r.min_feasible_energy_j for r in rows if r.min_feasible_energy_j is not None]
        res.min_feasible_delay_s = min(ts) if ts else None
        res.min_feasible_energy_j = min(es) if es else None
        res.reason = "no split point meets the QoS: " + "; ".join(
            f"k={r.split}: {r.reason}" for r in rows)
    return res
