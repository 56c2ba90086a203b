"""What the trainer needs from a task kind, and the pieces both kinds share.

A :class:`TaskRunner` prepares the data of one run and supplies the step: batches, the
on-device transform, the loss and the evaluation. The trainer owns everything else
(device, precision, optimiser, schedule, checkpoints, early stopping, logging).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator

import numpy as np
import torch

from visionlab.config import Config, config_from_dict
from visionlab.data.preprocessing import Preprocessing
from visionlab.engine.distributed import Dist
from visionlab.errors import VisionlabError
from visionlab.kinds.base import EvaluationReport, Kind

if TYPE_CHECKING:
    from visionlab.registry import TaskSpec

__all__ = ["TaskRunner", "EvalResult", "evaluate_checkpoint", "prepared_runner", "resolve_data_path", "loader_generator", "thumbnail"]


@dataclass
class EvalResult:
    """Metrics of one pass over a split; ``report`` holds per-class detail for ``evaluate``."""

    metrics: dict[str, float]
    report: dict[str, Any]
    primary: str
    files: list[dict[str, Any]] | None = None  # one row per image (path, label, predicted, ...), worth-a-look first
    files_note: str = ""  # what the order of ``files`` means, for the user
    # the images worth a look (most confident mistakes, worst IoU): {"title", "images": {caption: PIL image}, "fields"}
    examples: list[dict[str, Any]] | None = None


def thumbnail(image: Any, max_side: int = 320) -> Any:
    """A copy of a PIL image no larger than ``max_side`` on either side."""
    out = image.copy()
    out.thumbnail((max_side, max_side))
    return out


def resolve_data_path(cfg: Config, spec: TaskSpec, kind: Kind) -> Path:
    """``cfg.data`` as a folder; 'synthetic' makes (once) the task's synthetic dataset (of ``kind``, the task's)."""
    if cfg.is_synthetic:
        return kind.synthetic_data(spec)
    return Path(cfg.data).expanduser()


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator a DataLoader of one epoch draws its worker seeds from, so that making a loader
    never consumes the global RNG (augmentation draws from it: a resumed run must see the same numbers)."""
    return torch.Generator().manual_seed(int(seed) * 1000 + int(epoch))


