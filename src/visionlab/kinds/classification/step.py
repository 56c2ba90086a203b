"""The classification step, written once: normalise, the model (with the saved test-time
augmentation: :func:`run_views`), the logits divided by the model's fitted temperature, softmax
(:func:`run_step`, torch: predict, serve and evaluate), then the ranking of the classes
(:func:`rank`, numpy: also the torch-free runtime's rows).

torch is imported inside :func:`run_views` only, so the runtime reaches :func:`rank` without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["StepContext", "Ranking", "run_views", "run_step", "rank", "unknown_fields"]


@dataclass(frozen=True)
class StepContext:
    """What the step needs of a loaded model: the model, its normalisation, where it runs, the
    test-time augmentation mode, the mixed-precision context, the memory format, the classes and the
    temperature the logits are divided by before softmax (1: the raw softmax)."""

    model: Callable[["torch.Tensor"], "torch.Tensor"]
    normalize: Callable[["torch.Tensor"], "torch.Tensor"]
    device: Any
    tta: str = "none"
    autocast: Callable[[], Any] | None = None
    channels_last: bool = False
    classes: tuple[str, ...] = ()
    temperature: float = 1.0


class Ranking(NamedTuple):
    """One image's answer: the most probable class, its probability, and the top-k (class, probability) pairs."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]


def run_views(ctx: StepContext, batch: "torch.Tensor | Sequence[np.ndarray]") -> "torch.Tensor":
    """The raw float32 (V, N, C) logits of each test-time augmentation view of a uint8 batch (an NCHW
    tensor, or HxWx3 arrays), on the device (:func:`visionlab.engine.tta.view_logits`)."""
    import torch

    from visionlab.engine.tta import view_logits

    if not isinstance(batch, torch.Tensor):
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in batch]).permute(0, 3, 1, 2)
    x = ctx.normalize(batch.to(ctx.device, non_blocking=True))
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return view_logits(ctx.model, x, ctx.tta, ctx.autocast)


def run_step(ctx: StepContext, batch: "torch.Tensor | Sequence[np.ndarray]", scorer: Any = None) -> tuple["torch.Tensor", ...]:
    """(scores, probabilities) of a uint8 batch, both float32 (N, C) on the device: the scores are the
    model's logits divided by ``ctx.temperature``, with TTA the log of the views' mean probabilities
    (:func:`visionlab.engine.tta.mean_scores`), so the loss and the meter read them as logits. With an
    unknown detector's ``scorer`` (normalised batch -> (logits, score)), also each image's score (N,),
    the mean over the views, from the same forward passes."""
    from dataclasses import replace

    from visionlab.engine.tta import mean_scores

    if scorer is None:
        scores = mean_scores(run_views(ctx, batch), ctx.temperature)
        return scores, scores.softmax(1)
    from visionlab.kinds.classification.unknown import scored_views

    views, known = scored_views(scorer, lambda f: run_views(replace(ctx, model=f), batch))
    scores = mean_scores(views, ctx.temperature)
    return scores, scores.softmax(1), known


def rank(probs: np.ndarray, classes: Sequence[str], top_k: int) -> list[Ranking]:
    """Each row of an (N, C) probability matrix ranked: its ``top_k`` classes (clipped to 1..C), most
    probable first, ties in class order."""
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in zip(probs, order):
        top = [(classes[j], float(row[j])) for j in idx]
        out.append(Ranking(top[0][0], top[0][1], top))
    return out


def unknown_fields(label: str, score: float | None, threshold: float | None) -> dict[str, Any]:
    """A classifier's answer with the unknown detector applied: 'unknown' below the threshold, the
    best class as ``guess`` either way, and the score (higher: more like the training photos);
    nothing without a detector (``score`` or ``threshold`` None)."""
    if score is None or threshold is None:
        return {}
    unknown = bool(score < threshold)
    return {"label": "unknown" if unknown else label, "unknown": unknown, "guess": label, "known_score": round(float(score), 6)}
