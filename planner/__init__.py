"""The planner: problem P1 (pruning ratios, frequencies, transmit power) and the split point.

Entry points (import the modules; this package imports nothing heavy):
  coinfer.planner.sweep.plan_splits(profile, system)  every split point, the best one and the table
  coinfer.planner.sweep.solve(scenario, solver)       one split point, convex (exact) or sca (paper)
  coinfer.planner.profile.profile_model(source, ...)  a model's FLOPs, parameters, weight statistics
  coinfer.planner.scenario.parse_scenario            strict dict -> Scenario (a System, coinfer.system,
                                                      plus the segments of one split point)
"""
