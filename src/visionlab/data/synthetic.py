"""Synthetic datasets for any task, made on the fly so the main job runs with no downloads.

:func:`make_synthetic` makes a task's dataset once, with the maker of its kind (classification's
is :mod:`visionlab.kinds.classification.synthetic`); segmentation images are aerial-like mosaics of
textured class regions with a matching mask and ``classes.json``. Files are written as real
PNG/JPEG files in the task's layout, so the whole pipeline (decode, cache, augment) runs.
Everything produced from this data is labelled SYNTHETIC in the outputs.
"""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["synthetic_root", "make_segmentation", "make_synthetic", "SYNTHETIC_MARKER"]

SYNTHETIC_MARKER = ".visionlab-synthetic"
_PALETTE = ["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B", "#E6194B", "#3CB44B", "#4363D8", "#F58231"]


def synthetic_root() -> Path:
    from visionlab.paths import cache_home

    return cache_home() / "synthetic"


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


def make_synthetic(task: str, write: Callable[[Path], None], seed: int = 0, root: Path | None = None) -> Path:
    """Make (once, then reuse) the synthetic dataset of a task and return its folder.

    ``write(folder)`` writes the dataset into an empty folder (the task kind's maker, e.g.
    :func:`visionlab.kinds.classification.synthetic.make_classification`); the folder is renamed into place when complete."""
    folder = (root or synthetic_root()) / f"{task}-v1-s{seed}"
    if (folder / SYNTHETIC_MARKER).exists():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    write(tmp)
    (tmp / SYNTHETIC_MARKER).write_text("synthetic data made by visionlab\n")
    try:
        tmp.rename(folder)
    except OSError:  # made concurrently by another process: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder
