"""Sliding-window inference for images of any size.

Large aerial images are cut into overlapping tiles that are run in batches; tile outputs are
blended with a smooth window so seams vanish, giving a full-resolution mask without holding
the whole image's activations in memory. The geometry (:func:`visionlab.data.geometry.tile_plan`) is
free of torch, so the numpy runtime cuts exactly the same tiles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from visionlab.data.geometry import tile_plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["blend_window", "predict_tiled"]


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
