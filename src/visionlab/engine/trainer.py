"""The one training loop for every task.

The task kind (:class:`visionlab.engine.runner.TaskRunner`) supplies data and the step
(``training_step``: batch in, loss out), the metric directions and the evaluation; the trainer
owns the loop, the device, mixed precision, the optimiser and schedule, resume, divergence checks
and the final test evaluation. Checkpoints (best and last, atomic), early stopping and logging
(``metrics.csv``, curves PNG) are callbacks with named hooks (:mod:`visionlab.engine.callbacks`),
installed by default beside the user's; the callbacks keep their own state in last.pt. The trainer
prints nothing: what a user is told are events (``on_notice``, ``on_resume``, ``on_fit_start`` with
``trainer.info``, ``on_fit_end``) that a progress display (:class:`visionlab.present.training.ProgressBar`) shows.
The caller names the task and its kind (:class:`~visionlab.registry.TaskSpec`, :class:`~visionlab.kinds.Kind`):
the loop looks nothing up.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from timm.optim import create_optimizer_v2
from timm.utils import distribute_bn
from timm.utils.model_ema import ModelEmaV3

from visionlab._version import __version__
from visionlab.config import Config, check_resume, config_from_dict, dump_config
from visionlab.data.preprocessing import Preprocessing
from visionlab.engine.callbacks import (Callback, CSVLogger, EarlyStopping, ModelCheckpoint, Notice, ResumeInfo, RunInfo,
                                        TrainingCurves)
from visionlab.engine.checkpoint import (CheckpointWriteError, inference_state, load_checkpoint, load_model,
                                         remove_stale_temporaries, save_checkpoint)
from visionlab.engine.device import peak_memory_mb, resolve_device, resolve_precision, speed_settings
from visionlab.engine.distributed import INTERRUPTED, check_shared, node_first, peer_failure, rank_gpu, record_failure
from visionlab.engine.runs import latest_checkpoint, mark_latest, new_run_dir
from visionlab.errors import PeerFailed, TrainingInterrupted, VisionlabError
from visionlab.kinds.base import Kind

if TYPE_CHECKING:
    from visionlab.registry import TaskSpec

__all__ = ["Trainer", "TrainResult", "Callback", "seed_everything", "build_optimizer", "build_scheduler", "resolve_resume"]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metric: float
    monitor: str
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_report: dict[str, Any] = field(default_factory=dict)  # per-class detail and confusion matrix of the test split
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    peak_memory_mb: dict[str, float] = field(default_factory=dict)  # of this session, per device (peak_memory_mb)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random number generator training draws from (augmentation, mixing, dropout...)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(resume: str | Path, task: str, out: str | None = None) -> Path:
    """The checkpoint a resume continues from: a path, or 'last' (the latest run of ``task``)."""
    if str(resume) == "last":
        return latest_checkpoint(task, out, which="last")
    path = Path(resume).expanduser()
    if path.name == "best.pt" and (path.parent / "last.pt").exists():
        raise VisionlabError(f"{path} is the best epoch, not where the run stopped.",
                             f"Resume from {path.parent / 'last.pt'} (or --resume last).")
    return path


@dataclass
class LoopState:
    """Where the loop is, saved in last.pt so a resumed run goes on exactly where it stopped."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps done in the current epoch (a checkpoint written mid-epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # of the current epoch so far
    n_seen: int = 0  # images of the current epoch so far, on all processes
    epoch_seconds: float = 0.0
    epoch_cpu_seconds: float = 0.0
    train_seconds: float = 0.0  # of the completed epochs
    images_seen: int = 0
    first_loss: float | None = None  # the divergence check compares with it
    first_weight_norm: float | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def saved(cls, state: dict[str, Any]) -> LoopState:
        """The loop of a last.pt; one of visionlab < 0.2 (epoch boundaries only, no random states) has
        no ``loop``, and the best score and patience count of older ones belong to the callbacks now."""
        if "loop" not in state:
            return cls(epoch=state["epoch"], history=list(state["history"]))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state["loop"].items() if k in names})


def legacy_callback_states(state: dict[str, Any], checkpoint: Callback, stopping: Callback) -> dict[str, dict[str, Any]]:
    """The states of ModelCheckpoint and EarlyStopping in a last.pt written before callbacks kept
    their own (no ``callbacks`` key): the best score and patience count were the loop's, or top-level keys."""
    loop = state.get("loop") or {}
    best = {"best": float(loop.get("best", state.get("best_metric", math.nan))),
            "best_loss": float(loop.get("best_loss", state.get("best_loss", math.inf)))}
    return {checkpoint.state_key: best, stopping.state_key: {**best, "wait": int(loop.get("bad_epochs", state.get("bad_epochs", 0)))}}


