"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T
that divides a classifier's logits before softmax, fitted after training on the validation split
by minimising the negative log-likelihood. It changes no ranking (the labels stay the same), only
how sure the probabilities say the model is.

The fit is LBFGS on log T (so T stays positive), in float64 on the CPU (deterministic), bounded to
:data:`BOUNDS`; with test-time augmentation each view's logits are divided by T before their
probabilities are averaged, exactly as every surface then applies it. A fit that would not lower
the NLL keeps T = 1.

A split without a single mistake has no NLL fit: there the NLL falls without end as T shrinks
(every answer is right, so surer is always better), and following it would make the model sure of
its mistakes on other photos. Then (``method`` "confidence") T only sharpens the probabilities
until their mean top-class probability on the split is the accuracy that n right answers out of n
support, (n + 1) / (n + 2) (Laplace's rule of succession): a model that says 96 % on 107 photos it
all got right says 99 % after; one already surer than that keeps T = 1. Sharpening lowers the NLL of
an all-right split, so the fit is never worse there than the raw softmax either.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from visionlab.engine.tta import mean_scores
from visionlab.kinds.base import TEMPERATURES

__all__ = ["BOUNDS", "TemperatureFit", "fit_temperature", "nll"]

#: The smallest and largest temperature a fit may return.
BOUNDS = TEMPERATURES  # what a saved temperature may hold (kinds.base checks it on load)


class TemperatureFit(NamedTuple):
    """A fitted temperature, the NLL (nats per image) of the fitting split at T = 1 and at T, and
    how it was chosen: "nll" (the minimum NLL) or "confidence" (a split without mistakes, see above)."""

    temperature: float
    nll_before: float
    nll_after: float
    method: str = "nll"


def nll(views: torch.Tensor, target: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The mean negative log-likelihood of (V, N, C) view logits scaled by ``temperature``."""
    return F.cross_entropy(mean_scores(views, temperature), target)


def fit_temperature(views: torch.Tensor, target: torch.Tensor, max_iter: int = 100) -> TemperatureFit:
    """The temperature that minimises the NLL of ``views`` ((V, N, C) logits, or (N, C)) for the
    class indices ``target``."""
    views = (views if views.ndim == 3 else views[None]).detach().to("cpu", torch.float64).clone()
    target = target.detach().to("cpu", torch.int64).clone()
    if bool((mean_scores(views).argmax(1) == target).all()):
        return _sharpen_to_laplace(views, target)
    lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(views, target, log_t.clamp(lo, hi).exp())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        t = float(log_t.clamp(lo, hi).exp())
        before, after = float(nll(views, target)), float(nll(views, target, t))
    if not after <= before:  # never worse than the raw softmax on the split it was fitted on
        return TemperatureFit(1.0, before, before)
    return TemperatureFit(t, before, after)


def _sharpen_to_laplace(views: torch.Tensor, target: torch.Tensor, steps: int = 60) -> TemperatureFit:
    """A split the model gets all right: the T <= 1 at which the mean top-class probability is
    (n + 1) / (n + 2), by bisection on log T (the mean confidence falls as T grows); 1 when already surer."""
    n = len(target)
    goal = (n + 1) / (n + 2)

    def confidence(t: float) -> float:
        return float(mean_scores(views, t).softmax(1).max(1).values.mean())

    before = float(nll(views, target))
    if confidence(1.0) >= goal:
        return TemperatureFit(1.0, before, before, "confidence")
    lo, hi = math.log(BOUNDS[0]), 0.0  # confidence(exp(lo)) >= goal > confidence(exp(hi))
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if confidence(math.exp(mid)) >= goal else (lo, mid)
    t = math.exp(lo)
    return TemperatureFit(t, before, float(nll(views, target, t)), "confidence")
