"""The server half: blocks k+1..L and the head (pooling, or BART's decoder), pruned, on a CUDA GPU
when one is present and else the CPU, served over gRPC to any number of devices.

Modules: half (ServerHalf: the half under a plan, plans followed live and swapped in between
forwards), batcher (DynamicBatcher: concurrent requests computed together on one thread), service
(the CoInference gRPC service: checks, reply cache, streams), replies (the reply cache), app
(assembling the process), metrics (Prometheus), cli (`coinfer server`).
"""
