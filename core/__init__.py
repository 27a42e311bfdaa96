"""coinfer: split ("co-") inference of transformer models between an edge device and an edge server.

This package root is the code both halves share (model loading, splitting, pruning, codecs, channel);
the halves themselves live in coinfer.device, coinfer.server and coinfer.planner.
"""
import os

__version__ = "0.1.0"

# When device and server share a machine's cores (loopback tests, demo, benchmarks), OpenMP threads
# that keep spinning after one half's forward steal the cores the other half is computing on; a short
# spin keeps the wake-up fast without that. Read by libgomp when torch loads, so it must be set first.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# Every coinfer process, the whole-model references of the benchmarks included, allocates the same way.
from coinfer.allocator import keep_freed_memory  # noqa: E402

MALLOC_TUNED = keep_freed_memory()
