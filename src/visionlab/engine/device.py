"""Choose the device and the numeric precision once; everything else receives them."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from visionlab.errors import VisionlabError

__all__ = ["resolve_device", "Precision", "resolve_precision", "cpu_supports_bf16", "peak_memory_mb"]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VisionlabError("--device cuda was asked for but no CUDA GPU is available.", "Use --device cpu or auto.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VisionlabError(f"{name}: only {torch.cuda.device_count()} GPU(s) present.", "Pick an existing index.")
        return dev
    if name == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise VisionlabError(f"unknown device {name!r}.", "Use auto, cpu, cuda or cuda:N.")


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 / AMX), where autocast pays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch
        return False


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether a gradient scaler is needed (fp16 on CUDA)."""

    name: str
    dtype: torch.dtype | None
    device_type: str
    use_scaler: bool = False

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def factory(self) -> Callable[[], ContextManager]:
        return self.autocast


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """'auto': bf16 on CUDA GPUs that have it (else fp16 + scaler), bf16 on CPUs with bf16 units."""
    p = precision.lower()
    dt = device.type
    if p == "fp32" or dt == "mps":
        return Precision("fp32", None, dt)
    if dt == "cuda":
        if p == "auto":
            p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(p, torch.bfloat16 if p == "bf16" else torch.float16, dt, use_scaler=p == "fp16")
    if p == "fp16":
        raise VisionlabError("precision fp16 is for CUDA; on CPU use bf16 or fp32.", "Set precision=bf16, fp32 or auto.")
    if p == "auto":
        p = "bf16" if cpu_supports_bf16() else "fp32"
    return Precision(p, torch.bfloat16 if p == "bf16" else None, dt)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU allocator on CUDA), in MiB."""
    out: dict[str, float] = {}
    try:
        import resource

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # Windows
        pass
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def configure_threads() -> None:
    """Use every core for intra-op work, unless ``OMP_NUM_THREADS`` sets the count.

    An explicit ``OMP_NUM_THREADS`` (shared machines, CI, several runs side by side) is respected:
    overriding it oversubscribes busy cores, where OpenMP barriers make small ops 10-100x slower.
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return
    n = os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
