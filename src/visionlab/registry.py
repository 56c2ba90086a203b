"""The task registry: one place where every task is described by name, the five built-in ones too.

A task (:class:`TaskSpec`) names its kind, its recipe and its dataset; what it trains and at
which size is read from the recipe, how it is trained and scored belongs to the kind
(:mod:`visionlab.kinds`). Registering the same name twice is refused; an unknown name fails
with the list of known ones. Importing this module does not import torch, so ``visionlab
tasks`` is fast. Plugins (:mod:`visionlab.plugins`) register their tasks before the first lookup.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionlab.errors import VisionlabError
from visionlab.plugins import load_plugins

__all__ = ["TaskSpec", "register_task", "get_task", "list_tasks", "task_names", "packaged_recipe"]


def packaged_recipe(name: str) -> Path | None:
    """``configs/<name>.yaml`` shipped with visionlab (in the wheel, or in the source checkout), if any."""
    here = Path(__file__).resolve().parent
    for cand in (here / "configs" / f"{name}.yaml", here.parents[1] / "configs" / f"{name}.yaml"):
        if cand.exists():
            return cand
    return None


@functools.lru_cache(maxsize=None)
def _recipe_values(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, its recipe (the YAML of its default training), its dataset and classes.

    ``model`` and ``input_size`` are what the recipe trains; ``seed_model`` is the architecture
    of the seed project (trained by the seed-faithful recipe ``configs/<name>-scratch.yaml``)."""

    name: str
    kind: str  # a registered kind: visionlab.kinds.get_kind(kind)
    default_classes: tuple[str, ...]  # the classes of the seed dataset (and of its synthetic stand-in)
    description: str
    dataset: str = ""  # name understood by ``visionlab data download``
    recipe: str = ""  # the recipe's YAML file; "" = configs/<name>.yaml shipped with visionlab
    seed_model: str = ""
    seed_project: str = ""

    @property
    def recipe_path(self) -> Path | None:
        """The recipe's file (None for a task registered without one)."""
        return Path(self.recipe).expanduser() if self.recipe else packaged_recipe(self.name)

    def recipe_values(self) -> dict[str, Any]:
        """The recipe's keys as written (read once)."""
        path = self.recipe_path
        return dict(_recipe_values(path.resolve())) if path is not None and path.exists() else {}

    @property
    def model(self) -> str:
        """The model the recipe trains (the seed model for a task without a recipe)."""
        return str(self.recipe_values().get("model") or self.seed_model)

    @property
    def input_size(self) -> int:
        """The recipe's input side: its ``image_size`` or, per kind, ``tile_size`` (0 when it says none)."""
        from visionlab.kinds import get_kind

        return int(self.recipe_values().get(get_kind(self.kind).input_key) or 0)


_LITE0 = "EfficientNet-Lite0 (ImageNet weights) fine-tuned"
_BUILTIN_TASKS = (
    TaskSpec(
        name="minerals", kind="classification", dataset="minerals",
        default_classes=("biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"),
        description=f"Mineral photo classifier: {_LITE0}. Seed model minerals_cnn: CNN from scratch "
                    "(conv 64-128-256-512, GAP, dense 256) with background removal.",
        seed_model="minerals_cnn", seed_project="MinDat Keras CNN, 96 px, 73 % val accuracy (10 classes)",
    ),
    TaskSpec(
        name="waste", kind="classification", dataset="waste", default_classes=("O", "R"),
        description=f"Organic (O) vs recyclable (R) waste: {_LITE0}. Seed model waste_cnn: CNN from scratch "
                    "(conv 32-64-128-256, dense 128-64).",
        seed_model="waste_cnn", seed_project="Thesis Keras CNN, 224 px, 90.7 % test accuracy",
    ),
    TaskSpec(
        name="cracks", kind="classification", dataset="cracks", default_classes=("Negative", "Positive"),
        description=f"Concrete crack (Positive) vs no crack (Negative): {_LITE0}. Seed model cracks_cnn: "
                    "3-conv-block CNN from scratch.",
        seed_model="cracks_cnn", seed_project="Course project CNN, 150 px, 99.4 % test accuracy",
    ),
    TaskSpec(
        name="caltech", kind="classification", dataset="caltech101",
        default_classes=("Faces", "brain", "camera", "dollar_bill", "ketch", "watch"),
        description=f"Six Caltech101 classes: {_LITE0}. Seed model resnet18 (ImageNet weights), fine-tuned.",
        seed_model="resnet18", seed_project="Notebook ResNet18, 98 % on 99 test images",
    ),
    TaskSpec(
        name="landcover", kind="segmentation", dataset="landcover",
        default_classes=("building", "land", "road", "vegetation", "water", "unlabeled"),
        description="Land-cover segmentation of aerial images: U-Net with an EfficientNet-Lite0 encoder (ImageNet "
                    "weights), focal+dice loss, tiled training and inference. Seed model: the same U-Net from scratch.",
        seed_model="unet", seed_project="LandCover.ai U-Net, F1 0.43",
    ),
)
_TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _BUILTIN_TASKS}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; a duplicate name (of a built-in task too) is an error, as is an unknown kind."""
    from visionlab.kinds import get_kind

    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    get_kind(spec.kind)  # unknown kind -> the list of known ones
    _TASKS[spec.name] = spec
    return spec


def task_names() -> list[str]:
    load_plugins()
    return list(_TASKS)


def list_tasks() -> list[TaskSpec]:
    """All registered tasks: the built-in ones, then those registered since, in order."""
    load_plugins()
    return list(_TASKS.values())


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names fail with the list of known ones."""
    if name not in _TASKS:
        load_plugins()
    try:
        return _TASKS[name]
    except KeyError:
        raise VisionlabError(
            f"unknown task {name!r}.", f"Known tasks: {', '.join(_TASKS)} (see 'visionlab tasks')."
        ) from None
