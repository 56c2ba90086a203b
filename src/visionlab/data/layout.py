"""Find the samples of a dataset in the layouts the seed datasets are published in.

Classification
    ``root/<class>/*.jpg`` (METU ``Positive/Negative``, Kaggle waste ``O/R``, mineral folders),
    with optional split folders ``train|val|test`` (any case; ``TRAIN``/``TEST``, ``valid``),
    wrappers with a single sub-folder are descended (``caltech101/101_ObjectCategories``,
    ``DATASET/TRAIN/O``), or a CSV with ``path,label`` (and an optional ``split`` column).

The helpers every layout uses (split folders, wrapper folders, image listing) are here too; the
segmentation layout is :mod:`visionlab.kinds.segmentation.layout`. Class names and their order
always come from the data (sorted folder names), or from an explicit ``classes`` list in the
config, never from code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from visionlab.data.io import is_image_file
from visionlab.errors import VisionlabError

__all__ = [
    "SPLIT_NAMES",
    "ClassificationIndex",
    "find_classification",
    "unwrap_root",
    "list_images",
]

# Folder name (lower case) -> canonical split.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


@dataclass
class ClassificationIndex:
    """Image paths with integer labels; ``splits[i]`` is 'train'/'val'/'test' or None."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    splits: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_splits(self) -> bool:
        return any(s is not None for s in self.splits)

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for y in self.labels:
            out[self.classes[y]] += 1
        return out


def _check_root(root: str | os.PathLike) -> Path:
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


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def unwrap_root(root: Path) -> Path:
    """Descend through wrapper folders that hold exactly one folder and no images."""
    p = root
    for _ in range(4):
        subs = _subdirs(p)
        has_files = any(is_image_file(f) for f in p.iterdir() if f.is_file())
        if len(subs) == 1 and not has_files and not (p / "classes.json").exists():
            p = subs[0]
        else:
            break
    return p


def _split_dirs(p: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _subdirs(p):
        split = SPLIT_NAMES.get(d.name.lower())
        if split and split not in found:
            found[split] = d
    return found


def _select_classes(available: list[str], wanted: list[str] | None, where: Path) -> list[str]:
    if not wanted:
        return available
    missing = [c for c in wanted if c not in available]
    if missing:
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise VisionlabError(
            f"class folder(s) {', '.join(missing)} not found in {where}.",
            f"Available: {shown}. Fix 'classes' in the config.",
        )
    return list(wanted)


def _from_csv(csv_path: Path, wanted: list[str] | None) -> ClassificationIndex:
    import pandas as pd

    df = pd.read_csv(csv_path)
    cols = {c.lower(): c for c in df.columns}
    if "path" not in cols or "label" not in cols:
        raise VisionlabError(f"{csv_path}: CSV needs columns 'path' and 'label' (found {list(df.columns)}).", "Rename the columns.")
    labels_str = df[cols["label"]].astype(str).tolist()
    classes = _select_classes(sorted(set(labels_str)), wanted, csv_path)
    lookup = {c: i for i, c in enumerate(classes)}
    base = csv_path.parent
    splits_col = df[cols["split"]].astype(str).str.lower().map(lambda s: SPLIT_NAMES.get(s)) if "split" in cols else None
    paths, labels, splits = [], [], []
    for i, (rel, lab) in enumerate(zip(df[cols["path"]].astype(str), labels_str)):
        if lab not in lookup:
            continue
        p = Path(rel)
        paths.append(p if p.is_absolute() else base / p)
        labels.append(lookup[lab])
        splits.append(splits_col.iloc[i] if splits_col is not None else None)
    return ClassificationIndex(csv_path, paths, labels, classes, splits)


def find_classification(root: str | os.PathLike, classes: list[str] | None = None) -> ClassificationIndex:
    """Index a classification dataset in any supported layout (see module docstring)."""
    p = _check_root(root)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            idx = _from_csv(p, classes)
        else:
            raise VisionlabError(f"{p} is a file; classification data is a folder of class folders or a CSV.", "Pass the folder.")
    else:
        given, p = p, unwrap_root(p)
        if p != given and not _subdirs(p) and list_images(p):  # descended into the one folder there is
            raise VisionlabError(
                f"{given} holds one class folder ({p.relative_to(given).as_posix()}); training needs at least two classes.",
                f"Add a folder of images for each other class next to {p.name}/ (e.g. {given}/<class>/*.jpg).",
            )
        splits = _split_dirs(p)
        if splits:
            names = sorted({d.name for s in splits.values() for d in _subdirs(s)})
            chosen = _select_classes(names, classes, p)
            lookup = {c: i for i, c in enumerate(chosen)}
            paths, labels, split_of = [], [], []
            for split, sdir in sorted(splits.items()):
                for cdir in _subdirs(sdir):
                    if cdir.name not in lookup:
                        continue
                    for f in list_images(cdir):
                        paths.append(f); labels.append(lookup[cdir.name]); split_of.append(split)
            idx = ClassificationIndex(p, paths, labels, chosen, split_of)
        else:
            class_dirs = [d for d in _subdirs(p)]
            chosen = _select_classes([d.name for d in class_dirs], classes, p)
            paths, labels = [], []
            for i, name in enumerate(chosen):
                for f in list_images(p / name):
                    paths.append(f); labels.append(i)
            idx = ClassificationIndex(p, paths, labels, chosen, [None] * len(paths))
    if not idx.paths:
        raise VisionlabError(
            f"no images found in {p}.",
            "Expected one sub-folder of images per class (e.g. data/cat/*.jpg), split folders train/val/test, or a CSV with path,label.",
        )
    if len(idx.classes) < 2:
        raise VisionlabError(
            f"only one class ({idx.classes[0]}) found in {p}; training needs at least two classes.",
            "Add a folder of images for each other class (or, in a CSV, rows with other labels).",
        )
    empty = [c for c, n in idx.counts().items() if n == 0]
    if empty:
        raise VisionlabError(f"class(es) {', '.join(empty)} have no images in {p}.", "Add images or remove the class from 'classes'.")
    return idx
