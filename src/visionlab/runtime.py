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

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionlab.data.arrays import apply_view, softmax, undo_view
from visionlab.data.geometry import TTA_MODES, view_plan
from visionlab.data.io import InputEntry, UnreadableImage, load_for_model, scan_inputs
from visionlab.data.preprocessing import Preprocessing
from visionlab.errors import VisionlabError
from visionlab.kinds import Output, get_kind
from visionlab.kinds.base import DEFAULT_TOP_K, check_top_k

__all__ = ["FORMAT", "JSON_FIELDS", "Runtime", "OpenVINOSession", "load", "open_session", "read_metadata", "default_threads"]

FORMAT = "visionlab-onnx/1"
# metadata_props holding JSON (all others are plain strings); files exported before the kinds
# described their outputs lack "outputs" (derived from the graph, :func:`_outputs`)
JSON_FIELDS = ("classes", "preprocessing", "config", "model_args", "data", "outputs")


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the number of CPUs this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


OPENVINO_SUFFIX = ".xml"  # an OpenVINO IR: NAME.xml with its weights in NAME.bin beside it
OPENVINO_METADATA = "visionlab_metadata"  # the IR's rt_info key holding the .onnx metadata_props as one JSON object


class _Port:
    """A graph input or output as onnxruntime describes it: its name and shape (None: dynamic)."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class _Meta:
    def __init__(self, custom: dict[str, str]) -> None:
        self.custom_metadata_map = custom


class OpenVINOSession:
    """An OpenVINO IR compiled for the CPU behind onnxruntime's session interface (``get_inputs``,
    ``get_outputs``, ``run``, ``get_modelmeta``), so every path that runs an .onnx runs it too.
    ``threads`` inference threads; fp32 inference precision (no bf16 downcast), as onnxruntime."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise VisionlabError("running an OpenVINO model needs openvino, which is not installed.",
                                 "pip install 'visionlab[openvino]'.") from None
        try:
            model = ov.Core().read_model(str(path))
            meta = json.loads(model.get_rt_info([OPENVINO_METADATA]).value) if model.has_rt_info([OPENVINO_METADATA]) else {}
            self._compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                                   "INFERENCE_PRECISION_HINT": "f32"})
        except Exception as exc:  # a damaged IR, a missing .bin, ...
            text = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise VisionlabError(f"{path} is not a readable OpenVINO model ({text}).", "Export it again with visionlab export.") from None
        self._meta = _Meta({str(k): str(v) for k, v in meta.items()})
        self._request = self._compiled.create_infer_request()

    def get_inputs(self) -> list[_Port]:
        return [_Port(p) for p in self._compiled.inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(p) for p in self._compiled.outputs]

    def get_modelmeta(self) -> _Meta:
        return self._meta

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self._request.infer(feeds)
        return [np.array(out[p]) for p in self._compiled.outputs]


