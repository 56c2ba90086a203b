"""Evaluation metrics for classification and segmentation, and their reports (plain dicts).

Two accumulating meters share one small interface (``update``, ``reset``, ``compute``,
``report``, ``primary``); each task kind's runner builds its own, and the kind
(:mod:`visionlab.kinds`) says which metrics are better higher. The maths comes from scikit-learn for classification
and from a ``torch.bincount`` confusion matrix for segmentation (it stays on the GPU until
``compute``). Undefined values (a class that never occurs, a ROC AUC with one class in the
targets) are left out of ``compute`` and reported as ``None``, never averaged in as 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from visionlab.errors import VisionlabError

__all__ = [
    "ClassificationMeter",
    "SegmentationMeter",
    "Meter",
]

_TOP_K = (3, 5)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return names


# --------------------------------------------------------------------------- classification


class ClassificationMeter:
    """Accumulates softmax probabilities and targets; computes accuracy, macro P/R/F1, ROC AUC.

    Probabilities are kept (float32, on the CPU) rather than hard labels because ROC AUC and
    top-k accuracy need the scores. ``compute()`` returns ``accuracy``, ``balanced_accuracy``,
    ``macro_precision``, ``macro_recall``, ``macro_f1``, ``roc_auc`` (left out when the targets
    hold a single class or scores are not finite) and ``top3_accuracy``/``top5_accuracy`` when
    there are more classes than k. Macro averages run over the classes seen in the targets or
    the predictions, as in scikit-learn.
    """

    kind = "classification"
    primary = "accuracy"  # the summary metric of its report (as visionlab.kinds.classification says)

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (call at the start of each evaluation)."""
        self._probs: list[Tensor] = []
        self._targets: list[Tensor] = []

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` (N, C) raw scores and ``target`` (N,) class indices."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (N, {self.num_classes}), got {tuple(logits.shape)}")
        target = target.reshape(-1)
        if target.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} logits but {target.shape[0]} targets")
        target = target.detach().to("cpu", torch.int64)
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise VisionlabError(
                f"class index out of range 0..{self.num_classes - 1} "
                f"(got {int(target.min())}..{int(target.max())}).",
                "Check that the labels match the task's classes.",
            )
        probs = torch.softmax(logits.detach().float(), dim=1).to("cpu", torch.float32)
        self._probs.append(probs)
        self._targets.append(target)

    def merge(self, *others: "ClassificationMeter") -> "ClassificationMeter":
        """This meter with the samples of ``others`` added (the parts of a sharded evaluation)."""
        for o in others:
            self._probs += o._probs
            self._targets += o._targets
        return self

    @property
    def probs(self) -> np.ndarray:
        """All softmax probabilities seen so far, (N, C) float32."""
        if not self._probs:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        if len(self._probs) > 1:
            self._probs = [torch.cat(self._probs)]
        return self._probs[0].numpy()

    @property
    def targets(self) -> np.ndarray:
        """All targets seen so far, (N,) int64."""
        if not self._targets:
            return np.zeros((0,), dtype=np.int64)
        if len(self._targets) > 1:
            self._targets = [torch.cat(self._targets)]
        return self._targets[0].numpy()

    def __len__(self) -> int:
        return sum(int(t.shape[0]) for t in self._targets)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs, y = self.probs, self.targets
        if y.size == 0:
            raise VisionlabError("no samples were evaluated.", "Check that the evaluation split is not empty.")
        return probs, y, probs.argmax(axis=1).astype(np.int64)

    def _per_class_auc(self, probs: np.ndarray, y: np.ndarray) -> list[float | None]:
        """One-vs-rest ROC AUC per class from probabilities; None where undefined."""
        from sklearn.metrics import roc_auc_score

        if not np.isfinite(probs).all():
            return [None] * self.num_classes
        out: list[float | None] = []
        for c in range(self.num_classes):
            positive = y == c
            if positive.all() or not positive.any():
                out.append(None)
            else:
                out.append(float(roc_auc_score(positive, probs[:, c])))
        return out

    def _roc_auc(self, probs: np.ndarray, y: np.ndarray) -> float | None:
        from sklearn.metrics import roc_auc_score

        if np.unique(y).size < 2 or not np.isfinite(probs).all():
            return None
        if self.num_classes == 2:
            # Binary AUC ranks by the positive-class probability, never by hard labels.
            return float(roc_auc_score(y, probs[:, 1]))
        per_class = [a for a in self._per_class_auc(probs, y) if a is not None]
        # Equals sklearn's roc_auc_score(multi_class="ovr", average="macro") when every class
        # occurs; classes missing from the targets are skipped instead of raising.
        return float(np.mean(per_class)) if per_class else None

    def compute(self) -> dict[str, float]:
        """Summary metrics over everything seen since the last ``reset``."""
        from sklearn.metrics import (
            accuracy_score,
            balanced_accuracy_score,
            precision_recall_fscore_support,
            top_k_accuracy_score,
        )

        probs, y, pred = self._arrays()
        with warnings.catch_warnings():
            # "y_pred contains classes not in y_true" is expected on small or skewed splits.
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(y, pred)
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
        out = {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced),
            "macro_precision": float(p),
            "macro_recall": float(r),
            "macro_f1": float(f),
        }
        auc = self._roc_auc(probs, y)
        if auc is not None:
            out["roc_auc"] = auc
        labels = np.arange(self.num_classes)
        for k in _TOP_K:
            if self.num_classes > k and np.isfinite(probs).all():
                out[f"top{k}_accuracy"] = float(top_k_accuracy_score(y, probs, k=k, labels=labels))
        return out

    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 counts, rows = true class, columns = predicted class."""
        from sklearn.metrics import confusion_matrix

        _, y, pred = self._arrays()
        return confusion_matrix(y, pred, labels=np.arange(self.num_classes)).astype(np.int64)

    def report(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready report: summary ``metrics``, ``per_class`` scores and ``confusion_matrix``.

        Per-class precision is ``None`` for a class never predicted, recall/F1 ``None`` for a
        class absent from the targets; ``roc_auc`` is one-vs-rest.
        """
        from sklearn.metrics import precision_recall_fscore_support

        names = _check_class_names(class_names, self.num_classes)
        probs, y, pred = self._arrays()
        metrics: dict[str, Any] = self.compute()
        metrics.setdefault("roc_auc", None)
        labels = np.arange(self.num_classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, r, f, support = precision_recall_fscore_support(
                y, pred, labels=labels, average=None, zero_division=np.nan
            )
        predicted = np.bincount(pred, minlength=self.num_classes)
        auc = self._per_class_auc(probs, y)
        per_class = {}
        for c, name in enumerate(names):
            per_class[name] = {
                "precision": _nan_to_none(p[c]) if predicted[c] else None,
                "recall": _nan_to_none(r[c]) if support[c] else None,
                "f1": _nan_to_none(f[c]) if support[c] else None,
                "support": int(support[c]),
                "roc_auc": auc[c],
            }
        return {
            "kind": self.kind,
            "primary": self.primary,
            "class_names": names,
            "num_samples": int(y.size),
            "metrics": metrics,
            "per_class": per_class,
            "confusion_matrix": self.confusion_matrix().tolist(),
        }


# --------------------------------------------------------------------------- segmentation


class SegmentationMeter:
    """Accumulates a (C, C) pixel confusion matrix; computes mIoU, pixel accuracy, Dice, FWIoU.

    Pixels whose target equals ``ignore_index`` are dropped entirely. Classes in ``exclude``
    (e.g. an "unlabeled" class) still count for pixel accuracy but are left out of every
    class average. A class absent from both target and prediction has no IoU and is not
    averaged as 0. The matrix lives on the device of the first batch, so updates do not sync
    with the GPU beyond one range check.
    """

    kind = "segmentation"
    primary = "miou"  # the summary metric of its report (as visionlab.kinds.segmentation says)

    def __init__(self, num_classes: int, ignore_index: int = 255, exclude: Sequence[int] = ()) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class index (0..{num_classes - 1})")
        bad = [c for c in exclude if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"exclude holds indices outside 0..{num_classes - 1}: {bad}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.exclude = tuple(sorted({int(c) for c in exclude}))
        if len(self.exclude) >= self.num_classes:
            raise ValueError("exclude must leave at least one class to average over")
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._cm: Tensor | None = None

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        """Add a batch: logits (N, C, H, W) or predicted indices (N, H, W), and target (N, H, W)."""
        if output.ndim == target.ndim + 1:
            if output.shape[1] != self.num_classes:
                raise ValueError(f"logits have {output.shape[1]} channels, expected {self.num_classes}")
            pred = output.argmax(dim=1)
        else:
            pred = output
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point():
            raise ValueError("predicted indices must be an integer tensor (pass logits as (N, C, H, W))")
        device = self._cm.device if self._cm is not None else target.device
        pred = pred.detach().to(device, torch.int64).reshape(-1)
        target = target.detach().to(device, torch.int64).reshape(-1)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel():
            lo = torch.minimum(target.min(), pred.min())
            hi = torch.maximum(target.max(), pred.max())
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.num_classes:
                raise VisionlabError(
                    f"mask value out of range 0..{self.num_classes - 1} or {self.ignore_index} "
                    f"(got {lo}..{hi}).",
                    "Map mask values to class indices or to the ignore index.",
                )
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        counts = counts.reshape(self.num_classes, self.num_classes)
        self._cm = counts if self._cm is None else self._cm + counts

    def merge(self, *others: "SegmentationMeter") -> "SegmentationMeter":
        """This meter with the pixel counts of ``others`` added (the parts of a sharded evaluation)."""
        for o in others:
            if o._cm is not None:
                self._cm = o._cm.clone() if self._cm is None else self._cm + o._cm.to(self._cm.device)
        return self

    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 pixel counts, rows = true class, columns = predicted class."""
        if self._cm is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self._cm.cpu().numpy().astype(np.int64)

    def _stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(1, C) float64 tp, fp, fn, tn: what ``smp.metrics.get_stats`` counts over every pixel seen
        (ignored ones left out), read off the matrix, which is what the meter accumulates and merges."""
        cm = torch.from_numpy(self.confusion_matrix()).to(torch.float64)
        total = cm.sum()
        if total == 0:
            raise VisionlabError(
                "no labelled pixels were evaluated.",
                "Check that the evaluation split is not empty and masks are not all ignore_index.",
            )
        tp = cm.diagonal()
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        return tp[None], fp[None], fn[None], (total - tp - fp - fn)[None]

    def _per_class(self, stats: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, np.ndarray]:
        """Per-class scores of ``stats`` from smp (NaN where undefined: a class absent from target and prediction)."""
        import segmentation_models_pytorch.metrics as smp_metrics  # imported late: smp loads all its models

        scores = {name: fn(*stats, reduction="none", zero_division=math.nan)[0].numpy()
                  for name, fn in (("iou", smp_metrics.iou_score), ("dice", smp_metrics.f1_score),
                                   ("precision", smp_metrics.precision), ("recall", smp_metrics.recall))}
        tp, _, fn, _ = stats
        pixel_accuracy = smp_metrics.recall(*stats, reduction="micro")  # micro recall: correct / labelled pixels
        return {**scores, "gt": (tp + fn)[0].numpy(), "tp": tp[0].numpy(), "total": (tp + fn).sum().numpy(),
                "pixel_accuracy": pixel_accuracy.numpy()}

    def _averaged(self) -> np.ndarray:
        mask = np.ones(self.num_classes, dtype=bool)
        mask[list(self.exclude)] = False
        return mask

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_accuracy``, ``mean_dice`` (= mean F1) and ``fw_iou``.

        ``miou`` and ``mean_dice`` are NaN only when no averaged class occurs at all.
        """
        s = self._per_class(self._stats())
        keep = self._averaged()
        iou, dice = s["iou"][keep], s["dice"][keep]
        present = np.isfinite(iou)
        # smp's 'macro' reduction over the present classes is this mean, but summed by torch in another
        # order (miou moves in the 17th digit), so the per-class scores are averaged here
        out = {
            "miou": float(iou[present].mean()) if present.any() else math.nan,
            "pixel_accuracy": float(s["pixel_accuracy"]),
            "mean_dice": float(dice[present].mean()) if present.any() else math.nan,
        }
        gt = s["gt"][keep]
        if gt.sum() > 0:
            # Frequency-weighted IoU: IoU weighted by each class's share of true pixels (smp's 'weighted'
            # reduction would turn the weights into float32 and move it in the 8th digit).
            out["fw_iou"] = float((gt * np.nan_to_num(iou)).sum() / gt.sum())
        return out

    def report(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready report: summary ``metrics``, ``per_class`` scores and ``confusion_matrix``.

        Per-class values are ``None`` where undefined (class absent from target and prediction).
        """
        names = _check_class_names(class_names, self.num_classes)
        s = self._per_class(self._stats())
        per_class = {}
        for c, name in enumerate(names):
            per_class[name] = {
                "iou": _nan_to_none(s["iou"][c]),
                "dice": _nan_to_none(s["dice"][c]),
                "precision": _nan_to_none(s["precision"][c]),
                "recall": _nan_to_none(s["recall"][c]),
                "pixel_share": float(s["gt"][c] / s["total"]),
                "support": int(s["gt"][c]),
                "excluded": c in self.exclude,
            }
        return {
            "kind": self.kind,
            "primary": self.primary,
            "class_names": names,
            "num_pixels": int(s["total"]),
            "ignore_index": self.ignore_index,
            "excluded": [names[c] for c in self.exclude],
            "metrics": {k: _nan_to_none(v) for k, v in self.compute().items()},
            "per_class": per_class,
            "confusion_matrix": self.confusion_matrix().tolist(),
        }


Meter = Union[ClassificationMeter, SegmentationMeter]
