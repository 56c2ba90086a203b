"""Which labels are probably wrong: out-of-fold probabilities from K short trainings, fed to
confident learning (``cleanlab``).

Two ways to get the out-of-fold probabilities (``method``): ``features`` (the default where the
recipe's backbone loads pretrained weights) computes the backbone's frozen features once and fits a
logistic head per fold (:mod:`visionlab.kinds.classification.frozen`); ``fine-tune`` trains the
whole recipe per fold, as follows.

Every labelled photo of the dataset (train, val and test of its layout) is put in one of K
stratified, seeded folds. Each fold is held out once: the task's recipe is trained, with the one
trainer (the ``fit`` callable :func:`visionlab.api.suspects` hands in), on a temporary CSV of the
other folds' photos (``path,label,split``, every row ``train``; validation is carved from them as
for any dataset without a val folder), and its best checkpoint predicts the held-out photos with
:class:`visionlab.engine.predict.Predictor` (the checkpoint's preprocessing, as ``evaluate``; no
augmentation). The temporary folder is always removed. Nothing here moves a file: the quarantine
is :mod:`visionlab.data.quarantine`'s.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from visionlab.engine.callbacks import Callback
from visionlab.errors import VisionlabError
from visionlab.kinds.classification.frozen import C_GRID
from visionlab.kinds.classification.layout import ClassificationIndex

__all__ = ["Suspect", "SuspectsResult", "FoldDone", "METHODS", "find_suspects", "fold_of", "rank_suspects", "require_cleanlab"]

#: How the out-of-fold probabilities are made (``auto``: features where the recipe's backbone is pretrained).
METHODS = ("auto", "features", "fine-tune")


@dataclass
class Suspect:
    """One photo whose label is probably wrong: its given label, the label the out-of-fold model
    suggests, cleanlab's label quality ``score`` (self-confidence: 0 = surely wrong, 1 = surely right)
    and the out-of-fold probabilities of the given and the suggested label."""

    path: str
    label: str
    suggested: str
    score: float
    given_probability: float
    suggested_probability: float

    def to_row(self) -> dict[str, Any]:
        return {"path": self.path, "given_label": self.label, "suggested_label": self.suggested,
                "score": round(self.score, 4), "given_probability": round(self.given_probability, 4),
                "suggested_probability": round(self.suggested_probability, 4)}


@dataclass
class FoldDone:
    """What one fold's training did: its number (1-based), photos trained on and held out, epochs, seconds."""

    fold: int
    folds: int
    trained_on: int
    held_out: int
    epochs: int
    seconds: float
    head: str = ""  # --method features: the head fitted instead of epochs of training, in words


@dataclass
class SuspectsResult:
    """The photos flagged (most suspicious first) and how they were found."""

    task: str
    data: str
    classes: list[str]
    images: int
    suspects: list[Suspect]
    folds: list[FoldDone] = field(default_factory=list)
    budget: str = ""  # how the out-of-fold probabilities were made (the time budget's split, or the features and heads), in words
    method: str = "fine-tune"  # what ran: "features" or "fine-tune"
    budget_seconds: float | None = None  # the time budget (None: --epochs)
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)  # written by visionlab.present.suspects
    #: every photo's out-of-fold probabilities (N x C, the index's order; NaN rows: unreadable) and its path
    probabilities: Any = None
    paths: list[str] = field(default_factory=list)


def require_cleanlab() -> None:
    """cleanlab is importable; else one line naming the extra that brings it."""
    import importlib

    try:
        importlib.import_module("cleanlab")
    except ImportError:
        raise VisionlabError("finding suspect labels needs cleanlab, which is not installed.",
                             "pip install 'visionlab[suspects]' (or pip install cleanlab).") from None


