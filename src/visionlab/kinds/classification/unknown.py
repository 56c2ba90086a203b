"""Does the photo show one of the classes at all? The "unknown" detector of a classifier (#22).

The score is chosen by the ``unknown_score`` config key (measured in ``benchmarks/unknown.py``):

* ``mahalanobis`` (the default): the squared Mahalanobis distance ``d2`` of a photo's penultimate
  features (the input of the network's last linear layer, L2-normalised) to the nearest class mean
  of the training photos' features, under their shared covariance (Lee et al. 2018), shrunk towards
  a scaled identity by Ledoit-Wolf (scikit-learn's ``LedoitWolf``: 478 caltech training photos
  against 1280 dimensions leave the plain covariance singular). Stored as a whitening matrix ``W``
  (D x D, float16, ``W W^T`` the precision) and the class means whitened (C x D, float32), so the
  score is one matrix product and a difference: ``z = f W``, ``d2 = min_c |z - c|^2``, and the score
  ``1 / (1 + d2 / D)``, in (0, 1] (a monotone map: the same order, thresholds in -1..1 like the kNN's).
* ``knn``: the cosine similarity of the normalised features to the ``k``-th nearest neighbour in a
  bank of the training split's features (Sun et al. 2022), the detector stored before; a
  checkpoint that carries one (``score: knn``) answers with it as before.

Both beat the maximum softmax probability and the energy: the classes a model was never shown land
far from the training photos in feature space even when the softmax is sure. Higher is more known.
With test-time augmentation the score is the mean over the views of each view's score.

:class:`UnknownScorer` (kNN) and :class:`MahalanobisScorer` wrap the network so that one forward
pass returns ``(logits, score)``: predict, evaluate and serve run it, and export writes it as the
graph's second output (the bank, or ``W`` and the means, constants of the graph), so the torch-free
runtime, int8 (those nodes stay fp32) and OpenVINO read the same score from the same graph. The
threshold is fitted on the validation split only: the score that ``accept`` (default 0.95) of the
known validation photos reach (:func:`fit_threshold`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["BANK_ROWS", "DEFAULT_K", "SCORES", "UnknownScorer", "MahalanobisScorer", "classifier_layer", "bank_rows",
           "fit_threshold", "feature_views", "knn_similarity", "mahalanobis_score", "fit_mahalanobis", "scored_views",
           "fit_detector", "scorer_of"]

#: At most this many training photos' features are kept (evenly spaced over the split, float16).
BANK_ROWS = 2048
#: The neighbour whose similarity is the score (measured: ``benchmarks/unknown.py``).
DEFAULT_K = 1
#: The covariance's eigenvalues are floored at this share of the largest (a condition number of at most
#: 1000): Ledoit-Wolf's shrinkage keeps the recipes' above it (caltech's smallest is 3e-3 of its largest),
#: a network whose features barely vary in some direction (a tiny CNN on flat colours) would otherwise
#: get a whitening so large that the slightest change of its features (int8) moved the score.
FLOOR = 1e-3
#: The scores a detector may be (the ``unknown_score`` config key), the default first (measured).
SCORES = ("mahalanobis", "knn")


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The network's last linear layer (its classifier: timm's ``classifier``, torchvision's ``fc``,
    :class:`visionlab.models.small_cnn.SmallCNN`'s ``classifier``); its input is the features."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer to read features before")
    return last


class _Tap:
    """A forward hook on the classifier that keeps the input it was last given."""

    def __init__(self, model: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self.handle = classifier_layer(model).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.features = inputs[0]


def knn_similarity(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Cosine similarity of each row of ``features`` (N, D) to its ``k``-th most similar row of the
    L2-normalised ``bank`` (M, D), in float32 (also under bf16 autocast: a score in bf16 would move
    by whole hundredths around its threshold)."""
    with torch.autocast(features.device.type, enabled=False):
        f = nn.functional.normalize(features.float().flatten(1), dim=1)
        sims = f @ bank.float().t()
        return sims.topk(min(k, bank.shape[0]), dim=1).values[:, -1]


