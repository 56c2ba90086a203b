"""Evaluation metrics for classification and segmentation, and their reports.

Two accumulating meters share one small interface (``update``, ``reset``, ``compute``,
``report``, ``primary``); each task kind's runner builds its own, and the kind
(:mod:`visionlab.kinds`) says which metrics are better higher. The maths comes from scikit-learn for classification
and from a ``torch.bincount`` confusion matrix for segmentation (it stays on the GPU until
``compute``). Undefined values (a class that never occurs, a ROC AUC with one class in the
targets) are left out of ``compute`` and reported as ``None``, never averaged in as 0.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionlab.errors import VisionlabError

__all__ = [
    "inert_text",
    "ClassificationMeter",
    "render_report",
    "write_confusion_csv",
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


# --------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def render_report(
    report: dict[str, Any],
    class_names: Sequence[str] | None = None,
    console: Any = None,
    title: str = "Evaluation",
    columns: Sequence[str] | None = None,
) -> None:
    """Print a report as rich tables: summary metrics, per-class scores, confusion matrix.

    ``columns`` are the per-class columns, in order (default: those the report's kind lists)."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    names = list(class_names) if class_names is not None else list(report["class_names"])
    primary = report.get("primary")

    summary = Table(title=f"{title}: summary", show_header=True, header_style="bold")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, value in report["metrics"].items():
        label = f"[bold]{key}[/bold]" if key == primary else key
        summary.add_row(label, _fmt(value))
    count_key = "num_samples" if "num_samples" in report else "num_pixels"
    if count_key in report:
        summary.add_row(count_key.replace("num_", ""), _fmt(report[count_key]))
    console.print(summary)

    per_class = report.get("per_class", {})
    if per_class:
        if columns is None:
            from visionlab.kinds import get_kind

            columns = get_kind(report["kind"]).per_class_columns
        table = Table(title=f"{title}: per class", header_style="bold")
        table.add_column("class")
        for col in columns:
            table.add_column(col, justify="right")
        for name, stats in zip(names, per_class.values()):
            suffix = " (excluded)" if stats.get("excluded") else ""
            table.add_row(name + suffix, *(_fmt(stats.get(col)) for col in columns))
        console.print(table)

    cm = report.get("confusion_matrix")
    if cm:
        table = Table(title=f"{title}: confusion matrix (rows = true, columns = predicted)", header_style="bold")
        table.add_column("true \\ pred")
        for name in names:
            table.add_column(name, justify="right")
        for i, (name, row) in enumerate(zip(names, cm)):
            cells = [f"[green]{_fmt(v)}[/green]" if j == i else _fmt(v) for j, v in enumerate(row)]
            table.add_row(name, *cells)
        console.print(table)


#: How a text cell starts that a spreadsheet runs as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert_text(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula (a file
    or a class named ``=HYPERLINK(...)``), anything else as it is: every CSV visionlab writes
    passes its cells through it (the JSON outputs keep the names exactly)."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def write_confusion_csv(cm: Any, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Write a confusion matrix as CSV (rows = true, columns = predicted); returns the path."""
    import pandas as pd

    arr = np.asarray(cm)
    names = [inert_text(str(n)) for n in class_names]
    if arr.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix shape {arr.shape} does not match {len(names)} class names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(arr, index=pd.Index(names, name="true"), columns=names)
    frame.to_csv(path)
    return path
