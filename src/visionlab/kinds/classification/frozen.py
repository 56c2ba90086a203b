"""Out-of-fold probabilities from the recipe backbone's frozen pretrained features and a logistic
head per fold: ``visionlab data suspects --method features`` (the default where the recipe's
backbone loads pretrained weights).

The backbone (the recipe's ``model`` and ``model_args``, its pretrained weights, its classifier left
out) runs ONCE over every photo, decoded and normalised as the recipe's checkpoints would be
(:func:`classification_preprocessing`); each photo's feature vector is the mean of the photo's and
its mirror image's. Each of the K folds then fits a standardised, L2-regularised logistic regression
(scikit-learn) on the other folds' features, for each C of the grid: 25 small convex fits, far less
than one epoch of training (107 s for 3,000 cracks photos against 1,614 s for their features, on this
project's loaded 2-core machine). The regularisation strength is chosen from :data:`C_GRID` by the out-of-fold
log loss against the given labels (nothing here knows which labels are wrong); on waste with 5 %
of the labels flipped, the same choice gave the fewest false alarms (``benchmarks/EXPERIMENTS.md``).

Why not the K fine-tunings: on a CPU, K short fine-tunings of a 4.7 M-parameter network stop far
from the recipe's accuracy (validation 0.79-0.88 on waste), and each stops at a different point, so
confident learning sees an unsure model whose honest mistakes crowd the flipped photos. A linear head
on good fixed features is a well-posed convex fit, the same in every fold, whose probabilities are
close to calibrated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from visionlab.errors import VisionlabError
from visionlab.kinds.classification.layout import ClassificationIndex

__all__ = ["C_GRID", "HeadFit", "backbone_features", "head_out_of_fold", "has_pretrained_backbone"]

#: Inverse L2 strengths tried for the logistic heads (on standardised features); the one with the
#: lowest out-of-fold log loss is kept.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass
class HeadFit:
    """What the heads did: the C kept, its out-of-fold log loss and accuracy (against the given labels)."""

    c: float
    log_loss: float
    accuracy: float


def has_pretrained_backbone(cfg: Any) -> bool:
    """Whether the recipe's model loads pretrained weights (its frozen features then mean something)."""
    from visionlab.models import model_weights

    return model_weights(cfg.model, **cfg.model_args).name is not None


def _feature_model(cfg: Any, classes: int, device: torch.device) -> torch.nn.Module:
    """The recipe's network with its pretrained weights, returning its pooled features (no classifier)."""
    from visionlab.models import build_model

    model = build_model(cfg.model, classes, **cfg.model_args)
    if not hasattr(model, "reset_classifier"):
        raise VisionlabError(f"the recipe's model {cfg.model!r} cannot give its features without its classifier.",
                             "Pass --method fine-tune (K short trainings) instead.")
    model.reset_classifier(0)
    return model.eval().to(device)


@torch.inference_mode()
def backbone_features(cfg: Any, index: ClassificationIndex, device: str = "auto", batch_size: int = 32,
                      on_batch: Callable[[int, int, int], None] | None = None) -> tuple[np.ndarray, list[str]]:
    """(N x D features, the photo's and its mirror's mean, NaN rows for unreadable photos; those photos' paths).
    ``on_batch(before, done, total)`` is called after each batch."""
    from visionlab.data.io import UnreadableImage, load_for_model
    from visionlab.data.transforms import Normalize, to_float
    from visionlab.engine.device import resolve_device
    from visionlab.kinds.classification.runner import classification_preprocessing

    dev = resolve_device(device)
    pre = classification_preprocessing(cfg)
    model, normalize = _feature_model(cfg, len(index.classes), dev), Normalize(pre.mean, pre.std).to(dev)
    feats: np.ndarray | None = None
    failed: list[str] = []
    n = len(index.paths)
    for start in range(0, n, batch_size):
        arrays, rows = [], []
        for i in range(start, min(n, start + batch_size)):
            try:
                arrays.append(load_for_model(index.paths[i], pre))
                rows.append(i)
            except UnreadableImage:
                failed.append(str(index.paths[i]))
        if rows:
            x = normalize(to_float(torch.from_numpy(np.stack(arrays)).to(dev).permute(0, 3, 1, 2)))
            f = ((model(x) + model(x.flip(3))) / 2).float().cpu().numpy()
            if feats is None:
                feats = np.full((n, f.shape[1]), np.nan, dtype=np.float32)
            feats[rows] = f
        if on_batch is not None:
            on_batch(start, min(n, start + batch_size), n)
    if feats is None:
        raise VisionlabError("no photo of the dataset could be read.", "Check the files with: visionlab data doctor DIR")
    return feats, failed


def _oof_for(features: np.ndarray, labels: np.ndarray, fold: np.ndarray, classes: int, c: float) -> np.ndarray:
    """Out-of-fold probabilities of a standardised logistic regression with inverse strength ``c``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), classes))
    features = features.astype(np.float64)  # float32 probabilities miss sklearn's sum-to-one tolerance
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        head = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(features[train], labels[train])
        probs[np.ix_(held, head[-1].classes_)] = head.predict_proba(features[held])
    return probs


def head_out_of_fold(features: np.ndarray, labels: np.ndarray, fold: np.ndarray, classes: int,
                     grid: tuple[float, ...] = C_GRID) -> tuple[np.ndarray, HeadFit, float]:
    """(N x C out-of-fold probabilities of the rows of ``features``, the fit kept, seconds): a head per
    fold for every C of ``grid``, the C with the lowest out-of-fold log loss kept."""
    from sklearn.metrics import log_loss

    t0 = time.perf_counter()
    best: tuple[float, float, np.ndarray] | None = None
    for c in grid:
        probs = _oof_for(features, labels, fold, classes, c)
        loss = float(log_loss(labels, probs, labels=list(range(classes))))
        if best is None or loss < best[0]:
            best = (loss, c, probs)
    assert best is not None
    loss, c, probs = best
    return probs, HeadFit(c, loss, float(np.mean(probs.argmax(1) == labels))), time.perf_counter() - t0
