"""P1 at one split point, to its global optimum, by the convex reformulation in stage times (spec §4).

Variables, each scaled by its stage's full-speed reference (see costs.Scaled) so that Clarabel sees
O(1) numbers whatever the units:

    rho_j in [rho_min, 1]                 kept ratios
    u_j = tau_j / c_j  (>= rho_j)         compute stage time over its time at rho = 1, f = F
    e_j >= rho_j^3 / u_j^2                compute energy over its energy at rho = 1, f = F  (power cone)
    v = tau_u / c_u   (>= 1)              upload time over its time at full power
    z >= v 2^(r/v) / 2^r                  upload energy, perspective of exp (exponential cone)

    sum_j (c_j / T_max) u_j  <= 1                              delay
    sum_j (Eh_j / E_max) e_j + (Eu / E_max)(2^r z - v)/(2^r - 1) <= 1   energy

Each (scheme, stage shape, distortion model, piece count) is built once as a DPP problem and cached;
a solve only writes parameter values, so re-planning never recompiles.
"""
from __future__ import annotations

import math
import threading
import time
import warnings

import numpy as np

from coinfer.planner.costs import LN2, Point, Scaled, Shape
from coinfer.planner.distortion import l1_mass, segment_pieces
from coinfer.planner.result import Solution, infeasible, solution_at
from coinfer.planner.scenario import Fixes, Scenario  # noqa: F401 (Fixes: type of the key)

# Clarabel's defaults are 1e-8; a little tighter keeps 0.5 % agreement when D is tiny (rd_bound).
_CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 200}

# cvxpy warns when a solve is 'optimal_inaccurate'; every point is re-checked by the plain formulas,
# so the warning only adds noise (a process-wide filter: catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)

_cache: dict[tuple, "_Convex"] = {}
_cache_lock = threading.Lock()


def phi_term(cp, P, model: str, j: str, r, n_pieces: int, cons: list):
    """The distortion term of segment j as a DPP expression in its ratio r (weights from phi_values)."""
    w = P(f"w_{j}")
    if model == "magnitude":        # 1 - r + r ln r = 1 - r - entr(r)
        return w - w * r - w * cp.entr(r)
    if model == "random":
        return w - w * r
    if model == "rd_bound":         # w 2^(-q r) = exp(ln w - q ln2 r); ln w keeps it DPP
        return cp.exp(P(f"lw_{j}", nonneg=False) - P("ql") * r)
    if model in ("measured", "output"):   # max of affine pieces, by epigraph
        t = cp.Variable(name=f"phi_{j}")
        cons.append(t >= P(f"alpha_{j}", nonneg=False, shape=(n_pieces,))
                    + P(f"beta_{j}", nonneg=False, nonpos=True, shape=(n_pieces,)) * r)
        return w * t
    raise ValueError(model)


def phi_values(scn: Scenario, par: dict) -> dict:
    """Values of the distortion parameters: weights a_j / (a_d + a_s), q ln 2, measured pieces; for the
    `output` model weights 1 and each segment's own quality-loss pieces."""
    vals = {"ql": scn.system.weight_bits * LN2}
    if scn.system.distortion.model == "output":
        for j, seg in (("d", scn.device_segment), ("s", scn.server_segment)):
            vals[f"w_{j}"], vals[f"lw_{j}"] = 1.0, 0.0
            if f"alpha_{j}" in par:
                alpha, beta = seg.loss_pieces
                pad = par[f"alpha_{j}"].shape[0] - len(alpha)
                vals[f"alpha_{j}"] = np.array(alpha + alpha[-1:] * pad)
                vals[f"beta_{j}"] = np.array(beta + beta[-1:] * pad)
        return vals
    a = {"d": l1_mass(scn.device_segment), "s": l1_mass(scn.server_segment)}
    tot = a["d"] + a["s"]
    for j, seg in (("d", scn.device_segment), ("s", scn.server_segment)):
        # Weights normalised to sum 1: the optimum does not change and the objective is O(1).
        vals[f"w_{j}"] = a[j] / tot if tot > 0 else 0.5
        vals[f"lw_{j}"] = math.log(vals[f"w_{j}"]) if vals[f"w_{j}"] > 0 else -700.0
        if f"alpha_{j}" in par:
            pc = segment_pieces(seg)
            pad = par[f"alpha_{j}"].shape[0] - len(pc.alpha)   # repeat the last piece: same max
            vals[f"alpha_{j}"] = np.array(pc.alpha + pc.alpha[-1:] * pad)
            vals[f"beta_{j}"] = np.array(pc.beta + pc.beta[-1:] * pad)
    return vals


