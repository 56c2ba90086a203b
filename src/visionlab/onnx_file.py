"""An exported ``.onnx`` file as visionlab writes it: its metadata format (:data:`FORMAT`, the
:data:`JSON_FIELDS`), an onnxruntime session on it (:func:`open_session`) and its metadata read and
checked (:func:`read_metadata`). Torch-free: the runtime (:mod:`visionlab.runtime`), export
(:mod:`visionlab.export`) and the checkpoint loader (:mod:`visionlab.engine.onnx_model`) share it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionlab.data.preprocessing import Preprocessing
from visionlab.errors import VisionlabError
from visionlab.kinds.base import Output

__all__ = ["FORMAT", "JSON_FIELDS", "OPENVINO_SUFFIX", "OPENVINO_METADATA", "OpenVINOSession", "open_session", "read_metadata", "fitting_outputs", "default_threads"]

FORMAT = "visionlab-onnx/1"
# metadata_props holding JSON (all others are plain strings); files exported before the kinds
# described their outputs lack "outputs" (read_metadata gives None: their kind's outputs apply), and those
# of models without a fitted calibration (a classifier's temperature) lack "calibration"
JSON_FIELDS = ("classes", "preprocessing", "config", "model_args", "data", "outputs", "calibration", "unknown")
OPTIONAL_FIELDS = ("outputs", "calibration", "unknown")  # "unknown": a classifier's detector (its threshold; the score is an output)


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
            if key in meta or key not in OPTIONAL_FIELDS:
                meta[key] = json.loads(meta[key])
        for key in ("task", "kind"):
            meta[key] = str(meta[key])
        meta["outputs"] = _outputs(meta.get("outputs"), session.get_outputs())
        _check_fields(meta, session.get_inputs()[0].shape, session.get_outputs()[0].shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise VisionlabError(f"{path}: its visionlab metadata is incomplete or damaged ({type(exc).__name__}: {exc}).",
                             "Export the checkpoint again.") from None
    return meta


def _outputs(described: Any, graph_outputs: Sequence[Any]) -> list[Output] | None:
    """The network's outputs as the file describes them (its kind's ``Kind.outputs``, written at
    export), checked against the graph; None for a file exported before that, whose reader takes
    its kind's (:func:`fitting_outputs`)."""
    if described is None:
        return None
    if not (isinstance(described, list) and described and all(isinstance(d, dict) for d in described)):
        raise ValueError(f"'outputs' is {described!r}, not a list of the network's outputs")
    return fitting_outputs([Output.from_dict(d) for d in described], graph_outputs)


def fitting_outputs(outputs: Sequence[Output], graph_outputs: Sequence[Any]) -> list[Output]:
    """``outputs`` when the first fits the graph's first output (N x C x H x W per pixel; per image
    N x C, or N x K x D for several rows per image); else ValueError saying how they differ."""
    first, rank = outputs[0], len(graph_outputs[0].shape)
    if not (rank == 4 if first.dense else 2 <= rank < 4):
        raise ValueError(f"output {first.name!r} scores per {first.per}, but the network's output has {rank} axes")
    return list(outputs)


def _check_fields(meta: dict[str, Any], input_shape: Sequence[Any], output_shape: Sequence[Any]) -> None:
    """The classes and the preprocessing every prediction reads, there and fitting the network
    (its class axis, and its input size where fixed); else ValueError saying what is wrong."""
    classes, pre = meta["classes"], meta["preprocessing"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError("'classes' is not a list of class names")
    if len(output_shape) > 1 and isinstance(output_shape[1], int) and output_shape[1] != len(classes):
        raise ValueError(f"{len(classes)} classes for a network with {output_shape[1]} outputs")
    for key in ("preprocessing", "config", "model_args", "data", "calibration", "unknown"):
        if not isinstance(meta.get(key, {}), dict) and not (key in OPTIONAL_FIELDS and meta.get(key) is None):
            raise ValueError(f"'{key}' is not an object")
    record = Preprocessing.from_dict(pre)  # every field checked as a checkpoint's are
    size, fixed = record.image_size, [d for d in input_shape[2:] if isinstance(d, int)]
    if fixed and (fixed != [size, size] or record.resize != "squash"):
        raise ValueError(f"the network takes {'x'.join(map(str, fixed))} inputs, the preprocessing makes "
                         + (f"{size}x{size}" if record.resize == "squash" else "whole images of any size"))
