"""Image classification: folders (or a CSV) of labelled photos -> class probabilities.

Training images are decoded and resized once into a uint8 cache; each batch is gathered from
it, moved to the device and augmented there as a whole batch. Evaluation and prediction use
the same decoding and resizing (:func:`visionlab.data.transforms.load_for_model`), without
augmentation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from visionlab.data.cache import ImageCache, build_cache
from visionlab.data.io import DECODE_ERRORS, UnreadableImage
from visionlab.data.preprocessing import Preprocessing
from visionlab.data.transforms import BatchAugment, BatchMix, Normalize, load_for_model
from visionlab.engine.distributed import shard_batch
from visionlab.engine.tta import mean_scores
from visionlab.errors import VisionlabError
from visionlab.kinds.base import DEFAULT_TOP_K, temperature_of, unknown_threshold
from visionlab.kinds.classification.layout import ClassificationIndex, find_classification
from visionlab.kinds.classification.step import StepContext, rank, run_views
from visionlab.data.splits import split_indices, split_keys
from visionlab.engine.runner import EvalResult, TaskRunner, default_workers, loader_generator, resolve_data_path, thumbnail

__all__ = ["ClassificationRunner", "classification_preprocessing", "WHY_CAPTION"]

#: The caption of a mistake's explanation in the examples (evaluate's examples/, the report).
WHY_CAPTION = "Grad-CAM"


def classification_preprocessing(cfg: Any) -> Preprocessing:
    """The preprocessing that travels with the weights and every checkpoint: photos squashed to
    ``image_size``, normalised as the model's weights were trained."""
    from visionlab.models import model_weights

    w = model_weights(cfg.model, **cfg.model_args)
    return Preprocessing(kind="classification", image_size=int(cfg.image_size), resize="squash", mean=w.mean, std=w.std,
                         background_removal=bool(cfg.options.background_removal), tta=str(cfg.tta))


