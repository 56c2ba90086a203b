"""Run an exported visionlab model with numpy, Pillow and onnxruntime only: no torch, no torchvision.

A file written by ``visionlab export`` carries everything inference needs in its ONNX metadata
(task, class names in order, the preprocessing, the test-time augmentation). This module reads
it and predicts images and folders exactly as :class:`visionlab.engine.predict.Predictor` does:
the same decoding (:func:`visionlab.data.io.load_for_model`: EXIF orientation, RGB conversion,
the same resize), the same normalisation, the same flipped/rotated views averaged on
probabilities (:func:`visionlab.data.geometry.view_plan`) and whatever else the kind's step does
(:meth:`visionlab.kinds.Kind.runtime_rows`; segmentation: the same blended sliding-window tiles,
:func:`visionlab.data.arrays.predict_tiled`), here in numpy.

Install on a machine without torch::

    pip install onnxruntime pillow numpy
    pip install --no-deps visionlab

Use::

    >>> from visionlab.runtime import load
    >>> model = load("best.onnx")
    >>> for p in model.predict(["wall.jpg", "photos/"], top_k=2):
    ...     print(p["path"], p["label"], p["confidence"])

    $ python -m visionlab.runtime best.onnx photos/ --top-k 2 --json preds.json

onnxruntime's threads are set on purpose: ``intra_op_num_threads`` from ``threads`` (default:
``OMP_NUM_THREADS`` when set, else the CPUs this process may use) and one inter-op thread, so
several workers, each given its share of the cores, do not oversubscribe them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionlab.data.arrays import apply_view, softmax, undo_view
from visionlab.data.geometry import view_plan
from visionlab.data.io import InputEntry, UnreadableImage, load_for_model, scan_inputs
from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, Output, get_kind, kind_names
from visionlab.kinds.base import DEFAULT_TOP_K, check_top_k, temperature_of, unknown_mode, unknown_threshold
from visionlab.onnx_file import (FORMAT, JSON_FIELDS, OpenVINOSession, default_threads, fitting_outputs, open_session,
                                 read_metadata)

__all__ = ["FORMAT", "JSON_FIELDS", "Runtime", "OpenVINOSession", "load", "open_session", "read_metadata",
           "default_threads"]  # the file's format: visionlab.onnx_file


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    """An output's scores as probabilities: softmax over the class axis, sigmoid per class, or as they are."""
    if activation == "softmax":
        return softmax(x, 1)
    if activation == "sigmoid":
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    return x


class Runtime:
    """An exported model with its classes and preprocessing, run by onnxruntime on the CPU.

    The file's fitted calibration (a classifier's temperature) divides the logits before the
    activation unless ``calibration`` is False (the raw softmax), as in :class:`visionlab.engine.predict.Predictor`;
    so does its unknown detector (the graph's second output, the score; the threshold in the metadata) unless
    ``unknown`` is 'off' ('auto': the file's threshold; or a number)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, calibration: bool = True,
                 unknown: str | float = "auto") -> None:
        self.path = str(path)
        self.session = open_session(path, threads)
        self.metadata = read_metadata(self.session, path)
        self.task: str = self.metadata["task"]
        self.kind: str = self.metadata["kind"]
        self.classes: list[str] = list(self.metadata["classes"])
        self.kind_of = _kind_of(self.kind, self.path)  # what a result of this kind is (visionlab.kinds)
        self.preprocessing = self.kind_of.saved_preprocessing(self.metadata["preprocessing"], self.path)
        self.metadata["outputs"] = _outputs(self.metadata["outputs"], self.kind_of, self.session, self.path)
        self.output: Output = self.metadata["outputs"][0]  # what the network returns: per image or pixel, its activation
        self.tta: str = self.preprocessing.tta_mode  # as validated; set another mode to change it
        mean = np.asarray(self.preprocessing.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.preprocessing.std, dtype=np.float32).reshape(1, -1, 1, 1)
        self._scale, self._shift = np.float32(1.0) / std, -mean / std  # as visionlab's Normalize
        self._input = self.session.get_inputs()[0].name
        self.calibration: dict[str, Any] | None = self.metadata.get("calibration")
        self.temperature = np.float32(temperature_of(self.calibration, calibration))  # logits / temperature before the activation
        self.calibration_note = self.kind_of.calibration_note(self.path, self.calibration) if calibration else ""
        self.detector: dict[str, Any] | None = self.metadata.get("unknown")
        unknown = unknown_mode(unknown)
        self.threshold = unknown_threshold(self.detector, unknown)  # None: every photo gets a class
        if self.threshold is not None and len(self.session.get_outputs()) < 2:
            raise VisionlabError(f"{self.path} is damaged (its metadata has an unknown detector, its graph no score output).",
                                 "Export the checkpoint again, or pass --unknown off.")
        self.unknown_note = self.kind_of.unknown_note(self.path, self.detector) if unknown != "off" else ""

    def __repr__(self) -> str:
        return f"Runtime(task={self.task!r}, classes={self.classes}, file={self.path!r})"

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 NCHW -> float32 NCHW, normalised with the file's mean and std."""
        return x.astype(np.float32) / np.float32(255.0) * self._scale + self._shift

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's raw output for a normalised float32 NCHW batch."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for a normalised float32 NCHW batch (the logits first)."""
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (the output's activation of the logits divided by :attr:`temperature`),
        averaged over the test-time augmentation's views (as :func:`visionlab.engine.tta.mean_scores`);
        a per-pixel output's views are mapped back first."""
        return self.scored_probs(x)[0]

    def scored_probs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`probs`, and with the unknown detector applied (:attr:`threshold` set) each image's score:
        the graph's second output, the mean over the views (as :func:`visionlab.kinds.classification.unknown.scored_views`)."""
        views = view_plan(self.tta, x.shape[-1] == x.shape[-2])
        total, known = None, None
        for k, flip in views:
            out = self.outputs(apply_view(x, k, flip))
            p = activate(out[0].astype(np.float32) / self.temperature, self.output.activation)
            p = undo_view(p, k, flip) if self.output.dense else p
            total = p if total is None else total + p
            if self.threshold is not None:
                score = out[1].astype(np.float32).reshape(-1)
                known = score if known is None else known + score
        n = np.float32(len(views))
        return total / n, (known / n if known is not None else None)

    def predict(self, images: Any, top_k: int = DEFAULT_TOP_K, batch_size: int = 32) -> list[dict[str, Any]]:
        """Predict one image or several (paths, folders, globs, PIL images or HxWx3 uint8 arrays).

        Each result is a dict like :meth:`visionlab.engine.predict.Prediction.to_dict`
        (path, label, confidence, error, top_k or class_shares), plus ``mask`` (an HxW uint8
        array of the dataset's pixel values) for segmentation. A file that cannot be read gets
        an ``error`` and does not stop the others; an entry that is not predicted at all (a
        folder, a FIFO, a broken link, a file in a folder that is not an image) gets ``skipped``,
        saying why, as in ``visionlab predict``."""
        check_top_k(top_k)
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
            images = [images]
        entries: list[Any] = []
        for x in images:
            entries += scan_inputs([x]) if isinstance(x, (str, os.PathLike)) else [x]
        skipped = {i: e.skipped for i, e in enumerate(entries) if isinstance(e, InputEntry) and e.skipped}
        items = [e.path if isinstance(e, InputEntry) else e for e in entries]
        names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(items)]
        results: list[dict[str, Any] | None] = [None] * len(items)
        pending: list[tuple[int, np.ndarray]] = []
        step = self.kind_of.loader_batch_size(max(1, int(batch_size)))
        for i, item in enumerate(items):
            try:
                if i in skipped:
                    results[i] = {"path": names[i], "label": None, "confidence": None, "error": None, "skipped": skipped[i]}
                else:
                    pending.append((i, load_for_model(item, self.preprocessing)))
            except UnreadableImage as exc:  # reported per image, never fatal
                results[i] = {"path": names[i], "label": None, "confidence": None, "error": _first_line(exc)}
            if pending and (len(pending) == step or i == len(items) - 1):
                for (j, _), row in zip(pending, self.kind_of.runtime_rows(self, [(items[j], a) for j, a in pending], top_k)):
                    results[j] = {"path": names[j], **row}
                pending = []
        return [r for r in results if r is not None]


