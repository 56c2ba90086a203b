"""A second plugin kind, written outside visionlab in one module: multi-label classification.

The kind ``multilabel`` gives each photo any number of labels. Its data: a folder of photos and
``labels.csv`` with the columns ``path,labels`` (a path relative to the folder; the labels
separated by ``|``, e.g. ``circle|stripes``; an empty cell is a photo with none of them) and an
optional ``split`` column (train/val/test, as the classification CSV layout). The model has one
output per label, read through a sigmoid and trained on binary cross-entropy with logits; the
report gives per-label precision, recall, F1 and average precision (scikit-learn) and their
macro mean, ``map`` (the primary metric). A label is predicted when its probability reaches the
threshold (:data:`THRESHOLD`, 0.5), which travels with the weights in the preprocessing record.

The task ``shapes`` learns which of four coloured shapes are on a synthetic photo::

    PYTHONPATH=examples VISIONLAB_PLUGINS=multilabel_kind visionlab train --task shapes --data synthetic

The runner is a module-level class built on visionlab's TaskRunner, so importing this module
imports torch (the price of one module at module level).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visionlab.data.io import UnreadableImage, load_for_model
from visionlab.data.layout import SPLIT_NAMES
from visionlab.data.splits import split_indices, split_keys
from visionlab.data.transforms import BatchAugment, Normalize
from visionlab.engine.distributed import shard_batch
from visionlab.engine.runner import EvalResult, TaskRunner, resolve_data_path
from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, Prediction, register_kind
from visionlab.registry import TaskSpec, register_task

__all__ = ["LABELS", "SEPARATOR", "THRESHOLD", "LabelsPrediction", "MultilabelKind", "MultilabelRunner", "read_labels",
           "make_shapes", "sigmoid"]

LABELS = "labels.csv"
SEPARATOR = "|"
#: A label is predicted at this probability or above. Until kinds can declare config keys of their
#: own this is the kind's setting; it is saved in every checkpoint's preprocessing record.
THRESHOLD = 0.5
SHAPES = ("circle", "square", "stripes", "triangle")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function in numpy (float32), as torch.sigmoid."""
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float32)))).astype(np.float32)


def read_labels(root: Path, wanted: Sequence[str] | None = None) -> tuple[list[Path], np.ndarray, list[str], list[str | None]]:
    """``root/labels.csv``: the image paths, the (N, C) 0/1 label matrix, the labels in order and each row's split."""
    table = root / LABELS
    if not table.is_file():
        raise VisionlabError(f"{root} has no {LABELS}.", f"Write {LABELS} with the columns path,labels (labels separated by '|').")
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "labels"} <= set(rows[0]):
        raise VisionlabError(f"{table} needs the columns path and labels.", "Fix its header line.")
    sets = [{s.strip() for s in (r["labels"] or "").split(SEPARATOR) if s.strip()} for r in rows]
    classes = list(wanted) if wanted else sorted(set().union(*sets))
    unknown = sorted(set().union(*sets) - set(classes))
    if unknown:
        raise VisionlabError(f"{table} has labels not among {classes}: {', '.join(unknown)}.", "Fix the classes or the CSV.")
    y = np.array([[c in s for c in classes] for s in sets], dtype=np.float32).reshape(len(rows), len(classes))
    splits = [SPLIT_NAMES.get(str(r.get("split") or "").lower()) for r in rows]
    return [root / r["path"] for r in rows], y, classes, splits


def _draw(img: np.ndarray, shape: str, rng: np.random.Generator) -> None:
    """One shape of its own colour at a random place of the HxWx3 float image (in place)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    r = size * rng.uniform(0.14, 0.22)
    cy, cx = rng.uniform(r, size - r, 2)
    if shape == "circle":
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (0.9, 0.15, 0.1)
    elif shape == "square":
        img[(abs(yy - cy) <= r) & (abs(xx - cx) <= r)] = (0.1, 0.8, 0.2)
    elif shape == "triangle":
        img[(yy - cy <= r) & (yy - cy >= -r) & (abs(xx - cx) <= (yy - cy + r) / 2)] = (0.15, 0.3, 0.95)
    else:  # stripes: light horizontal lines over the whole photo
        img[(yy // max(2, size // 8)) % 2 == 0] += 0.25


def make_shapes(root: Path, labels: Sequence[str] = SHAPES, n: int = 240, size: int = 48, seed: int = 0) -> None:
    """Photos on which each of ``labels`` (shapes of their own colour, stripes) is present or not, with
    probability one half each, on a dark noisy ground; ``labels.csv`` lists them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i in range(n):
        present = [lab for lab in labels if rng.random() < 0.5]
        img = rng.normal(0.1, 0.03, (size, size, 3))
        for lab in present:
            _draw(img, lab, rng)
        name = f"images/shapes_{i:03d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / name)
        lines.append(f"{name},{SEPARATOR.join(present)}")
    (root / LABELS).write_text("\n".join(lines) + "\n")


@dataclass
class LabelsPrediction(Prediction):
    """The labels of one photo: ``labels`` (those at or over the threshold, joined by '|' in ``label``)
    and every label's probability; ``confidence`` is the probability of exactly this set of labels
    if the labels are independent (the product of p for those present, 1 - p for the others)."""

    labels: list[str] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)

    def extra(self) -> dict[str, Any]:
        return {"labels": self.labels, "probabilities": self.probabilities} if self.probabilities else {}

    def flat_extra(self) -> dict[str, Any]:
        return {f"{lab}_probability": p for lab, p in self.probabilities.items()}

    def detail(self) -> str:
        return ", ".join(f"{lab} {p:.2f}" for lab, p in sorted(self.probabilities.items(), key=lambda t: -t[1]))


def answer(classes: Sequence[str], probs: Sequence[float], threshold: float) -> dict[str, Any]:
    """One photo's answer from its label probabilities: label, confidence, labels, probabilities."""
    ps = {c: round(float(p), 6) for c, p in zip(classes, probs)}
    labels = [c for c, p in ps.items() if p >= threshold]
    conf = float(np.prod([p if p >= threshold else 1.0 - p for p in ps.values()]))
    return {"label": SEPARATOR.join(labels), "confidence": round(conf, 6), "labels": labels, "probabilities": ps}


def _preprocessing(cfg: Any, kind: str) -> dict[str, Any]:
    """The record that travels with the weights: squash to image_size, the model's mean and std, the threshold."""
    from visionlab.models import model_defaults

    if cfg.tta != "none":
        raise VisionlabError(f"tta={cfg.tta!r}: the {kind} kind has no test-time augmentation.", "Set tta: none.")
    d = model_defaults(cfg.model, **cfg.model_args)
    return {"kind": kind, "resize": "squash", "image_size": int(cfg.image_size), "mean": [float(v) for v in d["mean"]],
            "std": [float(v) for v in d["std"]], "tta": "none", "threshold": THRESHOLD}
