"""Choose the device and the numeric precision once; everything else receives them."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch

from visionlab.config import PRECISIONS
from visionlab.errors import VisionlabError

__all__ = [
    "resolve_device", "Precision", "resolve_precision", "cpu_supports_bf16", "cuda_supports_bf16", "peak_memory_mb", "speed_settings",
    "has_grouped_conv",
]


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


def cuda_supports_bf16() -> bool:
    """True on GPUs with bf16 units (Ampere and later); torch's own answer also counts GPUs that only
    emulate it (slower than fp16 there), unless told not to (torch >= 2.3)."""
    import inspect

    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.is_bf16_supported()


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


def has_grouped_conv(model: torch.nn.Module) -> bool:
    """True when ``model`` has depthwise or other grouped convolutions (EfficientNet, MobileNet)."""
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules())


def dense_spatial_conv_share(model: torch.nn.Module) -> float:
    """Share of the convolution weights in dense (ungrouped) convolutions with kernels larger than 1x1.

    0.0 for EfficientNet/MobileNet classifiers (depthwise + pointwise), 0.43 for a U-Net
    whose decoder's 3x3 convolutions sit on a Lite0 encoder, about 0.99 for ResNets."""
    total = dense = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            n = m.weight.numel()
            total += n
            if m.groups == 1 and any(k > 1 for k in m.kernel_size):
                dense += n
    return dense / total if total else 0.0


def bf16_training_is_slow(model: torch.nn.Module) -> bool:
    """oneDNN's CPU bf16 backward of depthwise convolutions is slower than fp32; it only pays off
    when dense spatial convolutions carry most of the work (see :func:`resolve_precision`)."""
    return has_grouped_conv(model) and dense_spatial_conv_share(model) < 0.2


def resolve_precision(precision: str, device: torch.device, training_model: torch.nn.Module | None = None) -> Precision:
    """'auto': bf16 on CUDA GPUs that have it (else fp16 + scaler), bf16 on CPUs with bf16 units.

    On CPU, training a ``training_model`` made of depthwise and pointwise convolutions stays in fp32
    under 'auto': oneDNN's bf16 backward of depthwise convolutions is slower than fp32, while models
    whose dense 3x3 convolutions carry the work (the small CNNs, resnet18, a U-Net on a Lite0
    encoder) train faster in bf16; the rule is :func:`bf16_training_is_slow`, not the mere presence
    of a depthwise layer (measurements: benchmarks/EXPERIMENTS.md, "Training speed on CPU").
    Inference (no ``training_model``) keeps bf16, which is faster for all of them.
    """
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise VisionlabError(f"unknown precision {precision!r}.", "Use fp32, auto, bf16 or fp16 (CUDA).")
    dt = device.type
    if p == "fp32" or dt == "mps":
        return Precision("fp32", None, dt)
    if dt == "cuda":
        if p == "auto":
            p = "bf16" if cuda_supports_bf16() else "fp16"
        return Precision(p, torch.bfloat16 if p == "bf16" else torch.float16, dt, use_scaler=p == "fp16")
    if p == "fp16":
        raise VisionlabError("precision fp16 is for CUDA; on CPU use bf16 or fp32.", "Set precision=bf16, fp32 or auto.")
    if p == "auto":
        slow_bf16 = training_model is not None and bf16_training_is_slow(training_model)
        p = "bf16" if cpu_supports_bf16() and not slow_bf16 else "fp32"
    return Precision(p, torch.bfloat16 if p == "bf16" else None, dt)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU allocator on CUDA), in MiB."""
    out: dict[str, float] = {}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 1024.0)
    except ImportError:  # Windows
        pass
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


@contextlib.contextmanager
def speed_settings() -> Iterator[None]:
    """While training: every core for intra-op work, cuDNN autotuning and TF32 matmuls on CUDA;
    the caller's thread count and flags are restored on exit.

    Scoped because visionlab may run inside someone else's program, whose numerics (TF32) and
    thread count must not change behind it. An explicit ``OMP_NUM_THREADS`` (shared machines, CI,
    several runs side by side) is respected: overriding it oversubscribes busy cores, where
    OpenMP barriers make small ops 10-100x slower. Usable as a decorator (``Trainer.fit``).
    """
    threads = torch.get_num_threads()
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    n = os.cpu_count() or 1
    if not os.environ.get("OMP_NUM_THREADS", "").strip() and threads != n:
        torch.set_num_threads(n)
    # The flags act on CUDA kernels only, so setting them on a CPU run changes nothing.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
