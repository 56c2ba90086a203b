"""``visionlab export --int8``: static int8 quantisation of the exported file, with its accuracy proven.

The fp32 ``.onnx`` is exported and parity-checked as always (:func:`visionlab.export.export_onnx`);
then, before anything is written to ``--out``, :class:`Quantizer` rewrites the checked file:

* **Calibration** on ``calibration_images`` photos of the run's own training split (evenly spaced
  over it; several windows per image for tiled kinds), decoded and resized by
  :func:`visionlab.data.io.load_for_model` (export's :func:`~visionlab.export._sample_images`)
  and normalised by :meth:`visionlab.runtime.Runtime.normalize`: what predict feeds the network.
* **Quantisation** by ``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights per
  output channel, uint8 activations from min/max calibration. Unsigned activations (U8S8) because
  onnxruntime's x86 CPU provider fuses a QDQ group into its int8 kernels (``QLinearConv``,
  ``QLinearAdd``) only for them: with int8 activations it left the Lite0 cracks model's 1x1
  convolutions and every residual ``Add`` in fp32 between Q/DQ pairs, and ran slower than fp32
  (``benchmarks/EXPORT_SPEED.md``).
* **Proof**: the fp32 and the int8 file are both scored on the run's validation split through the
  evaluation the ``evaluate`` command runs on an ``.onnx`` (the kind's runner on an onnxruntime
  session, :class:`visionlab.engine.onnx_model.OnnxModule`). When the kind's primary metric drops
  by more than ``max_drop`` (default: the kind's :attr:`~visionlab.kinds.Kind.max_quantization_drop`,
  0.005 accuracy for classifiers, 0.01 mIoU for segmentation) the export is refused and nothing
  is written; else the file's metadata says ``precision: int8``, what it was calibrated on and
  both scores.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionlab.errors import VisionlabError
from visionlab.kinds import get_kind

__all__ = ["Quantization", "Quantizer", "check_max_drop", "export_int8", "DEFAULT_CALIBRATION_IMAGES"]

DEFAULT_CALIBRATION_IMAGES = 300
CALIBRATION_BATCH = 16


@dataclass
class Quantization:
    """The int8 file against the fp32 one on the validation split, and what it was calibrated on."""

    metric: str
    fp32: float
    int8: float
    max_drop: float
    higher_is_better: bool
    split: str
    images: int  # scored
    calibration: dict[str, Any]  # inputs, split, run, source
    runtime: str = "onnxruntime"  # what ran the int8 model (OpenVINO for an IR converted from the QDQ file)

    @property
    def drop(self) -> float:
        """How much worse int8 is (negative: better), in the metric's units."""
        return self.fp32 - self.int8 if self.higher_is_better else self.int8 - self.fp32

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def figures(self) -> str:
        return (f"{self.metric} on the {self.split} split ({self.images} images): fp32 {self.fp32:.4f}, int8 {self.int8:.4f} "
                + (f"in {self.runtime} " if self.runtime != "onnxruntime" else "") +
                f"(drop {self.drop:+.4f}, allowed {self.max_drop:g})")

    def line(self) -> str:
        cal = self.calibration
        return (f"int8 (QDQ, per-channel weights), calibrated on {cal['inputs']} inputs of the {cal['split']} split of run "
                f"{cal['run']}: {self.figures()}: passed")

    def check(self) -> None:
        """Raise the refusal (both figures, what to do) when int8 dropped by more than allowed."""
        if not self.passed:
            raise VisionlabError(f"int8 export refused, nothing was written: {self.figures()}.",
                                 "Raise --max-drop, calibrate on more images (--calibration-images), or export fp32 (without --int8).")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "split": self.split, "images": self.images, "fp32": self.fp32, "int8": self.int8,
                "max_drop": self.max_drop}


def _score(runner: Any, state: dict[str, Any], path: Path) -> float:
    """The kind's primary metric of the file at ``path`` on the runner's validation split, through
    the evaluation ``visionlab evaluate`` runs on an .onnx file."""
    from visionlab.engine.checkpoint import load_model
    from visionlab.engine.device import resolve_precision

    model = load_model(dict(state, onnx=str(path)))
    result = runner.evaluate(model, "val", resolve_precision("fp32", runner.device).autocast)
    return float(result.metrics[runner.primary])


