"""The task registry: one place where every task is described by name.

A task is a small, typed description (:class:`TaskSpec`). Registering the same name twice is
refused; an unknown name fails with the list of known ones. Importing this module does not
import torch, so ``visionlab tasks`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from visionlab.errors import VisionlabError

__all__ = ["TaskSpec", "register_task", "get_task", "list_tasks", "task_names"]

TaskKind = Literal["classification", "segmentation"]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, default model, input size, classes and provenance.

    The training recipe itself (hyper-parameters, augmentation) lives in ``configs/<name>.yaml``;
    the model is built from the config by :func:`visionlab.models.build_model`.
    """

    name: str
    kind: TaskKind
    model: str
    input_size: int
    default_classes: tuple[str, ...]
    description: str
    seed_project: str = ""
    dataset: str = ""  # name understood by ``visionlab data download``
    extra: dict = field(default_factory=dict)


_TASKS: dict[str, TaskSpec] = {}
_BUILTIN = {"state": "absent"}  # absent -> loading -> loaded


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; a duplicate name (of a built-in task too) is an error."""
    _ensure_builtin()
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    """Register the five built-in tasks once, first, whatever is registered or looked up first.

    ``visionlab.tasks`` registers them through :func:`register_task`, which calls back here:
    the 'loading' state makes that a no-op. The import is lazy (and torch-free), so importing
    this module stays cheap and there is no import cycle."""
    if _BUILTIN["state"] != "absent":
        return
    _BUILTIN["state"] = "loading"
    try:
        import visionlab.tasks  # noqa: F401  (registers the built-in tasks)
    except BaseException:
        _BUILTIN["state"] = "absent"
        raise
    _BUILTIN["state"] = "loaded"


def task_names() -> list[str]:
    _ensure_builtin()
    return list(_TASKS)


def list_tasks() -> list[TaskSpec]:
    """All registered tasks, in registration order."""
    _ensure_builtin()
    return list(_TASKS.values())


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names fail with the list of known ones."""
    _ensure_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise VisionlabError(
            f"unknown task {name!r}.", f"Known tasks: {', '.join(_TASKS)} (see 'visionlab tasks')."
        ) from None
