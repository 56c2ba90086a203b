"""Checkpoints are plain dicts of tensors and Python values, written atomically and read with
``torch.load(weights_only=True)``: weights, optimiser, scheduler, epoch, task, class names,
preprocessing, the resolved config and the visionlab version. ``predict`` rebuilds the model
from a checkpoint alone."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from visionlab.errors import VisionlabError

__all__ = ["FORMAT", "REQUIRED", "save_checkpoint", "load_checkpoint"]

FORMAT = "visionlab-checkpoint/1"
# What evaluate/predict need to rebuild the model, and the type each must have.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "task": str, "kind": str, "model_name": str, "model_args": dict, "classes": (list, tuple),
    "preprocessing": dict, "config": dict, "model": dict,
}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, expect_task: str | None = None) -> dict[str, Any]:
    """Load a visionlab checkpoint safely (weights_only) and check it is one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise VisionlabError(f"checkpoint {p} does not exist.", "Train first (visionlab train --task T) or pass --checkpoint PATH.")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as exc:
        raise VisionlabError(f"{p} is not a readable checkpoint ({type(exc).__name__}).", "Pass a best.pt/last.pt written by visionlab train.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VisionlabError(f"{p} is not a visionlab checkpoint.", "Pass a best.pt/last.pt written by visionlab train.")
    missing = [k for k in REQUIRED if k not in state]
    wrong = [k for k, t in REQUIRED.items() if k in state and not isinstance(state[k], t)]
    if missing or wrong:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"wrong type of {', '.join(wrong)}"] if wrong else [])
        raise VisionlabError(f"checkpoint {p} is incomplete ({'; '.join(parts)}).",
                             "It is damaged or was not written by visionlab train: pass the run's best.pt or last.pt.")
    if expect_task and state.get("task") != expect_task:
        raise VisionlabError(
            f"checkpoint {p} is for task {state.get('task')!r}, not {expect_task!r}.",
            f"Use --task {state.get('task')} or a checkpoint of {expect_task}.",
        )
    return state
