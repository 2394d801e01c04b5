"""Keep freed host memory in the process, so that large CPU tensors do not page-fault anew at every step.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above its mmap threshold
(at most 32 MB by default) with fresh pages from the kernel and gives them back on ``free``; a training step's
[batch, d_sae] tensors (75 MB at 4,096 × 4,608, 268 MB at 4,096 × 16,384) and an evaluation's logits (200 MB
per 1,024 tokens of a 49k vocabulary) are therefore zero-filled by the kernel, one 4 KB page fault at a time,
every time they are allocated. Measured on the 2-core CPU (fp32): writing a fresh 268 MB tensor takes 74 ms,
a reused one 6 ms; a dense l1 step at 768 × 16,384 drops from 3.52 s to 3.14 s (``benchmarks/perf_train.py``).

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds so that freed blocks stay in the heap and are
reused by the next allocation of the same size. The price: the process keeps the heap of its largest phase,
and a phase with other block sizes adds its own on top (a warm default run peaked at 3.1 GB against 2.2 GB
with ``malloc`` as it is). :func:`release_freed_memory` hands the free pages back between phases (after the
data-dependent init and after each evaluation): a phase's repeated allocations still reuse its own blocks, and
the peak is the largest phase's. Set ``SAEFW_KEEP_FREED_MEMORY=0`` to leave ``malloc`` as it is. Other C
libraries, and CUDA memory (PyTorch's caching allocator does this already), are left alone.

An evaluation is the phase where keeping blocks backfires: its large blocks (logits, [batch, d_sae] latents) are
temporaries, and between them it allocates small results that outlive them (per-context statistics, the clean
summary's rows). A small block carved out of a freed large one strands the rest of it, so the next large block
extends the heap: the first default run's clean-summary pass grew the heap by ~100 MB per batch, 1.1 GB in all
(peak 3.6 GB against 2.5 GB for the same run warm). :func:`large_blocks_returned` restores glibc's largest default
mmap threshold for such a phase: each block above 32 MB is mapped and unmapped on its own and cannot be split.

The threads of a one-pass group (``hydra/launcher=one_pass``) would each get a heap (a glibc arena) of their own,
and each would keep the freed blocks of its own peak: :func:`one_heap_for_threads` makes the threads started
after it allocate from the main heap, so one job's freed blocks serve the next job's step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameter numbers (malloc.h)
_THRESHOLD = 1 << 30  # blocks up to 1 GB come from (and return to) the heap
_PHASE_THRESHOLD = 32 << 20  # glibc's largest dynamic mmap threshold: its own behaviour for large blocks
_phases = 0  # large_blocks_returned blocks open (nested, or in the threads of a one-pass group)
_phases_lock = threading.Lock()
_applied: bool | None = None
_libc = None


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process (later calls return the first answer); True when glibc took them."""
    global _applied, _libc
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("SAEFW_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                            _THRESHOLD))
        _libc = libc if _applied else None
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable (%s): malloc left as it is", exc)
    return _applied


def one_heap_for_threads() -> bool:
    """Threads that allocate for the first time after this call share the heaps that exist already (glibc
    ``M_ARENA_MAX`` 1) instead of opening one each; True when glibc took it. Call it before starting threads that
    take turns with large, short-lived blocks (see the module docstring); a no-op where
    :func:`keep_freed_memory` did not apply."""
    return keep_freed_memory() and _libc is not None and bool(_libc.mallopt(_M_ARENA_MAX, 1))


def release_freed_memory() -> None:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim``) when :func:`keep_freed_memory` kept them;
    a no-op otherwise. Cheap (~10 ms): call it where one phase's working set gives way to another's."""
    if _libc is not None:
        _libc.malloc_trim(0)


@contextmanager
def large_blocks_returned() -> Iterator[None]:
    """For the block, blocks above 32 MB are mapped and unmapped one at a time (glibc's own behaviour) instead of
    kept in the heap; the heap's free pages are handed back on entry and on exit (see the module docstring). The
    setting is the process's: while any thread is inside such a block, every thread's large blocks are mapped.
    A no-op when :func:`keep_freed_memory` did not apply."""
    global _phases
    if _libc is None:
        yield
        return
    with _phases_lock:
        _phases += 1
        if _phases == 1:
            _libc.mallopt(_M_MMAP_THRESHOLD, _PHASE_THRESHOLD)
    release_freed_memory()
    try:
        yield
    finally:
        with _phases_lock:
            _phases -= 1
            if _phases == 0:
                _libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
        release_freed_memory()
