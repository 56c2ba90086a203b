"""Sliding-window inference for images of any size.

Large aerial images are cut into overlapping tiles that are run in batches; tile outputs are
blended with a smooth window so seams vanish, giving a full-resolution mask without holding
the whole image's activations in memory. :func:`tile_plan` (the geometry) is free of torch, so the
numpy runtime (:mod:`visionlab.runtime`) cuts exactly the same tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["tile_starts", "TilePlan", "tile_plan", "blend_window", "predict_tiled"]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` px; the last tile is flush."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an (h, w) image go: tile size, padding (bottom/right) and tile origins."""

    tile_h: int
    tile_w: int
    pad_h: int
    pad_w: int
    pad_mode: str  # "reflect", or "replicate" where the image is too small to reflect
    coords: list[tuple[int, int]]


def tile_plan(h: int, w: int, tile: int, overlap: float, multiple: int = 32) -> TilePlan:
    """Tiles of ``tile`` px with ``overlap``; an image smaller than a tile is padded up to a
    multiple of ``multiple`` (a size the network accepts) and run as one tile."""
    th = tile if h >= tile else -(-h // multiple) * multiple
    tw = tile if w >= tile else -(-w // multiple) * multiple
    pad_h, pad_w = max(0, th - h), max(0, tw - w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    sy = max(1, int(th * (1 - overlap)))
    sx = max(1, int(tw * (1 - overlap)))
    coords = [(y, x) for y in tile_starts(h + pad_h, th, sy) for x in tile_starts(w + pad_w, tw, sx)]
    return TilePlan(th, tw, pad_h, pad_w, mode, coords)


def blend_window(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """A (height, width) weight that is high in the centre and small (not zero) at the border."""
    import torch

    ry = torch.hann_window(height, periodic=False, device=device).clamp_min(1e-3)
    rx = torch.hann_window(width, periodic=False, device=device).clamp_min(1e-3)
    return ry[:, None] * rx[None, :]


def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_classes: int,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    multiple: int = 32,
) -> torch.Tensor:
    """Class probabilities (C, H, W) of a normalised float image (3, H, W) by blended tiles.

    ``forward`` maps a batch (B, 3, tile, tile) to logits (B, C, tile, tile). Images smaller
    than a tile are padded (reflect) to a size the network accepts (a multiple of ``multiple``).
    """
    import torch
    import torch.nn.functional as F

    _, h, w = image.shape
    plan = tile_plan(h, w, tile, overlap, multiple)
    th, tw = plan.tile_h, plan.tile_w
    with torch.inference_mode():
        if plan.pad_h or plan.pad_w:
            image = F.pad(image[None], (0, plan.pad_w, 0, plan.pad_h), mode=plan.pad_mode)[0]
        H, W = image.shape[1:]
        win = blend_window(th, tw, image.device)
        probs = torch.zeros(num_classes, H, W, device=image.device)
        weight = torch.zeros(1, H, W, device=image.device)
        for i in range(0, len(plan.coords), batch_size):
            chunk = plan.coords[i : i + batch_size]
            batch = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
            out = forward(batch).float().softmax(1)
            for (y, x), p in zip(chunk, out):
                probs[:, y : y + th, x : x + tw] += p * win
                weight[:, y : y + th, x : x + tw] += win
        return (probs / weight)[:, :h, :w]
