"""Fresh heap memory is filled with a constant while a chroma call runs, so that no stale bytes reach disk.

Why: chromadb's HNSW index (hnswlib inside its Rust bindings) allocates its buffers with ``malloc`` and writes
them to the index files (``data_level0.bin`` …) whole, including the slots it never initialised. Those slots hold
whatever the process freed before: seen in CI, a fragment of a forgotten user's turns inside another user's
``data_level0.bin``. glibc can fill every fresh allocation with a constant byte (``mallopt(M_PERTURB)``); that costs
a memset per allocation (10-20 % on a torch training step), so it is switched on only for the duration of chroma
calls (``scrubbed_allocations``), reference-counted across threads.

Limits: glibc only (elsewhere a no-op); allocations served from glibc's per-thread cache (chunks up to ~1 KiB)
are not filled. The index buffers that leaked are far larger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_PERTURB = -6  # glibc's mallopt parameter: fill freed chunks with the byte, fresh ones with its complement
PERTURB_BYTE = 0x5A  # fresh allocations read 0xA5

_lock = threading.Lock()
_depth = 0


def _glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (and M_PERTURB)
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


_mallopt = _glibc_mallopt()


def available() -> bool:
    """Whether this process can scrub fresh allocations (glibc)."""
    return _mallopt is not None


@contextmanager
def scrubbed_allocations() -> Iterator[None]:
    """While inside, every fresh heap chunk larger than glibc's per-thread cache reads as a constant."""
    global _depth
    if _mallopt is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _mallopt(M_PERTURB, PERTURB_BYTE)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _mallopt(M_PERTURB, 0)
