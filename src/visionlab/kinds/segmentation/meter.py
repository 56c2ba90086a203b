"""The segmentation meter: a pixel confusion matrix and the scores read off it.

It accumulates a ``torch.bincount`` confusion matrix (on the GPU until ``compute``) and takes the
per-class maths from segmentation_models_pytorch; undefined values (a class absent from target and
prediction) are left out of the averages and reported as ``None``, never averaged in as 0. The same
meter scores a whole split and each image of it (:meth:`SegmentationMeter.image_scores`), so there
is one definition of IoU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionlab.engine.metrics import check_class_names, nan_to_none
from visionlab.errors import VisionlabError

__all__ = ["SegmentationMeter"]


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
        names = check_class_names(class_names, self.num_classes)
        s = self._per_class(self._stats())
        per_class = {}
        for c, name in enumerate(names):
            per_class[name] = {
                "iou": nan_to_none(s["iou"][c]),
                "dice": nan_to_none(s["dice"][c]),
                "precision": nan_to_none(s["precision"][c]),
                "recall": nan_to_none(s["recall"][c]),
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
            "metrics": {k: nan_to_none(v) for k, v in self.compute().items()},
            "per_class": per_class,
            "confusion_matrix": self.confusion_matrix().tolist(),
        }

    def image_scores(self) -> dict[str, float | None]:
        """``miou`` and ``pixel_accuracy`` of what this meter saw, rounded to 4 digits: the per-image
        row of ``evaluate`` (one meter per image, so the image's mIoU is :meth:`compute`'s). An image
        without labelled pixels has no mIoU and a pixel accuracy of 0."""
        if not self.confusion_matrix().any():
            return {"miou": None, "pixel_accuracy": 0.0}
        scores = self.compute()
        miou = nan_to_none(scores["miou"])
        return {"miou": round(miou, 4) if miou is not None else None, "pixel_accuracy": round(scores["pixel_accuracy"], 4)}

