"""visionlab: train, evaluate and serve five computer-vision tasks with one trainer.

The public API is imported lazily so ``import visionlab`` (and the CLI's ``--help``) stay fast;
torch is loaded on first use of a training or prediction function.
"""

from __future__ import annotations

from typing import Any

from visionlab._version import __version__
from visionlab.errors import VisionlabError

__all__ = [
    "__version__",
    "VisionlabError",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "register_task",
    "load_config",
    "train",
    "evaluate",
    "predict",
    "load",
    "demo",
    "suspects",
    "export_onnx",
    "tune_process",
]

_LAZY = {
    # the registry reads the task YAMLs (pyyaml): not on import, so the torch-free runtime and the
    # serve loop import visionlab with numpy, Pillow and onnxruntime alone
    "TaskSpec": "visionlab.registry",
    "get_task": "visionlab.registry",
    "list_tasks": "visionlab.registry",
    "register_task": "visionlab.registry",
    "train": "visionlab.api",
    "evaluate": "visionlab.api",
    "predict": "visionlab.api",
    "load": "visionlab.api",
    "demo": "visionlab.api",
    "suspects": "visionlab.api",
    "load_config": "visionlab.api",
    "export_onnx": "visionlab.export",
    "tune_process": "visionlab.process",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visionlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
