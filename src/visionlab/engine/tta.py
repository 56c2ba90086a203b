"""Test-time augmentation: average the class probabilities of flipped and rotated views.

``none`` runs the model once; ``hflip`` adds the mirror image; ``flips`` the horizontal, vertical
and both flips (4 views); ``d4`` all 8 rotations and reflections of the square (for photos with
no up or down: minerals, textures, aerial views). The mode is saved in a checkpoint's
preprocessing, so ``evaluate`` and ``predict`` score exactly what validation scored.
Segmentation (``tta_logits(..., dense=True)``) maps each view's per-pixel probabilities back onto the
input before averaging; it runs per tile, inside the blended sliding window.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["TTA_MODES", "tta_views", "tta_logits"]

TTA_MODES = ("none", "hflip", "flips", "d4")


Op = Callable[[torch.Tensor], torch.Tensor]


def _ops(mode: str, square: bool) -> list[tuple[Op, Op]]:
    """(transform, inverse) pairs on the last two dims, identity first."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    ident = (lambda t: t, lambda t: t)
    h = (lambda t: t.flip(-1), lambda t: t.flip(-1))
    v = (lambda t: t.flip(-2), lambda t: t.flip(-2))
    hv = (lambda t: t.flip(-2, -1), lambda t: t.flip(-2, -1))
    if mode == "none":
        return [ident]
    if mode == "hflip":
        return [ident, h]
    if mode == "flips" or not square:  # quarter turns of a non-square input change its shape
        return [ident, h, v, hv]
    ops = [ident, h]
    for k in (1, 2, 3):
        ops.append((lambda t, k=k: t.rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1))))
        ops.append((lambda t, k=k: t.rot90(k, (-2, -1)).flip(-1), lambda t, k=k: t.flip(-1).rot90(-k, (-2, -1))))
    return ops


def _like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The augmented copies of an NCHW batch (the batch itself first)."""
    return [x] + [_like(f(x), x) for f, _ in _ops(mode, x.shape[-1] == x.shape[-2])[1:]]


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none",
               autocast: Callable[[], Any] | None = None, dense: bool = False) -> torch.Tensor:
    """Float32 scores of ``x``: the model's logits for ``none``, otherwise the log of the views'
    mean softmax, so ``softmax``/``argmax``/cross-entropy of the result mean what they say.

    ``dense=True`` is for per-pixel outputs (B, C, H, W): each view's probabilities are mapped
    back onto the input's geometry before averaging.
    """
    from contextlib import nullcontext

    ctx = autocast or nullcontext
    if mode == "none":
        with ctx():
            return model(x).float()
    ops = _ops(mode, x.shape[-1] == x.shape[-2])
    probs = None
    for fwd, inv in ops:
        with ctx():
            p = model(_like(fwd(x), x)).float().softmax(1)
        if dense:
            p = inv(p)
        probs = p if probs is None else probs.add_(p)
    return probs.div_(len(ops)).clamp_min_(1e-12).log_()
