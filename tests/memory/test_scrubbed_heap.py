"""Fresh heap memory inside a chroma call holds no stale bytes (memory/scrubbed_heap.py), tested on glibc's own
malloc: a chunk freed with a secret in it and allocated again reads as the constant, never as the secret."""

from __future__ import annotations

import ctypes
import threading

import pytest

from memory import scrubbed_heap
from memory.scrubbed_heap import scrubbed_allocations

SIZE = 64 * 1024  # above glibc's per-thread cache, below its mmap threshold: a reused heap chunk

pytestmark = pytest.mark.skipif(not scrubbed_heap.available(), reason="M_PERTURB is glibc's; this C library is not")


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _reuse_after_secret(libc) -> bytes:
    """Free a chunk full of a secret, allocate the same size again, return what the new chunk holds."""
    first = libc.malloc(SIZE)
    ctypes.memmove(first, b"SECRET" * (SIZE // 6), SIZE // 6 * 6)
    libc.free(first)
    again = libc.malloc(SIZE)
    try:
        return ctypes.string_at(again, SIZE)
    finally:
        libc.free(again)


def test_a_chunk_allocated_inside_holds_no_stale_bytes():
    libc = _libc()
    with scrubbed_allocations():
        seen = _reuse_after_secret(libc)
    assert b"SECRET" not in seen and set(seen[64:]) == {0xFF ^ scrubbed_heap.PERTURB_BYTE}


def test_scrubbing_stays_on_until_the_last_of_concurrent_calls_leaves():
    libc = _libc()
    inside, leave = threading.Event(), threading.Event()

    def other_call():
        with scrubbed_allocations():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other_call)
    thread.start()
    inside.wait(10)
    with scrubbed_allocations():
        pass  # this call ends first: the other one is still inside
    seen = _reuse_after_secret(libc)
    leave.set()
    thread.join()
    assert b"SECRET" not in seen and scrubbed_heap._depth == 0
