"""The config keys only classification tasks read (``Kind.options`` of the classification kind)."""

from __future__ import annotations

from dataclasses import dataclass

from visionlab.config import setting
from visionlab.kinds.base import KindOptions

__all__ = ["ClassificationOptions"]


@dataclass
class ClassificationOptions(KindOptions):
    """A classifier's own keys, written flat in its recipes beside the common ones."""

    background_removal: bool = setting(False, "remove the background before resizing (the minerals seed's edges and contours; "
                                       "at train and predict time)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    mixup: float = setting(0.0, "Beta(alpha, alpha) of mixup between pairs of training images (0 = off)",
                           instead={"segmentation": "masks cannot be blended; 'cutmix' works for segmentation (a box of image and mask is pasted)"})
    unknown_accept: float = setting(0.95, "share of known validation photos the unknown detector's threshold accepts (the rest "
                                    "of its photos, and photos of none of the classes below it, are answered 'unknown')")
    unknown_score: str = setting("mahalanobis", "the unknown detector's score: mahalanobis (distance to the nearest class mean "
                                 "of the training features, shared covariance shrunk by Ledoit-Wolf; measured best) or knn "
                                 "(cosine similarity to the nearest training photo's features)")

    def checks(self) -> list[tuple[bool, str]]:
        return [(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                (0 <= self.mixup <= 10, "mixup is a Beta alpha in [0, 10] (0 = off; 0.2-1 usual)"),
                (0.5 <= self.unknown_accept < 1, "unknown_accept is a share of known photos in [0.5, 1) (0.95 usual)"),
                (self.unknown_score in ("mahalanobis", "knn"), f"unknown_score must be mahalanobis or knn, got {self.unknown_score!r}")]
