"""`coinfer bench`: the benchmark suite, one section per module, each returning a JSON-ready dict.

Sections measure ratios side by side in one run (these machines are noisy): the whole model and the
split interleaved, dense and pruned in turn, batching on and off against the same load. The sections
are the modules named in suite.SECTIONS; several also have a script of their own (scripts/bench_*,
scripts/device_memory, through their `main`). `group`, `load` and `capacity` are benchmarks outside
the suite, run by scripts/bench_group, scripts/load_test and scripts/stream_capacity.
"""
