"""Synthetic segmentation data: aerial-like mosaics of textured class regions, each with its mask
and ``classes.json``, written as real JPEG/PNG files in the segmentation layout, so the whole
pipeline (decode, cache, crops, tiles) runs with no download.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_segmentation"]

_PALETTE = ["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B", "#E6194B", "#3CB44B", "#4363D8", "#F58231"]


def _texture(k: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hue = (k * 0.17) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.5 + 0.08 * (k % 4)), dtype=np.float32)
    pattern = 0.5 + 0.5 * np.sin(xx / (2 + k) + yy / (3 + 2 * k))
    img = base[None, None, :] * (0.75 + 0.25 * pattern[..., None])
    return img + rng.normal(0, 0.03, (h, w, 3)).astype(np.float32)


def make_segmentation(root: Path, classes: list[str], n_images: int = 12, size: tuple[int, int] = (320, 256), seed: int = 0) -> Path:
    """Write ``images/``, ``masks/`` and ``classes.json`` with blocky class regions."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    n = len(classes)
    for i in range(n_images):
        mask = np.full((h, w), 1 % n, dtype=np.uint8)
        for _ in range(10):
            k = int(rng.integers(0, n))
            x0, y0 = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
            x1, y1 = x0 + int(rng.integers(16, w // 2)), y0 + int(rng.integers(16, h // 2))
            mask[y0:y1, x0:x1] = k
        img = np.zeros((h, w, 3), dtype=np.float32)
        for k in range(n):
            sel = mask == k
            if sel.any():
                img[sel] = _texture(k, (h, w), rng)[sel]
        mask[rng.random((h, w)) < 0.002] = 255  # a few unannotated pixels, like the real masks
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"tile_{i:03d}.jpg", quality=92)
        Image.fromarray(mask).save(root / "masks" / f"tile_{i:03d}.png")
    spec = {"ignore_index": 255, "classes": [{"value": k, "name": c, "color": _PALETTE[k % len(_PALETTE)]} for k, c in enumerate(classes)]}
    (root / "classes.json").write_text(json.dumps(spec, indent=2))
    return root
