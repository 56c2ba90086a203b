"""A second plugin kind, written outside visionlab in one module: multi-label classification.

The kind ``multilabel`` gives each photo any number of labels. Its data: a folder of photos and
``labels.csv`` with the columns ``path,labels`` (a path relative to the folder; the labels
separated by ``|``, e.g. ``circle|stripes``; an empty cell is a photo with none of them) and an
optional ``split`` column (train/val/test, as the classification CSV layout). The model has one
output per label, read through a sigmoid and trained on binary cross-entropy with logits; the
report gives per-label precision, recall, F1 and average precision (scikit-learn) and their
macro mean, ``map`` (the primary metric). A label is predicted when its probability reaches the
threshold, the kind's own config key ``label_threshold`` (0.5 by default), which travels with the
weights in the preprocessing record, so predict, serve and the exported model use the one trained with.

The task ``shapes`` learns which of four coloured shapes are on a synthetic photo::

    PYTHONPATH=examples VISIONLAB_PLUGINS=multilabel_kind visionlab train --task shapes --data synthetic

The runner is a module-level class built on visionlab's TaskRunner, so importing this module
imports torch (the price of one module at module level): its exported .onnx runs through the
torch-free runtime's code (onnxruntime, numpy) on a machine that has torch installed. A plugin
whose models must run where torch is not installed is split as the built-in kinds are: the kind in
a torch-free module, its runner in a second one that ``runner()`` imports.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visionlab.config import setting
from visionlab.data.io import UnreadableImage, load_for_model
from visionlab.data.layout import SPLIT_NAMES
from visionlab.data.preprocessing import Preprocessing
from visionlab.data.splits import split_indices, split_keys
from visionlab.data.transforms import BatchAugment, Normalize
from visionlab.engine.distributed import shard_batch
from visionlab.engine.runner import EvalResult, TaskRunner, resolve_data_path
from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, KindOptions, LoadedModel, Output, Prediction, register_kind
from visionlab.registry import TaskSpec, register_task

__all__ = ["LABELS", "SEPARATOR", "LabelsPrediction", "MultilabelKind", "MultilabelOptions", "MultilabelRunner", "read_labels",
           "make_shapes"]

LABELS = "labels.csv"
SEPARATOR = "|"
SHAPES = ("circle", "square", "stripes", "triangle")


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


def _preprocessing(cfg: Any, kind: str) -> Preprocessing:
    """The record that travels with the weights: squash to image_size, the model's mean and std, the threshold."""
    from visionlab.models import model_weights

    if cfg.tta != "none":
        raise VisionlabError(f"tta={cfg.tta!r}: the {kind} kind has no test-time augmentation.", "Set tta: none.")
    w = model_weights(cfg.model, **cfg.model_args)
    return Preprocessing(kind=kind, resize="squash", image_size=int(cfg.image_size), mean=w.mean, std=w.std, tta="none",
                         extra={"threshold": float(cfg.options.label_threshold)})


@dataclass
class MultilabelOptions(KindOptions):
    """The multi-label kind's own config key, written flat in its recipes (``label_threshold: 0.4``)."""

    label_threshold: float = setting(0.5, "a label is predicted at this probability or above (saved with the weights)")

    def checks(self) -> list[tuple[bool, str]]:
        return [(0.0 < self.label_threshold < 1.0, "label_threshold must be between 0 and 1 (exclusive)")]


