"""Synthetic datasets for any task, made on the fly so the main job runs with no downloads.

Each classification class gets its own learnable pattern (stripe angle and frequency, colour)
under random phase, brightness and noise; the segmentation kind makes its own
(:mod:`visionlab.kinds.segmentation.synthetic`). Files are written as real PNG/JPEG files in
the task's layout, so the whole pipeline (decode, cache, augment) runs.
Everything produced from this data is labelled SYNTHETIC in the outputs.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["synthetic_root", "make_classification", "make_synthetic", "SYNTHETIC_MARKER"]

SYNTHETIC_MARKER = ".visionlab-synthetic"


def synthetic_root() -> Path:
    from visionlab.paths import cache_home

    return cache_home() / "synthetic"


def _class_image(k: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * k / n_classes + rng.normal(0, 0.05)
    freq = 3.0 + 2.0 * (k % 3) + rng.uniform(-0.3, 0.3)
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    hue = (k / n_classes + rng.normal(0, 0.02)) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.9), dtype=np.float32)
    img = wave[..., None] * rgb[None, None, :] + (1 - wave[..., None]) * 0.15
    img = img * rng.uniform(0.7, 1.1) + rng.normal(0, 0.06, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_classification(root: Path, classes: list[str], per_class: int = 24, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/<class>/img_NNN.png`` for each class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_class_image(k, len(classes), size, rng)).save(d / f"img_{i:03d}.png")
    return root


def make_synthetic(task: str, write: Callable[[Path], None], seed: int = 0, root: Path | None = None) -> Path:
    """Make (once, then reuse) the synthetic dataset of a task and return its folder.

    ``write(folder)`` writes the dataset into an empty folder (the task kind's maker, e.g.
    :func:`make_classification`); the folder is renamed into place when complete."""
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
