"""Checkpoints are plain dicts of tensors and Python values, written atomically and read with
``torch.load(weights_only=True)``. ``best.pt`` holds what inference needs (:data:`REQUIRED`: the
weights, the EMA weights when EMA is on, task, class names, preprocessing, the resolved config,
plus data info, history and the best metric); ``last.pt`` adds what resume needs
(:data:`TRAINING_STATE`: optimiser, scheduler, scaler, random states, the loop's position, the
callbacks' states).
``predict`` rebuilds the model from a checkpoint alone.

An exported ``.onnx`` file (``visionlab export``) loads through the same :func:`load_checkpoint`:
its metadata becomes the same checkpoint-like dict (without weights), and :func:`load_model`
returns an onnxruntime-backed module in place of the PyTorch model, so evaluation, prediction,
test-time augmentation and tiling run unchanged on it."""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from visionlab.data.preprocessing import Preprocessing
from visionlab.errors import VisionlabError

__all__ = ["FORMAT", "REQUIRED", "RESUME_REQUIRED", "TRAINING_STATE", "CheckpointWriteError", "save_checkpoint",
           "load_checkpoint", "inference_state", "load_model", "remove_stale_temporaries", "state_nbytes"]

FORMAT = "visionlab-checkpoint/1"
# What evaluate/predict need to rebuild the model, and the type each must have.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "task": str, "kind": str, "model_name": str, "model_args": dict, "classes": (list, tuple),
    "preprocessing": dict, "config": dict, "model": dict,
}
# What only last.pt holds: the state a resumed run continues from, which inference never loads.
TRAINING_STATE = frozenset({"optimizer", "scheduler", "scaler", "rng", "rng_ranks", "world", "train_model", "ema_updates",
                            "loop", "step", "bad_epochs", "callbacks"})
# What resume cannot do without (checkpoints of visionlab < 0.2 have these, but no loop or random states).
RESUME_REQUIRED: dict[str, type] = {"optimizer": dict, "scheduler": dict, "scaler": dict}


class CheckpointWriteError(VisionlabError):
    """A checkpoint could not be written (full disk, read-only folder); the partial file is removed."""


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename.

    On failure the partial temporary file is removed and :class:`CheckpointWriteError` says why
    (torch reports a full disk as an internal ``enforce fail``); ``path`` itself is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        needed = state_nbytes(state)
        free = shutil.disk_usage(path.parent).free
        if getattr(exc, "errno", None) == errno.ENOSPC or free < needed + (1 << 20):
            raise CheckpointWriteError(f"no space left on device writing {path} ({needed / 2**20:.0f} MB needed, "
                                       f"{free / 2**20:.0f} MB free).") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise CheckpointWriteError(f"could not write {path} ({reason}).") from None
    except BaseException:  # Ctrl-C or SIGTERM mid-write: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a full (last.pt) state that inference needs: what best.pt holds."""
    return {k: v for k, v in state.items() if k not in TRAINING_STATE}


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the partial checkpoints (``.NAME.PID.tmp``) that a killed run left in ``folder``."""
    removed = []
    for tmp in Path(folder).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, expect_task: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Load a visionlab checkpoint safely (weights_only) and check it is one; an exported .onnx
    file gives the same dict, rebuilt from its metadata. ``resume`` also requires the training
    state (:data:`RESUME_REQUIRED`), which a best.pt does not hold."""
    p = Path(path).expanduser()
    if not p.exists():
        raise VisionlabError(f"checkpoint {p} does not exist.", "Train first (visionlab train --task T) or pass --checkpoint PATH.")
    if p.suffix.lower() in (".onnx", ".xml"):  # an exported file: ONNX, or an OpenVINO IR
        from visionlab.engine.onnx_model import onnx_state

        state = onnx_state(p)
    else:
        state = _load_torch(p)
    if expect_task and state.get("task") != expect_task:
        raise VisionlabError(
            f"checkpoint {p} is for task {state.get('task')!r}, not {expect_task!r}.",
            f"Use --task {state.get('task')} or a checkpoint of {expect_task}.",
        )
    if resume and not all(isinstance(state.get(k), t) for k, t in RESUME_REQUIRED.items()):
        last = p.parent / "last.pt"
        raise VisionlabError(f"cannot resume from {p}: it holds only what inference needs (no optimizer, scheduler or scaler "
                             "state), like every best.pt.",
                             f"Resume from {last}." if last.exists() and last != p else "Resume from the run's last.pt.")
    return state


def _load_torch(p: Path) -> dict[str, Any]:
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
    classes = state["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise VisionlabError(f"checkpoint {p} is damaged (classes: {list(classes)!r}, not distinct non-empty names).",
                             "Train again, or pass the run's other checkpoint (best.pt or last.pt).")
    try:  # what every prediction reads, checked once here: a damaged record is named, never a traceback later
        Preprocessing.from_dict(state["preprocessing"])
    except ValueError as exc:
        raise VisionlabError(f"checkpoint {p} is damaged (preprocessing: {exc}).",
                             "Train again, or pass the run's other checkpoint (best.pt or last.pt).") from None
    return state


def load_model(checkpoint: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu",
               channels_last: bool | None = None) -> torch.nn.Module:
    """The model of a checkpoint (a path, or a state :func:`load_checkpoint` returned) with its
    weights, on ``device``, in eval mode; an onnxruntime-backed module for an exported .onnx file.

    ``channels_last`` (default: as the run's config says) sets the memory format the model was
    trained in. The one place a model is rebuilt from a checkpoint (predict, evaluate, export, resume)."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if state.get("onnx"):
        from visionlab.engine.onnx_model import OnnxModule

        return OnnxModule(state["onnx"])
    from visionlab.models import build_model

    model = build_model(state["model_name"], num_classes=len(state["classes"]), **state["model_args"])
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = bool(state.get("config", {}).get("channels_last", False))
    return model.to(memory_format=torch.channels_last) if channels_last else model
