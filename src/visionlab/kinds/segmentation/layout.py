"""The segmentation layout: ``root/images/*``, ``root/masks/*`` with matching stems and
``root/classes.json`` (``{"ignore_index": 255, "classes": [{"value", "name", "color"}]}``), split
folders ``train|val|test`` too.

Class names and their order come from ``classes.json`` (sorted by pixel value), never from code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from visionlab.data.layout import check_root, split_dirs, list_images, unwrap_root
from visionlab.errors import VisionlabError

__all__ = ["SegClass", "SegmentationIndex", "find_segmentation"]


@dataclass(frozen=True)
class SegClass:
    """One class of ``classes.json``: the pixel value its masks hold, its name and its colour."""

    value: int
    name: str
    color: str


@dataclass
class SegmentationIndex:
    """Image/mask path pairs plus the classes described by ``classes.json``."""

    root: Path
    images: list[Path]
    masks: list[Path | None]
    classes: list[SegClass]
    ignore_index: int = 255
    splits: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def has_splits(self) -> bool:
        return any(s is not None for s in self.splits)


def _read_classes_json(path: Path) -> tuple[list[SegClass], int]:
    try:
        spec = json.loads(path.read_text())
        classes = [SegClass(int(c["value"]), str(c["name"]), str(c.get("color", ""))) for c in spec["classes"]]
        ignore = int(spec.get("ignore_index", 255))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VisionlabError(
            f"{path}: invalid classes.json ({type(exc).__name__}: {exc}).",
            'Expected {"ignore_index": 255, "classes": [{"value": 0, "name": "...", "color": "#RRGGBB"}]}.',
        ) from None
    classes.sort(key=lambda c: c.value)
    return classes, ignore


def _pairs(folder: Path) -> tuple[list[Path], list[Path | None]]:
    img_dir = next((folder / n for n in ("images", "imgs", "image") if (folder / n).is_dir()), None)
    mask_dir = next((folder / n for n in ("masks", "labels", "mask", "annotations") if (folder / n).is_dir()), None)
    if img_dir is None:
        return [], []
    masks_by_stem = {m.stem: m for m in list_images(mask_dir)} if mask_dir else {}
    images = list_images(img_dir)
    masks = []
    for im in images:
        m = masks_by_stem.get(im.stem)
        if m is None:  # tolerate LandCover-style suffixes: x.jpg <-> x_m.png / x_mask.png
            m = masks_by_stem.get(im.stem + "_m") or masks_by_stem.get(im.stem + "_mask")
        masks.append(m)
    return images, masks


def find_segmentation(root: str | os.PathLike, require_masks: bool = True) -> SegmentationIndex:
    """Index a segmentation dataset: ``images/``, ``masks/``, ``classes.json`` (splits optional)."""
    p = unwrap_root(check_root(root))
    cj = p / "classes.json"
    if not cj.exists():
        raise VisionlabError(f"{p}: classes.json not found.", 'Add classes.json: {"ignore_index": 255, "classes": [{"value": 0, "name": "...", "color": "#RRGGBB"}]}.')
    classes, ignore = _read_classes_json(cj)
    images: list[Path] = []
    masks: list[Path | None] = []
    splits: list[str | None] = []
    by_split = split_dirs(p)
    if by_split:
        for split, sdir in sorted(by_split.items()):
            im, mk = _pairs(sdir)
            images += im; masks += mk; splits += [split] * len(im)
    else:
        images, masks = _pairs(p)
        splits = [None] * len(images)
    if not images:
        raise VisionlabError(f"no images found in {p}/images.", "Segmentation data needs images/ and masks/ with matching file names, and classes.json.")
    if require_masks:
        missing = [im.name for im, m in zip(images, masks) if m is None]
        if missing:
            raise VisionlabError(
                f"{len(missing)} image(s) in {p} have no mask (first: {missing[0]}).",
                "Add masks/<same name>.png or run 'visionlab data check' to list them.",
            )
    return SegmentationIndex(p, images, masks, classes, ignore, splits)
