"""The one training loop for every task.

The task kind (:class:`visionlab.tasks.base.TaskRunner`) supplies data, the on-device
transform, the loss and the evaluation; the trainer owns the device, mixed precision, the
optimiser and schedule, checkpoints (best and last, atomic), early stopping, resume, logging
(rich progress, ``metrics.csv``, curves PNG) and the final test evaluation.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionlab._version import __version__
from visionlab.config import Config, dump_config
from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint
from visionlab.engine.device import configure_threads, peak_memory_mb, resolve_device, resolve_precision
from visionlab.engine.runs import latest_checkpoint, mark_latest, new_run_dir
from visionlab.errors import VisionlabError
from visionlab.registry import TaskSpec, get_task

__all__ = ["Trainer", "TrainResult", "seed_everything", "build_optimizer", "build_scheduler"]


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
    train_seconds: float = 0.0
    images_per_second: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    param_groups = [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
                     "lr": cfg.lr * (cfg.backbone_lr_scale if in_body else 1.0)}
                    for (in_body, decay), ps in sorted(groups.items())]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


class ModelEma:
    """Exponential moving average of a model's weights (buffers copied), updated every step.

    The decay ramps up as ``(1 + n) / (10 + n)`` until it reaches ``decay``, so the first steps
    of short fine-tuning runs are not averaged with the random head they started from."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        avg, cur = [], []
        for e, c in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                avg.append(e)
                cur.append(c)
            else:
                e.copy_(c)
        torch._foreach_lerp_(avg, cur, 1.0 - d)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warmup then cosine to 1 % of lr, one-cycle, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total, pct_start=min(0.5, max(0.05, cfg.warmup_epochs / cfg.epochs)))
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


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
    """Fit one task with one config; see the module docstring for who owns what."""

    def __init__(self, cfg: Config, spec: TaskSpec | None = None, console: Any = None) -> None:
        from rich.console import Console

        self.cfg = cfg
        self.spec = spec or get_task(cfg.task)
        self.console = console or Console()

    # ------------------------------------------------------------------ setup
    def _setup(self, resume_state: dict | None) -> None:
        from visionlab.models import build_model
        from visionlab.tasks.base import runner_for

        cfg = self.cfg
        configure_threads()
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.runner = runner_for(cfg, self.spec, self.device)
        self.runner.prepare(self.console)
        if resume_state is not None and resume_state["classes"] != self.runner.classes:
            raise VisionlabError(
                f"cannot resume: the checkpoint's classes {resume_state['classes']} differ from the data's {self.runner.classes}.",
                "Resume with the same data, or start a new run.",
            )
        model_args = dict(cfg.model_args)
        if resume_state is not None:
            from visionlab.models import no_weights_kwargs

            model_args.update(no_weights_kwargs(cfg.model))  # weights come from the checkpoint
        self.model = build_model(cfg.model, num_classes=len(self.runner.classes), **model_args).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = resolve_precision(cfg.precision, self.device, training_model=self.model)  # per model on CPU
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.steps_per_epoch = self.runner.num_train_batches()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)
        self.ema = ModelEma(self.model, cfg.ema) if cfg.ema > 0 else None

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _warn_data(self) -> None:
        info = self.runner.data_info
        if info.get("synthetic"):
            self.console.print("[bold magenta]SYNTHETIC DATA[/]: generated patterns, not real photos; metrics say nothing about real accuracy.")
        bad = info.get("unreadable") or []
        if bad:
            self.console.print(f"[yellow]warning[/]: skipped {len(bad)} unreadable image(s) (first: {bad[0]}); run 'visionlab data check' for details.")
        if self.runner.kind == "classification" and not info.get("synthetic"):
            try:
                from visionlab.data.doctor import training_warnings

                for msg in training_warnings(self.runner.index)[:5]:
                    self.console.print(f"[yellow]warning[/]: {msg}")
            except ImportError:
                pass
            except VisionlabError as exc:
                self.console.print(f"[yellow]warning[/]: {exc}")

    def _state(self, epoch: int, best: float, bad_epochs: int, history: list) -> dict[str, Any]:
        from visionlab.models import no_weights_kwargs

        cfg = self.cfg
        return _py({
            "visionlab_version": __version__,
            "task": self.spec.name,
            "kind": self.spec.kind,
            "model_name": cfg.model,
            "model_args": {**cfg.model_args, **no_weights_kwargs(cfg.model)},  # rebuilt without downloads
            "classes": list(self.runner.classes),
            "preprocessing": self.runner.preprocessing,
            "config": cfg.to_dict(),
            "data": self.runner.data_info,
            "epoch": epoch,
            "best_metric": best,
            "best_loss": self.best_loss,
            "monitor": self.monitor,
            "bad_epochs": bad_epochs,
            "history": history,
        }) | {
            "model": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        } | ({"train_model": self.model.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {})

    # ------------------------------------------------------------------- fit
    def fit(self, resume: str | Path | None = None) -> TrainResult:
        """Train; ``resume`` is a checkpoint path or 'last' (latest run of this task)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Table

        cfg = self.cfg
        state = None
        if resume is not None:
            path = latest_checkpoint(self.spec.name, cfg.out, which="last") if str(resume) == "last" else Path(resume)
            state = load_checkpoint(path, expect_task=self.spec.name)
            run_dir = path.parent
        self._setup(state)
        self.monitor = cfg.monitor or f"val_{self.runner.primary}"
        if self.monitor.startswith("val_") and not self.runner.split_size("val"):
            # nothing to validate on (val_fraction 0 and no val/ folder): say what picks best.pt instead
            self.console.print(f"[yellow]no validation split[/]: {self.monitor} cannot be measured; best.pt is the epoch "
                               "with the lowest training loss (with EMA and a cosine schedule, usually the last)")
            self.monitor = "train_loss"
        higher = not self.monitor.endswith("loss")
        start_epoch, best, bad_epochs, history = 0, -math.inf if higher else math.inf, 0, []
        self.best_loss = math.inf  # validation loss of the best epoch, which breaks ties of the monitored metric
        if state is not None:
            self.model.load_state_dict(state.get("train_model", state["model"]))
            if self.ema is not None:
                self.ema.module.load_state_dict(state["model"])
                self.ema.updates = int(state.get("ema_updates", 0))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            start_epoch, best, bad_epochs, history = state["epoch"], state["best_metric"], state["bad_epochs"], list(state["history"])
            self.best_loss = float(state.get("best_loss", math.inf))
            self.console.print(f"resuming {run_dir} from epoch {start_epoch}")
        else:
            run_dir = new_run_dir(cfg.out, self.spec.name, cfg.name)
        dump_config(cfg, run_dir / "config.yaml")
        mark_latest(run_dir, cfg.out, self.spec.name)
        self._warn_data()
        info = self.runner.data_info
        n_params = sum(p.numel() for p in self.model.parameters())
        self.console.print(
            f"[bold]{self.spec.name}[/] | {cfg.model} ({n_params / 1e6:.2f} M params) | {len(self.runner.classes)} classes | "
            f"device {self.device} | precision {self.precision.name} | train/val/test {info['split_sizes'].get('train', 0)}/"
            f"{info['split_sizes'].get('val', 0)}/{info['split_sizes'].get('test', 0)} | cache {info.get('cache')} | run {run_dir}"
        )
        best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
        csv_path = run_dir / "metrics.csv"
        train_time, seen = 0.0, 0
        epoch = start_epoch
        progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
            TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        try:
            with progress:
                for epoch in range(start_epoch, cfg.epochs):
                    bar = progress.add_task("train", total=self.steps_per_epoch, epoch=f"{epoch + 1}/{cfg.epochs}", loss=0.0, metric="", ips=0.0)
                    self.model.train()
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    loss_sum, n_seen = 0.0, 0
                    for x, y in self.runner.train_batches(epoch):
                        if len(y) == 0:
                            continue
                        x = self.runner.on_device(x.to(self.device, non_blocking=True), train=True)
                        y = y.to(self.device, non_blocking=True)
                        x, y = self.runner.mix(x, y)
                        with self.precision.autocast():
                            out = self.forward(x)
                        loss = self.runner.loss(out, y)
                        if not torch.isfinite(loss):
                            raise VisionlabError(f"loss became {loss.item()} at epoch {epoch + 1}.", "Lower lr (--set lr=...) or use precision=fp32.")
                        self.optimizer.zero_grad(set_to_none=True)
                        self.scaler.scale(loss).backward()
                        if cfg.grad_clip > 0:
                            self.scaler.unscale_(self.optimizer)
                            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.scheduler.step()
                        if self.ema is not None:
                            self.ema.update(self.model)
                        loss_sum += float(loss.detach()) * len(y)
                        n_seen += len(y)
                        dt = time.perf_counter() - t0
                        progress.update(bar, advance=1, loss=loss_sum / n_seen, ips=n_seen / max(dt, 1e-9))
                    epoch_time, epoch_cpu = time.perf_counter() - t0, time.process_time() - cpu0
                    train_time += epoch_time
                    seen += n_seen
                    ev = self.runner.evaluate(self.eval_model, "val", self.precision.autocast) if self.runner.split_size("val") else None
                    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, n_seen), "lr": self.optimizer.param_groups[0]["lr"],
                           "epoch_seconds": round(epoch_time, 3), "images_per_second": round(n_seen / max(epoch_time, 1e-9), 1),
                           "epoch_cpu_seconds": round(epoch_cpu, 3)}  # all threads of this process: the work, whatever else runs
                    if ev is not None:
                        row.update({f"val_{k}": v for k, v in ev.metrics.items()})
                    history.append(row)
                    self._append_csv(csv_path, row)
                    if self.monitor not in row:
                        save_checkpoint(self._state(epoch + 1, best, bad_epochs, history), last_path)
                        raise VisionlabError(
                            f"monitor={self.monitor!r} is not measured by {self.spec.name}; epoch {epoch + 1} is saved in {last_path}.",
                            f"Use one of {', '.join(k for k in row if k.startswith(('val_', 'train_loss')))} "
                            f"(--set monitor=...), and --resume {last_path} to go on.")
                    current = row[self.monitor]
                    improved = current > best if higher else current < best
                    # a tie (small validation sets saturate: 104/104 in two epochs) goes to the lower validation loss
                    tie_loss = row.get("val_loss")
                    if not improved and current == best and tie_loss is not None and self.monitor != "val_loss":
                        improved = tie_loss < self.best_loss
                    if improved:
                        best, bad_epochs = current, 0
                        self.best_loss = tie_loss if tie_loss is not None else math.inf
                    else:
                        bad_epochs += 1
                    progress.update(bar, metric=f"{self.monitor} {current:.4f}" + (" *" if improved else ""))
                    state = self._state(epoch + 1, best, bad_epochs, history)
                    save_checkpoint(state, last_path)
                    if improved:
                        save_checkpoint(state, best_path)
                    if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
                        self.console.print(f"early stopping: {self.monitor} did not improve for {bad_epochs} epochs")
                        break
        except KeyboardInterrupt:
            self.console.print(f"[yellow]interrupted[/]: last complete epoch saved in {last_path}; continue with --resume {last_path}")
            raise
        result = TrainResult(run_dir, best_path, last_path, float(best), self.monitor, len(history), history,
                             train_seconds=train_time, images_per_second=seen / max(train_time, 1e-9))
        self._finish(result)
        return result

    @staticmethod
    def _append_csv(path: Path, row: dict[str, Any]) -> None:
        rows = []
        if path.exists():
            with path.open() as f:
                rows = list(csv.DictReader(f))
        rows.append({k: v for k, v in row.items()})
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)

    def _finish(self, result: TrainResult) -> None:
        from visionlab.engine.plots import save_training_curves

        if result.history:
            save_training_curves(result.history, result.run_dir / "curves.png")
        if result.best_checkpoint.exists() and self.runner.split_size("test"):
            self.model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
            # the precision 'evaluate' and 'predict' run this checkpoint with (bf16 inference on CPUs that
            # have it, even for models trained in fp32), so the test score printed here is the one they give
            inference = resolve_precision(self.cfg.precision, self.device)
            ev = self.runner.evaluate(self.model, "test", inference.autocast)
            result.test_metrics = ev.metrics
        mem = peak_memory_mb(self.device)
        summary = {
            "task": self.spec.name, "model": self.cfg.model, "synthetic": self.cfg.is_synthetic,
            "monitor": result.monitor, "best": result.best_metric, "epochs": result.epochs_run,
            "train_seconds": round(result.train_seconds, 2), "images_per_second": round(result.images_per_second, 1),
            "test": result.test_metrics, **{k: round(v, 1) for k, v in mem.items()},
        }
        (result.run_dir / "summary.json").write_text(json.dumps(_py(summary), indent=2))
        test = ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items() if k in ("accuracy", "macro_f1", "roc_auc", "miou", "pixel_accuracy"))
        tag = " [bold magenta](SYNTHETIC DATA)[/]" if self.cfg.is_synthetic else ""
        self.console.print(
            f"done{tag}: best {result.monitor} {result.best_metric:.4f} | {result.train_seconds:.1f} s training, "
            f"{result.images_per_second:.0f} img/s | peak memory "
            + ", ".join(f"{k.replace('peak_', '').replace('_mb', '')} {v:.0f} MB" for k, v in mem.items())
            + (f" | test: {test}" if test else "")
        )
        self.console.print(f"checkpoint: {result.best_checkpoint}")
