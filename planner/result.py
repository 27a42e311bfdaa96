"""What a solver returns, and the last mile every solver shares: turn a candidate point into an
answer that provably meets the QoS by the plain formulas, or into an infeasibility report.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from coinfer.planner.costs import Costs, Point, Scaled, Shape, evaluate, within
from coinfer.planner.distortion import distortion
from coinfer.planner.frontier import Frontier
from coinfer.planner.scenario import Scenario

QOS_REL_TOL = 1e-4      # the contract: QoS met to this relative tolerance when re-evaluated
ROUNDING_BACK_OFF = 1e-9  # a back-off factor this close to 1 is float rounding, not a limit to meet


@dataclass
class Solution:
    feasible: bool
    rho_device: float | None
    rho_server: float | None
    f_device_hz: float | None
    f_server_hz: float | None
    tx_power_w: float | None
    delay_s: float | None
    energy_j: float | None
    distortion: float | None
    solve_time_s: float
    solver: str
    scheme: str
    status: str = "optimal"
    reason: str | None = None
    split: int | None = None
    stage_delays_s: dict | None = None     # device / upload / server
    stage_energies_j: dict | None = None
    # infeasible only: the smallest limits that would be feasible (at the least ratios allowed)
    min_feasible_delay_s: float | None = None
    min_feasible_energy_j: float | None = None
    # the `output` model only: the pruning method and the predicted output quality
    prune_method: str | None = None
    predicted_quality: float | None = None
    # what decided it (coinfer.planner.sweep.explain): delay | energy | quality | none, and why
    binding: str | None = None
    explanation: str | None = None
    # SCA only
    iterations: int | None = None
    objective_trajectory: list[float] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: the spec's keys always; an infeasible answer always carries its least limits
        (null when no value of that limit alone would do)."""
        keep = _ALWAYS + (() if self.feasible else _INFEASIBLE)
        return {k: v for k, v in asdict(self).items() if v is not None or k in keep}


_ALWAYS = ("feasible", "rho_device", "rho_server", "f_device_hz", "f_server_hz", "tx_power_w",
           "delay_s", "energy_j", "distortion", "solve_time_s")
_INFEASIBLE = ("reason", "min_feasible_delay_s", "min_feasible_energy_j")


def point_from_times(scn: Scenario, sc: Scaled, rho_d: float, rho_s: float,
                     taus: tuple[float, float, float]) -> Point:
    """Frequencies and power that realise stage times taus at these ratios (clipped to the maxima)."""
    s = scn.system
    sh = Shape.of(scn)
    w_d, w_s = scn.device_segment.work(rho_d), scn.server_segment.work(rho_s)
    f_d = min(s.device.max_freq_hz, w_d * sc.c_d * s.device.max_freq_hz / taus[0]) if sh.device else 0.0
    f_s = min(s.server.max_freq_hz, w_s * sc.c_s * s.server.max_freq_hz / taus[2]) if sh.server else 0.0
    p = min(s.max_tx_power_w, sc.power_for_upload_ratio(taus[1] / sc.c_u, s.max_tx_power_w)) if sh.upload else 0.0
    return Point(rho_d, rho_s, f_d, f_s, p)


def back_off(scn: Scenario, x: Point, fixes) -> Point:
    """Shrink the free ratios (frequencies and power held) until both limits hold exactly.

    At fixed f and p, delay and energy are affine in the ratios, so one factor does it (only the part
    of a stage that shrinks with rho, Segment.speed, scales).
    """
    c, q = evaluate(scn, x), scn.system.qos
    if c.delay <= q.max_delay_s and c.energy <= q.max_energy_j:
        return x
    dev, srv = scn.device_segment, scn.server_segment
    free_d = dev.present and not fixes.rho_d and dev.speed > 0
    free_s = srv.present and not fixes.rho_s and srv.speed > 0
    share_d = dev.speed * x.rho_d / dev.work(x.rho_d) if free_d else 0.0
    share_s = srv.speed * x.rho_s / srv.work(x.rho_s) if free_s else 0.0
    var_t = c.t_d * share_d + c.t_s * share_s
    var_e = c.e_d * share_d + c.e_s * share_s
    lam = 1.0
    if c.delay > q.max_delay_s and var_t > 0:
        lam = min(lam, (q.max_delay_s - (c.delay - var_t)) / var_t)
    if c.energy > q.max_energy_j and var_e > 0:
        lam = min(lam, (q.max_energy_j - (c.energy - var_e)) / var_e)
    if lam > 1 - ROUNDING_BACK_OFF:
        # an overshoot of float rounding (well within QOS_REL_TOL): shrinking by it would hand the nodes
        # a ratio of 0.999999999999, which they must prepare a pruning for, and which prunes nothing
        return x
    lam *= 1 - 1e-12
    rmin = scn.system.distortion.min_ratio
    return Point(max(rmin, x.rho_d * lam) if free_d else x.rho_d,
                 max(rmin, x.rho_s * lam) if free_s else x.rho_s, x.f_d, x.f_s, x.p)


