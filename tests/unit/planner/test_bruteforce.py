"""The planner's solvers against an independent brute force, on a spread of scenarios.

The brute force shares no code with the planner: it re-implements the formulas of system-model.md
section 2 in numpy, grids (f_d, f_s, p) densely (then zooms in around the best cell), and at every
grid point solves the two ratios exactly: delay and energy are affine in the ratios there, so the best
ratios lie on the constraint boundary and the distortion along it is convex in rho_d (golden section).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from coinfer.planner.scenario import parse_scenario
from coinfer.planner.sweep import solve
from scenarios import BASE, make


# --------------------------------------------------------------------------------------------
# the independent check

def _phi(model: str, rho, q: float, curve=None):
    rho = np.asarray(rho, float)
    if model == "magnitude":
        return 1 - rho + rho * np.log(rho)
    if model == "random":
        return 1 - rho
    if model == "rd_bound":
        return 2.0 ** (-q * rho)
    if model == "measured":   # linear interpolation of (convex) measured points, normalised
        return np.interp(rho, curve[0], curve[1])
    raise ValueError(model)


def _golden_min(fun, lo, hi, iters=48):
    """Vectorised golden-section minimum of convex functions on [lo, hi] (arrays)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo.copy(), hi.copy()
    for _ in range(iters):
        c, d = b - g * (b - a), a + g * (b - a)
        left = fun(c) <= fun(d)
        b = np.where(left, d, b)
        a = np.where(left, a, c)
    x = (a + b) / 2
    best = np.minimum(fun(x), np.minimum(fun(lo), fun(hi)))
    return best


