"""glibc malloc settings for long-running CPU workers (the teacher actors).

PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks (above a threshold that starts at
128 KiB) with ``mmap`` and gives freed memory at the top of the heap back to the kernel, so every batch's
activations and FFT buffers land on fresh pages that the kernel must fault in and zero again. A worker
that runs the same shapes batch after batch does better keeping what it freed: on the 2-core Xeon of
BENCHMARKS.md this raised the steady labeling rate of the demo teacher by about 9 % (630 -> 690
audio-h per wall-h, A/B runs alternated). The price is that the worker's resident memory stays at its
high-water mark. jemalloc or tcmalloc (``LD_PRELOAD``) do the same job; this needs no extra library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024  # keep up to 1 GiB free at the heap's top instead of returning it


def keep_freed_memory() -> bool:
    """Tune glibc's malloc in this process as described above; False (nothing done) without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt): leave malloc alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; malloc left as it is")
    return ok