class _Batches:
    """onnxruntime's CalibrationDataReader protocol (``get_next``; None when done) over a normalised batch."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._feeds = iter([{name: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def check_max_drop(max_drop: float | None) -> None:
    """``--max-drop``: None (the kind's tolerance) or a finite number, checked before any work (a
    negative one asks int8 to beat fp32 by that much: the refusal the tests prove)."""
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not math.isfinite(max_drop)):
        raise VisionlabError(f"--max-drop must be a finite number, got {max_drop!r}.", "Pass e.g. --max-drop 0.005.")


class Quantizer:
    """The ``quantize`` step of :func:`visionlab.export.export_onnx`: calibrate, quantise, score, refuse or stamp."""

    def __init__(self, calibration_images: int = DEFAULT_CALIBRATION_IMAGES, max_drop: float | None = None,
                 console: Any = None) -> None:
        if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
            raise VisionlabError(f"--calibration-images must be an integer >= 1, got {calibration_images!r}.",
                                 f"Pass e.g. --calibration-images {DEFAULT_CALIBRATION_IMAGES}.")
        check_max_drop(max_drop)
        self.calibration_images, self.max_drop, self.console = calibration_images, max_drop, console

    def calibration(self, runner: Any, state: dict[str, Any], staged: Path) -> tuple[np.ndarray, int]:
        """Normalised float32 NCHW calibration inputs from the training split, and the photos it holds."""
        from visionlab.export import _sample_images
        from visionlab.runtime import Runtime

        files = runner.split_files("train")
        size = int(state["preprocessing"]["image_size"])
        picks = [files[i] for i in np.linspace(0, len(files) - 1, num=min(len(files), self.calibration_images), dtype=int)]
        images, source = _sample_images(state, self.calibration_images, size, files=picks)
        if not picks or source.endswith("random uint8 images"):
            raise VisionlabError("no readable training image to calibrate the int8 model on, nothing was written.",
                                 "Export fp32 (without --int8), or train on data whose training split is readable.")
        return Runtime(staged, threads=1).normalize(images.transpose(0, 3, 1, 2)), len(files)

    def __call__(self, staged: Path, state: dict[str, Any], checkpoint: Path) -> Quantization:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from visionlab.engine.runner import prepared_runner
        from visionlab.export import INPUT_NAME
        from visionlab.registry import checkpoint_task

        kind = get_kind(state["kind"])
        runner, _ = prepared_runner(checkpoint_task(state), kind, state, checkpoint, device="cpu", console=self.console)
        if runner.split_size("val") == 0:
            raise VisionlabError("the run has no validation images to score the int8 model on, nothing was written.",
                                 "Export fp32 (without --int8), or train with a validation split (val_fraction > 0).")
        x, train_files = self.calibration(runner, state, staged)
        int8, prepared = staged.with_name("int8-" + staged.name), staged.with_name("prep-" + staged.name)
        quant_pre_process(str(staged), str(prepared), skip_symbolic_shape=kind.outputs[0].dense)  # shapes, fusions
        quantize_static(str(prepared), str(int8), _Batches(INPUT_NAME, x), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=_beside_the_first_output(prepared))
        limit = kind.max_quantization_drop if self.max_drop is None else float(self.max_drop)
        result = Quantization(kind.primary, _score(runner, state, staged), _score(runner, state, int8), limit,
                              kind.higher_is_better(kind.primary), "val", runner.split_size("val"),
                              {"inputs": int(len(x)), "split": "train", "of_files": train_files, "run": checkpoint.parent.name,
                               "checkpoint": checkpoint.name, "method": "minmax"})
        result.check()
        _stamp(staged, int8, result)
        return result


def _beside_the_first_output(path: Path) -> list[str]:
    """The nodes that only the graph's other outputs need (a classifier's unknown-detector score: its
    features normalised, the whitening and the distances to the class means, or the similarities to the
    feature bank and the k-th largest): they stay fp32, as an
    int8 score would move by whole quantisation steps around its threshold."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    makers = {out: node for node in graph.node for out in node.output}

    def needed(names: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [makers[n] for n in names if n in makers]
        while todo:
            node = todo.pop()
            if node.name not in seen:
                seen.add(node.name)
                todo += [makers[i] for i in node.input if i in makers]
        return seen

    return sorted(needed([o.name for o in graph.output[1:]]) - needed([graph.output[0].name]))


def _stamp(staged: Path, int8: Path, result: Quantization) -> None:
    """The int8 graph with the fp32 file's metadata plus its precision, calibration and scores, in place of ``staged``."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(staged), load_external_data=False).metadata_props}
    # what the quantisation was calibrated on goes inside "quantization": "calibration" is the fp32
    # file's fitted temperature, which the int8 file keeps
    meta.update(precision="int8", quantization=json.dumps({"format": "QDQ", "weights": "int8 per channel",
                                                           "activations": "uint8 per tensor",
                                                           "calibrated_on": result.calibration}),
                quantization_check=json.dumps(result.to_dict()))
    proto = onnx.load(str(int8))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"visionlab {meta['task']} model ({meta['kind']}), int8"
    onnx.save_model(proto, str(staged))
    os.remove(int8)


def export_int8(checkpoint: str | os.PathLike | None = None, task: str | None = None, out: str | os.PathLike | None = None,
                calibration_images: int = DEFAULT_CALIBRATION_IMAGES, max_drop: float | None = None, console: Any = None,
                **options: Any) -> Any:
    """:func:`visionlab.export.export_onnx` with the int8 step (see the module docstring); ``out``
    defaults to the checkpoint's name with ``.int8.onnx``. ``options`` go to export_onnx (opset, atol, ...)."""
    from visionlab import present
    from visionlab.engine.runs import resolve_checkpoint
    from visionlab.export import export_onnx
    from visionlab.present.messages import show_chosen_checkpoint
    from visionlab.registry import get_task

    if options.get("external_data"):
        raise VisionlabError("--int8 writes one file; --external-data is for fp32 exports.", "Leave out --external-data.")
    console = present.console(console)
    quantizer = Quantizer(calibration_images, max_drop, console)  # its options checked before any work
    src = resolve_checkpoint(checkpoint, task, check_task=get_task).expanduser()
    if not checkpoint:
        show_chosen_checkpoint(src, task, console)
    dest = Path(out) if out else src.with_name(src.stem + ".int8.onnx")
    return export_onnx(src, task=task, out=dest, console=console, quantize=quantizer, **options)