def frontier_of(scn: Scenario, rho_d: float, rho_s: float) -> Frontier:
    fixes = scn.fixes
    return Frontier(Scaled.of(scn), Shape.of(scn), scn.device_segment.work(rho_d), scn.server_segment.work(rho_s),
                    fixes.freq_d, fixes.power, fixes.freq_s)


def least_energy_point(scn: Scenario, rho_d: float, rho_s: float) -> Point | None:
    """The least-energy frequencies and power meeting the delay limit at these ratios (None if none)."""
    got = frontier_of(scn, rho_d, rho_s).min_energy_given_delay(scn.system.qos.max_delay_s)
    if got is None:
        return None
    return point_from_times(scn, Scaled.of(scn), rho_d, rho_s, got[1])


def _fits(scn: Scenario, rho_d: float, rho_s: float) -> bool:
    got = frontier_of(scn, rho_d, rho_s).min_energy_given_delay(scn.system.qos.max_delay_s)
    return got is not None and got[0] <= scn.system.qos.max_energy_j


def _snap_to_full(scn: Scenario, rho_d: float, rho_s: float) -> tuple[float, float]:
    """Ratios an interior-point solver leaves a hair below 1 become exactly 1 when that still fits,
    so 'no pruning needed' reads as rho = 1 and D = 0 (magnitude, random)."""
    near = 1e-4
    if rho_d < 1 and rho_s < 1 and min(rho_d, rho_s) > 1 - near and _fits(scn, 1.0, 1.0):
        return 1.0, 1.0
    if 1 - near < rho_d < 1 and _fits(scn, 1.0, rho_s):
        rho_d = 1.0
    if 1 - near < rho_s < 1 and _fits(scn, rho_d, 1.0):
        rho_s = 1.0
    return rho_d, rho_s


def solution_at(scn: Scenario, x: Point, *, solver: str, t0: float, status: str,
                polish: bool = True, **extra) -> Solution:
    """Make x an answer: re-allocate time and energy at its ratios, back off, check, report."""
    fixes = scn.fixes
    sh = Shape.of(scn)
    rho_d = x.rho_d if sh.device and not fixes.rho_d else 1.0
    rho_s = x.rho_s if sh.server and not fixes.rho_s else 1.0
    rmin = scn.system.distortion.min_ratio
    rho_d, rho_s = min(1.0, max(rmin, rho_d)), min(1.0, max(rmin, rho_s))
    x = Point(rho_d, rho_s, x.f_d, x.f_s, x.p)
    if polish:
        rho_d, rho_s = _snap_to_full(scn, rho_d, rho_s)
        x = Point(rho_d, rho_s, x.f_d, x.f_s, x.p)
        # Same ratios, least-energy allocation: a well-defined point where the solver's optimum
        # leaves f and p free (e.g. when no ratio needs pruning), and exact by the formulas.
        y = least_energy_point(scn, rho_d, rho_s)
        if y is not None and evaluate(scn, y).energy <= scn.system.qos.max_energy_j:
            x = y
    x = _held_exactly(scn, x)
    x = back_off(scn, x, fixes)
    costs = evaluate(scn, x)
    if not within(costs, scn, QOS_REL_TOL):
        return infeasible(scn, solver=solver, t0=t0, status="numerical",
                          why="the solver's point could not be made to meet the QoS", **extra)
    return _report(scn, x, costs, solver=solver, t0=t0, status=status, **extra)


