"""Process-wide settings that decide how fast a CPU search runs.

glibc's allocator serves every block above its mmap threshold (at most 32 MiB, adjusted as blocks are freed) with a
fresh ``mmap`` and gives it back with ``munmap`` when it is freed; the top of the heap is trimmed back to the system
as soon as 128 KiB are free. A mask search allocates and frees the same large activations at every step, so each
step faulted its whole working set in again: half of a CPU search's time was the kernel's (measured: 25.7 s of
system time beside 44.1 s of user time, 1.0 s once memory is kept; scripts/bench_malloc.py). :func:`keep_freed_memory`
raises the threshold and the trim limits once per process, so freed memory is reused instead. The cost: the
process keeps its high-water mark of memory until it exits, which for a command-line run is what it would have
peaked at anyway. ``PROTOMDM_MALLOC=system`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, which is kept...
TRIM_THRESHOLD = 1 << 30  # ...and handed back only once 1 GiB of it is free at its top
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to reuse freed memory rather than return it to the system (once per process).

    Returns whether the setting is in effect: False off Linux/glibc or with ``PROTOMDM_MALLOC=system``.
    """
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and os.environ.get("PROTOMDM_MALLOC", "").lower() != "system":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                        (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done
