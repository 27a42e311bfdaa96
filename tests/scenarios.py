"""The planner tests' reference scenario (system-model.md section 7) and a way to vary it."""
from __future__ import annotations

import copy

from coinfer.planner.scenario import SPEC_EXAMPLE_SCENARIO
from coinfer.system import DEFAULT_SYSTEM

BASE = copy.deepcopy(SPEC_EXAMPLE_SCENARIO)


def make(**changes) -> dict:
    """BASE with dotted-path changes, e.g. make(**{"qos.max_delay_s": 0.3})."""
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return d


# --- a live Controller on MiniLM's profile (the controller and trust tests) ----------------------

CONTROLLER_SPLIT = 3
CONTROLLER_SYSTEM = dict(DEFAULT_SYSTEM, qos={"max_delay_s": 0.5, "max_energy_j": 5.0},
                         device=dict(DEFAULT_SYSTEM["device"], flops_per_cycle=8.0),
                         server=dict(DEFAULT_SYSTEM["server"], flops_per_cycle=64.0),
                         channel=dict(DEFAULT_SYSTEM["channel"], bandwidth_hz=1e6, gain=1e-10))


# Nodes whose clocks and transmit power can be set (emulated clocks, a channel emulator): the paper's P1.
SETTABLE_KNOBS = {"device": dict(clock="emulated", tx_power="emulator"), "server": dict(clock="emulated")}


def make_controller(minilm_config, system=CONTROLLER_SYSTEM, knobs=SETTABLE_KNOBS, **settings):
    """(controller after its start plan, the plans it published, its profile): batch 4 x 32 tokens.
    knobs: what the nodes report they can set (default: everything, as in the paper)."""
    from coinfer.planner.controller import Controller, ControllerSettings
    from coinfer.planner.profile import profile_from_config
    from coinfer.protos import planner_pb2 as ppb
    from coinfer.system import parse_system

    plans = []
    profile = profile_from_config(minilm_config, "bert", "all-MiniLM-L6-v2", 4, 32)
    controller = Controller(parse_system(system), profile,
                            ControllerSettings(batch=4, seq_len=32, split=CONTROLLER_SPLIT, **settings), plans.append,
                            profile_at=lambda b, s: profile_from_config(minilm_config, "bert", "m", b, s))
    for role, knob in (knobs or {}).items():
        controller.knobs[role] = ppb.Knobs(**knob)
    controller.replan("start")
    return controller, plans, profile
