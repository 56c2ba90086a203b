"""The classification layout: ``root/<class>/*.jpg`` (METU ``Positive/Negative``, Kaggle waste
``O/R``, mineral folders), with optional split folders ``train|val|test`` (any case;
``TRAIN``/``TEST``, ``valid``); wrappers with a single sub-folder are descended
(``caltech101/101_ObjectCategories``, ``DATASET/TRAIN/O``); or a CSV with ``path,label`` (and an
optional ``split`` column).

Class names and their order come from the data (sorted folder names) or from an explicit
``classes`` list in the config, never from code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from visionlab.data.layout import SPLIT_NAMES, check_root, list_images, split_dirs, subdirs, unwrap_root
from visionlab.errors import VisionlabError

__all__ = ["ClassificationIndex", "find_classification"]


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
    p = check_root(root)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            idx = _from_csv(p, classes)
        else:
            raise VisionlabError(f"{p} is a file; classification data is a folder of class folders or a CSV.", "Pass the folder.")
    else:
        given, p = p, unwrap_root(p)
        if p != given and not subdirs(p) and list_images(p):  # descended into the one folder there is
            raise VisionlabError(
                f"{given} holds one class folder ({p.relative_to(given).as_posix()}); training needs at least two classes.",
                f"Add a folder of images for each other class next to {p.name}/ (e.g. {given}/<class>/*.jpg).",
            )
        splits = split_dirs(p)
        if splits:
            names = sorted({d.name for s in splits.values() for d in subdirs(s)})
            chosen = _select_classes(names, classes, p)
            lookup = {c: i for i, c in enumerate(chosen)}
            paths, labels, split_of = [], [], []
            for split, sdir in sorted(splits.items()):
                for cdir in subdirs(sdir):
                    if cdir.name not in lookup:
                        continue
                    for f in list_images(cdir):
                        paths.append(f); labels.append(lookup[cdir.name]); split_of.append(split)
            idx = ClassificationIndex(p, paths, labels, chosen, split_of)
        else:
            class_dirs = [d for d in subdirs(p)]
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