class Diverged(VisionlabError):
    """The loss, the gradients or the weights blew up; nothing after the last good checkpoint is saved."""


# A loss this many times the first step's (and above _LOSS_FLOOR), or weights whose norm grew this
# many times, means the run has blown up: healthy runs stay far below both (a cross-entropy starts near
# ln(classes) and falls; weight decay keeps weights near their initial norm).
_LOSS_GROWTH, _LOSS_FLOOR, _WEIGHT_GROWTH = 100.0, 100.0, 1000.0


def backbone_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters of a model's pretrained body: all but the head of a classifier
    (timm ``get_classifier()``, torchvision ``fc``), the encoder of a segmentation model."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, torch.nn.Module):
        return {id(p) for p in encoder.parameters()}
    get_head = getattr(model, "get_classifier", None)
    head = get_head() if callable(get_head) else getattr(model, "fc", None) or getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        raise VisionlabError(f"backbone_lr_scale needs a model with a separate head; {type(model).__name__} has none.",
                             "Remove backbone_lr_scale from the config.")
    head_ids = {id(p) for p in head.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in head_ids}


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW (or SGD) without weight decay on biases and normalisation weights; with
    ``backbone_lr_scale`` != 1 the pretrained body learns at that fraction of ``lr``."""
    body = backbone_parameters(model) if cfg.backbone_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in body, p.ndim > 1), []).append(p)
    # our groups, not timm's param_groups_weight_decay: that has no backbone split and also exempts model.no_weight_decay()
    param_groups = [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
                     "lr": cfg.lr * (cfg.backbone_lr_scale if in_body else 1.0)}
                    for (in_body, decay), ps in sorted(groups.items())]
    return create_optimizer_v2(param_groups, opt=cfg.optimizer, lr=cfg.lr, momentum=0.9)  # timm's sgd is nesterov


class ModelEma(ModelEmaV3):
    """timm's exponential moving average of a model's weights (buffers copied), updated every step.

    The decay ramps up as ``(1 + n) / (10 + n)`` over the ``n`` updates so far until it reaches
    ``decay``, so the first steps of short fine-tuning runs are not averaged with the random head
    they started from (timm's own warmup is another curve)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__(model, decay=float(decay))
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def get_decay(self, step: int | None = None) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, model: torch.nn.Module, step: int | None = None) -> None:
        self.updates += 1
        super().update(model)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int,
                    done: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warmup then cosine to 1 % of lr, one-cycle, or constant; ``done``
    optimiser steps already taken (a resume: the schedule of this run's epochs, at the step reached).

    Not timm's CosineLRScheduler: its warmup starts at warmup_lr_init rather than lr / warm, its floor
    is one lr_min for every group (ours is 1 % of each group's lr), and it is no torch LRScheduler."""
    total = max(1, cfg.epochs * steps_per_epoch)
    done = min(done, total)  # a resume with no more epochs than were done trains none
    if cfg.schedule == "onecycle":
        return _one_cycle(opt, cfg, total, done)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=done - 1)


def _one_cycle(opt: torch.optim.Optimizer, cfg: Config, total: int, done: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle over ``total`` optimiser steps, the lr after the last one its annealed minimum.

    OneCycleLR counts ``total_steps`` positions of which the last is the minimum, so it gets one more
    than the steps taken; its warmup needs 2 of them and its annealing 1, so the warm share is fitted
    to whole steps (a raw ZeroDivisionError inside torch otherwise)."""
    if total < 2:
        raise VisionlabError(f"schedule onecycle needs at least 2 optimiser steps; this run has {total} "
                             f"({cfg.epochs} epoch(s) of {total // cfg.epochs} step(s)).",
                             "Train more epochs, lower batch_size or accumulate, or use schedule=cosine.")
    positions = total + 1
    warm = min(positions - 1, max(2, round(positions * min(0.5, max(0.05, cfg.warmup_epochs / cfg.epochs)))))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g.get("max_lr", g["lr"]) for g in opt.param_groups],
                                               total_steps=positions, pct_start=warm / positions, last_epoch=done - 1)


def map_step(step: int, saved_world: int, world: int, accumulate: int, steps_per_epoch: int) -> int:
    """A mid-epoch position (batches of ``saved_world`` processes) on ``world`` processes: the same
    items in the same order (:func:`~visionlab.engine.distributed.shard_batch`), at the start of an
    optimiser step, and within this epoch's ``steps_per_epoch`` (``max_steps_per_epoch`` caps it)."""
    mapped = step * saved_world // world
    return min(mapped - mapped % accumulate, steps_per_epoch)


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its batch norms synchronised across processes; timm's converter, which keeps
    the activation of timm's fused ``BatchNormAct2d`` (torch's turns it into a plain SyncBatchNorm
    whose forward never applies it)."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def _inode(path: Path) -> int | None:
    """The file's inode, or None: an atomic rename gives ``path`` a new one."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _py(obj: Any) -> Any:
    """numpy scalars and paths -> plain Python, so checkpoints load with weights_only=True."""
    if isinstance(obj, dict):
        return {str(k): _py(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_py(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Trainer:
    """Fit one task with one config; see the module docstring for who owns what.

    ``callbacks`` run after the default :class:`CSVLogger` and :class:`TrainingCurves` and before
    :class:`EarlyStopping` (``early_stopping_callback``) and :class:`ModelCheckpoint`
    (``checkpoint_callback``), last so that an epoch's last.pt holds every callback's state of that
    epoch (see :mod:`visionlab.engine.callbacks`); ``self.callbacks`` is the whole list. Without a
    progress display among them (a callback with a ``console``) the fit is silent. ``spec`` is the
    task of ``cfg.task`` and ``kind`` its kind, which makes the run's runner."""

    def __init__(self, cfg: Config, spec: TaskSpec, kind: Kind, callbacks: list[Callback] | None = None) -> None:
        self.cfg = cfg
        self.spec, self.kind = spec, kind
        self.checkpoint_callback = ModelCheckpoint(cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes)
        self.early_stopping_callback = EarlyStopping(cfg.early_stopping)
        self.callbacks: list[Callback] = [CSVLogger(), TrainingCurves(), *(callbacks or []),
                                          self.early_stopping_callback, self.checkpoint_callback]
        keys = [cb.state_key for cb in self.callbacks if type(cb).state_dict is not Callback.state_dict]
        shared = sorted({k for k in keys if keys.count(k) > 1})
        if shared:
            raise VisionlabError(f"two callbacks keep their state in last.pt under the same state_key {shared[0]!r}.",
                                 "Give each its own state_key (a property returning a name of its own).")

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            if cb.all_ranks or self.dist.is_main:
                getattr(cb, hook)(self, *args)

    def notify(self, label: str, text: str) -> None:
        """Tell the user ``label: text`` (a warning, early stopping...): an ``on_notice`` event for the
        callbacks, on rank 0 only (one process talks)."""
        dist = getattr(self, "dist", None)  # None before fit (an API caller ending its trackers)
        if dist is None or dist.is_main:
            for cb in self.callbacks:
                cb.on_notice(self, Notice(label, text))

    # ------------------------------------------------------------------- fit
    @speed_settings()  # threads and cuDNN/TF32 flags while fitting; the caller's are restored after
    def fit(self, resume: str | Path | None = None) -> TrainResult:
        """Train; ``resume`` is a last.pt path or 'last' (latest run of this task)."""
        from visionlab.engine.distributed import from_env

        joined = torch.distributed.is_available() and not torch.distributed.is_initialized()
        self.dist = from_env(self.cfg.device)
        joined = joined and self.dist.enabled  # the process group this fit made, and leaves when it ends well
        self.run_dir, self._saved, self._marked = None, {}, False
        try:
            self._start(resume)
        except KeyboardInterrupt:  # during set-up (decoding the cache...): nothing of this run is saved yet
            raise self._interrupted() from None
        try:
            self._emit("on_fit_start")
            for epoch in range(self.loop.epoch, self.cfg.epochs):
                if self.should_stop:  # a resumed run that had stopped early (EarlyStopping says so)
                    break
                self._emit("on_train_epoch_start", epoch)
                self._train_epoch(epoch)
                self._emit("on_epoch_end", self._validate(epoch))
            self._emit("on_train_end")
        except KeyboardInterrupt:
            exc = self._stopped_by(None)
            self._emit("on_exception", exc)
            raise exc from None
        except Exception as exc:
            err = self._stopped_by(exc)
            self._emit("on_exception", err)
            if err is exc:
                raise
            raise err from exc
        loop = self.loop
        best = float(self.checkpoint_callback.best.value)
        result = TrainResult(self.run_dir, self.run_dir / "best.pt", self.run_dir / "last.pt", best, self.monitor,
                             len(loop.history), loop.history, train_seconds=loop.train_seconds,
                             images_per_second=loop.images_seen / max(loop.train_seconds, 1e-9))
        try:
            self._finish(result)
        except KeyboardInterrupt:  # during the test evaluation: the checkpoints are complete
            raise self._stopped_by(None) from None
        self._emit("on_fit_end", result)
        if joined:
            torch.distributed.destroy_process_group()
        return result

    def _train_epoch(self, epoch: int) -> None:
        loop, k = self.loop, self.cfg.accumulate
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        seconds0, cpu_seconds0 = loop.epoch_seconds, loop.epoch_cpu_seconds
        skipped = 0
        for x, y in self.runner.train_batches(epoch, start_step=loop.step):
            group = loop.step - loop.step % k  # first batch of this optimiser step's group
            size = min(k, self.steps_per_epoch - group)  # the epoch's last group may be shorter
            loop.step += 1
            last = loop.step - group == size
            if self._unreadable_batch(y):
                skipped += 1
                continue
            self.should_save = False
            self._emit("on_train_batch_start")
            self.should_save = self.should_save and last  # a checkpoint holds no half-accumulated gradients
            loss, n = self._step(x, y, epoch, 1.0 / size, last)
            loop.loss_sum += loss * n
            loop.n_seen += n
            loop.epoch_seconds, loop.epoch_cpu_seconds = seconds0 + time.perf_counter() - t0, cpu_seconds0 + time.process_time() - cpu0
            self._emit("on_train_batch_end", loss)
        if skipped:
            self.notify("warning", f"skipped {skipped} training batch(es) of epoch {epoch + 1} whose files were all "
                        "unreadable; run 'visionlab data check' for details.")

    def _unreadable_batch(self, y: torch.Tensor) -> bool:
        """True when every file of this streamed batch, on this or any other process, was unreadable:
        all processes skip it together (a step on no images is a NaN loss; DDP needs every rank's backward)."""
        empty = len(y) == 0
        if self.dist.enabled:
            flag = torch.tensor([float(empty)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            empty = bool(flag.item())
        return empty

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, scale: float, sync: bool) -> tuple[float, int]:
        """One batch: the runner's training step, backward (gradients scaled by ``scale`` for
        accumulation) and, when ``sync``, the optimiser step. Returns the batch's loss (the mean over
        processes) and the images it held on all processes, and agrees ``should_save`` between processes. Stops the run if it has blown up."""
        from contextlib import nullcontext

        cfg, loop = self.cfg, self.loop
        no_sync = self.forward.no_sync if self.dist.enabled and not sync and hasattr(self.forward, "no_sync") else nullcontext
        with no_sync():
            loss, n = self.runner.training_step(self.forward, x, y, self.precision.autocast)
            value = float(loss.detach())
            if self.dist.enabled:  # one all-reduce: the mean loss (the same divergence verdict everywhere), rank 0's
                # checkpoint call and the images of all processes (counted globally: a resume may have another number)
                both = torch.tensor([value, float(self.should_save), n], dtype=torch.float64, device=self.device)
                torch.distributed.all_reduce(both)
                value, self.should_save, n = float(both[0]) / self.dist.world, bool(both[1] > 0), int(both[2])
            if loop.first_loss is None and math.isfinite(value):
                loop.first_loss = value
                loop.first_weight_norm = self._weight_norm()
            if not math.isfinite(value):
                self._diverged(epoch, f"the loss became {value}")
            if value > max(_LOSS_GROWTH * loop.first_loss, _LOSS_FLOOR):
                self._diverged(epoch, f"the loss exploded to {value:.3g} (first step: {loop.first_loss:.3g})")
            self.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
        if not sync:
            return value, n
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
            if not math.isfinite(grad_norm) and not self.precision.use_scaler:  # with fp16 the scaler skips such steps
                self._diverged(epoch, f"the gradient norm became {grad_norm}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        norm = self._weight_norm()  # the same on every process: DDP keeps the weights equal
        if not math.isfinite(norm) or norm > _WEIGHT_GROWTH * max(loop.first_weight_norm, 1.0):
            self._diverged(epoch, f"the weights blew up (norm {norm:.3g}, at the start {loop.first_weight_norm:.3g})")
        if self.ema is not None:
            self.ema.update(self.model)
        return value, n

    def _validate(self, epoch: int) -> dict[str, Any]:
        """Score the finished epoch on the validation split; returns its row of metrics.csv, with the
        loop moved on to the next epoch."""
        loop = self.loop
        if self.dist.enabled:  # each process's batch-norm statistics are of its own shards: validate and save their mean
            for model in [self.model] + ([self.ema.module] if self.ema is not None else []):
                distribute_bn(model, self.dist.world, reduce=True)
        ev = self.runner.evaluate(self.eval_model, "val", self.precision.autocast) if self.runner.split_size("val") else None
        row = {"epoch": epoch + 1, "train_loss": loop.loss_sum / max(1, loop.n_seen), "lr": self.optimizer.param_groups[0]["lr"],
               "epoch_seconds": round(loop.epoch_seconds, 3),
               "images_per_second": round(loop.n_seen / max(loop.epoch_seconds, 1e-9), 1),
               "epoch_cpu_seconds": round(loop.epoch_cpu_seconds, 3)}  # all threads of this process: the work, whatever else runs
        if ev is not None:
            row.update({f"val_{k}": v for k, v in ev.metrics.items()})
        loop.history.append(row)
        loop.train_seconds += loop.epoch_seconds
        loop.images_seen += loop.n_seen
        loop.epoch, loop.step, loop.loss_sum, loop.n_seen, loop.epoch_seconds, loop.epoch_cpu_seconds = epoch + 1, 0, 0.0, 0, 0.0, 0.0
        return row

    def _weight_norm(self) -> float:
        with torch.no_grad():
            return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params, 2.0)).float()))

    def _diverged(self, epoch: int, what: str) -> None:
        cfg = self.cfg
        tips = [f"lower lr (it is {cfg.lr:g}; try {cfg.lr / 10:g})"]
        if cfg.grad_clip <= 0:
            tips.append("set grad_clip=1.0")
        if self.precision.name != "fp32":
            tips.append("use precision=fp32")
        raise Diverged(f"training diverged at epoch {epoch + 1}, step {self.loop.step}: {what}; "
                       f"{self._saved_note()}.", "To fix it: " + ", or ".join(tips) + " (--set key=value).")

    # ------------------------------------------------------------------ setup
    def _start(self, resume: str | Path | None) -> None:
        """Everything before the first step: processes, run folder, data, model, a resumed state."""
        cfg = self.cfg
        state = None
        self.loop = LoopState()
        self._kept_states: dict[str, dict[str, Any]] = {}  # saved states of callbacks not in this session
        self.should_save = False  # set by a callback before a batch: write last.pt after it
        self.should_stop = False  # set by a callback at an epoch's end: end the run
        if resume is not None:
            path = resolve_resume(resume, self.spec.name, cfg.out)
            check_shared(self.dist, path.parent)
            state = load_checkpoint(path, expect_task=self.spec.name, resume=True)
            changed = check_resume(config_from_dict(state["config"], type(cfg.options)), cfg)
            self.run_dir = path.parent
            self._saved = {"last.pt": (int(state["epoch"]), int(state.get("step", 0)))}  # what an interrupt from here leaves
        else:
            if not cfg.is_synthetic:  # saved absolute: evaluate, export and resume find the data from any folder
                cfg.data = str(Path(cfg.data).expanduser().resolve())
            self.run_dir = self.dist.broadcast(new_run_dir(cfg.out, self.spec.name, cfg.name) if self.dist.is_main else None)
            check_shared(self.dist, self.run_dir)
        self._setup(state)
        self.monitor = cfg.monitor or f"val_{self.runner.primary}"
        if self.monitor.startswith("val_") and not self.runner.split_size("val"):
            # nothing to validate on (val_fraction 0 and no val/ folder): say what picks best.pt instead
            self.notify("no validation split", f"{self.monitor} cannot be measured; best.pt is the epoch "
                        "with the lowest training loss (with EMA and a cosine schedule, usually the last)")
            self.monitor = "train_loss"
        # the kind knows its metrics' directions; the training loss is the trainer's own
        self.higher = self.monitor != "train_loss" and self.runner.higher_is_better(self.monitor.removeprefix("val_"))
        if state is not None:
            self._restore(state, path)
            self._resumed(changed)
        if self.dist.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
        if self.dist.is_main:  # the data doctor's checks read every file: once, by the process that talks
            self._warn_data()
        info = self.runner.data_info
        self.info = RunInfo(self.spec.name, cfg.model, sum(p.numel() for p in self.model.parameters()), len(self.runner.classes),
                            str(self.device), self.precision.name, dict(info["split_sizes"]), info.get("cache"), self.run_dir,
                            self.dist.world, cfg.batch_size, cfg.accumulate)

    def _setup(self, resume_state: dict | None) -> None:
        from visionlab.models import build_model

        cfg = self.cfg
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", rank_gpu(cfg.device, self.dist.local_rank))
        self.runner = self.kind.runner(cfg, self.spec, self.device)
        self.runner.dist = self.dist
        # each machine's first process decodes the cache; the others then read it, not decode it again
        node_first(self.dist, lambda: self.runner.prepare(self._display_console()))
        if not self.runner.split_size("train"):  # a plugin runner may not check it itself
            sizes = "/".join(str(self.runner.split_size(s)) for s in ("train", "val", "test"))
            unread = len(self.runner.data_info.get("unreadable", []))
            raise VisionlabError(f"no training images in {cfg.data} (train/val/test {sizes}"
                                 + (f"; {unread} file(s) could not be read as images" if unread else "") + ").",
                                 f"Check the files (visionlab data check {cfg.data}), add training images, "
                                 "or give fewer of them to the val and test splits.")
        if resume_state is not None and resume_state["classes"] != self.runner.classes:
            raise VisionlabError(
                f"cannot resume: the checkpoint's classes {resume_state['classes']} differ from the data's {self.runner.classes}.",
                "Resume with the same data, or start a new run.",
            )
        if resume_state is not None:  # rebuilt as every checkpoint is (no downloads); _restore loads the training weights
            self.model = load_model(resume_state, self.device, channels_last=cfg.channels_last)
        else:
            model = build_model(cfg.model, num_classes=len(self.runner.classes), **cfg.model_args).to(self.device)
            self.model = model.to(memory_format=torch.channels_last) if cfg.channels_last else model
        self.precision = resolve_precision(cfg.precision, self.device, training_model=self.model)  # per model on CPU
        self.forward = self.model
        if self.dist.enabled:
            if cfg.sync_batchnorm and self.device.type == "cuda":
                self.model = sync_batchnorm(self.model)
            # DDP broadcasts rank 0's weights now and averages gradients in backward; self.model stays the
            # plain module, so checkpoints load without DDP
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            seed_everything(cfg.seed + 1_000_003 * self.dist.rank)  # each process its own augmentation
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        self.steps_per_epoch = self.runner.num_train_batches()
        self.optimizer_steps = math.ceil(self.steps_per_epoch / cfg.accumulate)  # per epoch
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.optimizer_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)
        self.ema = ModelEma(self.model, cfg.ema) if cfg.ema > 0 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        self.model.load_state_dict(state.get("train_model", state["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model"])
            self.ema.updates = int(state.get("ema_updates", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.loop = LoopState.saved(state)
        self._restore_callbacks(state, path)
        saved_world = self.saved_world = int(state.get("world", 1))
        rngs = state.get("rng_ranks") or ([state["rng"]] if "rng" in state else [])
        if saved_world == self.dist.world and len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        elif rngs:  # another number of processes: fresh random streams (bit-exact needs the same number)
            seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank + 7919 * self.loop.epoch + self.loop.step)
        if saved_world != self.dist.world:
            self.loop.step = map_step(self.loop.step, saved_world, self.dist.world, self.cfg.accumulate, self.steps_per_epoch)
        # this run's schedule (epochs and processes may have changed: OneCycleLR's saved state holds the old
        # total), at the optimiser step reached: the steps taken (a skipped batch takes none), or on another
        # number of processes the steps of that size to the mapped position; both schedules are closed forms of the step
        done = int(state["scheduler"]["last_epoch"]) if saved_world == self.dist.world else \
            self.loop.epoch * self.optimizer_steps + math.ceil(self.loop.step / self.cfg.accumulate)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.optimizer_steps, done=done)

    def _restore_callbacks(self, state: dict[str, Any], path: Path) -> None:
        """Hand each callback its state from last.pt (``path``, before training goes on). A last.pt without
        ``callbacks`` (visionlab before callbacks kept state) gives the checkpoint and early-stopping
        callbacks what it held of theirs and the others nothing. A state whose callback is not in this
        session (a tracker left out on this resume) is kept for the next last.pt. A state its callback
        cannot take (a damaged file) is a one-line error naming it, checked here for every callback."""
        saved = state.get("callbacks")
        if saved is None:
            saved = legacy_callback_states(state, self.checkpoint_callback, self.early_stopping_callback)
        hint = "Train again (a new run), or resume from an undamaged copy of it."
        if not (isinstance(saved, dict) and all(isinstance(v, dict) for v in saved.values())):
            raise VisionlabError(f"{path} is damaged (the callbacks' states: {type(saved).__name__}, not a state per callback).", hint)
        present = {cb.state_key for cb in self.callbacks}
        self._kept_states = {k: v for k, v in saved.items() if k not in present}
        for cb in self.callbacks:
            if cb.state_key in saved:
                try:
                    cb.load_state_dict(saved[cb.state_key])
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                    reason = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc).split("\n")[0]
                    raise VisionlabError(f"{path} is damaged (the {cb.state_key} state: {reason or type(exc).__name__}).", hint) from None

    def _callback_states(self) -> dict[str, dict[str, Any]]:
        """What last.pt holds under ``callbacks``: every callback's non-empty state, by its state_key."""
        states = dict(self._kept_states)
        for cb in self.callbacks:
            state = cb.state_dict()
            if state:
                states[cb.state_key] = state
        return states

    def _display_console(self) -> Any:
        """The console of the progress display, on the process that talks (the cache's decoding bar goes there), else None."""
        if not self.dist.is_main:
            return None
        return next((cb.console for cb in self.callbacks if cb.console is not None), None)

    @property
    def runs_folder(self) -> Path:
        """The ``<out>`` this run's folder is in (``<out>/<task>/<name>``): on a resume, where the run is, which
        the saved ``out`` (maybe relative to another working folder) need not say."""
        return self.run_dir.resolve().parent.parent

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _warn_data(self) -> None:
        """Notices about the data: synthetic, unreadable files, the kind's pre-training checks (the first 5)."""
        info = self.runner.data_info
        if info.get("synthetic"):
            self.notify("SYNTHETIC DATA", "generated patterns, not real photos; metrics say nothing about real accuracy.")
        bad = info.get("unreadable") or []
        if bad:
            self.notify("warning", f"skipped {len(bad)} unreadable image(s) (first: {bad[0]}); run 'visionlab data check' for details.")
        for msg in self.runner.data_warnings()[:5]:
            self.notify("warning", msg)

    def _resumed(self, changed: dict[str, tuple[Any, Any]]) -> None:
        """Put the run folder back in the state of the checkpoint it resumes from (metrics.csv: :class:`CSVLogger`);
        then ``on_resume``."""
        loop = self.loop
        if self.saved_world != self.dist.world:  # batches, schedule and random streams were mapped onto the new one
            changed = {**changed, "world_size": (self.saved_world, self.dist.world)}
        loop.resumes.append({"epoch": loop.epoch, "step": loop.step, "changed": {k: list(v) for k, v in changed.items()}})
        removed = []
        if self.dist.is_main:
            removed = remove_stale_temporaries(self.run_dir)
            mark_latest(self.run_dir, self.runs_folder, self.spec.name)
        self._marked = True
        self._saved = {"last.pt": (loop.epoch, loop.step)}
        if (self.run_dir / "best.pt").exists():
            self._saved["best.pt"] = (int(load_checkpoint(self.run_dir / "best.pt")["epoch"]), 0)
        self._emit("on_resume", ResumeInfo(self.run_dir, loop.epoch, loop.step, self.steps_per_epoch, changed, len(removed)))

    def _state(self) -> dict[str, Any]:
        """Everything last.pt holds; best.pt holds its :func:`inference_state`."""
        from dataclasses import asdict

        from visionlab.models import without_weights

        cfg, loop, best = self.cfg, self.loop, self.checkpoint_callback.best
        return _py({
            "visionlab_version": __version__,
            "task": self.spec.name,
            "kind": self.spec.kind,
            "model_name": cfg.model,
            "model_args": without_weights(cfg.model, cfg.model_args),  # rebuilt without downloads
            "classes": list(self.runner.classes),
            "preprocessing": Preprocessing.from_dict(self.runner.preprocessing).to_dict(),  # plain: weights_only loads it
            "config": cfg.to_dict(),
            "data": self.runner.data_info,
            "epoch": loop.epoch,
            "step": loop.step,
            "best_metric": best.value,
            "best_loss": best.loss,
            "monitor": self.monitor,
            "history": loop.history,
            "loop": asdict(loop),
            "callbacks": self._callback_states(),
        }) | {
            "model": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "world": self.dist.world,
        } | ({"rng_ranks": self.dist.gather(rng_state())} if self.dist.enabled else {}) | ({"train_model": self.model.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {})

    def save_checkpoint(self, best: bool = False) -> None:
        """Write last.pt (everything resume needs) and, when ``best``, best.pt (what inference needs:
        no optimiser, scheduler, scaler or random states). Called on every process (the random states
        are gathered); rank 0 writes."""
        state = self._state()
        if not self.dist.is_main:
            return
        # best.pt first: an interrupt between the two leaves last.pt one save behind, so a resume redoes
        # that stretch and writes best.pt again; the other order could leave a best.pt no resume rewrites
        files = ([(self.run_dir / "best.pt", inference_state(state))] if best else []) + [(self.run_dir / "last.pt", state)]
        for path, content in files:
            before = _inode(path)
            try:
                save_checkpoint(content, path)
                self._saved[path.name] = (self.loop.epoch, self.loop.step)
            except KeyboardInterrupt:  # a Ctrl-C right after the rename: the new file is complete, and says so
                if _inode(path) != before:
                    self._saved[path.name] = (self.loop.epoch, self.loop.step)
                raise
            except CheckpointWriteError as exc:
                raise CheckpointWriteError(f"{exc.message[:-1]}; {self._saved_note()}.",
                                           "Free some space (or pass --out elsewhere), then --resume "
                                           f"{self.run_dir / 'last.pt'}." if self._saved else "Free some space and train again.") from None
            self._emit("on_checkpoint", path)
        if not self._marked:  # the latest-run pointer only ever names a run that has a checkpoint
            mark_latest(self.run_dir, self.runs_folder, self.spec.name)
            self._marked = True

    def _interrupted(self) -> TrainingInterrupted:
        """The error of a Ctrl-C or SIGTERM: what is on disk, and how to go on."""
        return TrainingInterrupted(f"interrupted: {self._saved_note()}.", self._resume_hint())

    def _resume_hint(self) -> str | None:
        if not self.dist.is_main:
            return None
        return f"Continue with --resume {self.run_dir / 'last.pt'}." if self._saved else "Nothing to resume; train again."

    def _stopped_by(self, exc: Exception | None) -> Exception:
        """What stopped the loop: ``exc``, or a Ctrl-C/SIGTERM (None). Under torchrun another process's
        failure reaches this one as SIGTERM or as a broken collective; then that failure is the cause
        (MLflow: FAILED, not KILLED), read from the job's store, where the first failing process left it."""
        cause = peer_failure(self.dist)
        # a peer's interrupt explains this process's error, not this process's own interrupt (all were stopped);
        # a VisionlabError (divergence, a bad batch...) is this process's own finding, made on every process alike
        if (cause and not cause.startswith(f"process {self.dist.rank} ") and not isinstance(exc, VisionlabError)
                and (exc is not None or not cause.endswith(INTERRUPTED))):
            return PeerFailed(f"stopped because {cause}; {self._saved_note()}.", self._resume_hint())
        record_failure(self.dist, exc)
        return self._interrupted() if exc is None else exc

    def _saved_note(self) -> str:
        """What the run has on disk now, in words (for interrupts and errors)."""
        if self.run_dir is None:
            return "no run folder was made yet, nothing was saved"
        if not self.dist.is_main:  # only rank 0 writes, so only rank 0 knows
            return f"rank {self.dist.rank} of {self.dist.world} writes nothing; rank 0 says what is saved in {self.run_dir}"
        if not self._saved:
            return f"no checkpoint was saved (run folder {self.run_dir})"

        def where(epoch: int, step: int) -> str:
            return f"step {step} of epoch {epoch + 1}" if step else f"epoch {epoch}"

        files = " and ".join(f"{name} ({where(*at)})" for name, at in sorted(self._saved.items()))
        return f"{files} {'are' if len(self._saved) > 1 else 'is'} intact in {self.run_dir}"

    def _calibrate(self, best: Path) -> None:
        """The kind's calibration of the model (best.pt's weights), fitted on the validation split
        (:meth:`visionlab.kinds.Kind.calibrate`: a temperature for classifiers), stored in best.pt as
        ``calibration``, and its unknown detector (:meth:`visionlab.kinds.Kind.fit_unknown`), stored as
        ``unknown``; the test evaluation that follows applies both. Nothing for kinds without them."""
        kind, fitted = self.runner.task_kind, {}
        calibration = kind.calibrate(self.runner, self.model)
        if calibration is not None:
            self.runner.calibration = fitted["calibration"] = calibration
        detector = kind.fit_unknown(self.runner, self.model)
        if detector is not None:
            self.runner.detector = {"unknown": detector}
            fitted["unknown"] = detector
        if fitted and self.dist.is_main:
            save_checkpoint({**load_checkpoint(best), **_py(fitted)}, best)
            if calibration is not None:
                self.notify("calibration", f"{kind.calibration_line(calibration)}, stored in {best.name}")
            if detector is not None:
                self.notify("unknown", f"{kind.unknown_line(detector)}, stored in {best.name}")

    def _finish(self, result: TrainResult) -> None:
        """best.pt's calibration (fitted on the validation split, stored in it), the test split's score
        with best.pt's weights and calibration, the peak memory and summary.json."""
        main = self.dist.is_main
        self.dist.barrier()
        best = self.dist.broadcast(result.best_checkpoint.exists() if main else None)
        if best:
            # rank 0 reads best.pt (other nodes may not see its folder) and hands the weights on
            self.model.load_state_dict(self.dist.broadcast(load_checkpoint(result.best_checkpoint)["model"] if main else None))
            self._calibrate(result.best_checkpoint)
        if best and self.runner.split_size("test"):
            # in fp32, as 'evaluate', 'predict' and the exported .onnx run this checkpoint by default,
            # so the test score of the closing line is the one they give
            ev = self.runner.evaluate(self.model, "test", resolve_precision("fp32", self.device).autocast)
            result.test_metrics, result.test_report = ev.metrics, ev.report
        if not main:
            return
        mem = result.peak_memory_mb = peak_memory_mb(self.device)
        summary = {
            "task": self.spec.name, "model": self.cfg.model, "synthetic": self.cfg.is_synthetic,
            "monitor": result.monitor, "best": result.best_metric, "epochs": result.epochs_run,
            "train_seconds": round(result.train_seconds, 2), "images_per_second": round(result.images_per_second, 1),
            "test": result.test_metrics, **{k: round(v, 1) for k, v in mem.items()},
            **({"calibration": self.runner.calibration} if self.runner.calibration else {}),
        }
        (result.run_dir / "summary.json").write_text(json.dumps(_py(summary), indent=2))
