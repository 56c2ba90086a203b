"""Inference from a checkpoint alone: a :class:`Predictor` (:func:`visionlab.load` makes one from a
path, finding the checkpoint's kind).

Images are decoded by a DataLoader with the exact preprocessing saved in the checkpoint and run
in batches under ``inference_mode``; how a batch is run, and what a result holds, is the task
kind's (:meth:`visionlab.kinds.Kind.predict_arrays`): classifiers batch images, segmentation
runs blended tiles per image. An unreadable file becomes a result with an ``error`` and does
not stop the batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from visionlab.data.io import InputEntry, UnreadableImage, expand_inputs, load_for_model, scan_inputs
from visionlab.data.transforms import Normalize
from visionlab.engine.checkpoint import load_model
from visionlab.engine.device import resolve_device, resolve_precision
from visionlab.kinds.base import DEFAULT_TOP_K, Kind, LoadedModel, Prediction, check_top_k, temperature_of, unknown_mode, unknown_threshold

__all__ = ["Predictor", "Prediction", "InputEntry", "scan_inputs", "expand_inputs"]  # the input scan lives in data.io (torch-free)


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any], pre: dict[str, Any]) -> None:
        self.items, self.pre = items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, torch.from_numpy(np.ascontiguousarray(load_for_model(self.items[i], self.pre))), None
        except UnreadableImage as exc:  # reported per image, never fatal
            return i, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _collate(batch: list) -> list:
    return batch


#: The longest side of an explanation brought back to its photo's proportions (:func:`fit_to_original`).
EXPLANATION_SIDE = 512


def _cam_layer(state: dict[str, Any]) -> str:
    """The layer the model zoo's record names for explanations ('' for an exported file, or none named)."""
    if state.get("onnx"):
        return ""
    from visionlab.models import model_weights, without_weights

    return model_weights(state["model_name"], **without_weights(state["model_name"], state["model_args"])).cam_layer


def fit_to_original(overlay: np.ndarray, original: Any) -> np.ndarray:
    """An explanation drawn on the model's input (squashed to a square for a classifier) resized to the
    proportions of the photo it came from, its longest side that of the photo up to
    :data:`EXPLANATION_SIDE` (never below the overlay's own); as it is when the photo is not at hand."""
    from PIL import Image

    from visionlab.data.io import load_image

    if original is None:
        return overlay
    try:
        w, h = load_image(original, draft=(EXPLANATION_SIDE, EXPLANATION_SIDE)).size  # a JPEG decodes scaled down
    except UnreadableImage:  # gone or changed since it was read: the overlay as drawn
        return overlay
    side = min(max(w, h), max(EXPLANATION_SIDE, *overlay.shape[:2]))
    size = (max(1, round(w * side / max(w, h))), max(1, round(h * side / max(w, h))))
    if size == (overlay.shape[1], overlay.shape[0]):
        return overlay
    return np.asarray(Image.fromarray(overlay).resize(size, Image.BICUBIC))


