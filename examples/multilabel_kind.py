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
