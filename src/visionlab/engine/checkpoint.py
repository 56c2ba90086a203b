"""Checkpoints are plain dicts of tensors and Python values, written atomically and read with
``torch.load(weights_only=True)``: weights, optimiser, scheduler, epoch, task, class names,
preprocessing, the resolved config and the visionlab version. ``predict`` rebuilds the model
from a checkpoint alone.

An exported ``.onnx`` file (``visionlab export``) loads through the same :func:`load_checkpoint`:
its metadata becomes the same checkpoint-like dict (without weights), and :func:`model_from_state`
returns an onnxruntime-backed module in place of the PyTorch model, so evaluation, prediction,
test-time augmentation and tiling run unchanged on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from visionlab.errors import VisionlabError

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "model_from_state"]

FORMAT = "visionlab-checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, expect_task: str | None = None) -> dict[str, Any]:
    """Load a visionlab checkpoint safely (weights_only) and check it is one; an exported .onnx
    file gives the same dict, rebuilt from its metadata."""
    p = Path(path).expanduser()
    if not p.exists():
        raise VisionlabError(f"checkpoint {p} does not exist.", "Train first (visionlab train --task T) or pass --checkpoint PATH.")
    if p.suffix.lower() == ".onnx":
        from visionlab.export import onnx_state

        state = onnx_state(p)
    else:
        state = _load_torch(p)
    if expect_task and state.get("task") != expect_task:
        raise VisionlabError(
            f"checkpoint {p} is for task {state.get('task')!r}, not {expect_task!r}.",
            f"Use --task {state.get('task')} or a checkpoint of {expect_task}.",
        )
    return state


def _load_torch(p: Path) -> dict[str, Any]:
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VisionlabError(f"{p} is not a readable checkpoint ({type(exc).__name__}).", "Pass a best.pt/last.pt written by visionlab train.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VisionlabError(f"{p} is not a visionlab checkpoint.", "Pass a best.pt/last.pt written by visionlab train.")
    return state


def model_from_state(state: dict[str, Any]) -> torch.nn.Module:
    """The model of a loaded checkpoint with its weights (an onnxruntime-backed module for .onnx)."""
    if state.get("onnx"):
        from visionlab.export import OnnxModule

        return OnnxModule(state["onnx"])
    from visionlab.models import build_model

    model = build_model(state["model_name"], num_classes=len(state["classes"]), **state["model_args"])
    model.load_state_dict(state["model"])
    return model
