"""The numpy twins of the PyTorch inference ops, for the torch-free runtime and the kinds' runtime rows.

Each function says which torch call it reproduces; :func:`predict_tiled` is
:func:`visionlab.engine.tiling.predict_tiled` over a function that returns probabilities, cut by
the same :func:`visionlab.data.geometry.tile_plan`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from visionlab.data.geometry import tile_plan

__all__ = ["softmax", "apply_view", "undo_view", "blend_window", "pad_bottom_right", "resize_bilinear", "predict_tiled"]


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """``torch.softmax(x, axis)``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def apply_view(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One view of :func:`visionlab.data.geometry.view_plan`: ``k`` quarter turns on the last two dims, then a horizontal flip."""
    x = np.rot90(x, k, axes=(-2, -1)) if k else x
    return x[..., ::-1] if flip else x


def undo_view(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`apply_view`: the flip, then the turns back."""
    x = x[..., ::-1] if flip else x
    return np.rot90(x, -k, axes=(-2, -1)) if k else x


def _hann(n: int) -> np.ndarray:
    """``torch.hann_window(n, periodic=False).clamp_min(1e-3)``."""
    return np.maximum(np.hanning(n), 1e-3).astype(np.float32)


def blend_window(height: int, width: int) -> np.ndarray:
    """:func:`visionlab.engine.tiling.blend_window`: high in the centre, small (not zero) at the border."""
    return _hann(height)[:, None] * _hann(width)[None, :]


def pad_bottom_right(x: np.ndarray, pad_h: int, pad_w: int, mode: str) -> np.ndarray:
    """``F.pad(..., mode='reflect' | 'replicate')`` on the bottom and right of a (C, H, W) array."""
    return np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect" if mode == "reflect" else "edge")


def _resize_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def resize_bilinear(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(p[None], size, mode='bilinear', align_corners=False)[0]`` for (C, H, W)."""
    y0, y1, ly = _resize_axis(p.shape[1], size[0])
    x0, x1, lx = _resize_axis(p.shape[2], size[1])
    rows = p[:, y0] * (1 - ly)[None, :, None] + p[:, y1] * ly[None, :, None]
    return rows[:, :, x0] * (1 - lx) + rows[:, :, x1] * lx


def predict_tiled(probs: Callable[[np.ndarray], np.ndarray], image: np.ndarray, num_classes: int, tile: int,
                  overlap: float, batch_size: int = 8) -> np.ndarray:
    """(C, H, W) probabilities of a normalised (3, H, W) image by blended tiles; ``probs`` maps a
    batch of tiles (B, 3, th, tw) to their probabilities (B, C, th, tw)."""
    _, h, w = image.shape
    plan = tile_plan(h, w, tile, overlap)
    th, tw = plan.tile_h, plan.tile_w
    if plan.pad_h or plan.pad_w:
        image = pad_bottom_right(image, plan.pad_h, plan.pad_w, plan.pad_mode)
    win = blend_window(th, tw)
    out = np.zeros((num_classes,) + image.shape[1:], dtype=np.float32)
    weight = np.zeros((1,) + image.shape[1:], dtype=np.float32)
    for i in range(0, len(plan.coords), batch_size):
        chunk = plan.coords[i : i + batch_size]
        for (y, x), p in zip(chunk, probs(np.stack([image[:, y : y + th, x : x + tw] for y, x in chunk]))):
            out[:, y : y + th, x : x + tw] += p * win
            weight[:, y : y + th, x : x + tw] += win
    return (out / weight)[:, :h, :w]
