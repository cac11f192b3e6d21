"""asr_kd.label.malloc: the teacher actors' malloc keeps large freed blocks in the heap."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    from asr_kd.label.malloc import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)  # 16 MiB: above glibc's initial mmap threshold (128 KiB)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def _mmapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_keep_freed_memory_serves_a_16_mib_block_from_the_heap_instead_of_mmap():
    assert _mmapped_blocks("default") == 1  # glibc's default: a fresh mapping (pages faulted in and zeroed)
    assert _mmapped_blocks("tuned") == 0
