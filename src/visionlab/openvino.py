"""``visionlab export --format openvino``: the checked ``.onnx`` converted to an OpenVINO IR (fp32).

The checkpoint is exported to ONNX first, with its parity checks (:func:`visionlab.export.export_onnx`),
into a temporary folder beside the destination; OpenVINO's ``convert_model`` turns that file into
``NAME.xml`` (the graph) and ``NAME.bin`` (the weights, kept fp32: no fp16 compression). The
``.onnx`` file's metadata travels in the IR's ``rt_info`` as one JSON object
(:data:`visionlab.onnx_file.OPENVINO_METADATA`), with ``visionlab_runtime: openvino``, so the
torch-free runtime, ``predict``, ``evaluate`` and ``serve`` read the IR through the same code paths
(:class:`visionlab.onnx_file.OpenVINOSession` answers as an onnxruntime session does). Then the
same two parity checks as for the ``.onnx`` run on the IR: logits against the PyTorch model,
and files in, answers out against the PyTorch predictor. Only then are the two files moved to
``--out``. openvino is an optional extra: ``pip install 'visionlab[openvino]'``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from visionlab.errors import VisionlabError

__all__ = ["export_openvino"]


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise VisionlabError("--format openvino needs openvino, which is not installed.",
                             "pip install 'visionlab[openvino]'.") from None
    return openvino


def _destination(src: Path, out: str | os.PathLike | None) -> Path:
    dest = Path(out).expanduser() if out else src.with_suffix(".xml")
    if dest.suffix.lower() != ".xml" or dest.is_dir():
        raise VisionlabError(f"--out {dest}: an OpenVINO model is a file whose name ends in .xml (its weights go to .bin).",
                             "Pass e.g. --out model.xml.")
    return dest


def _convert(ov: Any, onnx_path: Path, staged: Path) -> None:
    """The IR of ``onnx_path`` at ``staged`` (.xml + .bin), carrying the .onnx file's metadata."""
    import onnx

    from visionlab.onnx_file import OPENVINO_METADATA

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    meta["visionlab_runtime"] = f"openvino {ov.__version__}"
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(json.dumps(meta), [OPENVINO_METADATA])
    ov.save_model(model, str(staged), compress_to_fp16=False)


def _prove(staged: Path, src: Path, onnx_result: Any) -> tuple[Any, Any]:
    """export's two parity checks, on the IR: logits against PyTorch, then files in and answers out."""
    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.export import PARITY_BATCHES, _parity_batches, _prove_parity, _sample_images
    from visionlab.data.preprocessing import Preprocessing
    from visionlab.kinds import get_kind

    state = load_checkpoint(src)
    model = load_model(state, channels_last=False).float()
    pre = Preprocessing.from_dict(state["preprocessing"])
    images, source = _sample_images(state, sum(PARITY_BATCHES), pre.image_size)
    batches = _parity_batches(images, pre, get_kind(state["kind"]).outputs[0].dense)
    p, e = onnx_result.parity, onnx_result.end_to_end  # the .onnx file's tolerances
    return _prove_parity(staged, state, model, batches, images, source, p.atol, p.rtol, 1.0, 0.999, e.max_allowed)


def _rescore(staged: Path, src: Path, quantization: Any) -> Any:
    """The int8 IR scored on the validation split as the int8 .onnx was; refused past the same ``max_drop``."""
    import dataclasses

    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.runner import prepared_runner
    from visionlab.kinds import get_kind
    from visionlab.quantize import _score
    from visionlab.registry import checkpoint_task

    state = load_checkpoint(src)
    runner, _ = prepared_runner(checkpoint_task(state), get_kind(state["kind"]), state, src, device="cpu")
    result = dataclasses.replace(quantization, int8=_score(runner, state, staged), runtime="OpenVINO")
    result.check()
    return result


def _onnx_first(src: Path, task: str | None, onnx_path: Path, int8: bool, quantize: dict[str, Any], console: Any,
                options: dict[str, Any]) -> Any:
    """The checked .onnx the IR is converted from: fp32, or int8 QDQ (:func:`visionlab.quantize.export_int8`)."""
    if int8:
        from visionlab.quantize import export_int8

        return export_int8(src, task=task, out=onnx_path, console=console, **quantize, **options)
    from visionlab.export import export_onnx

    return export_onnx(src, task=task, out=onnx_path, console=console, **options)


def export_openvino(checkpoint: str | os.PathLike | None = None, task: str | None = None, out: str | os.PathLike | None = None,
                    int8: bool = False, calibration_images: int = 300, max_drop: float | None = None, console: Any = None,
                    **options: Any) -> Any:
    """Export a checkpoint to an OpenVINO IR with parity proven (see the module docstring); ``out``
    defaults to the checkpoint's name with ``.xml`` (``.int8.xml``). ``int8``: the IR of the int8
    QDQ .onnx (OpenVINO runs its QuantizeLinear/DequantizeLinear pairs as int8), scored again on
    the validation split and refused past ``max_drop``. ``options`` go to export_onnx (opset, atol, rtol)."""
    from visionlab import present
    from visionlab.engine.runs import resolve_checkpoint
    from visionlab.export import ExportResult
    from visionlab.present.messages import show_chosen_checkpoint, show_export
    from visionlab.registry import get_task

    ov = _import_openvino()
    console = present.console(console)
    t0 = time.perf_counter()
    src = resolve_checkpoint(checkpoint, task, check_task=get_task).expanduser()
    if not checkpoint:
        show_chosen_checkpoint(src, task, console)
    dest = _destination(src, out if out or not int8 else src.with_name(src.stem + ".int8.xml"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        onnx_result = _onnx_first(src, task, work / "model.onnx", int8, {"calibration_images": calibration_images,
                                                                          "max_drop": max_drop}, console, options)
        staged = work / dest.name
        _convert(ov, onnx_result.path, staged)
        if int8:  # the logits' parity is the fp32 graph's, before quantisation; int8 is judged by its score
            parity, end_to_end, quantized = onnx_result.parity, onnx_result.end_to_end, _rescore(staged, src, onnx_result.quantization)
        else:
            (parity, end_to_end), quantized = _prove(staged, src, onnx_result), None
            parity.runtime = "OpenVINO"
        files = [dest, dest.with_suffix(".bin")]
        os.replace(staged.with_suffix(".bin"), files[1])
        os.replace(staged, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = ExportResult(dest, src, parity, time.perf_counter() - t0, sum(f.stat().st_size for f in files),
                          f"OpenVINO {ov.__version__.split('-')[0]} convert_model of the {onnx_result.exporter}", onnx_result.opset, files, end_to_end, quantized)
    show_export(result, console)
    return result