def _kind_of(name: str, path: str) -> Kind:
    """The kind a file was exported from; one that is not registered here is a plugin's (the built-in
    kinds always are), so the error says to load it."""
    try:
        return get_kind(name)
    except VisionlabError:
        raise VisionlabError(f"{path} was exported from the task kind {name!r}, which is not registered here "
                             f"(known kinds: {', '.join(kind_names())}).",
                             "This file was exported from a plugin kind: install or name its plugin (VISIONLAB_PLUGINS=module) "
                             "and run again.") from None


def _outputs(described: list[Output] | None, kind: Kind, session: Any, path: str) -> list[Output]:
    """The file's outputs as its metadata describes them, or for a file exported before the metadata
    did, its kind's declared ones (those of the built-in kinds are what such files always held),
    checked against the graph."""
    if described is not None:
        return described
    try:
        return fitting_outputs(kind.outputs, session.get_outputs())
    except ValueError as exc:
        raise VisionlabError(f"{path}: its visionlab metadata is incomplete or damaged (no 'outputs', and the {kind.name} kind's: "
                             f"{exc}).", "Export the checkpoint again.") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load(path: str | os.PathLike, threads: int | None = None, calibration: bool = True, unknown: str | float = "auto") -> Runtime:
    """Open an exported ``.onnx`` model for prediction (see :class:`Runtime`)."""
    return Runtime(path, threads=threads, calibration=calibration, unknown=unknown)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visionlab.runtime MODEL.onnx IMAGES...``: labels (or class shares) per image."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m visionlab.runtime", description=main.__doc__)
    ap.add_argument("model", help="an .onnx file written by visionlab export")
    ap.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the CPU count)")
    ap.add_argument("--masks", type=Path, default=None, help="segmentation: write <stem>_mask.png and <stem>_confidence.png files here")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--no-calibration", action="store_true", help="the raw softmax, without the model's fitted temperature")
    ap.add_argument("--unknown", default="auto", help="off, auto (the file's threshold) or a threshold: below it a photo is 'unknown'")
    args = ap.parse_args(argv)
    from visionlab.present.runtime import show_error, show_note, show_rows

    try:
        model = load(args.model, threads=args.threads, calibration=not args.no_calibration, unknown=args.unknown)
        rows = model.predict(list(args.paths), top_k=args.top_k, batch_size=args.batch_size)
    except VisionlabError as exc:
        show_error(str(exc))
        return 2
    show_rows(rows, args.masks, args.json)
    for note in (model.calibration_note, model.unknown_note):
        if rows and note:  # once, after the answers it is about
            show_note(note)
    if not rows:
        show_error("no images matched the given paths. Pass image files, folders or glob patterns.")
    return 0 if any(r["error"] is None and not r.get("skipped") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