def default_workers(cfg: Config, device: torch.device) -> int:
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device.type == "cuda" else (0 if cpus <= 2 else min(4, cpus // 2))


class TaskRunner(ABC):
    """One run's data and step for a task kind (see module docstring); ``kind`` is the task's kind,
    which makes the runner (:meth:`visionlab.kinds.Kind.runner` passes itself)."""

    def __init__(self, cfg: Config, spec: TaskSpec, device: torch.device, kind: Kind) -> None:
        self.cfg, self.spec, self.device = cfg, spec, device
        self.task_kind: Kind = kind
        self.kind: str = spec.kind
        self.classes: list[str] = []
        self.preprocessing: Preprocessing | None = None  # set by prepare (a plugin's runner may set the dict form)
        self.data_info: dict[str, Any] = {}
        # Set by evaluate: the checkpoint's preprocessing wins over one recomputed from config.
        self.fixed_preprocessing: Preprocessing | None = None
        # Set by evaluate: how many examples worth a look (with thumbnails) ``evaluate`` returns.
        self.examples: int = 0
        # Set by the trainer under torchrun: this process's rank and the number of processes.
        self.dist = Dist()
        # The fitted calibration of the model evaluated (:meth:`Kind.calibrate`: a temperature for
        # classifiers): read by use_saved from the checkpoint, or set by the trainer after fitting it;
        # ``calibrated`` False (evaluate --no-calibration) scores the raw outputs.
        self.calibration: dict[str, Any] | None = None
        self.calibrated: bool = True
        # The model's unknown detector (:meth:`Kind.fit_unknown`) as its checkpoint holds it ("unknown"):
        # read by use_saved, or set by the trainer after fitting it; ``unknown`` is 'auto' (its
        # threshold), 'off' or a threshold.
        self.detector: dict[str, Any] = {}
        self.unknown: str | float = "auto"

    @property
    def cache_mode(self) -> str:
        """``cache`` as the decode cache takes it: under DDP 'memory' is also written to the cache
        file (as 'auto'), so a machine's other processes read what its first decoded."""
        return "auto" if self.cfg.cache == "memory" and self.dist.enabled else self.cfg.cache

    @property
    def primary(self) -> str:
        """The validation metric that selects best.pt (without the 'val_' prefix): the kind's."""
        return self.task_kind.primary

    def higher_is_better(self, metric: str) -> bool:
        """The direction of a logged metric (without the 'val_' prefix), from the kind's table."""
        return self.task_kind.higher_is_better(metric)

    def data_warnings(self) -> list[str]:
        """Warnings the trainer prints before training (none by default)."""
        return []

    # ------------------------------------------------------------ a saved model
    def use_saved(self, state: dict[str, Any], tta: str | None = None) -> None:
        """Evaluate the model saved in ``state``: its preprocessing (``tta`` replaced when given)
        wins over one recomputed from the config, and its fitted calibration is applied (unless
        :attr:`calibrated` is off). Call before :meth:`prepare`."""
        saved = self.task_kind.saved_preprocessing(state["preprocessing"], "the checkpoint")
        if tta is not None and tta not in self.task_kind.tta_modes:
            raise VisionlabError(f"tta={tta!r}: the {self.task_kind.name} kind does no test-time augmentation of that kind.",
                                 f"Use --tta {' or '.join(self.task_kind.tta_modes)}.")
        self.fixed_preprocessing = saved if tta is None else saved.replace(tta=tta)
        self.calibration = state.get("calibration")
        self.detector = {"unknown": state["unknown"]} if state.get("unknown") else {}

    def has_split_folders(self) -> bool:
        """Whether the dataset brings its own train/val/test split."""
        return bool(self.index.has_splits)  # type: ignore[attr-defined]

    def evaluation_split(self, split: str, whole_folder: bool) -> str:
        """The split to evaluate: ``split``, or 'test' holding every image for split 'all' and for
        a folder other than the training data (``whole_folder``) without split folders of its own."""
        if split == "all" or (whole_folder and not self.has_split_folders()):
            self.splits["test"] = np.concatenate([self.splits[s] for s in ("train", "val", "test")])  # type: ignore[attr-defined]
            return "test"
        return split

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This process's disjoint part of ``indices`` (all of them in a single process)."""
        return indices[self.dist.rank :: self.dist.world]

    def merge_shards(self, part: dict[str, Any]) -> dict[str, Any]:
        """The parts every process evaluated, merged into what one process would have (see
        :func:`visionlab.engine.distributed.merge_parts`); ``part`` itself in a single process."""
        from visionlab.engine.distributed import merge_parts

        return merge_parts(self.dist.gather(part)) if self.dist.enabled else part

    def global_batches(self, n_items: int) -> int:
        """Batches per process in an epoch of ``n_items`` (at least one): full global batches only, so
        that every process takes the same number of steps."""
        per_step = self.cfg.batch_size * self.dist.world
        if self.dist.enabled and n_items < per_step:  # every process must take the same number of steps
            raise VisionlabError(f"{n_items} training items are fewer than one batch of {self.cfg.batch_size} for each of "
                                 f"{self.dist.world} processes.", "Lower batch_size or the number of processes.")
        n = max(1, n_items // per_step)
        return min(n, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else n

    @abstractmethod
    def prepare(self, console: Any = None) -> None:
        """Index the data, split it, cache it; fills classes, preprocessing, data_info."""

    @abstractmethod
    def train_batches(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """CPU batches (uint8 images, targets) of one epoch, from batch ``start_step`` on (a resumed
        epoch): the same batches, in the same order, as the uninterrupted epoch's from there."""

    @abstractmethod
    def num_train_batches(self) -> int: ...

    @abstractmethod
    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch already on the device -> normalised float input (augmented when train)."""

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-level mixing of a normalised training batch (mixup/CutMix); identity by default."""
        return x, y

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult: ...

    # The step contract: the trainer calls only this for the batch maths (and higher_is_better, data_warnings above).
    def training_step(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      autocast: Callable[[], ContextManager[Any]]) -> tuple[torch.Tensor, int]:
        """One CPU training batch -> (its loss, its size): to the device, the training transform,
        mixing, ``forward`` under ``autocast()``, the loss (outside autocast, in fp32)."""
        x = self.on_device(x.to(self.device, non_blocking=True), train=True)
        y = y.to(self.device, non_blocking=True)
        x, y = self.mix(x, y)
        with autocast():
            out = forward(x)
        return self.loss(out, y), len(y)

    def split_size(self, split: str) -> int:
        return len(self.splits.get(split, ()))  # type: ignore[attr-defined]

    def split_files(self, split: str) -> list[Path]:
        """The image files of ``split`` (after :meth:`prepare`), in the split's order (int8 export
        calibrates on the training split's); a kind whose runner does not list them cannot be quantised."""
        raise VisionlabError(f"the {self.task_kind.name} runner does not list its image files.",
                             "Export without --int8.")

    def iter_chunks(self, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(indices), batch_size):
            yield indices[i : i + batch_size]


def prepared_runner(spec: TaskSpec, kind: Kind, state: dict[str, Any], path: Path, data: str | os.PathLike | None = None,
                    device: str = "auto", tta: str | None = None, console: Any = None,
                    calibration: bool = True, unknown: str | float = "auto") -> tuple["TaskRunner", bool]:
    """The prepared runner of the data the model saved in ``state`` was trained on (or of ``data``),
    with the model's own preprocessing (and its fitted calibration unless ``calibration`` is False);
    and whether ``data`` is another folder than the training data's."""
    from visionlab.engine.device import resolve_device

    cfg = config_from_dict(state["config"], kind.options)
    if not cfg.data and data is None:  # an exported model keeps no local path
        raise VisionlabError(f"{path} does not say where its data is.", "Pass --data with the folder it was trained on "
                                                                       "(its test split is evaluated; --split all: every image).")
    whole_folder = data is not None and bool(cfg.data) and os.fspath(data) != cfg.data
    if data is not None:
        cfg.data = os.fspath(data)
    cfg.cache = "none" if cfg.cache == "none" else "auto"
    runner = kind.runner(cfg, spec, resolve_device(device))
    runner.use_saved(state, tta)
    runner.calibrated, runner.unknown = calibration, unknown
    runner.prepare(console)
    if list(runner.classes) != list(state["classes"]):
        raise VisionlabError(f"the data's classes {runner.classes} differ from the model's {state['classes']}.",
                             "Evaluate on data of the same classes.")
    return runner, whole_folder


def evaluate_checkpoint(spec: TaskSpec, kind: Kind, state: dict[str, Any], path: Path, data: str | os.PathLike | None = None,
                        split: str = "test", device: str = "auto", batch_size: int = 32, tta: str | None = None,
                        examples: int = 0, console: Any = None, precision: str = "fp32", calibration: bool = True,
                        unknown: str | float = "auto") -> EvaluationReport:
    """Evaluate the model saved in ``state`` (read from ``path``; task ``spec``, of ``kind``) on a split of its data or, with
    ``data`` another folder than the training data's, on that whole folder (its own test/ split
    if it has one); ``split`` 'all' is every image. ``tta`` overrides the saved test-time
    augmentation; ``examples`` images worth a look come back as thumbnails; ``calibration`` False
    scores the raw outputs, without the checkpoint's fitted calibration (its temperature); ``unknown``
    'off' leaves its unknown detector out ('auto': its threshold; or a number)."""
    from visionlab.engine.checkpoint import load_model
    from visionlab.engine.device import resolve_precision

    runner, whole_folder = prepared_runner(spec, kind, state, path, data, device, tta, console, calibration, unknown)
    cfg, dev = runner.cfg, runner.device
    runner.examples = examples
    split = runner.evaluation_split(split, whole_folder)
    if runner.split_size(split) == 0:
        raise VisionlabError(f"the {split} split of {cfg.data} is empty.", "Pass --split all, or --data with a held-out folder.")
    model = load_model(state, device=dev, channels_last=cfg.channels_last)
    autocast = resolve_precision(precision, dev).autocast  # fp32 by default, as predict and the .onnx
    t0 = time.perf_counter()
    result = runner.evaluate(model, split, autocast, batch_size=batch_size)
    return EvaluationReport(
        task=spec.name, kind=kind.name, checkpoint=str(path), data=cfg.data, split=split,
        synthetic=bool(runner.data_info.get("synthetic")), images=runner.split_size(split),
        seconds=time.perf_counter() - t0, tta=Preprocessing.from_dict(runner.preprocessing).tta_mode, classes=list(state["classes"]),
        detail={**result.report, **({"loss": result.metrics["loss"]} if "loss" in result.metrics else {})}, files=result.files, files_note=result.files_note, examples=result.examples)
