"""The planner tests' reference scenario (system-model.md section 7) and a way to vary it."""
from __future__ import annotations

import copy

from coinfer.planner.scenario import SPEC_EXAMPLE_SCENARIO

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
