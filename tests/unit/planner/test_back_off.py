"""back_off: the planner shrinks free ratios to meet the limits exactly, but not by float rounding."""
from coinfer.planner.costs import Point, evaluate
from coinfer.planner.result import ROUNDING_BACK_OFF, back_off
from coinfer.planner.scenario import parse_scenario

from scenarios import make


def _scenario_with_delay_limit(delay_s: float):
    return parse_scenario(make(**{"qos.max_delay_s": delay_s, "qos.max_energy_j": 1e6}))


def test_an_overshoot_of_rounding_keeps_the_ratios_at_one():
    full = Point(1.0, 1.0, 1e9, 1e9, 0.1)
    delay = evaluate(_scenario_with_delay_limit(1.0), full).delay
    # the limit a hair (1e-13 relative) below the point's delay: what a solver's rounding leaves
    scn = _scenario_with_delay_limit(delay * (1 - 1e-13))
    assert evaluate(scn, full).delay > scn.system.qos.max_delay_s
    kept = back_off(scn, full, scn.fixes)
    assert (kept.rho_d, kept.rho_s) == (1.0, 1.0)  # 0.999999999999 would make nodes prepare a pruning


def test_a_real_overshoot_is_still_backed_off_to_the_limit():
    full = Point(1.0, 1.0, 1e9, 1e9, 0.1)
    delay = evaluate(_scenario_with_delay_limit(1.0), full).delay
    scn = _scenario_with_delay_limit(delay * (1 - 100 * ROUNDING_BACK_OFF))
    shrunk = back_off(scn, full, scn.fixes)
    assert shrunk.rho_d < 1.0 or shrunk.rho_s < 1.0
    assert evaluate(scn, shrunk).delay <= scn.system.qos.max_delay_s