def open_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads and one inter-op thread
    (``optimize=False``: no graph optimisation, for reading the metadata only); for an OpenVINO
    IR (``.xml``), an :class:`OpenVINOSession` with the same interface.

    Weights stored as external data are found beside the file (onnxruntime resolves the
    relative location against the model's folder)."""
    if Path(path).suffix.lower() == OPENVINO_SUFFIX and Path(path).expanduser().is_file():
        if threads is not None and threads < 1:
            raise VisionlabError(f"threads must be >= 1, got {threads}.", "Pass e.g. --threads 2, or leave it out for the CPU count.")
        return OpenVINOSession(Path(path).expanduser(), threads or default_threads())
    try:
        import onnxruntime as ort
    except ImportError:
        raise VisionlabError("running an .onnx model needs onnxruntime, which is not installed.",
                             "pip install onnxruntime (or pip install 'visionlab[export]').") from None
    if threads is not None and threads < 1:
        raise VisionlabError(f"threads must be >= 1, got {threads}.", "Pass e.g. --threads 2, or leave it out for the CPU count.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise VisionlabError(f"model {p} does not exist.", "Pass the .onnx file written by visionlab export.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's concern
    try:
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, missing external data, ...
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise VisionlabError(f"{p} is not a readable ONNX model ({text}).", "Export it again with visionlab export.") from None


def read_metadata(session: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The visionlab metadata of an open session, JSON fields decoded; a foreign model is refused."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    fmt = meta.get("visionlab_format")
    if fmt is None:
        raise VisionlabError(f"{path} is an ONNX model without visionlab metadata (not written by visionlab export).",
                             "Export a visionlab checkpoint with: visionlab export CKPT --format onnx.")
    if fmt != FORMAT:
        raise VisionlabError(f"{path} has metadata format {fmt!r}; this visionlab reads {FORMAT!r}.",
                             "Export the checkpoint again with this version of visionlab.")
    try:
        for key in JSON_FIELDS:
            if key in meta or key != "outputs":
                meta[key] = json.loads(meta[key])
        for key in ("task", "kind"):
            meta[key] = str(meta[key])
        meta["outputs"] = _outputs(meta.get("outputs"), session.get_outputs())
        _check_fields(meta, session.get_inputs()[0].shape, session.get_outputs()[0].shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise VisionlabError(f"{path}: its visionlab metadata is incomplete or damaged ({type(exc).__name__}: {exc}).",
                             "Export the checkpoint again.") from None
    return meta


def _outputs(described: Any, graph_outputs: Sequence[Any]) -> list[Output]:
    """The network's outputs as the file describes them (its kind's ``Kind.outputs``, written at
    export); a file exported before that says nothing, and its one output is read as older
    versions did: class logits before softmax, per pixel when it has 4 axes, else per image."""
    if described is not None:
        return [Output.from_dict(d) for d in described]
    first = graph_outputs[0]
    return [Output(first.name, "pixel" if len(first.shape) == 4 else "image", "softmax")]


def _check_fields(meta: dict[str, Any], input_shape: Sequence[Any], output_shape: Sequence[Any]) -> None:
    """The classes and the preprocessing every prediction reads, there and fitting the network
    (its class axis, and its input size where fixed); else ValueError saying what is wrong."""
    classes, pre = meta["classes"], meta["preprocessing"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError("'classes' is not a list of class names")
    if len(output_shape) > 1 and isinstance(output_shape[1], int) and output_shape[1] != len(classes):
        raise ValueError(f"{len(classes)} classes for a network with {output_shape[1]} outputs")
    if not isinstance(pre, dict):
        raise ValueError("'preprocessing' is not an object")
    size, fixed = int(pre["image_size"]), [d for d in input_shape[2:] if isinstance(d, int)]
    if fixed and (fixed != [size, size] or pre.get("resize") != "squash"):
        raise ValueError(f"the network takes {'x'.join(map(str, fixed))} inputs, the preprocessing makes "
                         + (f"{size}x{size}" if pre.get("resize") == "squash" else "whole images of any size"))
    for key in ("mean", "std"):
        if not (isinstance(pre[key], list) and len(pre[key]) == 3 and all(isinstance(v, (int, float)) for v in pre[key])):
            raise ValueError(f"preprocessing {key!r} is not three numbers")
    if not all(pre["std"]):
        raise ValueError("preprocessing 'std' has a zero")
    if str(pre.get("tta", "none")) not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {pre['tta']!r}")


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    """An output's scores as probabilities: softmax over the class axis, sigmoid per class, or as they are."""
    if activation == "softmax":
        return softmax(x, 1)
    if activation == "sigmoid":
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    return x


class Runtime:
    """An exported model with its classes and preprocessing, run by onnxruntime on the CPU."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = str(path)
        self.session = open_session(path, threads)
        self.metadata = read_metadata(self.session, path)
        self.task: str = self.metadata["task"]
        self.kind: str = self.metadata["kind"]
        self.classes: list[str] = list(self.metadata["classes"])
        self.preprocessing = Preprocessing.from_dict(self.metadata["preprocessing"])
        self.output: Output = self.metadata["outputs"][0]  # what the network returns: per image or pixel, its activation
        self.tta: str = self.preprocessing.tta_mode  # as validated; set another mode to change it
        mean = np.asarray(self.preprocessing.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.preprocessing.std, dtype=np.float32).reshape(1, -1, 1, 1)
        self._scale, self._shift = np.float32(1.0) / std, -mean / std  # as visionlab's Normalize
        self._input = self.session.get_inputs()[0].name
        self.kind_of = get_kind(self.kind)  # what a result of this kind is (visionlab.kinds)

    def __repr__(self) -> str:
        return f"Runtime(task={self.task!r}, classes={self.classes}, file={self.path!r})"

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 NCHW -> float32 NCHW, normalised with the file's mean and std."""
        return x.astype(np.float32) / np.float32(255.0) * self._scale + self._shift

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's raw output for a normalised float32 NCHW batch."""
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (the output's activation), averaged over the test-time augmentation's
        views (as :func:`visionlab.engine.tta.tta_logits`); a per-pixel output's views are mapped back first."""
        views = view_plan(self.tta, x.shape[-1] == x.shape[-2])
        total = None
        for k, flip in views:
            p = activate(self.logits(apply_view(x, k, flip)).astype(np.float32), self.output.activation)
            p = undo_view(p, k, flip) if self.output.dense else p
            total = p if total is None else total + p
        return total / np.float32(len(views))

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


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load(path: str | os.PathLike, threads: int | None = None) -> Runtime:
    """Open an exported ``.onnx`` model for prediction (see :class:`Runtime`)."""
    return Runtime(path, threads=threads)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visionlab.runtime MODEL.onnx IMAGES...``: labels (or class shares) per image."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m visionlab.runtime", description=main.__doc__)
    ap.add_argument("model", help="an .onnx file written by visionlab export")
    ap.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the CPU count)")
    ap.add_argument("--masks", type=Path, default=None, help="segmentation: write <stem>_mask.png files here")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    from visionlab.present.runtime import show_error, show_rows

    try:
        model = load(args.model, threads=args.threads)
        rows = model.predict(list(args.paths), top_k=args.top_k, batch_size=args.batch_size)
    except VisionlabError as exc:
        show_error(str(exc))
        return 2
    show_rows(rows, args.masks, args.json)
    if not rows:
        show_error("no images matched the given paths. Pass image files, folders or glob patterns.")
    return 0 if any(r["error"] is None and not r.get("skipped") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
