"""Does the photo show one of the classes at all? The "unknown" detector of a classifier (#22).

The score is the cosine similarity of a photo's penultimate features (the input of the network's
last linear layer, L2-normalised) to its ``k``-th nearest neighbour in a bank of the training
split's features (Sun et al. 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors"),
chosen over the maximum softmax probability and the energy by ``benchmarks/unknown.py``: the
classes a model was never shown land far from every training photo in feature space even when the
softmax is sure. Higher is more known. With test-time augmentation the score is the mean over the
views of each view's score.

:class:`UnknownScorer` wraps the network so that one forward pass returns ``(logits, score)``:
predict, evaluate and serve run it, and export writes it as the graph's second output (the bank
is a constant of the graph), so the torch-free runtime, int8 and OpenVINO read the same score
from the same graph. The threshold is fitted on the validation split only: the score that
``accept`` (default 0.95) of the known validation photos reach (:func:`fit_threshold`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["BANK_ROWS", "DEFAULT_K", "UnknownScorer", "classifier_layer", "bank_rows", "fit_threshold", "feature_views",
           "knn_similarity", "scored_views", "fit_detector", "scorer_of"]

#: At most this many training photos' features are kept (evenly spaced over the split, float16).
BANK_ROWS = 2048
#: The neighbour whose similarity is the score (measured: ``benchmarks/unknown.py``).
DEFAULT_K = 1


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


class UnknownScorer(nn.Module):
    """``model`` returning ``(logits, score)``: the score (N x 1) is :func:`knn_similarity` of the features
    its classifier layer is given to the ``bank`` (registered as a buffer, so it moves with the
    module and is a constant of an exported graph)."""

    def __init__(self, model: nn.Module, bank: torch.Tensor, k: int = DEFAULT_K) -> None:
        super().__init__()
        self.model, self.k = model, int(k)
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1))
        self.train(model.training)  # a new module is in training mode: export restores that mode onto the network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = _Tap(self.model)  # on for this pass only: the wrapped network is left as it was
        try:
            logits = self.model(x)
        finally:
            tap.handle.remove()
        return logits, knn_similarity(tap.features, self.bank, self.k)[:, None]


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


def fit_detector(runner: Any, model: nn.Module, accept: float, k: int = DEFAULT_K) -> dict[str, Any] | None:
    """The detector of ``model`` on ``runner``'s splits (fp32, the model's own test-time augmentation):
    the bank holds the plain view's features of at most :data:`BANK_ROWS` training photos (evenly
    spaced, float16), the threshold accepts ``accept`` of the validation photos; None without both splits."""
    from visionlab.engine.device import resolve_precision

    if not runner.split_size("val") or not runner.split_size("train"):
        return None
    autocast = resolve_precision("fp32", runner.device).autocast
    features = runner.features(model, "train", autocast, bank_rows(runner.split_size("train")))
    if not len(features):
        return None
    bank = nn.functional.normalize(features.float(), dim=1).half()
    scorer = UnknownScorer(model, bank, k).to(runner.device)
    scores = runner.scored_views(model, "val", autocast, scorer)[3].numpy()
    if not len(scores):
        return None
    threshold = fit_threshold(scores, accept)
    return {"score": "knn", "k": int(k), "bank": bank.cpu(), "bank_rows": int(len(bank)), "threshold": threshold,
            "accept": float(accept), "accepted": float((scores >= threshold).mean()), "fitted_on": "val",
            "images": int(len(scores))}


def scorer_of(state: Mapping[str, Any], model: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """(logits, score) of a normalised batch for the model of ``state``: the .onnx graph's two outputs
    (``model`` an exported file's module), or :class:`UnknownScorer` on the checkpoint's bank; None without a detector."""
    from visionlab.errors import VisionlabError

    detector = state.get("unknown")
    if not detector:
        return None
    if hasattr(model, "forward_all"):  # an exported file (visionlab.engine.onnx_model.OnnxModule): its graph scores
        if len(model.session.get_outputs()) < 2:
            raise VisionlabError(f"{model.path} is damaged (its metadata has an unknown detector, its graph no score output).",
                                 "Export the checkpoint again, or pass --unknown off.")
        return model.forward_all
    bank, k = _checked_bank(detector, model)
    device = next(model.parameters()).device
    return UnknownScorer(model, bank, k).to(device)


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
    return (f"nearest-neighbour score on {detector['bank_rows']} training photos' features (k={detector['k']}, float16), "
            f"threshold {detector['threshold']:.4f} accepts {detector['accepted']:.1%} of {detector['images']} validation "
            f"photos (unknown_accept {detector['accept']:g}); photos below it are answered 'unknown'")
