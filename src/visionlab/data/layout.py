"""Find the samples of a dataset: the pieces every kind's layout is built of (split folder names,
wrapper folders, image listings).

A kind's own layout lives with its kind (:mod:`visionlab.kinds.classification.layout`,
:mod:`visionlab.kinds.segmentation.layout`). Class names and their order
always come from the data (sorted folder names), or from an explicit ``classes`` list in the
config, never from code.
"""

from __future__ import annotations

import os
from pathlib import Path

from visionlab.data.io import is_image_file
from visionlab.errors import VisionlabError

__all__ = [
    "SPLIT_NAMES",
    "unwrap_root",
    "check_root",
    "subdirs",
    "split_dirs",
    "list_images",
]

# Folder name (lower case) -> canonical split.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as a path (``~`` expanded) that exists; else one line that says what to pass."""
    p = Path(root).expanduser()
    if not p.exists():
        raise VisionlabError(f"data path {p} does not exist.", "Pass --data with a folder in the task's layout, or --data synthetic.")
    return p


def list_images(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted, hidden files skipped)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f))
    return out


def subdirs(p: Path) -> list[Path]:
    """The folders in ``p``, sorted, hidden (``.``) and private (``_``) ones skipped."""
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def unwrap_root(root: Path) -> Path:
    """Descend through wrapper folders that hold exactly one folder and no images."""
    p = root
    for _ in range(4):
        subs = subdirs(p)
        has_files = any(is_image_file(f) for f in p.iterdir() if f.is_file())
        if len(subs) == 1 and not has_files and not (p / "classes.json").exists():
            p = subs[0]
        else:
            break
    return p


def split_dirs(p: Path) -> dict[str, Path]:
    """The split folders in ``p`` (train, val, test under any of their names), by canonical split."""
    found: dict[str, Path] = {}
    for d in subdirs(p):
        split = SPLIT_NAMES.get(d.name.lower())
        if split and split not in found:
            found[split] = d
    return found