def mahalanobis_score(features: torch.Tensor, whiten: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + d2 / D)`` of each row of ``features`` (N, D), ``d2`` its squared Mahalanobis distance
    to the nearest class mean once L2-normalised: ``z = f W``, ``d2 = min_c |z - c|^2`` with ``whiten``
    W (D, D) and ``centres`` c the means whitened (C, D); in float32, as :func:`knn_similarity`. The
    differences are taken before squaring (|z|^2 - 2 z.c + |c|^2 loses the small distances of known
    photos to cancellation in float32 when W is large)."""
    with torch.autocast(features.device.type, enabled=False):
        z = nn.functional.normalize(features.float().flatten(1), dim=1) @ whiten.float()
        d2 = (z[:, None, :] - centres.float()[None]).pow(2).sum(2)
        return 1.0 / (1.0 + d2.min(1).values / z.shape[1])


def fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The whitening matrix (D, D, float16) and whitened class means (C, D, float32) of training
    ``features`` (N, D; L2-normalised here) with ``labels``: the classes' shared covariance, shrunk by
    Ledoit-Wolf, is ``V diag(w) V^T``, so ``W = V diag(w)^-1/2`` (``W W^T`` the precision), with ``w``
    floored at :data:`FLOOR` of the largest."""
    from sklearn.covariance import LedoitWolf

    f = nn.functional.normalize(features.double(), dim=1).numpy()
    y = labels.numpy()
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(0) for c in classes])
    fit = LedoitWolf().fit(f - means[np.searchsorted(classes, y)])
    w, v = np.linalg.eigh(fit.covariance_)
    whiten = torch.from_numpy(v / np.sqrt(np.maximum(w, FLOOR * max(float(w.max()), 1e-12)))).half()
    centres = torch.from_numpy(means) @ whiten.double()  # the means whitened by the stored (float16) W
    return {"whiten": whiten, "centres": centres.float(), "shrinkage": float(fit.shrinkage_), "classes": int(len(classes))}


class _FeatureScorer(nn.Module):
    """``model`` returning ``(logits, score)``, the score (N x 1) :meth:`score` of the features its
    classifier layer is given; the detector's tensors are buffers (they move with the module and are
    constants of an exported graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = _Tap(self.model)  # on for this pass only: the wrapped network is left as it was
        try:
            logits = self.model(x)
        finally:
            tap.handle.remove()
        return logits, self.score(tap.features)[:, None]

    def score(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class UnknownScorer(_FeatureScorer):
    """The kNN detector: :func:`knn_similarity` of the features to the ``bank``."""

    def __init__(self, model: nn.Module, bank: torch.Tensor, k: int = DEFAULT_K) -> None:
        super().__init__(model)
        self.k = int(k)
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1))
        self.train(model.training)  # a new module is in training mode: export restores that mode onto the network

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return knn_similarity(features, self.bank, self.k)


class MahalanobisScorer(_FeatureScorer):
    """The Mahalanobis detector: :func:`mahalanobis_score` of the features (``whiten``, ``centres``)."""

    def __init__(self, model: nn.Module, whiten: torch.Tensor, centres: torch.Tensor) -> None:
        super().__init__(model)
        self.register_buffer("whiten", whiten.float())
        self.register_buffer("centres", centres.float())
        self.train(model.training)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return mahalanobis_score(features, self.whiten, self.centres)


def feature_views(model: nn.Module, views: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, N, C) logits and (V, N, D) float32 features of each view: ``views`` runs a callable
    model over the test-time augmentation's views (:func:`visionlab.kinds.classification.step.run_views`)
    and returns their stacked logits; the features are collected by a hook on the classifier."""
    tap, kept = _Tap(model), []

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        kept.append(tap.features.float().flatten(1))
        return out

    try:
        logits = views(forward)
    finally:
        tap.handle.remove()
    return logits, torch.stack(kept)


