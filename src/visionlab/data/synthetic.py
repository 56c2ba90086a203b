"""Synthetic datasets for any task, made on the fly so the main job runs with no downloads.

:func:`make_synthetic` makes a task's dataset once, with the maker of its kind
(:mod:`visionlab.kinds.classification.synthetic`, :mod:`visionlab.kinds.segmentation.synthetic`).
Files are written as real PNG/JPEG files in the task's layout, so the whole pipeline (decode,
cache, augment) runs.
Everything produced from this data is labelled SYNTHETIC in the outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


__all__ = ["synthetic_root", "make_synthetic", "SYNTHETIC_MARKER"]

SYNTHETIC_MARKER = ".visionlab-synthetic"


def synthetic_root() -> Path:
    from visionlab.paths import cache_home

    return cache_home() / "synthetic"


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
