"""One OpenMP thread pool per process: the pool of the thread that runs the forwards.

libgomp (torch's OpenMP on Linux) gives every thread that starts a parallel region a pool of worker
threads of its own. Once the pools together hold more threads than the machine has cores, it stops
letting idle workers spin between parallel regions (100 spins instead of GOMP_SPINCOUNT), so every
torch op of a forward puts a worker to sleep and wakes it again. Measured on MiniLM (batch 8 x 128,
blocks 2..6, 2 cores): a forward on the server's batcher thread after the main thread had loaded the
model took 180 context switches and 15 % more time than with the main thread's pool given back.

So threads that only prepare work (load, re-prune, decode and validate requests) either give their
pool back when done (`release_thread_pool`) or never start one (`single_threaded_here`). Where
libgomp is not the OpenMP in use, both do nothing and say so by returning False.
"""
from __future__ import annotations

import ctypes
import threading

OMP_PAUSE_SOFT = 1  # omp.h: omp_pause_soft
_local = threading.local()
_lock = threading.Lock()
_gomp: ctypes.CDLL | None = None
_looked = False


def _libgomp() -> ctypes.CDLL | None:
    """The libgomp torch loaded (torch wheels bundle their own), found among the process's mappings."""
    global _gomp, _looked
    with _lock:
        if not _looked:
            _looked = True
            import torch  # noqa: F401  (loads libgomp)

            try:
                with open("/proc/self/maps") as maps:
                    path = next((line.split()[-1] for line in maps if "/libgomp" in line), None)
                if path is not None:
                    gomp = ctypes.CDLL(path)  # the library already loaded: the same handle, nothing new
                    gomp.omp_pause_resource_all.argtypes = [ctypes.c_int]
                    gomp.omp_set_num_threads.argtypes = [ctypes.c_int]
                    _gomp = gomp
            except (OSError, AttributeError):
                _gomp = None
        return _gomp


def release_thread_pool() -> bool:
    """Give back the calling thread's OpenMP worker threads (they are started again if it computes again)."""
    gomp = _libgomp()
    return gomp is not None and gomp.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0


def single_threaded_here() -> bool:
    """Make torch ops on the calling thread run on it alone, starting no pool; other threads keep theirs."""
    if getattr(_local, "single", False):
        return True
    gomp = _libgomp()
    if gomp is None:
        return False
    import torch

    torch.get_num_threads()  # ATen sets each thread's OpenMP thread count on its first use: let it, then override
    gomp.omp_set_num_threads(1)
    _local.single = True
    return True
