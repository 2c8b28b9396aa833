"""Handing freed memory back to the operating system between stages.

A run holds one stage's data at a time (tables are scanned lazily, see the README's large-input
figures), but the allocators keep what a stage freed: glibc keeps freed blocks in its per-thread
arenas, and polars' bundled jemalloc keeps dirty pages for ten seconds. Summed over the process
tree, that retained memory, not the data, would set the peak. So:

* :data:`JEMALLOC_CONF` is set (unless the user set it) when ``sentio_core`` is first imported,
  before polars is: jemalloc reads it once, when polars loads. Freed pages are returned at once.
* :func:`release` asks glibc to return its free blocks (``malloc_trim``); stages call it when they
  finish. Elsewhere (macOS, musl) it does nothing. It does not run the garbage collector: a
  stage's tables and arrays are freed by reference counting when it returns, and a full collection
  walks every object of the process (Prefect, MLflow, torch): in the test process that cost about
  10 s per pipeline run, and the peak of a 100,000-bar run was 1.23 GiB with or without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # polars' jemalloc is built with the _rjem_ prefix
JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"


def configure_allocator() -> None:
    """Set :data:`JEMALLOC_CONF` for polars unless the environment already says otherwise."""
    os.environ.setdefault(JEMALLOC_ENV, JEMALLOC_CONF)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release() -> None:
    """Return freed heap memory to the operating system (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