def fold_of(labels: np.ndarray, classes: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Each photo's fold (0..folds-1), stratified by class and seeded; every class needs ``folds``
    photos (else one line that says which class has too few)."""
    from sklearn.model_selection import StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise VisionlabError(f"--folds must be an integer >= 2, got {folds!r}.", "Pass e.g. --folds 5.")
    counts = np.bincount(labels, minlength=len(classes))
    few = [(c, int(n)) for c, n in zip(classes, counts) if n < folds]
    if few:
        shown = ", ".join(f"{c} ({n})" for c, n in few)
        raise VisionlabError(f"{folds} folds need at least {folds} photos of every class; too few: {shown}.",
                             f"Pass --folds {max(2, min(n for _, n in few))} or add photos." if min(n for _, n in few) >= 2
                             else "Add photos to that class, or leave it out with --set classes=[...].")
    out = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        out[held] = k
    return out


def _write_fold_csv(path: Path, index: ClassificationIndex, members: np.ndarray) -> None:
    """The photos ``members`` as a dataset CSV (absolute paths, every row in the train split)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i in members:
            w.writerow([os.path.abspath(index.paths[i]), index.classes[index.labels[i]], "train"])


class TimeBox(Callback):
    """Ends a fold's training after the epoch past which another would overrun ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started, self.epoch_started, self.longest = seconds, 0.0, 0.0, 0.0

    def on_fit_start(self, trainer: Any) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.epoch_started)
        if now - self.started + self.longest > self.seconds:
            trainer.should_stop = True


@dataclass
class _Budget:
    """How the minutes are spread: each fold gets what is left over the folds left. The first fold is
    time-boxed to its share with the recipe's epochs as the cap; its slowest epoch (training and
    validation) and its set-up time set the epochs of the others, so their schedules run to the end."""

    seconds: float
    cap: int
    fixed: int | None  # --epochs: every fold trains exactly that, no time box
    epoch_s: float = 0.0
    setup_s: float = 0.0

    def epochs(self, spent: float, folds_left: int) -> int:
        if self.fixed is not None:
            return self.fixed
        if not self.epoch_s:
            return self.cap
        share = (self.seconds - spent) / folds_left
        return max(1, min(self.cap, math.floor((share - self.setup_s) / self.epoch_s)))

    def box(self, spent: float, folds_left: int) -> list[Callback]:
        return [] if self.fixed is not None else [TimeBox((self.seconds - spent) / folds_left - self.setup_s)]

    def learn(self, box: list[Callback], fold_seconds: float, epochs: int) -> None:
        if box and not self.epoch_s:
            self.epoch_s = max(box[0].longest, 1e-3)  # type: ignore[attr-defined]
            self.setup_s = max(0.0, fold_seconds - epochs * self.epoch_s)

    def words(self, folds: int) -> str:
        if self.fixed is not None:
            return f"{self.fixed} epoch(s) per fold (--epochs), no time budget"
        return (f"{self.seconds / 60:g} min over {folds} folds ({self.seconds / folds:.0f} s each); fold 1 time-boxed with at most "
                f"{self.cap} epochs: {self.epoch_s:.1f} s per epoch and {self.setup_s:.1f} s of set-up set the others' epochs")


def _predict_fold(checkpoint: Path, kind: Any, index: ClassificationIndex, held: np.ndarray, probs: np.ndarray,
                  device: str, batch_size: int) -> list[str]:
    """The held-out photos' probabilities (every class) into ``probs``; the paths that could not be read."""
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.predict import Predictor

    # the raw softmax: a fold's temperature, fitted on a few validation photos, would rescale each
    # fold's probabilities differently, and confident learning compares them across folds (and no
    # 'unknown': every held-out photo is of one of the classes, its probabilities are what is read)
    predictor = Predictor(load_checkpoint(checkpoint), kind, device=device, source=str(checkpoint), calibration=False,
                          unknown="off")
    preds = predictor.predict([index.paths[i] for i in held], top_k=len(index.classes), batch_size=batch_size)
    column = {c: j for j, c in enumerate(index.classes)}
    failed = []
    for i, p in zip(held, preds):
        if p.error:
            failed.append(str(index.paths[i]))
            continue
        for lab, prob in p.top_k:  # type: ignore[attr-defined]
            probs[i, column[lab]] = prob
    return failed