def brute_force(d: dict, n: int = 14, zooms: int = 6, m: int = 7,
                probe: dict | None = None) -> float | None:
    """Least D over a grid of (f_d, f_s, p), ratios solved exactly; None if no grid point is feasible."""
    seg_d, seg_s = d["segments"]["device"], d["segments"]["server"]
    dev, srv, ch, qos = d["device"], d["server"], d["channel"], d["qos"]
    model, rmin, q = d["distortion"]["model"], d["distortion"]["min_ratio"], d["weight_bits"]
    scheme, S = d.get("scheme", "joint"), d["embedding_bits"]
    has_d, has_s, has_u = seg_d["flops"] > 0, seg_s["flops"] > 0, S > 0
    a_d = seg_d["params"] * seg_d["weight_scale"] if has_d else 0.0
    a_s = seg_s["params"] * seg_s["weight_scale"] if has_s else 0.0
    curves = {}
    if model == "measured":
        for j, seg, a in (("d", seg_d, a_d), ("s", seg_s, a_s)):
            if seg["flops"] > 0:
                curves[j] = (np.array(seg["measured"]["ratios"]), np.array(seg["measured"]["l1_removed"]) / a)
    free_d = has_d and scheme != "server_only_pruning"
    free_s = has_s and scheme != "device_only_pruning"

    def D(rd, rs):
        out = 0.0
        if has_d:
            out = out + a_d * _phi(model, rd, q, curves.get("d"))
        if has_s:
            out = out + a_s * _phi(model, rs, q, curves.get("s"))
        return out

    # grid dimensions: (name, max) for each free continuous variable
    dims = []
    if has_d and scheme != "fixed_frequency":
        dims.append(("fd", dev["max_freq_hz"]))
    if has_s and scheme != "fixed_frequency":
        dims.append(("fs", srv["max_freq_hz"]))
    if has_u and scheme != "fixed_power":
        dims.append(("p", dev["max_tx_power_w"]))

    def evaluate(vals: dict):
        fd = vals.get("fd", dev["max_freq_hz"])
        fs = vals.get("fs", srv["max_freq_hz"])
        p = vals.get("p", dev["max_tx_power_w"])
        shape = np.broadcast(*[np.asarray(v) for v in (fd, fs, p)]).shape
        zeros = np.zeros(shape)
        if has_u:
            rate = ch["bandwidth_hz"] * np.log2(1 + ch["gain"] * p / (ch["bandwidth_hz"] * ch["noise_psd_w_per_hz"]))
            tu = S / rate + zeros
            eu = p * tu
        else:
            tu = eu = zeros
        al_d = seg_d["flops"] / (dev["flops_per_cycle"] * fd) + zeros if has_d else zeros
        be_d = dev["pue"] * dev["power_coeff"] * seg_d["flops"] / dev["flops_per_cycle"] * fd ** 2 + zeros if has_d else zeros
        al_s = seg_s["flops"] / (srv["flops_per_cycle"] * fs) + zeros if has_s else zeros
        be_s = srv["pue"] * srv["power_coeff"] * seg_s["flops"] / srv["flops_per_cycle"] * fs ** 2 + zeros if has_s else zeros
        tr, er = qos["max_delay_s"] - tu, qos["max_energy_j"] - eu

        def cap(budget, coef, fixed_use):   # largest ratio with coef * rho <= budget - fixed_use
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(coef > 0, (budget - fixed_use) / np.where(coef > 0, coef, 1), np.inf)

        inf = np.full(shape, np.inf)
        if free_d and free_s:
            hi_d = np.minimum(1.0, np.minimum(cap(tr, al_d, al_s * rmin), cap(er, be_d, be_s * rmin)))
            ok = hi_d >= rmin

            def rs_of(rd):
                return np.minimum(1.0, np.minimum(cap(tr - al_d * rd, al_s, 0), cap(er - be_d * rd, be_s, 0)))

            lo = np.full(shape, rmin)
            hi = np.where(ok, hi_d, rmin)
            val = _golden_min(lambda rd: D(rd, np.maximum(rs_of(rd), rmin)), lo, hi)
            return np.where(ok, val, inf)
        # at most one free ratio: the largest that fits is best (phi decreases)
        rd_fixed = 1.0
        rs_fixed = 1.0
        if free_d:
            r = np.minimum(1.0, np.minimum(cap(tr, al_d, al_s * rs_fixed), cap(er, be_d, be_s * rs_fixed)))
            ok = r >= rmin
            return np.where(ok, D(np.clip(r, rmin, 1), rs_fixed), inf)
        if free_s:
            r = np.minimum(1.0, np.minimum(cap(tr, al_s, al_d * rd_fixed), cap(er, be_s, be_d * rd_fixed)))
            ok = r >= rmin
            return np.where(ok, D(rd_fixed, np.clip(r, rmin, 1)), inf)
        ok = (al_d + al_s <= tr) & (be_d + be_s <= er)
        return np.where(ok, D(1.0, 1.0) + zeros, inf)

    if probe is not None:   # best ratios at one given (f_d, f_s, p)
        return float(evaluate({k: np.asarray([v]) for k, v in probe.items()})[0])
    if not dims:
        v = float(evaluate({}))
        return None if math.isinf(v) else v
    # Nested 1-D grid searches, one variable per level, vectorised over the outer levels' points:
    # a coarse grid (log-spaced, since optima can sit decades below the maxima, united with linear),
    # then repeated zooms to the two cells around the best point. For a unimodal restriction the
    # minimum always lies in those two cells, so the search cannot lose it; the frequencies' valleys
    # are V-shaped (rho is capped by delay on one side and energy on the other), hence the zooms.
    def coarse(top):
        return np.unique(np.concatenate([np.geomspace(top * 1e-5, top, n // 2),
                                         np.linspace(top / n, top, n // 2)]))

    def search(level: int, fixed: dict, count: int) -> np.ndarray:
        name, top = dims[level]
        grid = np.broadcast_to(coarse(top), (count, len(coarse(top))))
        best = np.full(count, np.inf)
        for _ in range(zooms + 1):
            width = grid.shape[1]
            inner = {k: np.repeat(v, width) for k, v in fixed.items()}
            inner[name] = grid.reshape(-1)
            if level + 1 < len(dims):
                vals = search(level + 1, inner, count * width).reshape(count, width)
            else:
                vals = evaluate(inner).reshape(count, width)
            i = np.argmin(vals, axis=1)
            best = np.minimum(best, vals[np.arange(count), i])
            lo = grid[np.arange(count), np.maximum(i - 1, 0)]
            hi = grid[np.arange(count), np.minimum(i + 1, width - 1)]
            grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, m)[None, :]
        return best

    best_val = float(search(0, {}, 1)[0])
    if math.isinf(best_val):
        return None
    return best_val


# --------------------------------------------------------------------------------------------
# the spread

K0 = {"segments.device.flops": 0.0, "segments.device.params": 0.0,
      "segments.server.flops": 2.18e10, "segments.server.params": 8.49e7, "embedding_bits": 8192}
KL = {"segments.server.flops": 0.0, "segments.server.params": 0.0, "embedding_bits": 0,
      "segments.device.flops": 2.18e10, "segments.device.params": 8.49e7}


def _magnitude_curve(n_points=11):
    r = np.linspace(0, 1, n_points)
    phi = 1 - r + np.where(r > 0, r * np.log(np.maximum(r, 1e-300)), 0)
    return r, phi


def _measured(scale_d=1.0, scale_s=1.3):
    r, phi = _magnitude_curve()
    return {"distortion.model": "measured",
            "segments.device.measured": {"ratios": r.tolist(), "l1_removed": (phi * 2.83e7 * 0.02 * scale_d).tolist()},
            "segments.server.measured": {"ratios": r.tolist(), "l1_removed": (phi * 5.66e7 * 0.02 * scale_s).tolist()}}


SPREAD = {
    "tight_delay": {"qos.max_delay_s": 0.3, "qos.max_energy_j": 100.0},
    "tight_energy": {"qos.max_delay_s": 5.0, "qos.max_energy_j": 2e-3},
    "both": {},
    "neither_rd_bound": {"qos.max_delay_s": 10.0, "qos.max_energy_j": 100.0, "distortion.model": "rd_bound"},
    "both_rd_bound": {"distortion.model": "rd_bound"},
    "both_random": {"distortion.model": "random", "qos.max_delay_s": 0.3},
    "both_measured": _measured(),
    "infeasible": {"qos.max_delay_s": 0.01},
    "k0": dict(K0, **{"qos.max_delay_s": 0.012, "qos.max_energy_j": 0.2}),
    "kL": dict(KL, **{"qos.max_delay_s": 0.8, "qos.max_energy_j": 0.5}),
    "fixed_power": {"scheme": "fixed_power", "qos.max_delay_s": 0.3},
    "fixed_frequency": {"scheme": "fixed_frequency"},
    "device_only": {"scheme": "device_only_pruning"},
    "server_only": {"scheme": "server_only_pruning", "qos.max_delay_s": 0.5, "qos.max_energy_j": 0.37},
    "k0_rd_bound": dict(K0, **{"qos.max_delay_s": 0.05, "qos.max_energy_j": 0.01, "distortion.model": "rd_bound"}),
}

_cache: dict[str, tuple] = {}


def solved(name: str):
    """(scenario dict, convex solution, brute-force value), computed once per module."""
    if name not in _cache:
        d = make(**SPREAD[name])
        _cache[name] = (d, solve(parse_scenario(d), "convex"), brute_force(d))
    return _cache[name]


def _scale(d):
    return d["segments"]["device"]["params"] * 0.02 + d["segments"]["server"]["params"] * 0.02


@pytest.mark.parametrize("name", list(SPREAD))
def test_convex_matches_brute_force(name):
    d, sol, bf = solved(name)
    if bf is None:
        assert not sol.feasible, f"brute force finds nothing but the solver says feasible: {sol}"
        return
    assert sol.feasible, sol.reason
    tol = 0.005 * bf + 1e-9 * _scale(d)
    assert abs(sol.distortion - bf) <= tol, (sol.distortion, bf)
    # a global optimum can never be worse than a feasible grid point (beyond solver accuracy)
    assert sol.distortion <= bf * (1 + 1e-5) + 1e-9 * _scale(d)


BINDING = {"tight_delay": ["max_delay_s"], "tight_energy": ["max_energy_j"],
           "both": ["max_delay_s", "max_energy_j"], "k0": ["max_delay_s"], "kL": ["max_delay_s"]}


def _relaxed(d: dict, key: str, factor: float) -> float:
    looser = copy.deepcopy(d)
    looser["qos"][key] *= factor
    return solve(parse_scenario(looser)).distortion


@pytest.mark.parametrize("name", list(BINDING))
def test_spread_is_what_it_claims(name):
    """The spread must exercise what its names say: relaxing a binding limit lowers D."""
    d, sol, _ = solved(name)
    assert sol.feasible and sol.distortion > 0
    for key in BINDING[name]:
        assert _relaxed(d, key, 1.5) < sol.distortion * (1 - 1e-4), key
    if name == "tight_delay":   # and the energy limit does not bind
        assert _relaxed(d, "max_energy_j", 10) == pytest.approx(sol.distortion, rel=1e-5)


def test_neither_tight_means_no_pruning():
    d, sol, _ = solved("neither_rd_bound")
    assert sol.rho_device == 1.0 and sol.rho_server == 1.0


def test_infeasible_reports_least_limits():
    d, sol, _ = solved("infeasible")
    assert not sol.feasible and "delay" in sol.reason
    t_min = sol.min_feasible_delay_s
    assert t_min is not None and t_min > d["qos"]["max_delay_s"]
    just_above, just_below = copy.deepcopy(d), copy.deepcopy(d)
    just_above["qos"]["max_delay_s"] = t_min * (1 + 1e-6)
    just_below["qos"]["max_delay_s"] = t_min * (1 - 1e-3)
    assert solve(parse_scenario(just_above)).feasible
    assert not solve(parse_scenario(just_below)).feasible
    # and brute force agrees that the least delay limit is where feasibility starts
    assert brute_force(just_below) is None


def test_energy_infeasible_reports_least_energy():
    d = make(**{"qos.max_energy_j": 1e-7, "qos.max_delay_s": 0.1})
    sol = solve(parse_scenario(d))
    assert not sol.feasible and "energy" in sol.reason
    e_min = sol.min_feasible_energy_j
    assert e_min is not None and e_min > 1e-7
    d["qos"]["max_energy_j"] = e_min * (1 + 1e-6)
    assert solve(parse_scenario(d)).feasible
    d["qos"]["max_energy_j"] = e_min * (1 - 1e-3)
    assert not solve(parse_scenario(d)).feasible


@pytest.mark.parametrize("name", [n for n in SPREAD if n != "infeasible"])
def test_sca_reaches_convex_optimum_and_never_ends_above_start(name):
    d, cvx, _ = solved(name)
    sca = solve(parse_scenario(d), "sca")
    assert sca.feasible == cvx.feasible
    if not sca.feasible:
        return
    traj = sca.objective_trajectory
    assert sca.iterations >= 1 and len(traj) >= 1
    assert sca.distortion <= traj[0] * (1 + 1e-9) + 1e-12
    assert all(b <= a * (1 + 1e-9) + 1e-12 for a, b in zip(traj, traj[1:])), "SCA must not go uphill"
    assert abs(sca.distortion - cvx.distortion) <= 0.005 * cvx.distortion + 1e-9 * _scale(d)


def test_sca_infeasible_is_an_answer():
    d, _, _ = solved("infeasible")
    sca = solve(parse_scenario(d), "sca")
    assert not sca.feasible and sca.min_feasible_delay_s is not None


@pytest.mark.parametrize("name", [n for n in SPREAD if n != "infeasible"])
def test_solver_point_checks_out_independently(name):
    """At the solver's own (f_d, f_s, p), the brute force's formulas find it feasible and find no
    better ratios: the point is what the solver says it is."""
    d, sol, _ = solved(name)
    probe = {"fd": sol.f_device_hz, "fs": sol.f_server_hz, "p": sol.tx_power_w}
    best_here = brute_force(d, probe={k: v for k, v in probe.items() if v})
    assert best_here <= sol.distortion * (1 + 1e-9) + 1e-12
    assert best_here >= sol.distortion * (1 - 1e-4) - 1e-9 * _scale(d)
