"""Process-wide tuning, done once at CLI or worker start-up and never inside library calls, so
`gradbench.run()` inside someone else's pytest leaves their process as it was."""

from __future__ import annotations

import ctypes
import sys

import torch

_state = {"malloc_tuned": False}


def tune_malloc() -> None:
    """Keep glibc from returning chunk-sized blocks to the kernel after every chunk.

    Why: by default glibc serves blocks over a (dynamic) threshold with fresh mmap pages and
    trims the heap top above 128 KiB, so every chunk's temporaries (~0.25-1 MiB each) pay page
    faults and zeroing again: measured here, that doubled run_cell's CPU time at dim 1. Serving
    blocks under 32 MiB from the heap and trimming only above 256 MiB of free heap fixes it;
    peak memory stays the chunk's working set. Process-wide, once; a no-op off glibc.
    """
    if _state["malloc_tuned"]:
        return
    _state["malloc_tuned"] = True
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        pass


def configure(threads: int | None) -> None:
    """What a bench process (the CLI, or a worker) sets up before computing cells."""
    tune_malloc()
    if threads is not None:
        torch.set_num_threads(threads)
