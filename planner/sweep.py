"""Solving: one scenario with a chosen solver, or P1 at every split point of a model (paper Fig. 6).

The planner service calls `plan_splits(profile, system)` with a ModelProfile (coinfer.planner.profile)
and a System (or a plain dict, parsed strictly).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from coinfer.errors import UsageError
from coinfer.planner.result import Solution
from coinfer.planner.scenario import Held, Scenario
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
    method: str | None = None          # the pruning method of the chosen plan (quality model only)
    binding: str = "none"              # delay | energy | quality | none: what decided the plan
    explanation: str = ""              # why, in a sentence
    held: tuple[str, ...] = ()         # knobs held at their maxima (not settable on the nodes)

    def to_dict(self) -> dict:
        out = {"feasible": self.feasible, "split": self.split,
               "plan": self.plan.to_dict() if self.plan else None,
               "scheme": self.scheme, "solver": self.solver, "codec": self.codec,
               "solve_time_s": self.solve_time_s, "method": self.method, "binding": self.binding,
               "explanation": self.explanation, "held": list(self.held),
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


def with_quality(scn: Scenario, quality, method: str, k: int, min_quality: float) -> Scenario:
    """The scenario under the `output` model: each segment's measured quality-loss pieces and measured
    speed for `method`, the ratios it was measured down to, and the floor as a loss limit."""
    def seg(segment, side):
        pieces = quality.pieces(method, k, side) if segment.present else None
        if pieces is None:
            return replace(segment, loss_pieces=((0.0,), (0.0,)), speed=quality.speed[method])
        return replace(segment, loss_pieces=(tuple(pieces.alpha), tuple(pieces.beta)), speed=quality.speed[method])

    s = scn.system
    dist = replace(s.distortion, model="output", min_ratio=max(s.distortion.min_ratio, quality.min_ratio[method]))
    return replace(scn, system=replace(s, distortion=dist), device_segment=seg(scn.device_segment, "device"),
                   server_segment=seg(scn.server_segment, "server"),
                   loss_limit=quality.loss_limit(min_quality) if min_quality > 0 else None)


def plan_splits(profile, system: System | dict, *, split: str | int = "auto", codec: str = "fp32",
                solver: str = "convex", scheme: str | None = None, held: Held = Held(),
                quality=None, methods: tuple[str, ...] = ("structured",), min_quality: float = 0.0) -> SweepResult:
    """Solve P1 at every split point (or only `split`) and pick the least distortion.

    scheme: any of SCHEMES (default: the system's). on_device / on_server restrict k to L / 0 and
    solve the joint problem there. held: knobs the nodes cannot set (pinned at their maxima).
    quality (a coinfer.planner.quality.QualityModel): solve the `output` model instead, for each of
    `methods` with its measured quality and speed, under the floor `min_quality`, and pick the method
    too. Without it the system's distortion model is solved (the paper's).
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
    for method in (methods if quality is not None else (None,)):
        for k in ks:
            scn = replace(profile.scenario(system, k, codec), held=held)
            if quality is not None:
                scn = with_quality(scn, quality, method, k, min_quality)
            sent[k] = scn.embedding_bits
            sol = solve(scn, solver)
            sol.scheme = scheme
            sol.prune_method = method
            if quality is not None and sol.feasible:
                sol.predicted_quality = quality.predict(method, k, sol.rho_device, sol.rho_server)
            if sol.feasible:
                sol.binding, sol.explanation = explain(scn, sol)
            rows.append(sol)
    feasible = [r for r in rows if r.feasible]
    scale = sum(profile.block_l1) + profile.head_l1 if quality is None else 1.0
    best = None
    for r in feasible:
        if best is None or _better(r, best, scale):
            best = r
    res = SweepResult(feasible=best is not None, split=best.split if best else None, plan=best, table=rows,
                      scheme=scheme, solver=solver, codec=codec, solve_time_s=time.perf_counter() - t0,
                      sent_bits=sent, method=best.prune_method if best else None, held=tuple(held.names()))
    if best is not None:
        res.binding, res.explanation = best.binding, best.explanation
    elif quality is not None and min_quality > 0:
        unfloored = plan_splits(profile, system, split=split, codec=codec, solver=solver, scheme=scheme,
                                held=held, quality=quality, methods=methods, min_quality=0.0)
        if unfloored.feasible:
            res.binding = "quality"
            p = unfloored.plan
            res.explanation = (f"meeting the QoS needs pruning below the quality floor {min_quality:g}: the "
                               f"best plan without the floor predicts quality {p.predicted_quality:.4f} "
                               f"(k={p.split}, {p.prune_method}, rho {p.rho_device:.2f}/{p.rho_server:.2f})")
    if best is None:
        ts = [r.min_feasible_delay_s for r in rows if r.min_feasible_delay_s is not None]
        es = [r.min_feasible_energy_j for r in rows if r.min_feasible_energy_j is not None]
        res.min_feasible_delay_s = min(ts) if ts else None
        res.min_feasible_energy_j = min(es) if es else None
        res.reason = (res.explanation + "; " if res.binding == "quality" else "") + \
            "no split point meets the QoS: " + "; ".join(f"k={r.split}: {r.reason}" for r in rows)
        if res.binding == "none":
            res.binding = "delay" if any("delay limit" in (r.reason or "") for r in rows) else "energy"
            res.explanation = res.reason
    return res


def explain(scn: Scenario, sol: Solution) -> tuple[str, str]:
    """The constraint that decided a feasible solution, and a sentence saying how the slack was spent."""
    q, rel = scn.system.qos, 1e-3
    s = scn.system
    tight_t = sol.delay_s >= q.max_delay_s * (1 - rel)
    tight_e = sol.energy_j >= q.max_energy_j * (1 - rel)
    pruned = (sol.rho_device or 1.0) < 1 - 1e-6 or (sol.rho_server or 1.0) < 1 - 1e-6
    slowed = [name for name, got, top, present in (
        ("device clock", sol.f_device_hz, s.device.max_freq_hz, scn.device_segment.present),
        ("server clock", sol.f_server_hz, s.server.max_freq_hz, scn.server_segment.present),
        ("transmit power", sol.tx_power_w, s.max_tx_power_w, scn.embedding_bits > 0)) if present and got < top * (1 - rel)]
    floor_tight = scn.loss_limit is not None and sol.distortion >= scn.loss_limit * (1 - rel)
    slack = (f"delay {sol.delay_s * 1e3:.3g} ms of {q.max_delay_s * 1e3:.3g} ms, "
             f"energy {sol.energy_j:.3g} J of {q.max_energy_j:.3g} J")
    if pruned:
        binding = "quality" if floor_tight else "delay" if tight_t else "energy" if tight_e else "delay"
        why = f"pruning needed to meet the {'delay' if tight_t else 'energy'} limit ({slack})"
        if floor_tight:
            why += "; pruned only as far as the quality floor allows"
        return binding, why
    if slowed and tight_t:
        return "delay", (f"no pruning needed; the delay slack is spent on energy: {', '.join(slowed)} lowered "
                         f"until the delay limit binds ({slack})")
    if tight_e:
        return "energy", f"no pruning needed; the energy limit binds ({slack})"
    return "none", f"no pruning needed and no limit binds ({slack})"