class _StreamDataset(torch.utils.data.Dataset):
    """Decode on the fly (datasets that are not cached); an unreadable file yields its path."""

    def __init__(self, paths: list, labels: np.ndarray, pre: Preprocessing) -> None:
        self.paths, self.labels, self.pre = paths, labels, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return torch.from_numpy(load_for_model(self.paths[i], self.pre)), int(self.labels[i]), str(self.paths[i])
        except UnreadableImage:
            return str(self.paths[i])


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Stack the readable items: (images, labels, paths of unreadable files, paths of the images)."""
    failed = [it for it in items if isinstance(it, str)]
    items = [it for it in items if not isinstance(it, str)]
    if not items:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), failed, []
    x = torch.stack([it[0] for it in items]).permute(0, 3, 1, 2)
    return x, torch.tensor([it[1] for it in items], dtype=torch.long), failed, [it[2] for it in items]


class ClassificationRunner(TaskRunner):
    def prepare(self, console: Any = None) -> None:
        cfg = self.cfg
        wanted = cfg.classes or (list(self.spec.default_classes) if cfg.is_synthetic else None)
        root = resolve_data_path(cfg, self.spec, self.task_kind)
        self.index: ClassificationIndex = find_classification(root, wanted)
        self.classes = list(self.index.classes)
        self.labels = np.asarray(self.index.labels, dtype=np.int64)
        base = self.index.root if self.index.root.is_dir() else self.index.root.parent  # a CSV: its folder
        keys = split_keys(self.index.paths, base)
        self.splits = split_indices(keys, self.labels, self.index.splits, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        if len(self.splits["train"]) == 0:
            raise VisionlabError(f"no training images in {root}.", "Add a train/ split or more images.")
        self.preprocessing = Preprocessing.from_dict(self.fixed_preprocessing or classification_preprocessing(cfg))
        self.normalize = Normalize(self.preprocessing.mean, self.preprocessing.std).to(self.device)
        self.augment = BatchAugment(cfg.augment)
        self.mixer = BatchMix(len(self.classes), cfg.options.mixup, cfg.cutmix)
        self.cache: ImageCache | None = None
        if cfg.cache != "none":
            self.cache = self._build_cache(console)
            ok, failed = self.cache.ok, [f for f, _ in self.cache.failed]
        else:  # streaming: a cheap header check now, truncated files are caught as they are met
            ok, failed = self._header_check()
        if not ok.all():
            for s in self.splits:
                self.splits[s] = self.splits[s][ok[self.splits[s]]]
        self.data_info = {
            "root": str(self.index.root),
            "synthetic": cfg.is_synthetic,
            "images": int(len(self.index)),
            "unreadable": failed,
            "split_sizes": {k: int(len(v)) for k, v in self.splits.items()},
            "class_counts": {c: int(n) for c, n in zip(self.classes, np.bincount(self.labels[self.splits["train"]], minlength=len(self.classes)))},
            "cache": self.cache.location if self.cache else "none",
        }
        self._images = None
        if self.cache is not None and self.cache.location == "memory":
            self._images = torch.from_numpy(np.asarray(self.cache.images))
            if self.device.type == "cuda" and self._images.nbytes < 0.25 * torch.cuda.get_device_properties(self.device).total_memory:
                # the whole uint8 cache on the GPU: batches are gathered there, no host copies at all
                self._images = self._images.to(self.device)

    def split_files(self, split: str) -> list[Path]:
        return [Path(self.index.paths[i]) for i in self.splits[split]]

    def use_saved(self, state: dict[str, Any], tta: str | None = None) -> None:
        """Also the saved model's classes, in its order (an evaluation folder may hold others too)."""
        super().use_saved(state, tta)
        self.cfg.classes = list(state["classes"])

    def data_warnings(self) -> list[str]:
        """The data doctor's cheap pre-training checks (duplicates across classes or splits, imbalance)."""
        if self.data_info.get("synthetic"):
            return []
        from visionlab.kinds.classification.checks import training_warnings

        try:
            return training_warnings(self.index)
        except VisionlabError as exc:
            return [str(exc)]

    def _header_check(self) -> tuple[np.ndarray, list[str]]:
        from visionlab.data.io import open_image

        ok = np.ones(len(self.index), dtype=bool)
        failed = []
        for i, p in enumerate(self.index.paths):
            try:
                with open_image(p):
                    pass
            except DECODE_ERRORS:
                ok[i] = False
                failed.append(str(p))
        return ok, failed

    def _build_cache(self, console: Any) -> ImageCache:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        paths = self.index.paths
        with Progress(TextColumn("caching images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=console is None) as prog:
            task = prog.add_task("cache", total=len(paths))
            return build_cache(paths, self.preprocessing, mode=self.cache_mode, budget_mb=self.cfg.cache_budget_mb,
                               progress=lambda n=1: prog.advance(task, n))

    # ----------------------------------------------------------------- batches
    def _sample_order(self, epoch: int) -> np.ndarray:
        train = self.splits["train"]
        rng = np.random.default_rng(self.cfg.seed * 1000 + epoch)
        if self.cfg.sampler == "balanced":
            counts = np.bincount(self.labels[train], minlength=len(self.classes)).astype(np.float64)
            w = 1.0 / counts[self.labels[train]]
            return rng.choice(train, size=len(train), replace=True, p=w / w.sum())
        return rng.permutation(train)

    def num_train_batches(self) -> int:
        return self.global_batches(len(self.splits["train"]))

    def _gather(self, idx: np.ndarray) -> torch.Tensor:
        if self._images is not None:
            x = self._images[torch.from_numpy(idx).to(self._images.device)].permute(0, 3, 1, 2)  # NCHW, channels_last memory
            return x.pin_memory() if self.device.type == "cuda" and not x.is_cuda else x
        order = np.argsort(idx)  # memmap: read in file order
        arr = np.empty((len(idx),) + self.cache.images.shape[1:], dtype=np.uint8)
        arr[order] = self.cache.images[idx[order]]
        return torch.from_numpy(arr).permute(0, 3, 1, 2)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = self._sample_order(epoch)
        bs, steps = self.cfg.batch_size, self.num_train_batches()
        mine = [shard_batch(order, step, bs, self.dist) for step in range(start_step, steps)]  # this process's batches
        if self.cache is None:
            idx = np.concatenate(mine) if mine else order[:0]
            loader = torch.utils.data.DataLoader(
                _StreamDataset([self.index.paths[i] for i in idx], self.labels[idx], self.preprocessing),
                batch_size=bs, shuffle=False, drop_last=False, collate_fn=_collate, generator=loader_generator(self.cfg.seed, epoch),
                num_workers=default_workers(self.cfg, self.device), pin_memory=self.device.type == "cuda")
            for batch in loader:
                yield self._note_failed(batch)
            return
        labels = torch.from_numpy(self.labels)
        for idx in mine:
            yield self._gather(idx), labels[torch.from_numpy(idx)]

    # ------------------------------------------------------------------- step
    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255.0)
        if train:
            x = self.augment(x)
        x = self.normalize(x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.options.mixup <= 0 and self.cfg.cutmix <= 0:
            return x, y
        return self.mixer(x, y)

    def class_weight_tensor(self) -> torch.Tensor | None:
        if self.cfg.class_weights != "balanced":
            return None
        counts = np.bincount(self.labels[self.splits["train"]], minlength=len(self.classes)).astype(np.float64)
        w = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; ``target`` holds class indices, or class probabilities after mixup/CutMix.

        torch's cross-entropy, not timm's ``SoftTargetCrossEntropy`` (the same sum of -target *
        log_softmax, averaged over the batch): it also takes the class weights, and smooths soft
        targets as it does hard ones. With soft targets the weighted sum is averaged over the batch;
        with class indices it is divided by the weights of the batch's labels (torch's rule)."""
        if not hasattr(self, "_weights"):
            self._weights = self.class_weight_tensor()
        return F.cross_entropy(output.float(), target, weight=self._weights, label_smoothing=self.cfg.options.label_smoothing)

    def eval_batches(self, split: str, batch_size: int, with_paths: bool = False) -> Iterator[tuple]:
        """(images, labels) batches of a split, in order; ``with_paths`` adds the files' paths."""
        idx = self.shard(self.splits[split])
        labels = torch.from_numpy(self.labels)
        if self.cache is not None:
            for chunk in self.iter_chunks(idx, batch_size):
                batch = (self._gather(chunk), labels[torch.from_numpy(chunk)])
                yield batch + ([str(self.index.paths[i]) for i in chunk],) if with_paths else batch
            return
        loader = torch.utils.data.DataLoader(
            _StreamDataset([self.index.paths[i] for i in idx], self.labels[idx], self.preprocessing),
            batch_size=batch_size, collate_fn=_collate, num_workers=default_workers(self.cfg, self.device),
            generator=loader_generator(self.cfg.seed, -1))
        for batch in loader:
            yield self._note_failed(batch) + ((batch[3],) if with_paths else ())

    def _note_failed(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming: record unreadable files as they are met (saved in checkpoints' data info)."""
        x, y, failed = batch[:3]
        known = self.data_info["unreadable"]
        known += [f for f in failed if f not in known]
        return x, y

    @torch.inference_mode()
    def views(self, model: torch.nn.Module, split: str, autocast: Any,
              batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The raw logits of every test-time augmentation view of a split's images ((V, N, C), on the
        CPU), their labels and their files, in order (merged over the processes under torchrun)."""
        return self.scored_views(model, split, autocast, None, batch_size)[:3]

    @torch.inference_mode()
    def scored_views(self, model: torch.nn.Module, split: str, autocast: Any, scorer: Any = None,
                     batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """:meth:`views` and, with an unknown detector's ``scorer`` (:meth:`Kind.unknown_scorer`), each
        image's score from the same forward passes (empty without one)."""
        from visionlab.kinds.classification.unknown import scored_views

        model.eval()
        ctx = StepContext(model, self.normalize, self.device, self.preprocessing.tta_mode, autocast,
                          self.cfg.channels_last, tuple(self.classes))
        part: dict[str, list] = {"views": [], "targets": [], "paths": [], "scores": []}
        for x, y, paths in self.eval_batches(split, batch_size or max(self.cfg.batch_size, 64), with_paths=True):
            if len(y):
                if scorer is None:
                    part["views"].append(run_views(ctx, x).cpu())
                else:
                    v, score = scored_views(scorer, lambda f: run_views(replace(ctx, model=f), x))
                    part["views"].append(v.cpu())
                    part["scores"].append(score.cpu())
                part["targets"].append(y.cpu())
                part["paths"] += paths
        merged = self.merge_shards(part)
        if not merged["targets"]:
            return torch.zeros(1, 0, len(self.classes)), torch.zeros(0, dtype=torch.long), [], torch.zeros(0)
        scores = torch.cat(merged["scores"]) if merged["scores"] else torch.zeros(0)
        return torch.cat(merged["views"], 1), torch.cat(merged["targets"]), merged["paths"], scores

    @torch.inference_mode()
    def features(self, model: torch.nn.Module, split: str, autocast: Any, rows: np.ndarray | None = None,
                 batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The penultimate features (N, D) of a split's readable images (those at ``rows`` of it), the
        plain view only, float32 on the CPU (:func:`visionlab.kinds.classification.unknown.feature_views`),
        and their labels (N,)."""
        from visionlab.kinds.classification.unknown import feature_views

        model.eval()
        ctx = StepContext(model, self.normalize, self.device, "none", autocast, self.cfg.channels_last, tuple(self.classes))
        self.splits["bank"] = self.splits[split] if rows is None else self.splits[split][rows]
        part: dict[str, list] = {"features": [], "labels": []}
        try:
            for x, y in self.eval_batches("bank", batch_size or max(self.cfg.batch_size, 64)):
                if len(y):
                    part["features"].append(feature_views(model, lambda f: run_views(replace(ctx, model=f), x))[1][0].cpu())
                    part["labels"].append(torch.as_tensor(y).cpu())
        finally:
            del self.splits["bank"]
        merged = self.merge_shards(part)
        if not merged["features"]:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        return torch.cat(merged["features"]), torch.cat(merged["labels"])

    @property
    def temperature(self) -> float:
        """What the logits are divided by before softmax: the model's fitted temperature, 1 without one
        or when :attr:`calibrated` is off."""
        return temperature_of(self.calibration, self.calibrated)

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult:
        from visionlab.kinds.classification.meter import ClassificationMeter

        threshold = unknown_threshold(self.detector.get("unknown"), self.unknown)
        scorer = self.task_kind.unknown_scorer(self.detector, model) if threshold is not None else None
        views, y, paths, known = self.scored_views(model, split, autocast, scorer, batch_size)
        if len(y) == 0:
            return EvalResult({}, {}, self.primary)
        scores = mean_scores(views, self.temperature)
        meter = ClassificationMeter(len(self.classes))
        meter.update(scores, y)
        metrics = {k: float(v) for k, v in meter.compute().items() if v is not None}
        metrics["loss"] = float(F.cross_entropy(scores, y))
        report = self._calibration_report(meter.report(self.classes), views, scores, y)
        if scorer is not None:
            report["unknown"] = _unknown_report(known, threshold, scores.argmax(1) == y, self.detector["unknown"])
            metrics.update({k: report["unknown"][k] for k in ("known_accepted", "accuracy_accepted")})
            report["metrics"].update({k: report["unknown"][k] for k in ("known_accepted", "accuracy_accepted")})
        rows = []
        for i, (path, t, r) in enumerate(zip(paths, y.tolist(), rank(meter.probs, self.classes, DEFAULT_TOP_K))):
            rows.append({"path": path, "label": self.classes[t], "predicted": r.label,
                         "confidence": round(r.confidence, 4), "correct": self.classes[t] == r.label,
                         **({"unknown": bool(known[i] < threshold), "known_score": round(float(known[i]), 6)} if len(known) else {}),
                         "top_k": [{"label": lab, "probability": round(p, 4)} for lab, p in r.top_k]})
        rows.sort(key=lambda r: (r["correct"], -r["confidence"]))  # the mistakes first, most confident first
        wrong = sum(not r["correct"] for r in rows)
        return EvalResult(metrics, report, self.primary, rows, f"{wrong} of {len(rows)} images wrong, listed first",
                          self._mistakes(rows[: min(wrong, self.examples)], model))

    def _calibration_report(self, report: dict[str, Any], views: torch.Tensor, scores: torch.Tensor,
                            y: torch.Tensor) -> dict[str, Any]:
        """The meter's report with the calibration of its probabilities: ECE, NLL and Brier score with
        the temperature applied and, as ``*_before``, of the raw softmax; the reliability diagram's bins
        of both; the temperature applied, whether the fitted one was, and the fit as the checkpoint holds it."""
        from visionlab.kinds.classification.meter import calibration_metrics, reliability_bins

        raw = mean_scores(views, 1.0)
        report["metrics"].update(calibration_metrics(scores, y))
        report["metrics"].update({f"{k}_before": v for k, v in calibration_metrics(raw, y).items()})
        target = y.numpy()
        report["reliability"] = {"before": reliability_bins(raw.softmax(1).numpy(), target),
                                 "after": reliability_bins(scores.softmax(1).numpy(), target)}
        report["calibration"] = {"temperature": self.temperature, "applied": bool(self.calibration) and self.calibrated,
                                 **({"fitted": self.calibration} if self.calibration else {})}
        return report

    def _why(self, model: Any, rows: list[dict[str, Any]]) -> list[Any]:
        """The kind's explanation (:meth:`visionlab.kinds.Kind.explain`: Grad-CAM) of each row's predicted
        class as a PIL image in the photo's proportions; None for a photo unreadable now, and for
        every row of a model that cannot explain (an exported .onnx file)."""
        from PIL import Image

        from visionlab.engine.predict import fit_to_original
        from visionlab.kinds.base import LoadedModel, Prediction
        from visionlab.models import model_weights, without_weights

        if model is None or not rows:
            return [None] * len(rows)
        cam_layer = model_weights(self.cfg.model, **without_weights(self.cfg.model, self.cfg.model_args)).cam_layer
        loaded = LoadedModel(model, self.normalize, self.device, tuple(self.classes), self.preprocessing, None,
                             channels_last=self.cfg.channels_last, temperature=self.temperature, cam_layer=cam_layer)
        try:
            self.task_kind.explain(loaded, [], [])
        except VisionlabError:
            return [None] * len(rows)
        out: list[Any] = []
        for r in rows:
            try:
                array = load_for_model(r["path"], self.preprocessing)
            except UnreadableImage:
                out.append(None)
                continue
            pred = Prediction(r["path"], label=r["predicted"], confidence=r["confidence"])
            overlay = self.task_kind.explain(loaded, [array], [pred])[0]
            out.append(Image.fromarray(fit_to_original(overlay, r["path"])))
        return out

    def _mistakes(self, rows: list[dict[str, Any]], model: Any = None) -> list[dict[str, Any]]:
        """Thumbnails of the given (mistaken) rows, with the true and predicted labels and top-k, and
        beside each photo why the model answered so (:meth:`_why`)."""
        from visionlab.data.io import load_image

        out = []
        whys = self._why(model, rows)
        for r, why in zip(rows, whys):
            try:
                images = {"photo": thumbnail(load_image(r["path"]), 240)}
            except UnreadableImage:  # a file gone or broken since: the labels alone
                images = {}
            heat = {}
            if why is not None and images:
                images[WHY_CAPTION] = thumbnail(why, 240)
                heat = {"Grad-CAM": f"red where it saw {r['predicted']}"}
            out.append({"title": r["path"], "images": images,
                        "fields": {"true": r["label"], "predicted": f"{r['predicted']} ({r['confidence']:.0%})",
                                   "top-k": ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top_k"]), **heat}})
        return out


def _unknown_report(known: torch.Tensor, threshold: float, correct: torch.Tensor, detector: dict[str, Any]) -> dict[str, Any]:
    """What the unknown detector did on a split of known photos: the share it accepted (not 'unknown')
    at ``threshold``, the accuracy on those and on all (the labels are the same with or without it)."""
    accepted = known >= threshold
    n = int(accepted.sum())
    return {"threshold": float(threshold), "fitted_threshold": detector.get("threshold"), "score": detector.get("score"),
            "known_accepted": float(accepted.float().mean()), "accepted": n, "images": int(len(known)),
            "accuracy_accepted": float(correct[accepted].float().mean()) if n else None,
            "accuracy_all": float(correct.float().mean())}