def out_of_fold(index: ClassificationIndex, fit: Callable[..., Any], kind: Any, folds: int, seed: int, budget: _Budget,
                device: str, on_fold: Callable[[FoldDone], None] | None = None,
                batch_size: int = 32) -> tuple[np.ndarray, list[str], list[FoldDone]]:
    """(N x C out-of-fold probabilities, NaN rows for unreadable photos; their paths; what each fold did). ``fit(data=csv,
    out=folder, name=..., epochs=..., callbacks=[...], classes=[...])`` trains one fold and returns its TrainResult."""
    labels = np.asarray(index.labels, dtype=np.int64)
    fold = fold_of(labels, index.classes, folds, seed)
    probs = np.full((len(labels), len(index.classes)), np.nan)
    failed: list[str] = []
    done: list[FoldDone] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visionlab-suspects-") as tmp:
        for k in range(folds):
            t0 = time.perf_counter()
            train_idx, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            data = Path(tmp) / f"fold-{k + 1}.csv"
            _write_fold_csv(data, index, train_idx)
            box = budget.box(t0 - started, folds - k)
            result = fit(data=data, out=str(Path(tmp) / "runs"), name=f"fold-{k + 1}", epochs=budget.epochs(t0 - started, folds - k),
                         callbacks=box, classes=list(index.classes))
            budget.learn(box, time.perf_counter() - t0, result.epochs_run)
            failed += _predict_fold(result.best_checkpoint, kind, index, held, probs, device, batch_size)
            done.append(FoldDone(k + 1, folds, len(train_idx), len(held), result.epochs_run, time.perf_counter() - t0))
            if on_fold is not None:
                on_fold(done[-1])
    return probs, failed, done


def rank_suspects(index: ClassificationIndex, probs: np.ndarray) -> list[Suspect]:
    """Confident learning on the out-of-fold probabilities: the photos ``cleanlab.filter.find_label_issues``
    flags, ranked by self-confidence (lowest probability of the given label first)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ok = np.flatnonzero(~np.isnan(probs).any(axis=1))
    labels = np.asarray(index.labels, dtype=np.int64)[ok]
    p = np.clip(probs[ok], 1e-12, None)
    p = p / p.sum(axis=1, keepdims=True)
    # n_jobs=1: cleanlab's worker pool forks this process, whose torch threads can leave a child hung for ever
    ranked = find_label_issues(labels, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, p, method="self_confidence")
    out = []
    for j in ranked:
        best = int(np.argmax(p[j]))
        out.append(Suspect(str(index.paths[ok[j]]), index.classes[labels[j]], index.classes[best], float(scores[j]),
                           float(p[j, labels[j]]), float(p[j, best])))
    return out


def features_out_of_fold(cfg: Any, index: ClassificationIndex, folds: int, device: str, on_fold: Callable[[FoldDone], None] | None = None,
                         on_features: Callable[[int, int, int], None] | None = None) -> tuple[np.ndarray, list[str], list[FoldDone], str]:
    """``--method features``: (N x C out-of-fold probabilities, NaN rows for unreadable photos; their paths;
    a FoldDone per fold; what was done, in words) from the backbone's frozen features and a logistic head per fold."""
    from visionlab.kinds.classification.frozen import backbone_features, head_out_of_fold

    labels = np.asarray(index.labels, dtype=np.int64)
    fold = fold_of(labels, index.classes, folds, int(cfg.seed))  # before the long pass: too few photos is a one-line error
    t0 = time.perf_counter()
    features, failed = backbone_features(cfg, index, device, batch_size=int(cfg.batch_size), on_batch=on_features)
    extracted = time.perf_counter() - t0
    ok = np.flatnonzero(~np.isnan(features).any(axis=1))
    fold = fold[ok]
    held, fit, seconds = head_out_of_fold(features[ok], labels[ok], fold, len(index.classes))
    probs = np.full((len(labels), len(index.classes)), np.nan)
    probs[ok] = held
    done = []
    for k in range(folds):
        done.append(FoldDone(k + 1, folds, int(np.sum(fold != k)), int(np.sum(fold == k)), 0, seconds / folds,
                             head=f"a logistic head (C={fit.c:g}) on the frozen features"))
        if on_fold is not None:
            on_fold(done[-1])
    words = (f"frozen {cfg.model} features ({cfg.image_size} px, the photo and its mirror) of {len(ok):,} photos in {extracted:.0f} s, "
             f"then a logistic head per fold for each of {len(C_GRID)} strengths in {seconds:.0f} s; C={fit.c:g} kept: out-of-fold "
             f"log loss {fit.log_loss:.3f}, accuracy {fit.accuracy:.3f} against the given labels (--minutes is --method fine-tune's)")
    return probs, failed, done, words


