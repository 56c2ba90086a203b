"""Process-wide settings that visionlab's own commands apply, and a library import never does.

The ``visionlab`` command calls :func:`tune_process` before any command runs. A program that
imports visionlab keeps its process as it was; call ``visionlab.tune_process()`` once at its
start to get the command's speed on CPU and its limit on image size. Both settings are for the
whole process and cannot be undone, so they are not applied behind the caller's back. (The
thread count and cuDNN/TF32 flags that training uses are scoped instead: see
:func:`visionlab.engine.device.speed_settings`.) Imports no torch.
"""

from __future__ import annotations

import os
import sys

__all__ = ["tune_process", "tune_cpu_allocator", "LARGE_IMAGE_PIXELS"]

#: PIL's decompression-bomb limit while visionlab's commands run: large aerial orthophotos pass
#: (LandCover.ai is 9000 x 9500), bombs do not (PIL warns above this and refuses above twice it).
LARGE_IMAGE_PIXELS = 300_000_000

_ALLOCATOR_TUNED = False


def tune_process() -> None:
    """Apply what the ``visionlab`` command sets for its process: PIL's image-size limit
    (:data:`LARGE_IMAGE_PIXELS`) and :func:`tune_cpu_allocator`."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = LARGE_IMAGE_PIXELS
    tune_cpu_allocator()


def tune_cpu_allocator() -> bool:
    """Let glibc reuse the memory of large CPU tensors instead of mapping fresh pages every step.

    PyTorch allocates CPU tensors with plain ``malloc``. glibc serves blocks above its mmap
    threshold (at most 32 MiB, adapting) with ``mmap`` and unmaps them on ``free``, so each large
    activation of each training step page-faults and is zeroed by the kernel again. Raising the
    mmap and trim thresholds keeps freed blocks in the heap for the next step, which saves a large
    share of a small CNN's CPU step time (benchmarks/EXPERIMENTS.md, "glibc malloc tuning"). Freed memory then stays with the process (up to 2 GiB at the top of the heap) for as
    long as it runs, which is why only :func:`tune_process` applies it. Once per process, glibc
    only; ``VISIONLAB_MALLOC_TUNING=0`` leaves the allocator alone. Returns whether the settings
    are in place.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("VISIONLAB_MALLOC_TUNING", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: leave them alone
            return False
        m_trim_threshold, m_mmap_threshold, limit = -1, -3, 1 << 30
        _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, 2 * limit))
    except (OSError, AttributeError):
        return False
    return _ALLOCATOR_TUNED