def label_report(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float) -> dict[str, Any]:
    """Per-label precision, recall, F1 (at ``threshold``), average precision and support; their macro
    means (``map`` over the labels with a positive example) and the share of photos with every label right."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    pred = probs >= threshold
    p, r, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0, labels=range(len(classes)))
    ap = [float(average_precision_score(y[:, j], probs[:, j])) if y[:, j].any() else None for j in range(len(classes))]
    scored = [a for a in ap if a is not None]
    per_class = {c: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f1[j]), "ap": ap[j], "support": int(support[j])}
                 for j, c in enumerate(classes)}
    metrics = {"map": float(np.mean(scored)) if scored else 0.0, "f1": float(np.mean(f1)), "precision": float(np.mean(p)),
               "recall": float(np.mean(r)), "exact_match": float((pred == (y > 0.5)).all(1).mean())}
    return {"metrics": metrics, "per_class": per_class, "threshold": threshold}


class MultilabelRunner(TaskRunner):
    """Every image decoded once into memory; batches in a seeded random order, augmented on the device; BCE loss."""

    def prepare(self, console: Any = None) -> None:
        cfg = self.cfg
        root = resolve_data_path(cfg, self.spec, self.task_kind)
        wanted = cfg.classes or (list(self.spec.default_classes) if cfg.is_synthetic else None)
        paths, y, self.classes, splits = read_labels(root, wanted)
        self.preprocessing = self.fixed_preprocessing or _preprocessing(cfg, self.kind)
        self.threshold = float(self.preprocessing["threshold"])
        self.normalize = Normalize(self.preprocessing.mean, self.preprocessing.std).to(self.device)
        self.augment = BatchAugment(cfg.augment)
        arrays, unreadable, keep = [], [], []
        for i, p in enumerate(paths):
            try:
                arrays.append(load_for_model(p, self.preprocessing))
                keep.append(i)
            except UnreadableImage:
                unreadable.append(str(p))
        if not arrays:
            raise VisionlabError(f"no readable images in {root}.", f"Check the paths in {LABELS}.")
        self.paths, self.targets = [paths[i] for i in keep], y[keep]
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        self.splits = split_indices(split_keys(self.paths, root), None, [splits[i] for i in keep], cfg.val_fraction,
                                    cfg.test_fraction, cfg.seed)
        self.data_info = {"root": str(root), "synthetic": cfg.is_synthetic, "images": len(self.paths), "unreadable": unreadable,
                          "split_sizes": {k: int(len(v)) for k, v in self.splits.items()}, "cache": "memory",
                          "label_counts": dict(zip(self.classes, map(int, self.targets[self.splits["train"]].sum(0))))}

    def has_split_folders(self) -> bool:
        return False

    def num_train_batches(self) -> int:
        return self.global_batches(len(self.splits["train"]))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng(self.cfg.seed * 1000 + epoch).permutation(self.splits["train"])
        targets = torch.from_numpy(self.targets)
        for step in range(start_step, self.num_train_batches()):
            idx = torch.from_numpy(shard_batch(order, step, self.cfg.batch_size, self.dist))
            yield self.images[idx], targets[idx]

    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255.0)
        return self.normalize(self.augment(x) if train else x)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), target.float())

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult:
        model.eval()
        idx = self.splits[split]
        if not len(idx):
            return EvalResult({}, {}, self.primary)
        logits = []
        for chunk in self.iter_chunks(idx, batch_size or 64):
            x = self.on_device(self.images[torch.from_numpy(chunk)].to(self.device), train=False)
            with autocast():
                logits.append(model(x).float().cpu())
        out, y = torch.cat(logits), self.targets[idx]
        probs = torch.sigmoid(out).numpy()
        detail = label_report(y, probs, self.classes, self.threshold)
        metrics = {**detail["metrics"], "loss": float(F.binary_cross_entropy_with_logits(out, torch.from_numpy(y)))}
        rows = [self._row(i, t, p) for i, t, p in zip(idx, y, probs)]
        rows.sort(key=lambda r: (-r["wrong_labels"], r["path"]))
        wrong = sum(r["wrong_labels"] > 0 for r in rows)
        report = {"kind": self.kind, "primary": self.primary, "class_names": self.classes, "num_samples": int(len(idx)), **detail}
        return EvalResult(metrics, report, self.primary, rows, f"{wrong} of {len(rows)} images with a wrong label, listed first")

    def _row(self, i: int, truth: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """One evaluated photo as a flat row: its labels, the predicted ones, how many differ, every probability."""
        got = answer(self.classes, probs, self.threshold)
        true = [c for c, t in zip(self.classes, truth) if t > 0.5]
        return {"path": str(self.paths[i]), "labels": SEPARATOR.join(true), "predicted": got["label"],
                "wrong_labels": len(set(true) ^ set(got["labels"])),
                **{f"{c}_probability": p for c, p in got["probabilities"].items()}}


class MultilabelKind(Kind):
    name = "multilabel"
    primary = "map"
    options = MultilabelOptions
    outputs = (Output(name="logits", per="image", activation="sigmoid", meaning="logits of each label, per image"),)
    preprocessing_keys = {"threshold": float}  # saved with the weights (multilabel_preprocessing)
    demo_options = {"epochs": 3, "batch_size": 16, "early_stopping": 0}
    per_class_columns = ("precision", "recall", "f1", "ap", "support")
    examples_heading = "Images with a wrong label"
    detail_column = "probabilities"

    def runner(self, cfg: Any, spec: Any, device: Any) -> Any:
        return MultilabelRunner(cfg, spec, device, self)

    def make_synthetic(self, root: Path, classes: list[str], seed: int) -> None:
        make_shapes(root, classes, seed=seed)

    def demo_inputs(self, root: Path) -> list[Path]:
        return read_labels(root)[0][:4]

    def recognizes(self, path: Path) -> bool:
        """A folder with labels.csv whose labels column gives some photo several labels."""
        try:
            return bool((read_labels(path)[1].sum(1) > 1).any())
        except (VisionlabError, OSError, UnicodeDecodeError, csv.Error):
            return False

    def predict_arrays(self, model: LoadedModel, arrays: Sequence[Any], top_k: int, sources: Sequence[str],
                       originals: Sequence[Any]) -> list[Prediction]:
        """One batch: normalise, the model, sigmoid, the labels at or over the saved threshold."""
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]).permute(0, 3, 1, 2)
        x = model.normalize(x.to(model.device))
        with model.autocast():
            probs = torch.sigmoid(model.model(x).float()).cpu().numpy()
        threshold = float(model.preprocessing["threshold"])
        return [LabelsPrediction(s, **answer(model.classes, p, threshold)) for s, p in zip(sources, probs)]

    def answer_difference(self, prediction: Any, row: Mapping[str, Any]) -> tuple[float, int, int]:
        """Every label's probability, and whether the sets of labels agree."""
        ours, theirs = prediction.probabilities, row["probabilities"]
        if ours.keys() != theirs.keys():
            return float("inf"), 0, 1
        return max(abs(ours[c] - theirs[c]) for c in ours), int(set(prediction.labels) == set(row["labels"])), 1

    def runtime_rows(self, runtime: Any, batch: Sequence[tuple[Any, Any]], top_k: int) -> list[dict[str, Any]]:
        """One batch through the ONNX model with numpy: normalise, the output's sigmoid (its description), the threshold."""
        x = runtime.normalize(np.stack([a for _, a in batch]).transpose(0, 3, 1, 2))
        threshold = float(runtime.preprocessing["threshold"])
        return [{**answer(runtime.classes, p, threshold), "error": None} for p in runtime.probs(x)]


register_kind(MultilabelKind())
register_task(TaskSpec(
    name="shapes", kind="multilabel", default_classes=SHAPES, seed_model="cracks_cnn",
    recipe=str(Path(__file__).with_name("shapes.yaml")),
    description="Which of four coloured shapes are on a photo (several labels per photo; an example plugin).",
))