class Predictor:
    """A trained model with its classes and preprocessing, ready to predict: ``state`` is a checkpoint's
    (:func:`visionlab.engine.checkpoint.load_checkpoint`) and ``kind`` the kind it names.

    Its fitted calibration (a classifier's temperature, saved in the checkpoint) is applied unless
    ``calibration`` is False (the raw softmax); :attr:`calibration_note` is the one notice to give
    for a model of a calibrating kind that carries none ("" otherwise). Its unknown detector (a
    classifier's, saved in the checkpoint) answers 'unknown' below its threshold: ``unknown`` 'auto'
    (the fitted threshold), a number (that threshold) or 'off'; :attr:`unknown_note` is the one notice
    for a model of a detecting kind that carries none."""

    def __init__(self, state: dict[str, Any], kind: Kind, device: str = "auto", source: str | None = None,
                 precision: str = "fp32", calibration: bool = True, unknown: str | float = "auto") -> None:
        self.state = state
        self.source = source
        self.task: str = state["task"]
        self.kind: Kind = kind
        self.classes: list[str] = list(state["classes"])
        self.preprocessing = kind.saved_preprocessing(state["preprocessing"], f"checkpoint {source}" if source else "the checkpoint")
        self.synthetic: bool = bool(state.get("data", {}).get("synthetic", False))
        self.device = resolve_device(device)
        # fp32 by default: the same answers as the exported .onnx; "auto" (bf16 where the CPU/GPU has it) is faster
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = bool(state["config"].get("channels_last", False))
        self.model = load_model(state, device=self.device, channels_last=self.channels_last)
        self.normalize = Normalize(self.preprocessing.mean, self.preprocessing.std).to(self.device)
        self.tta: str = self.preprocessing.tta_mode  # as validated; set another mode to change it
        self.input_size = self.preprocessing.image_size  # classifier input, or segmentation tile
        self.calibration: dict[str, Any] | None = state.get("calibration")
        self.temperature = temperature_of(self.calibration, calibration)  # what logits are divided by before softmax
        self.calibration_note = self.kind.calibration_note(source or "the model", self.calibration) if calibration else ""
        self.cam_layer = _cam_layer(state)  # the layer explanations weigh (the model zoo's record)
        self.detector: dict[str, Any] | None = state.get("unknown")
        unknown = unknown_mode(unknown)
        self.threshold = unknown_threshold(self.detector, unknown)  # None: every photo gets a class
        self.scorer = self.kind.unknown_scorer(state, self.model) if self.threshold is not None else None
        self.unknown_note = self.kind.unknown_note(source or "the model", self.detector) if unknown != "off" else ""

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, classes={self.classes}, device={self.device})"

    def predict(self, images: Any, top_k: int = DEFAULT_TOP_K, batch_size: int = 32, num_workers: int | None = None,
                explain: bool = False, on_batch: Callable[[list[Prediction]], None] | None = None) -> list[Prediction]:
        """Predict one image or a list of them (paths, PIL images or HxWx3 uint8 arrays).

        ``top_k`` (>= 1) is clipped to the number of classes. ``explain``: each result also carries
        :attr:`Prediction.explanation`, the overlay of :meth:`explain` (the kind says whether it can, before any work).
        ``on_batch`` is called with each batch's results as soon as they are made (to write their files
        and let go of their arrays, so a long run does not hold them all)."""
        if explain:
            self.kind.explain(self.loaded(), [], [])  # a kind that cannot explain says so now
        check_top_k(top_k)
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
            images = [images]
        images = list(images)
        names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(images)]
        if num_workers is None:
            num_workers = 0 if len(images) < 64 or (os.cpu_count() or 1) <= 2 else 2
        loader = torch.utils.data.DataLoader(
            _Images(images, self.preprocessing), batch_size=self.kind.loader_batch_size(batch_size),
            collate_fn=_collate, num_workers=num_workers)
        results: list[Prediction | None] = [None] * len(images)
        for batch in loader:
            ok = [(i, x) for i, x, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    results[i] = Prediction(names[i], error=err)
            if not ok:
                continue
            idx = [i for i, _ in ok]
            arrays = [x.numpy() for _, x in ok]
            preds = self.predict_arrays(arrays, top_k, [names[i] for i in idx], [images[i] for i in idx])
            if explain:
                for pred, overlay in zip(preds, self.explain(arrays, preds, [images[i] for i in idx])):
                    pred.explanation = overlay
            if on_batch is not None:
                on_batch(preds)
            for i, pred in zip(idx, preds):
                results[i] = pred
        return [r for r in results if r is not None]

    def preprocess(self, image: Any) -> np.ndarray:
        """One image (path, file object, PIL image or array) -> the HxWx3 uint8 array
        :meth:`predict_arrays` takes; decoded exactly as :meth:`predict` decodes a file."""
        return np.ascontiguousarray(load_for_model(image, self.preprocessing))

    @torch.inference_mode()
    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = DEFAULT_TOP_K, sources: Sequence[str] | None = None,
                       originals: Sequence[Any] | None = None) -> list[Prediction]:
        """The model step on images already :meth:`preprocess`-ed, one result per image, in order.

        ``originals`` are the images before preprocessing (needed to map a scaled segmentation
        back to the original resolution); ``sources`` name the results."""
        if not len(arrays):
            return []
        sources = list(sources) if sources is not None else [f"<image {i}>" for i in range(len(arrays))]
        originals = list(originals) if originals is not None else list(arrays)
        return self.kind.predict_arrays(self.loaded(), arrays, top_k, sources, originals)

    def explain(self, arrays: Sequence[np.ndarray], predictions: Sequence[Prediction],
                originals: Sequence[Any] | None = None) -> list[np.ndarray]:
        """Why the model gave ``predictions`` for the :meth:`preprocess`-ed ``arrays``: the kind's overlays
        (:meth:`visionlab.kinds.Kind.explain`; with gradients, so not under ``inference_mode``), each
        brought back to its original's proportions (``originals``: the images before preprocessing)."""
        if not len(arrays):
            return []
        overlays = self.kind.explain(self.loaded(), arrays, predictions)
        return [fit_to_original(o, img) for o, img in zip(overlays, originals or [None] * len(overlays))]

    def loaded(self) -> LoadedModel:
        """What the kind's predict step is given of this model (with the current :attr:`tta`)."""
        return LoadedModel(self.model, self.normalize, self.device, tuple(self.classes), self.preprocessing,
                           self.precision.autocast, self.tta, self.channels_last, self.temperature, self.cam_layer,
                           self.scorer, self.threshold if self.scorer is not None else None)

    def warmup(self) -> None:
        """One forward pass on a blank image of the input size (first-call allocations, lazy inits)."""
        from PIL import Image

        self.predict(Image.new("RGB", (self.input_size, self.input_size), (128, 128, 128)), top_k=1)
