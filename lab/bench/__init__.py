"""`coinfer bench`: the benchmark suite, one section per module, each returning a JSON-ready dict.

Sections measure ratios side by side in one run (these machines are noisy): the whole model and the
split interleaved, dense and pruned in turn, batching on and off against the same load.
"""
