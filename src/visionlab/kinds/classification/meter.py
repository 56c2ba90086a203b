"""The classification meter: accuracy, macro precision/recall/F1, ROC AUC and top-k accuracy of
softmax probabilities, from scikit-learn; undefined values are left out of ``compute`` and
reported as ``None``, never averaged in as 0. How well the probabilities are calibrated
(:func:`calibration_metrics`: expected calibration error from torchmetrics, NLL, Brier score) and
the reliability diagram's bins (:func:`reliability_bins`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionlab.engine.metrics import check_class_names, nan_to_none
from visionlab.errors import VisionlabError

__all__ = ["ClassificationMeter", "ECE_BINS", "calibration_metrics", "reliability_bins"]

#: The k of the top-k accuracies (given when there are more classes than k).
_TOP_K = (3, 5)
#: Confidence bins of the expected calibration error and of the reliability diagram.
ECE_BINS = 15


def calibration_metrics(scores: Tensor, target: Tensor, n_bins: int = ECE_BINS) -> dict[str, float]:
    """``ece`` (expected calibration error: torchmetrics' ``MulticlassCalibrationError``, ``n_bins``
    equal-width confidence bins, L1), ``nll`` (mean cross-entropy, nats) and ``brier`` (mean over
    images of the sum over classes of (probability - one-hot)^2) of (N, C) scores read as logits."""
    from torchmetrics.classification import MulticlassCalibrationError

    scores, target = scores.detach().to("cpu", torch.float32), target.detach().to("cpu", torch.int64).reshape(-1)
    probs = scores.softmax(1)
    ece = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")(probs, target)
    onehot = torch.nn.functional.one_hot(target, probs.shape[1]).to(probs.dtype)
    return {"ece": float(ece), "nll": float(torch.nn.functional.cross_entropy(scores, target)),
            "brier": float(((probs - onehot) ** 2).sum(1).mean())}


def reliability_bins(probs: np.ndarray, target: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram's bins: equal-width confidence bins (as the ECE's), each with its
    images' mean confidence and accuracy (None when empty) and its count."""
    conf, correct = probs.max(1), probs.argmax(1) == target
    which = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)  # [lo, hi) as torchmetrics' bins (1.0: the last)
    count = np.bincount(which, minlength=n_bins)
    mean_conf = np.bincount(which, weights=conf, minlength=n_bins)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    return {"edges": np.linspace(0, 1, n_bins + 1).round(6).tolist(), "count": count.tolist(),
            "confidence": [float(c / n) if n else None for c, n in zip(mean_conf, count)],
            "accuracy": [float(h / n) if n else None for h, n in zip(hits, count)]}


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

        names = check_class_names(class_names, self.num_classes)
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
                "precision": nan_to_none(p[c]) if predicted[c] else None,
                "recall": nan_to_none(r[c]) if support[c] else None,
                "f1": nan_to_none(f[c]) if support[c] else None,
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
