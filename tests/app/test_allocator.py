"""keep_freed_memory: a freed large block stays in the heap for the next allocation; inside
large_blocks_returned (an evaluation) it goes back to the kernel (glibc only)."""
import platform
import subprocess
import sys

import pytest

# glibc's malloc statistics, read by both probes
MALLINFO = """
import ctypes
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
"""

PROBE = MALLINFO + """
import torch
from saefw.app.allocator import keep_freed_memory
applied = keep_freed_memory()
assert keep_freed_memory() is applied  # once per process
t = torch.ones(16 * 2**20)  # 64 MB: above glibc's largest default mmap threshold (32 MB)
del t
print(applied, libc.mallinfo2().fordblks)
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {"PATH": "/usr/bin:/bin"}
    if env_value is not None:
        env["SAEFW_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, free = out.stdout.split()
    return applied == "True", int(free)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_freed_64mb_tensor_stays_in_the_heap_unless_turned_off():
    applied, free = _probe(None)
    assert applied and free >= 64 * 2**20
    applied, free = _probe("0")
    assert not applied and free < 64 * 2**20  # glibc's default: the block went back to the kernel


SCOPED = MALLINFO + """
import torch
from saefw.app.allocator import keep_freed_memory, large_blocks_returned
assert keep_freed_memory()
def freed_64mb_kept():
    t = torch.ones(16 * 2**20)
    mapped = libc.mallinfo2().hblkhd >= 64 * 2**20  # served by its own mapping, not the heap
    del t
    return not mapped and libc.mallinfo2().fordblks >= 64 * 2**20
libc.malloc_trim(0)
with large_blocks_returned():
    inside = freed_64mb_kept()
    with large_blocks_returned():  # nested (or another thread's evaluation): still returned
        pass
    nested = freed_64mb_kept()
after = freed_64mb_kept()
print(inside, nested, after)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_inside_an_evaluation_a_freed_64mb_tensor_goes_back_and_afterwards_stays_again():
    out = subprocess.run([sys.executable, "-c", SCOPED], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


THREADS = """
import ctypes, sys, tempfile, threading
import torch
from saefw.app.allocator import one_heap_for_threads
if sys.argv[1] == "one":
    assert one_heap_for_threads()
barrier = threading.Barrier(4)
def step():
    t = torch.ones(2 * 2**20)  # 8 MB, held while the 4 threads are all alive: each would open a heap of its own
    barrier.wait()
    del t
threads = [threading.Thread(target=step) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are glibc's")
def test_threads_started_after_one_heap_for_threads_allocate_from_the_main_heap():
    def heaps(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", THREADS, mode], env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True)
        return int(out.stdout)
    assert heaps("one") == 1
    assert heaps("default") >= 4  # the main heap and one per thread (glibc opens up to 8 per core)