def scored_views(scorer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 views: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, N, C) logits of each view and the (N,) score, the mean of the views' scores: ``views`` runs
    a callable model over the views (as :func:`feature_views`), here ``scorer``'s logits."""
    kept = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits, score = scorer(x)
        kept.append(score.float().reshape(-1))
        return logits

    logits = views(forward)
    return logits, torch.stack(kept).mean(0)


def bank_rows(n: int, rows: int = BANK_ROWS) -> np.ndarray:
    """Indices of at most ``rows`` of ``n`` training photos, evenly spaced (all when fewer)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, rows)).round().astype(int)) if n else np.zeros(0, int)


def fit_threshold(known: np.ndarray, accept: float) -> float:
    """The score at or above which a share ``accept`` of the ``known`` validation scores lie (the
    lower ``1 - accept`` quantile, the 'lower' rule: at least that share is accepted)."""
    return float(np.quantile(np.asarray(known, dtype=np.float64), 1.0 - accept, method="lower"))


def fit_detector(runner: Any, model: nn.Module, accept: float, score: str = SCORES[0], k: int = DEFAULT_K) -> dict[str, Any] | None:
    """The ``score`` detector of ``model`` on ``runner``'s splits (fp32, the model's own test-time
    augmentation), from the plain view's features of at most :data:`BANK_ROWS` training photos (evenly
    spaced): their class means and shrunk covariance (``mahalanobis``) or the bank itself (``knn``,
    float16); the threshold accepts ``accept`` of the validation photos. None without both splits."""
    from visionlab.engine.device import resolve_precision
    from visionlab.errors import VisionlabError

    if score not in SCORES:  # a config written by hand into a checkpoint, or an API caller
        raise VisionlabError(f"unknown_score must be {' or '.join(SCORES)}, got {score!r}.", "Set unknown_score: mahalanobis (the default) or knn.")
    if not runner.split_size("val") or not runner.split_size("train"):
        return None
    autocast = resolve_precision("fp32", runner.device).autocast
    features, labels = runner.features(model, "train", autocast, bank_rows(runner.split_size("train")))
    if not len(features):
        return None
    if score == "knn":
        bank = nn.functional.normalize(features.float(), dim=1).half()
        entry: dict[str, Any] = {"score": "knn", "k": int(k), "bank": bank.cpu(), "bank_rows": int(len(bank))}
    else:
        entry = {"score": "mahalanobis", **fit_mahalanobis(features, labels), "rows": int(len(features))}
    scorer = _scorer(entry, model).to(runner.device)
    scores = runner.scored_views(model, "val", autocast, scorer)[3].numpy()
    if not len(scores):
        return None
    threshold = fit_threshold(scores, accept)
    return {**entry, "threshold": threshold, "accept": float(accept), "accepted": float((scores >= threshold).mean()),
            "fitted_on": "val", "images": int(len(scores))}


def _scorer(detector: Mapping[str, Any], model: nn.Module) -> _FeatureScorer:
    """The scorer of a checkpoint's ``detector`` entry: kNN when it says so (as every entry from
    before Mahalanobis does: ``score: knn``), Mahalanobis otherwise."""
    if detector.get("score", "knn") == "knn":
        return UnknownScorer(model, detector["bank"], int(detector.get("k", DEFAULT_K)))
    return MahalanobisScorer(model, detector["whiten"], detector["centres"])


def _damage(detector: Mapping[str, Any], dims: int) -> str | None:
    """What is wrong with a checkpoint's Mahalanobis entry (or its method) for a network of ``dims``
    features, or None (kNN entries: :func:`_checked_bank`)."""
    method = detector.get("score")
    if method not in SCORES:
        return f"its score {method!r} is none of {', '.join(SCORES)}"
    names = ("whiten", "centres")
    tensors = [detector.get(n) for n in names]
    if not all(isinstance(t, torch.Tensor) and t.ndim == 2 and len(t) for t in tensors):
        return "its whiten and centres are not non-empty matrices"
    if tensors[0].shape != (dims, dims) or tensors[1].shape[1] != dims:
        return f"its whiten {tuple(tensors[0].shape)} and centres {tuple(tensors[1].shape)} do not fit the network's {dims} features"
    if not all(bool(torch.isfinite(t.float()).all()) for t in tensors):
        return "its whiten or centres hold NaN or infinite values"
    return None


def scorer_of(state: Mapping[str, Any], model: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """(logits, score) of a normalised batch for the model of ``state``: the .onnx graph's two outputs
    (``model`` an exported file's module), or the scorer of the checkpoint's detector; None without one.
    A damaged entry (a tensor of the wrong shape or with NaN, an unknown method) is refused in one line."""
    from visionlab.errors import VisionlabError

    detector = state.get("unknown")
    if not detector:
        return None
    if hasattr(model, "forward_all"):  # an exported file (visionlab.engine.onnx_model.OnnxModule): its graph scores
        if len(model.session.get_outputs()) < 2:
            raise VisionlabError(f"{model.path} is damaged (its metadata has an unknown detector, its graph no score output).",
                                 "Export the checkpoint again, or pass --unknown off.")
        return model.forward_all
    device = next(model.parameters()).device
    if not isinstance(detector, Mapping) or detector.get("score", "knn") == "knn":  # every detector from before Mahalanobis
        bank, k = _checked_bank(detector, model)
        return UnknownScorer(model, bank, k).to(device)
    damage = _damage(detector, classifier_layer(model).in_features)
    if damage:
        raise VisionlabError(f"the checkpoint's unknown detector is damaged ({damage}).",
                             "Fit it again (visionlab calibrate CHECKPOINT), or pass --unknown off.")
    return _scorer(detector, model).to(device)


def _checked_bank(detector: Any, model: nn.Module) -> tuple[torch.Tensor, int]:
    """A checkpoint's feature bank and ``k``, or one line saying the detector is damaged: a bank that
    is not a non-empty matrix as wide as the classifier's input, holds a NaN or inf, or a ``k`` that
    is not a whole number >= 1 (each would stop predict with torch's words or, for NaN, accept every photo)."""
    from visionlab.errors import VisionlabError

    bank = detector.get("bank") if isinstance(detector, Mapping) else None
    k = detector.get("k", DEFAULT_K) if isinstance(detector, Mapping) else None
    width = classifier_layer(model).in_features
    if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or not len(bank):
        problem = "its feature bank is not a non-empty matrix"
    elif bank.shape[1] != width:
        problem = f"its feature bank is {bank.shape[1]} wide, the network's features {width}"
    elif not bool(torch.isfinite(bank).all()):
        problem = "its feature bank holds NaN or infinite values"
    elif isinstance(k, bool) or not isinstance(k, int) or k < 1:
        problem = f"its k is {k!r}, not a whole number >= 1"
    else:
        return bank, k
    raise VisionlabError(f"the checkpoint's unknown detector is damaged ({problem}).",
                         "Fit it again (visionlab calibrate CHECKPOINT), or pass --unknown off.")


def detector_summary(detector: Mapping[str, Any]) -> str:
    """What a fitted detector is, in words (the trainer's and ``visionlab calibrate``'s notice)."""
    if detector.get("score", "knn") == "knn":
        what = f"nearest-neighbour score on {detector['bank_rows']} training photos' features (k={detector['k']}, float16)"
    else:
        what = (f"Mahalanobis score on {detector['rows']} training photos' features ({detector['classes']} class means, "
                f"covariance shrunk by Ledoit-Wolf {detector['shrinkage']:.3f}, whitening {tuple(detector['whiten'].shape)} float16)")
    return (f"{what}, threshold {detector['threshold']:.4f} accepts {detector['accepted']:.1%} of {detector['images']} validation "
            f"photos (unknown_accept {detector['accept']:g}); photos below it are answered 'unknown'")
