"""Test-time augmentation for classifiers: average the class probabilities of flipped views.

``none`` runs the model once; ``hflip`` adds the mirror image; ``flips`` the horizontal, vertical
and both flips (4 views); ``d4`` all 8 rotations and reflections of the square (for photos with
no up or down: minerals, textures, aerial views). The mode is saved in a checkpoint's
preprocessing, so ``evaluate`` and ``predict`` score exactly what validation scored.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["TTA_MODES", "tta_views", "tta_logits"]

TTA_MODES = ("none", "hflip", "flips", "d4")


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The augmented copies of an NCHW batch (the batch itself first)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    views = [x]
    if mode == "hflip":
        views.append(x.flip(3))
    elif mode == "flips":
        views += [x.flip(3), x.flip(2), x.flip(2, 3)]
    elif mode == "d4":
        if x.shape[-1] != x.shape[-2]:  # quarter turns of a non-square input change its shape
            views += [x.flip(3), x.flip(2), x.flip(2, 3)]
        else:
            for k in range(4):
                r = x.rot90(k, (2, 3)) if k else x
                views += ([r.flip(3)] if k == 0 else [r, r.flip(3)])
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none",
               autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """Float32 scores of ``x``: the model's logits for ``none``, otherwise the log of the views'
    mean softmax, so ``softmax``/``argmax``/cross-entropy of the result mean what they say."""
    from contextlib import nullcontext

    ctx = autocast or nullcontext
    if mode == "none":
        with ctx():
            return model(x).float()
    views = tta_views(x, mode)
    probs = None
    for v in views:
        with ctx():
            p = model(v).float().softmax(1)
        probs = p if probs is None else probs.add_(p)
    return probs.div_(len(views)).clamp_min_(1e-12).log_()
