"""Keep glibc's malloc from giving activation buffers back to the kernel between forwards.

A forward on the CPU frees and re-allocates the same few megabyte-sized buffers (attention scores,
FFN activations) every time. With glibc's defaults, buffers above the dynamic mmap threshold are
fresh mmaps, and freed space at the top of a thread's heap is trimmed, so each forward page-faults
its whole working set back in: measured here on MiniLM (batch 8 x 128), about 11,000 faults and
10-15 % of the forward's time. Fixed thresholds keep that memory in the process for the next
forward, at the price of holding the peak working set.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
# 32 MiB is the largest mmap threshold glibc accepts on 64-bit; larger blocks stay mmaps.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20
OPT_OUT_VARIABLE = "COINFER_MALLOC_TUNING"


def keep_freed_memory() -> bool:
    """Set the thresholds; True if they are now in force. Leaves alone a user's own MALLOC_*_ settings,
    non-glibc systems, and processes that set COINFER_MALLOC_TUNING=0."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent on musl
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
