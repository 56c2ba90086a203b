"""The classification kind: one label per photo (folders or a CSV of labelled images).

Everything the kind is lives in this package: ``runner`` (data, training step, evaluation),
``step`` (the one inference step of predict, evaluate and serve, and the ranking the runtime
shares), ``calibration`` (the temperature fitted after training), ``meter`` (with the calibration
metrics), ``explain`` (Grad-CAM: why it said that), ``checks`` (the data doctor's), ``layout`` and ``synthetic``. Predictions are
batches of squashed images, answered by :class:`ClassPrediction` (label, confidence, top-k).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from visionlab.data.geometry import TTA_MODES
from visionlab.kinds.base import Kind, LoadedModel, Output, Prediction
from visionlab.kinds.classification.options import ClassificationOptions

__all__ = ["KIND", "ClassificationKind", "ClassPrediction"]


def top_k_columns(top_k: Any) -> dict[str, Any]:
    """(label, probability) pairs as the CSV columns top1_label, top1_probability, top2_label, ..."""
    row: dict[str, Any] = {}
    for i, (lab, p) in enumerate(top_k, 1):
        row[f"top{i}_label"], row[f"top{i}_probability"] = lab, p
    return row


#: The exported graph's second output with an unknown detector: its score per image.
KNOWN_SCORE = Output("known_score", "image", "none", "the unknown detector's score per image (N x 1), higher = more like the "
                     "training photos (the metadata's unknown.score names it: mahalanobis, 1 / (1 + d2 / D) of the distance "
                     "to the nearest class mean, or knn, the cosine similarity to the nearest training photo); below the "
                     "metadata's unknown threshold the photo is unknown")


@dataclass
class ClassPrediction(Prediction):
    """A class for the photo: ``label`` with its probability ``confidence``, and the ``top_k`` classes."""

    top_k: list[tuple[str, float]] = field(default_factory=list)
    #: With an unknown detector applied: whether the photo shows none of the classes (``label`` is
    #: then 'unknown'), the best class either way and the detector's score (higher: more like the
    #: training photos); None without one (--unknown off, or a model without a detector).
    unknown: bool | None = None
    guess: str | None = None
    known_score: float | None = None

    def extra(self) -> dict[str, Any]:
        fields = {k: v for k, v in (("unknown", self.unknown), ("guess", self.guess), ("known_score", self.known_score))
                  if v is not None}
        return {**fields, **({"top_k": [{"label": lab, "probability": p} for lab, p in self.top_k]} if self.top_k else {})}

    def flat_extra(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.extra().items() if k != "top_k"}, **top_k_columns(self.top_k)}

    def detail(self) -> str:
        ranked = ", ".join(f"{lab} {p:.2f}" for lab, p in self.top_k)
        return f"none of the classes (best guess {self.guess}, score {self.known_score:.3f}): {ranked}" if self.unknown else ranked

    def with_top_k(self, k: int) -> "ClassPrediction":
        self.top_k = self.top_k[:k]
        return self


class ClassificationKind(Kind):
    name = "classification"
    options = ClassificationOptions
    primary = "accuracy"
    headline = ("accuracy", "macro_f1", "roc_auc")
    tta_modes = TTA_MODES
    max_quantization_drop = 0.005  # half a point of accuracy
    demo_options = {"epochs": 4, "batch_size": 16, "early_stopping": 0, "lr": 2e-3}
    per_class_columns = ("precision", "recall", "f1", "support", "roc_auc")
    confusion_unit = "images"
    examples_heading = "Most confident mistakes"
    examples_note = "the wrong answers the model was surest of, most confident first"
    detail_column = "top-{k}"
    ranks_classes = True
    general_recipe = "classify"
    calibrates = True
    detects_unknown = True

    def runner(self, cfg: Any, spec: Any, device: Any) -> Any:
        from visionlab.kinds.classification.runner import ClassificationRunner

        return ClassificationRunner(cfg, spec, device, self)

    def calibrate(self, runner: Any, model: Any) -> dict[str, Any] | None:
        """One temperature fitted on the validation split's logits by NLL (Guo et al. 2017:
        :func:`visionlab.kinds.classification.calibration.fit_temperature`; a split without mistakes
        by its mean confidence), in fp32 as evaluate runs; None without validation images."""
        from visionlab.engine.device import resolve_precision
        from visionlab.kinds.classification.calibration import fit_temperature

        if not runner.split_size("val"):
            return None
        views, y, _ = runner.views(model, "val", resolve_precision("fp32", runner.device).autocast)
        if len(y) == 0:
            return None
        fit = fit_temperature(views, y)
        return {"temperature": fit.temperature, "fitted_on": "val", "images": int(len(y)),
                "nll_before": fit.nll_before, "nll_after": fit.nll_after, "method": fit.method}

    def calibration_line(self, calibration: Any) -> str:
        how = (" (no mistakes there: sharpened until the mean confidence is (n + 1) / (n + 2))"
               if calibration.get("method") == "confidence" else "")
        return (f"temperature {calibration['temperature']:.3f} fitted on {calibration['images']} validation images{how} "
                f"(NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f})")

    def fit_unknown(self, runner: Any, model: Any) -> dict[str, Any] | None:
        """The ``unknown_score`` detector (:func:`visionlab.kinds.classification.unknown.fit_detector`):
        from training photos' features, a threshold that accepts ``unknown_accept`` of the validation photos."""
        from visionlab.kinds.classification.unknown import fit_detector

        return fit_detector(runner, model, runner.cfg.options.unknown_accept, runner.cfg.options.unknown_score)

    def unknown_line(self, detector: Any) -> str:
        from visionlab.kinds.classification.unknown import detector_summary

        return detector_summary(detector)

    def unknown_scorer(self, state: Any, model: Any) -> Any:
        from visionlab.kinds.classification.unknown import scorer_of

        return scorer_of(state, model)

    def exported(self, state: Any, model: Any) -> tuple[Any, tuple[Output, ...]]:
        """With a detector: the network and its score (:class:`visionlab.kinds.classification.unknown.UnknownScorer`,
        the feature bank a constant of the graph) as the second output, ``known_score`` (N x 1)."""
        scorer = self.unknown_scorer(state, model) if state.get("unknown") else None
        return (model, self.outputs) if scorer is None else (scorer, self.outputs + (KNOWN_SCORE,))

    def make_synthetic(self, root: Path, classes: list[str], seed: int) -> None:
        from visionlab.kinds.classification.synthetic import make_classification

        make_classification(root, classes, seed=seed)

    def demo_inputs(self, root: Path) -> list[Path]:
        """One image of each class (at most six)."""
        from visionlab.data.io import expand_inputs

        return [Path(expand_inputs([d])[0]) for d in sorted(root.iterdir()) if d.is_dir()][:6]

    def check_data(self, path: Any, classes: list[str] | None = None, **options: Any) -> Any:
        from visionlab.kinds.classification.checks import check_classification

        return check_classification(path, classes, **options)

    def dataset_classes(self, path: Path) -> list[str]:
        from visionlab.kinds.classification.layout import find_classification

        return find_classification(path).classes
    def suspects(self, cfg: Any, spec: Any, fit: Any, *, folds: int = 5, minutes: float = 10.0, epochs: int | None = None,
                 device: str = "auto", on_fold: Any = None, move_to: Path | None = None, method: str = "auto",
                 on_features: Any = None) -> Any:
        """Out-of-fold probabilities and confident learning (:mod:`visionlab.kinds.classification.suspects`)
        over every labelled photo of the dataset, whatever its split."""
        from visionlab.data.quarantine import check_move_target
        from visionlab.kinds.classification.layout import find_classification
        from visionlab.kinds.classification.suspects import require_cleanlab

        require_cleanlab()
        root = self.synthetic_data(spec) if cfg.is_synthetic else Path(cfg.data).expanduser()
        index = find_classification(root, cfg.classes or (list(spec.default_classes) if cfg.is_synthetic else None))
        if move_to is not None:
            check_move_target(move_to, index.root)
        from visionlab.kinds.classification.suspects import find_suspects  # torch: after the checks of the input

        return find_suspects(cfg, index, fit, self, folds=folds, minutes=minutes, epochs=epochs, device=device, on_fold=on_fold,
                             method=method, on_features=on_features)

    def recognizes(self, path: Path) -> bool:
        return True  # the fallback: class folders, or a CSV of labelled images (the doctor says what is wrong)

    def predict_arrays(self, model: LoadedModel, arrays: Sequence[Any], top_k: int, sources: Sequence[str],
                       originals: Sequence[Any]) -> list[Prediction]:
        """One batch through :func:`visionlab.kinds.classification.step.run_step` (the model's
        temperature applied), ranked by its :func:`rank`."""
        from visionlab.kinds.classification.step import StepContext, rank, run_step

        ctx = StepContext(model.model, model.normalize, model.device, model.tta, model.autocast, model.channels_last,
                          model.classes, model.temperature)
        scores = [None] * len(arrays)
        if model.scorer is not None and model.threshold is not None:
            _, probs, known = run_step(ctx, arrays, model.scorer)
            scores = known.cpu().tolist()
        else:
            _, probs = run_step(ctx, arrays)
        return [ClassPrediction(source, **_answer(r, score, model.threshold))
                for source, r, score in zip(sources, rank(probs.cpu().numpy(), ctx.classes, top_k), scores)]

    def explain(self, model: LoadedModel, arrays: Sequence[Any], predictions: Sequence[Prediction]) -> list[Any]:
        """Grad-CAM (:mod:`visionlab.kinds.classification.explain`) of each prediction's most probable
        class (the answer, or the best guess behind an "unknown"), on the layer the model zoo names,
        drawn over the image the model saw."""
        import numpy as np

        from visionlab.kinds.classification.explain import grad_cam, heat_overlay, require_captum, target_layer

        require_captum()
        layer = target_layer(model.model, model.cam_layer)
        if not len(arrays):  # asked before any work whether it can
            return []
        targets = [model.classes.index(p.top_k[0][0] if getattr(p, "top_k", None) else p.label) for p in predictions]
        heat = grad_cam(model.model, model.normalize, model.device, arrays, targets, layer, model.temperature, model.channels_last)
        return [heat_overlay(np.asarray(a), h) for a, h in zip(arrays, heat)]

    def answer_difference(self, prediction: Any, row: Any) -> tuple[float, int, int]:
        """Every class's probability (both ranked over all classes) and the unknown detector's score
        (when either has one), and whether the labels (so also 'unknown') agree."""
        ours = dict(prediction.top_k)
        if ours.keys() != {t["label"] for t in row["top_k"]} or (prediction.known_score is None) != (row.get("known_score") is None):
            return float("inf"), 0, 1
        diff = max((abs(ours[t["label"]] - t["probability"]) for t in row["top_k"]), default=0.0)
        if prediction.known_score is not None:
            diff = max(diff, abs(prediction.known_score - row["known_score"]))
        return diff, int(prediction.label == row["label"]), 1

    def runtime_rows(self, runtime: Any, batch: Sequence[tuple[Any, Any]], top_k: int) -> list[dict[str, Any]]:
        """One batch through the ONNX model (the runtime's numpy normalisation, test-time augmentation
        and softmax of the logits divided by the file's temperature), ranked by the step's :func:`visionlab.kinds.classification.step.rank`."""
        import numpy as np

        from visionlab.kinds.classification.step import rank

        probs, scores = runtime.scored_probs(runtime.normalize(np.stack([a for _, a in batch]).transpose(0, 3, 1, 2)))
        rows = []
        for r, score in zip(rank(probs, runtime.classes, top_k), scores if scores is not None else [None] * len(probs)):
            answer = _answer(r, score, runtime.threshold)
            rows.append({"label": answer["label"], "confidence": r.confidence, "error": None,
                         **{k: v for k, v in answer.items() if k not in ("label", "confidence", "top_k")},
                         "top_k": [{"label": lab, "probability": p} for lab, p in r.top_k]})
        return rows

    def flat_row(self, row: Any) -> dict[str, Any]:
        """An evaluation row with its top_k spread over top1_label, top1_probability, ..."""
        flat = {k: v for k, v in row.items() if k != "top_k"}
        return {**flat, **top_k_columns((t["label"], t["probability"]) for t in row.get("top_k", []))}


def _answer(r: Any, score: float | None, threshold: float | None) -> dict[str, Any]:
    """A ranking's fields of a :class:`ClassPrediction`, with the unknown detector's verdict when it applies."""
    from visionlab.kinds.classification.step import unknown_fields

    return {"label": r.label, "confidence": r.confidence, "top_k": r.top_k, **unknown_fields(r.label, score, threshold)}


#: The kind's one instance, registered by :mod:`visionlab.kinds` on first lookup.
KIND = ClassificationKind()
