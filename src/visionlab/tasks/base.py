"""What the trainer needs from a task kind, and the pieces both kinds share.

A :class:`TaskRunner` prepares the data of one run and supplies the step: batches, the
on-device transform, the loss and the evaluation. The trainer owns everything else
(device, precision, optimiser, schedule, checkpoints, early stopping, logging).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from visionlab.config import Config
from visionlab.errors import VisionlabError
from visionlab.registry import TaskSpec

__all__ = ["TaskRunner", "EvalResult", "split_indices", "resolve_data_path", "runner_for", "thumbnail"]


@dataclass
class EvalResult:
    """Metrics of one pass over a split; ``report`` holds per-class detail for ``evaluate``."""

    metrics: dict[str, float]
    report: dict[str, Any]
    primary: str
    files: list[dict[str, Any]] | None = None  # one row per image (path, label, predicted, ...), worth-a-look first
    files_note: str = ""  # what the order of ``files`` means, for the user
    # the images worth a look (most confident mistakes, worst IoU): {"title", "images": {caption: PIL image}, "fields"}
    examples: list[dict[str, Any]] | None = None


def thumbnail(image: Any, max_side: int = 320) -> Any:
    """A copy of a PIL image no larger than ``max_side`` on either side."""
    out = image.copy()
    out.thumbnail((max_side, max_side))
    return out


def resolve_data_path(cfg: Config, spec: TaskSpec, classes: list[str]) -> Path:
    """``cfg.data`` as a folder; 'synthetic' makes (once) the task's synthetic dataset."""
    if cfg.is_synthetic:
        from visionlab.data.synthetic import make_synthetic

        return make_synthetic(spec.name, spec.kind, classes, seed=0)
    return Path(cfg.data).expanduser()


def split_indices(
    n: int,
    labels: np.ndarray | None,
    folder_splits: list[str | None],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Indices of train/val/test: the dataset's own split folders when present, otherwise a
    stratified (for labels) split with a fixed seed. Missing val is carved from train."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    fs = np.array([s or "" for s in folder_splits]) if folder_splits else np.array([""] * n)

    def carve(pool: np.ndarray, frac: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        if frac <= 0 or len(pool) < 2:
            return pool, pool[:0]
        strat = labels[pool] if labels is not None else None
        if strat is not None and (np.bincount(strat).min(initial=0) < 2 or len(pool) * frac < len(np.unique(strat))):
            strat = None  # too few samples per class to stratify
        try:
            a, b = train_test_split(pool, test_size=frac, random_state=seed + salt, stratify=strat)
        except ValueError:
            a, b = train_test_split(pool, test_size=frac, random_state=seed + salt)
        return np.sort(a), np.sort(b)

    if (fs != "").any():
        train, val, test = idx[fs == "train"], idx[fs == "val"], idx[fs == "test"]
        if len(val) == 0 and len(train):
            train, val = carve(train, val_fraction, 1)
        return {"train": train, "val": val, "test": test}
    rest, test = carve(idx, test_fraction, 0)
    train, val = carve(rest, val_fraction / max(1e-9, 1 - test_fraction), 1)
    return {"train": train, "val": val, "test": test}


def default_workers(cfg: Config, device: torch.device) -> int:
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device.type == "cuda" else (0 if cpus <= 2 else min(4, cpus // 2))


class TaskRunner(ABC):
    """One run's data and step for a task kind (see module docstring)."""

    kind: str = ""
    primary: str = ""  # validation metric to monitor, without the 'val_' prefix

    def __init__(self, cfg: Config, spec: TaskSpec, device: torch.device) -> None:
        self.cfg, self.spec, self.device = cfg, spec, device
        self.classes: list[str] = []
        self.preprocessing: dict[str, Any] = {}
        self.data_info: dict[str, Any] = {}
        # Set by evaluate: the checkpoint's preprocessing wins over one recomputed from config.
        self.fixed_preprocessing: dict[str, Any] | None = None
        # Set by evaluate: how many examples worth a look (with thumbnails) ``evaluate`` returns.
        self.examples: int = 0

    @abstractmethod
    def prepare(self, console: Any = None) -> None:
        """Index the data, split it, cache it; fills classes, preprocessing, data_info."""

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """CPU batches (uint8 images, targets) for one epoch."""

    @abstractmethod
    def num_train_batches(self) -> int: ...

    @abstractmethod
    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch already on the device -> normalised float input (augmented when train)."""

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-level mixing of a normalised training batch (mixup/CutMix); identity by default."""
        return x, y

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult: ...

    def split_size(self, split: str) -> int:
        return len(self.splits.get(split, ()))  # type: ignore[attr-defined]

    def iter_chunks(self, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(indices), batch_size):
            yield indices[i : i + batch_size]


def runner_for(cfg: Config, spec: TaskSpec, device: torch.device) -> TaskRunner:
    from visionlab.tasks.classification import ClassificationRunner
    from visionlab.tasks.segmentation import SegmentationRunner

    kinds = {"classification": ClassificationRunner, "segmentation": SegmentationRunner}
    if spec.kind not in kinds:
        raise VisionlabError(f"task kind {spec.kind!r} has no runner.", f"Known kinds: {', '.join(kinds)}.")
    return kinds[spec.kind](cfg, spec, device)
