"""The torch-free geometry of inference: where the tiles of a large image go, and which flipped and
rotated views test-time augmentation averages.

Plain Python, so the PyTorch step (:mod:`visionlab.engine.tiling`, :mod:`visionlab.engine.tta`) and
the numpy runtime (:mod:`visionlab.runtime`, :mod:`visionlab.data.arrays`) cut exactly the same
tiles and average exactly the same views, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["tile_starts", "TilePlan", "tile_plan", "TTA_MODES", "view_plan"]

#: The test-time augmentation modes: ``none`` runs the model once; ``hflip`` adds the mirror image;
#: ``flips`` the horizontal, vertical and both flips (4 views); ``d4`` all 8 rotations and reflections
#: of the square.
TTA_MODES = ("none", "hflip", "flips", "d4")


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


def view_plan(mode: str, square: bool) -> list[tuple[int, bool]]:
    """The views of ``mode`` as (quarter turns on the last two dims, then a horizontal flip),
    identity first. A view's inverse is the flip, then the turns back."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    if mode == "none":
        return [(0, False)]
    if mode == "hflip":
        return [(0, False), (0, True)]
    if mode == "flips" or not square:  # quarter turns of a non-square input change its shape
        return [(0, False), (0, True), (2, True), (2, False)]  # identity, h, v (= half turn + h), h + v
    return [(k, f) for k in range(4) for f in (False, True)]