def n_pieces(scn: Scenario) -> int:
    if scn.system.distortion.model == "output":
        return max(len(s.loss_pieces[0]) for s in (scn.device_segment, scn.server_segment) if s.present)
    if scn.system.distortion.model != "measured":
        return 0
    return max(len(segment_pieces(s).alpha) for s in (scn.device_segment, scn.server_segment) if s.present)


def problem_key(scn: Scenario) -> tuple:
    return (scn.fixes, Shape.of(scn).key(), scn.system.distortion.model, n_pieces(scn))


class _Convex:
    """One compiled DPP problem and its parameters."""

    def __init__(self, shape: Shape, fixes: Fixes, model: str, n_pieces: int):
        import cvxpy as cp

        self.shape, self.fixes, self.model = shape, fixes, model
        self.lock = threading.Lock()
        par: dict[str, cp.Parameter] = {}

        def P(name, **kw):   # one parameter per name, however often a term uses it
            if name not in par:
                par[name] = cp.Parameter(name=name, **({"nonneg": True} | kw))
            return par[name]

        cons, t_terms, e_terms, obj = [], [], [], []
        self.rho, self.u = {}, {}
        rmin = P("rmin")
        for j, present, fixed_rho in (("d", shape.device, fixes.rho_d), ("s", shape.server, fixes.rho_s)):
            if not present:
                continue
            if fixed_rho:
                r = 1.0
            else:
                r = self.rho[j] = cp.Variable(name=f"rho_{j}")
                cons += [r >= rmin, r <= 1]
                obj.append(phi_term(cp, P, model, j, r, n_pieces, cons))
            # the work at r relative to rho = 1: speed r + 1 - speed (Segment.work), affine in r
            w = r if fixed_rho else P(f"sp_{j}") * r + P(f"sp1_{j}")
            if fixes.freq_of(j) and fixed_rho:
                t_terms.append(P(f"ct_{j}"))
                e_terms.append(P(f"eh_{j}"))
            elif fixes.freq_of(j):     # f = F: tau = c w, E = Eh w (products of parameters kept DPP)
                t_terms.append(P(f"ctsp_{j}") * r + P(f"ctsp1_{j}"))
                e_terms.append(P(f"ehsp_{j}") * r + P(f"ehsp1_{j}"))
            else:
                u = self.u[j] = cp.Variable(name=f"u_{j}", pos=True)
                e = cp.Variable(name=f"e_{j}", nonneg=True)
                # e >= w^3 / u^2  <=>  w <= (e u^2)^(1/3); and f <= F  <=>  u >= w
                cons += [u >= w, cp.constraints.PowCone3D(e, u, w, 1 / 3)]
                t_terms.append(P(f"ct_{j}") * u)
                e_terms.append(P(f"eh_{j}") * e)
        if shape.upload:
            if fixes.power:
                t_terms.append(P("ct_u"))
                e_terms.append(P("eu_full"))
            else:
                v = self.u["u"] = cp.Variable(name="v", pos=True)
                z = cp.Variable(name="z", nonneg=True)
                rl = P("rl")
                # v exp(rl (1 - v) / v) <= z  is  z >= v 2^(r/v) / 2^r
                cons += [v >= 1, cp.constraints.ExpCone(rl - rl * v, v, z)]
                t_terms.append(P("ct_u") * v)
                e_terms.append(P("eu_a") * z - P("eu_b") * v)
        cons += [cp.sum(cp.hstack(t_terms)) <= 1, cp.sum(cp.hstack(e_terms)) <= 1]
        objective = cp.sum(cp.hstack(obj)) if obj else cp.Constant(0.0)
        if model == "output" and obj:   # the quality floor: predicted loss within its limit
            cons.append(objective <= P("loss_limit"))
        self.problem = cp.Problem(cp.Minimize(objective), cons)
        self.par = par
        assert self.problem.is_dpp(), "planner problem must be DPP to be re-solved without recompiling"

    def set_parameters(self, scn: Scenario, sc: Scaled) -> None:
        s, q = scn.system, scn.system.qos
        vals = {"rmin": s.distortion.min_ratio, "ct_d": sc.c_d / q.max_delay_s, "ct_s": sc.c_s / q.max_delay_s,
                "ct_u": sc.c_u / q.max_delay_s, "eh_d": sc.eh_d / q.max_energy_j,
                "eh_s": sc.eh_s / q.max_energy_j, "eu_full": sc.eu / q.max_energy_j,
                "rl": sc.r * LN2}
        den = math.expm1(sc.r * LN2)
        vals["eu_a"] = sc.eu * math.exp(sc.r * LN2) / den / q.max_energy_j
        vals["eu_b"] = sc.eu / den / q.max_energy_j
        vals.update(phi_values(scn, self.par))
        for j, seg in (("d", scn.device_segment), ("s", scn.server_segment)):
            vals[f"sp_{j}"], vals[f"sp1_{j}"] = seg.speed, 1.0 - seg.speed
            for c in ("ct", "eh"):
                vals[f"{c}sp_{j}"] = vals[f"{c}_{j}"] * seg.speed
                vals[f"{c}sp1_{j}"] = vals[f"{c}_{j}"] * (1.0 - seg.speed)
        vals["loss_limit"] = scn.loss_limit if scn.loss_limit is not None else 1e6
        for name, p in self.par.items():
            p.value = vals[name]

    def solve(self, scn: Scenario) -> tuple[str, Point | None]:
        import cvxpy as cp

        sc = Scaled.of(scn)
        with self.lock:
            self.set_parameters(scn, sc)
            try:
                self.problem.solve(solver=cp.CLARABEL, warm_start=False, **_CLARABEL)
            except cp.error.SolverError:
                return "solver_error", None
            status = self.problem.status
            if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                return status, None
            rho_d = float(self.rho["d"].value) if "d" in self.rho else 1.0
            rho_s = float(self.rho["s"].value) if "s" in self.rho else 1.0
            u = {k: float(v.value) for k, v in self.u.items()}
        s = scn.system
        # Frequencies and power from the stage times (the solver's e and z are not trusted).
        # a stage time of ~0 only comes back from an inaccurate solve near infeasibility: full clock then
        w_d, w_s = scn.device_segment.work(rho_d), scn.server_segment.work(rho_s)
        f_d = s.device.max_freq_hz * (1.0 if self.fixes.freq_d else min(1.0, w_d / max(u["d"], 1e-12))) \
            if self.shape.device else 0.0
        f_s = s.server.max_freq_hz * (1.0 if self.fixes.freq_s else min(1.0, w_s / max(u["s"], 1e-12))) \
            if self.shape.server else 0.0
        p = 0.0
        if self.shape.upload:
            p = s.max_tx_power_w if self.fixes.power else min(
                s.max_tx_power_w, sc.power_for_upload_ratio(max(1.0, u["u"]), s.max_tx_power_w))
        return status, Point(rho_d, rho_s, f_d, f_s, p)


def get_problem(scn: Scenario) -> _Convex:
    """The cached compiled problem for this scenario's structure (built on first use)."""
    key = problem_key(scn)
    with _cache_lock:
        prob = _cache.get(key)
        if prob is None:
            prob = _cache[key] = _Convex(Shape.of(scn), scn.fixes, key[2], key[3])
        return prob


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def solve_convex(scn: Scenario) -> Solution:
    """Global optimum of P1 at this split point (or an infeasibility report)."""
    t0 = time.perf_counter()
    prob = get_problem(scn)
    status, x = prob.solve(scn)
    if x is None:
        return infeasible(scn, solver="convex", t0=t0, status=status)
    return solution_at(scn, x, solver="convex", t0=t0, status=status)
