"""A sixth task of a new kind, written outside visionlab: image regression (a number per photo).

The kind ``regression`` reads a folder with ``targets.csv`` (``file,target``: an image path
relative to the folder, and its number) and trains any visionlab model with one output on the
mean squared error (or, with its own config key ``huber_delta``, the Huber loss); it reports MAE
and RMSE (lower is better). The task ``brightness`` predicts
the brightness of a disc on a dark photo with a small CNN the plugin registers (``disc_cnn``);
its synthetic data know the answer.

Use it by naming this module as a plugin (see :mod:`visionlab.plugins`)::

    PYTHONPATH=examples VISIONLAB_PLUGINS=regression_kind visionlab train --task brightness --data synthetic
    PYTHONPATH=examples VISIONLAB_PLUGINS=regression_kind visionlab predict photo.png --task brightness

Importing this module is torch-free (``visionlab tasks`` and the torch-free runtime can load it);
the runner, which needs torch, is the module beside it (``regression_runner.py``), imported when a
run starts, as the built-in kinds keep their runners in ``runner.py`` of their packages.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from visionlab.config import setting
from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, KindOptions, LoadedModel, Output, Prediction, register_kind
from visionlab.models import HALF, Weights, register_model
from visionlab.registry import TaskSpec, register_task

TARGETS = "targets.csv"


@dataclass
class ValuePrediction(Prediction):
    """The predicted number of one photo."""

    value: float | None = None

    def extra(self) -> dict[str, Any]:
        return {"value": self.value} if self.value is not None else {}

    def detail(self) -> str:
        return f"{self.value:.4f}" if self.value is not None else ""


@register_model(weights=Weights(None, HALF, HALF, 32))  # trained from scratch, 32 px
def disc_cnn(num_classes: int, in_chans: int = 3, width: int = 16) -> Any:
    """Two convolutions and a global average: enough to read a grey level (a few thousand weights)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def read_targets(root: Path) -> tuple[list[Path], list[float]]:
    """The images and numbers listed in ``root/targets.csv``."""
    table = root / TARGETS
    if not table.is_file():
        raise VisionlabError(f"{root} has no {TARGETS}.", f"Write {TARGETS} with the columns file,target.")
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "target"} <= set(rows[0]):
        raise VisionlabError(f"{table} needs the columns file and target.", "Fix its header line.")
    return [root / r["file"] for r in rows], [float(r["target"]) for r in rows]


def make_discs(root: Path, n: int = 160, size: int = 32, seed: int = 0) -> None:
    """Discs of random size and place, whose grey level (0..1) is the target, on a dark noisy ground."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    lines = ["file,target"]
    for i in range(n):
        target = float(rng.uniform(0.0, 1.0))
        r = rng.uniform(size * 0.25, size * 0.45)
        cy, cx = rng.uniform(r, size - r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.normal(0.08, 0.03, (size, size, 3))
        img[disc] = target
        name = f"images/disc_{i:03d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / name)
        lines.append(f"{name},{target:.5f}")
    (root / TARGETS).write_text("\n".join(lines) + "\n")


@dataclass
class RegressionOptions(KindOptions):
    """The regression kind's own config key, written flat in its recipes (``huber_delta: 0.1``)."""

    huber_delta: float = setting(0.0, "0 = mean squared error; > 0: the Huber loss with this delta (outlying targets pull "
                                      "less: linear beyond it)")

    def checks(self) -> list[tuple[bool, str]]:
        return [(self.huber_delta >= 0, "huber_delta must be >= 0 (0 = mean squared error)")]


class RegressionKind(Kind):
    name = "regression"
    options = RegressionOptions
    outputs = (Output("value", "image", "none", "the predicted number, per image"),)
    primary = "mae"
    lower_is_better = frozenset({"mae", "rmse"})
    demo_options = {"epochs": 2, "batch_size": 16, "early_stopping": 0}
    detail_column = "value"

    def runner(self, cfg: Any, spec: Any, device: Any) -> Any:
        from regression_runner import RegressionRunner  # imports torch: only when a run starts

        return RegressionRunner(cfg, spec, device, self)

    def make_synthetic(self, root: Path, classes: list[str], seed: int) -> None:
        make_discs(root, seed=seed)

    def demo_inputs(self, root: Path) -> list[Path]:
        return read_targets(root)[0][:4]

    def recognizes(self, path: Path) -> bool:
        return (path / TARGETS).is_file()  # the data doctor's guess: a folder with targets.csv

    def predict_arrays(self, model: LoadedModel, arrays: Sequence[Any], top_k: int, sources: Sequence[str],
                       originals: Sequence[Any]) -> list[Prediction]:
        import numpy as np
        import torch

        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]).permute(0, 3, 1, 2)
        x = model.normalize(x.to(model.device))
        with model.autocast():
            values = model.model(x).float()[:, 0].cpu().tolist()
        return [ValuePrediction(s, value=round(v, 5)) for s, v in zip(sources, values)]


register_kind(RegressionKind())
register_task(TaskSpec(
    name="brightness", kind="regression", default_classes=("brightness",), seed_model="disc_cnn",
    recipe=str(Path(__file__).with_name("brightness.yaml")),
    description="The grey level (0..1) of a disc on a dark photo, regressed by a small CNN (an example plugin).",
))