def _method(method: str, cfg: Any, epochs: int | None) -> str:
    """The method that runs: ``auto`` is features where the recipe's backbone is pretrained and no --epochs is given."""
    from visionlab.kinds.classification.frozen import has_pretrained_backbone

    if method not in METHODS:
        raise VisionlabError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.", "Pass e.g. --method features.")
    if method == "auto":
        return "features" if epochs is None and has_pretrained_backbone(cfg) else "fine-tune"
    if method == "features" and epochs is not None:
        raise VisionlabError("--epochs counts the trainings of --method fine-tune; --method features trains no network.",
                             "Leave out --epochs, or pass --method fine-tune.")
    if method == "features" and not has_pretrained_backbone(cfg):
        raise VisionlabError(f"the recipe's model {cfg.model} loads no pretrained weights, so its frozen features are random.",
                             "Pass --method fine-tune, or a recipe with a pretrained backbone.")
    return method


def find_suspects(cfg: Any, index: ClassificationIndex, fit: Callable[..., Any], kind: Any, folds: int = 5, minutes: float = 10.0,
                  epochs: int | None = None, device: str = "auto",
                  on_fold: Callable[[FoldDone], None] | None = None, method: str = "auto",
                  on_features: Callable[[int, int, int], None] | None = None) -> SuspectsResult:
    """The photos of ``index`` whose label is probably wrong (see the module docstring): by ``method``,
    a logistic head per fold on frozen features, or ``folds`` trainings within ``minutes`` in all (or
    ``epochs`` each), predicted by ``kind`` (the classification kind, which calls this); then confident learning."""
    require_cleanlab()
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise VisionlabError(f"--epochs must be an integer >= 1, got {epochs!r}.", "Pass e.g. --epochs 2, or leave it out to use --minutes.")
    if epochs is None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise VisionlabError(f"--minutes must be a number > 0, got {minutes!r}.", "Pass e.g. --minutes 10.")
    t0 = time.perf_counter()
    method = _method(method, cfg, epochs)
    if method == "features":
        probs, failed, done, words = features_out_of_fold(cfg, index, folds, device, on_fold, on_features)
        budget_seconds = None
    else:
        budget = _Budget(float(minutes) * 60.0, int(cfg.epochs), epochs)
        probs, failed, done = out_of_fold(index, fit, kind, folds, int(cfg.seed), budget, device, on_fold, batch_size=int(cfg.batch_size))
        words, budget_seconds = budget.words(folds), None if epochs else budget.seconds
    result = SuspectsResult(cfg.task, str(index.root), list(index.classes), len(index), rank_suspects(index, probs),
                            folds=done, budget=words, budget_seconds=budget_seconds, unreadable=failed, method=method)
    result.probabilities, result.paths = probs, [str(p) for p in index.paths]
    result.seconds = time.perf_counter() - t0
    return result
