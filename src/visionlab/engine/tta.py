"""Test-time augmentation: average the class probabilities of flipped and rotated views.

``none`` runs the model once; ``hflip`` adds the mirror image; ``flips`` the horizontal, vertical
and both flips (4 views); ``d4`` all 8 rotations and reflections of the square (for photos with
no up or down: minerals, textures, aerial views). The mode is saved in a checkpoint's
preprocessing, so ``evaluate`` and ``predict`` score exactly what validation scored.
Segmentation (``tta_logits(..., dense=True)``) maps each view's per-pixel probabilities back onto the
input before averaging; it runs per tile, inside the blended sliding window. The modes and their views
(:data:`visionlab.data.geometry.TTA_MODES`, :func:`~visionlab.data.geometry.view_plan`) are free of torch,
so the numpy runtime averages the same views in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from visionlab.data.geometry import view_plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["tta_views", "tta_logits", "view_logits", "dense_view_logits", "mean_scores"]

Op = Callable[["torch.Tensor"], "torch.Tensor"]


def _ops(mode: str, square: bool) -> list[tuple[Op, Op]]:
    """(transform, inverse) pairs on the last two dims, identity first."""

    def pair(k: int, flip: bool) -> tuple[Op, Op]:
        def fwd(t: torch.Tensor) -> torch.Tensor:
            t = t.rot90(k, (-2, -1)) if k else t
            return t.flip(-1) if flip else t

        def inv(t: torch.Tensor) -> torch.Tensor:
            t = t.flip(-1) if flip else t
            return t.rot90(-k, (-2, -1)) if k else t

        return fwd, inv

    return [pair(k, f) for k, f in view_plan(mode, square)]


def _like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    import torch

    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The augmented copies of an NCHW batch (the batch itself first)."""
    return [x] + [_like(f(x), x) for f, _ in _ops(mode, x.shape[-1] == x.shape[-2])[1:]]


def view_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none",
                autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """Float32 (V, N, C) logits of each view of ``x`` (identity first), the views made one at a time."""
    import torch
    from contextlib import nullcontext

    ctx = autocast or nullcontext
    out = []
    for fwd, _ in _ops(mode, x.shape[-1] == x.shape[-2]):
        with ctx():
            out.append(model(_like(fwd(x), x)).float())
    return torch.stack(out)


def dense_view_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none",
                      autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """Float32 (V, B, C, H, W) per-pixel logits of each view of ``x`` (identity first), each mapped
    back onto ``x``'s geometry: what :func:`tta_logits` averages (``dense=True``), kept apart (a
    segmentation's temperature is fitted on them)."""
    import torch
    from contextlib import nullcontext

    ctx = autocast or nullcontext
    out = []
    for fwd, inv in _ops(mode, x.shape[-1] == x.shape[-2]):
        with ctx():
            out.append(inv(model(_like(fwd(x), x)).float()))
    return torch.stack(out)


def mean_scores(views: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The scores of (V, N, C) view logits divided by ``temperature``: those logits for one view, else
    the log of the views' mean softmax, so ``softmax``/``argmax``/cross-entropy of the result mean what they say."""
    if views.shape[0] == 1:
        return views[0] / temperature
    return (views / temperature).softmax(2).mean(0).clamp_min(1e-12).log()


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none",
               autocast: Callable[[], Any] | None = None, dense: bool = False) -> torch.Tensor:
    """Float32 scores of ``x``: the model's logits for ``none``, otherwise the log of the views'
    mean softmax (:func:`mean_scores` of :func:`view_logits`).

    ``dense=True`` is for per-pixel outputs (B, C, H, W): each view's probabilities are mapped
    back onto the input's geometry before averaging.
    """
    from contextlib import nullcontext

    if not dense:
        return mean_scores(view_logits(model, x, mode, autocast))
    ctx = autocast or nullcontext
    if mode == "none":
        with ctx():
            return model(x).float()
    ops = _ops(mode, x.shape[-1] == x.shape[-2])
    probs = None
    for fwd, inv in ops:
        with ctx():
            p = inv(model(_like(fwd(x), x)).float().softmax(1))
        probs = p if probs is None else probs.add_(p)
    return probs.div_(len(ops)).clamp_min_(1e-12).log_()