def _held_exactly(scn: Scenario, x: Point) -> Point:
    """A held knob is at its maximum exactly: the frontier's times round-trip to 2099999999.9999998 Hz."""
    fixes, s = scn.fixes, scn.system
    return Point(x.rho_d, x.rho_s,
                 s.device.max_freq_hz if fixes.freq_d and x.f_d else x.f_d,
                 s.server.max_freq_hz if fixes.freq_s and x.f_s else x.f_s,
                 s.max_tx_power_w if fixes.power and x.p else x.p)


def _report(scn: Scenario, x: Point, costs: Costs, *, solver, t0, status, **extra) -> Solution:
    sh = Shape.of(scn)
    return Solution(
        feasible=True, rho_device=x.rho_d, rho_server=x.rho_s,
        f_device_hz=x.f_d if sh.device else 0.0, f_server_hz=x.f_s if sh.server else 0.0,
        tx_power_w=x.p if sh.upload else 0.0, delay_s=costs.delay, energy_j=costs.energy,
        distortion=distortion(scn, x.rho_d, x.rho_s), solve_time_s=time.perf_counter() - t0,
        solver=solver, scheme=scn.scheme, status=status, split=scn.split,
        stage_delays_s={"device": costs.t_d, "upload": costs.t_u, "server": costs.t_s},
        stage_energies_j={"device": costs.e_d, "upload": costs.e_u, "server": costs.e_s}, **extra)


def infeasible(scn: Scenario, *, solver: str, t0: float, status: str = "infeasible",
               why: str | None = None, **extra) -> Solution:
    """The infeasibility report: why, and the least limits that would be feasible at the least ratios.

    If the least ratios turn out feasible after all (a solver's false alarm near the boundary), that
    point is returned instead, flagged by its status.
    """
    fixes = scn.fixes
    rho_d, rho_s = fixes.floor(scn.system.distortion.min_ratio)
    fr = frontier_of(scn, rho_d, rho_s)
    q = scn.system.qos
    got_e = fr.min_energy_given_delay(q.max_delay_s)
    floor_ok = scn.loss_limit is None or distortion(scn, rho_d, rho_s) <= scn.loss_limit
    if got_e is not None and got_e[0] <= q.max_energy_j and why is None:
        x = point_from_times(scn, fr.sc, rho_d, rho_s, got_e[1])
        costs = evaluate(scn, x)
        if within(costs, scn, QOS_REL_TOL):
            if floor_ok:
                return _report(scn, x, costs, solver=solver, t0=t0, status="least_ratios_fallback", **extra)
            why = (f"meeting the QoS needs more pruning than the quality floor allows (predicted loss "
                   f"{distortion(scn, rho_d, rho_s):.4g} at the least ratios, limit {scn.loss_limit:.4g})")
    got_t = fr.min_delay_given_energy(q.max_energy_j)
    min_t, floor_e = fr.min_delay(), fr.energy_floor()
    if why is None:
        if min_t > q.max_delay_s:
            why = (f"delay limit {q.max_delay_s:.6g} s is below the least possible delay {min_t:.6g} s "
                   f"(least ratios, full frequency and power)")
        elif floor_e > q.max_energy_j:
            why = (f"energy limit {q.max_energy_j:.6g} J is below the least possible energy "
                   f"{floor_e:.6g} J at any delay")
        else:
            why = (f"meeting the delay limit {q.max_delay_s:.6g} s takes at least "
                   f"{got_e[0]:.6g} J > energy limit {q.max_energy_j:.6g} J")
    return Solution(
        feasible=False, rho_device=None, rho_server=None, f_device_hz=None, f_server_hz=None,
        tx_power_w=None, delay_s=None, energy_j=None, distortion=None,
        solve_time_s=time.perf_counter() - t0, solver=solver, scheme=scn.scheme, status=status,
        reason=why, split=scn.split,
        min_feasible_delay_s=None if got_t is None else got_t[0],
        min_feasible_energy_j=None if got_e is None else got_e[0], **extra)
