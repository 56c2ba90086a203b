"""Named hooks into training, and the callbacks the trainer installs by default.

Checkpointing, early stopping, ``metrics.csv``, the curves PNG and the progress display
(:class:`visionlab.present.training.ProgressBar`) are callbacks like a user's (Lightning's ModelCheckpoint, EarlyStopping, CSVLogger and progress bar
are the model), so trackers, reports or a new output live outside the loop. A fit calls::

    on_notice                                         (any time: a line for the user, e.g. a data warning)
    on_resume                                         (a resumed run: its state is restored)
    on_fit_start
    per epoch:   on_train_epoch_start
                 per batch: on_train_batch_start, on_train_batch_end
                 on_epoch_end                         (after validation, with the epoch's row)
    on_train_end                                      (the epochs are over; then the test evaluation)
    on_fit_end                                        (or on_exception, at any point)
    on_checkpoint                                     (after each best.pt / last.pt written)

:class:`visionlab.engine.trainer.Trainer` installs them in this order: :class:`CSVLogger`,
:class:`TrainingCurves`, the user's callbacks, :class:`EarlyStopping`, :class:`ModelCheckpoint`.
Checkpointing comes last (after the user's callbacks, as in Lightning), so a tracker sees an
epoch's row before that epoch's last.pt is written, and that last.pt holds every callback's state
as of that epoch (early stopping's count included). The trainer prints nothing: what a user reads (the
start line, warnings, where a resume goes on, the closing lines) are these events, which
:class:`visionlab.present.training.ProgressBar` shows; ``visionlab.train`` puts one first in the list unless told not to.

A callback keeps state of its own across a resume as Lightning's do: :meth:`Callback.state_dict`
is saved in last.pt under ``callbacks`` (one entry per :attr:`Callback.state_key`) and handed back
to :meth:`Callback.load_state_dict` before a resumed run goes on. Early stopping keeps its
patience count and best score, :class:`ModelCheckpoint` its best metric, the trackers
(:mod:`visionlab.engine.tracking`) the run they log to.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from visionlab.errors import VisionlabError

if TYPE_CHECKING:
    from visionlab.engine.trainer import Trainer, TrainResult

__all__ = ["Callback", "Notice", "RunInfo", "ResumeInfo", "BestScore", "ModelCheckpoint", "EarlyStopping", "CSVLogger",
           "TrainingCurves", "write_csv"]


@dataclass(frozen=True)
class Notice:
    """A line the trainer or a callback has for the user (a data warning, early stopping, a
    tracker's address); :class:`visionlab.present.training.ProgressBar` shows it as ``label: text``."""

    label: str  # "warning", "SYNTHETIC DATA", "no validation split", "early stopping", "mlflow", ...
    text: str


@dataclass(frozen=True)
class RunInfo:
    """What a fit trains, known once it is set up (``trainer.info`` from ``on_fit_start`` on)."""

    task: str
    model: str
    parameters: int
    classes: int
    device: str
    precision: str
    split_sizes: dict[str, int]
    cache: Any  # where the decoded images are kept (the runner's data info), None when streamed
    run_dir: Path
    world: int  # processes
    batch_size: int  # per process
    accumulate: int


@dataclass(frozen=True)
class ResumeInfo:
    """Where a resumed run goes on: the epochs (and batches of the next epoch) its last.pt holds,
    the config keys the resume changed (old, new), and the partial checkpoint files of an
    interrupted write that were removed."""

    run_dir: Path
    epoch: int
    step: int
    steps_per_epoch: int
    changed: dict[str, tuple[Any, Any]]
    removed: int


class Callback:
    """A hook into training (checkpoints, logging, experiment trackers, reports...). Every method is optional.

    The trainer calls them in the order the callbacks were given, on the process that writes
    files (rank 0 under torchrun), or on every process when ``all_ranks`` is true (the callbacks
    that take part in collective work: saving gathers every process's random state).
    ``trainer`` exposes ``cfg``, ``spec``, ``run_dir``, ``runner`` (classes, data info), ``loop``
    (epoch, step, history), ``monitor``, ``higher`` and ``info`` (:class:`RunInfo`); a callback
    with something to say calls ``trainer.notify(label, text)`` rather than printing."""

    all_ranks: ClassVar[bool] = False
    #: The console a progress display shows the fit on (the trainer hands it to the data's decoding
    #: bar too); None for a callback that shows nothing.
    console: Any = None

    @property
    def state_key(self) -> str:
        """The name of this callback's entry in last.pt: the class name. A run that holds two
        stateful callbacks of one class gives each its own (override this property)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to go on after a resume (Python values and tensors), saved in
        last.pt with every checkpoint; nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned, when a run resumes (before ``on_resume``)."""

    def on_notice(self, trainer: Trainer, notice: Notice) -> None:
        """A line for the user (warnings, early stopping, a tracker's address); rank 0 only."""

    def on_resume(self, trainer: Trainer, info: ResumeInfo) -> None:
        """A resumed run's weights, loop and callback states are restored; ``info`` says from where."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Set up (a resumed run's state restored, ``trainer.info`` known); nothing trained yet in this session."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts, or goes on from ``trainer.loop.step`` after a resume."""

    def on_train_batch_start(self, trainer: Trainer) -> None:
        """Before a training batch; ``trainer.loop.step`` already counts it. Setting ``trainer.should_save``
        asks for last.pt after the batch (honoured where an optimiser step ends; rank 0's request counts)."""

    def on_train_batch_end(self, trainer: Trainer, loss: float) -> None:
        """After a batch: ``loss`` is its loss (the mean over processes); ``trainer.should_save`` is now
        the decision of every process."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After validation: ``row`` is the epoch's line of metrics.csv (``trainer.loop`` counts the epoch)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint (best.pt or last.pt) was written."""

    def on_train_end(self, trainer: Trainer) -> None:
        """The last epoch is done (or early stopping ended the run); the test evaluation comes next."""

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        """Training ended normally: curves, summary and the test score are written."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """Training stopped with an error or an interrupt (re-raised after the callbacks)."""


class BestScore:
    """The best value of the monitored metric so far; a tie (small validation sets saturate: 104/104
    in two epochs) goes to the lower validation loss. :class:`ModelCheckpoint` and
    :class:`EarlyStopping` each keep one, so each owns its verdict."""

    def __init__(self) -> None:
        self.value = math.nan  # none yet: set to the worst value by begin()
        self.loss = math.inf  # validation loss of the best epoch

    def begin(self, higher: bool) -> None:
        """Start from the worst value when no epoch was judged yet (a resume keeps what it loaded)."""
        if math.isnan(self.value):
            self.value = -math.inf if higher else math.inf

    def update(self, monitor: str, row: dict[str, Any], higher: bool) -> bool:
        """Judge an epoch's ``row[monitor]``; True when it is the best so far."""
        current, tie_loss = row[monitor], row.get("val_loss")
        improved = current > self.value if higher else current < self.value
        if not improved and current == self.value and tie_loss is not None and monitor != "val_loss":
            improved = tie_loss < self.loss
        if improved:
            self.value, self.loss = current, tie_loss if tie_loss is not None else math.inf
        return improved

    def state_dict(self) -> dict[str, float]:
        return {"best": float(self.value), "best_loss": float(self.loss)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.loss = float(state["best"]), float(state.get("best_loss", math.inf))


class ModelCheckpoint(Callback):
    """last.pt at every epoch's end (and every ``every_steps`` optimiser steps or ``every_minutes``
    minutes inside an epoch); best.pt when the monitored metric improves. Its best value
    (``best.value``, the run's ``best_metric``) is its state in last.pt."""

    all_ranks = True

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0) -> None:
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self._last_save = time.monotonic()
        self.best = BestScore()

    def state_dict(self) -> dict[str, Any]:
        return self.best.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best.load_state_dict(state)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best.begin(trainer.higher)

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_start(self, trainer: Trainer) -> None:
        step, k = trainer.loop.step, trainer.cfg.accumulate
        if step >= trainer.steps_per_epoch or step % k:
            return  # the epoch's end writes one anyway; a checkpoint holds no half-accumulated gradients
        every_steps = self.every_steps and (step // k) % self.every_steps == 0  # optimiser steps, not batches
        every_minutes = self.every_minutes and time.monotonic() - self._last_save >= 60 * self.every_minutes
        if (every_steps or every_minutes) and trainer.dist.is_main:  # rank 0's call: minutes differ between processes
            trainer.should_save = True

    def on_train_batch_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.should_save:
            trainer.save_checkpoint()
            self._last_save = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.monitor not in row:
            trainer.save_checkpoint()
            last = trainer.run_dir / "last.pt"
            raise VisionlabError(
                f"monitor={trainer.monitor!r} is not measured by {trainer.spec.name}; epoch {row['epoch']} is saved in {last}.",
                f"Use one of {', '.join(k for k in row if k.startswith(('val_', 'train_loss')))} "
                f"(--set monitor=...), and --resume {last} to go on.")
        trainer.save_checkpoint(best=self.best.update(trainer.monitor, row, trainer.higher))


class EarlyStopping(Callback):
    """Ends the run when the monitored metric has not improved for ``patience`` epochs (0 = never),
    judged as best.pt is (:class:`BestScore`). Its count (``wait``) and best score are its state
    in last.pt, so a resumed run goes on counting."""

    all_ranks = True  # every process stops

    def __init__(self, patience: int) -> None:
        self.patience = patience  # the config's (a resume may change it), not state
        self.wait = 0  # epochs since the last improvement
        self.best = BestScore()

    def state_dict(self) -> dict[str, Any]:
        return {**self.best.state_dict(), "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best.load_state_dict(state)
        self.wait = int(state["wait"])

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best.begin(trainer.higher)
        if self.patience and self.wait >= self.patience:  # resumed after it stopped the run: nothing more to train
            trainer.notify("early stopping", f"this run stopped at epoch {trainer.loop.epoch}: {trainer.monitor} "
                                             f"had not improved for {self.wait} epochs (raise early_stopping to train on)")
            trainer.should_stop = True

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.monitor not in row:  # ModelCheckpoint says so
            return
        self.wait = 0 if self.best.update(trainer.monitor, row, trainer.higher) else self.wait + 1
        if self.patience and self.wait >= self.patience:
            trainer.notify("early stopping", f"{trainer.monitor} did not improve for {self.wait} epochs")
            trainer.should_stop = True


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV (columns in order of appearance), replaced atomically; no rows, no file."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


class CSVLogger(Callback):
    """``metrics.csv``: one row per epoch, the whole history rewritten each time, so after a resume
    it holds exactly the checkpoint's epochs (a crash after a row, before its checkpoint, wrote one more)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        write_csv(trainer.run_dir / "metrics.csv", trainer.loop.history)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        write_csv(trainer.run_dir / "metrics.csv", trainer.loop.history)


class TrainingCurves(Callback):
    """``curves.png``: loss and metrics per epoch, drawn when training ends."""

    def on_train_end(self, trainer: Trainer) -> None:
        from visionlab.engine.plots import save_training_curves

        if trainer.loop.history:
            save_training_curves(trainer.loop.history, trainer.run_dir / "curves.png")
