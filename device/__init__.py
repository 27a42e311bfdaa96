"""The device half: tokenises, runs the embedding and blocks 1..k (pruned, under a clock cap), sends
the hidden states to a server and returns its answer.

Modules: runtime (DeviceRuntime: the half under a plan, requests with retries and resends, plans
followed live), client (InferenceClient: the gRPC stream to the server), cli (`coinfer device`).
The tensor-parallel device group lives in coinfer.device.group.
"""
