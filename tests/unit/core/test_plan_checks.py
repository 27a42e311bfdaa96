"""A node believes no plan blindly (core/telemetry.check_plan)."""
import pytest

from coinfer.plans import PlanRefused
from coinfer.protos import planner_pb2 as ppb
from coinfer.telemetry import check_plan


def plan(**changes) -> ppb.Plan:
    fields = dict(epoch=3, model_id="m", split_point=2, rho_device=0.8, rho_server=0.6, feasible=True)
    fields.update(changes)
    return ppb.Plan(**fields)


def test_a_feasible_plan_for_this_model_within_the_floor_is_accepted():
    check_plan(plan(), "device", "m", min_rho=0.8)
    check_plan(plan(), "server", "m", min_rho=0.6)
    check_plan(plan(model_id=""), "server", "m")


@pytest.mark.parametrize("changes, role, floor, why", [
    (dict(feasible=False, detail="T_max too small"), "device", 0.0, "infeasible (T_max too small)"),
    (dict(model_id="other"), "server", 0.0, "for model 'other'"),
    (dict(rho_server=0.05), "server", 0.5, "rho_server 0.05 is outside"),
    (dict(rho_device=float("nan")), "device", 0.0, "rho_device nan"),
    (dict(rho_device=1.5), "device", 0.0, "rho_device 1.5"),
])
def test_plans_a_node_must_not_apply_are_refused_saying_why(changes, role, floor, why):
    with pytest.raises(PlanRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_plan(plan(**changes), role, "m", min_rho=floor)
