"""Named hooks into training, and the callbacks the trainer installs by default.

Checkpointing, early stopping, ``metrics.csv``, the curves PNG and the progress display are
callbacks like a user's (Lightning's ModelCheckpoint, EarlyStopping, CSVLogger and progress bar
are the model), so trackers, reports or a new output live outside the loop. A fit calls::

    on_fit_start
    per epoch:   on_train_epoch_start
                 per batch: on_train_batch_start, on_train_batch_end
                 on_epoch_end                         (after validation, with the epoch's row)
    on_train_end                                      (the epochs are over; then the test evaluation)
    on_fit_end                                        (or on_exception, at any point)
    on_checkpoint                                     (after each best.pt / last.pt written)

:class:`visionlab.engine.trainer.Trainer` installs them in this order: :class:`CSVLogger`,
:class:`TrainingCurves`, the user's callbacks, :class:`ModelCheckpoint`, :class:`EarlyStopping`,
:class:`ProgressBar`. Checkpointing comes after the user's callbacks (as in Lightning), so a
tracker sees an epoch's row before that epoch's last.pt is written.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from visionlab.errors import VisionlabError

if TYPE_CHECKING:
    from visionlab.engine.trainer import Trainer, TrainResult

__all__ = ["Callback", "ModelCheckpoint", "EarlyStopping", "CSVLogger", "TrainingCurves", "ProgressBar", "write_csv"]


class Callback:
    """A hook into training (checkpoints, logging, experiment trackers, reports...). Every method is optional.

    The trainer calls them in the order the callbacks were given, on the process that writes
    files (rank 0 under torchrun), or on every process when ``all_ranks`` is true (the callbacks
    that take part in collective work: saving gathers every process's random state).
    ``trainer`` exposes ``cfg``, ``spec``, ``run_dir``, ``runner`` (classes, data info), ``loop``
    (epoch, step, history, best), ``monitor`` and ``higher``."""

    all_ranks: ClassVar[bool] = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Set up (a resumed run's state restored); nothing trained yet in this session."""

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


class ModelCheckpoint(Callback):
    """last.pt at every epoch's end (and every ``every_steps`` optimiser steps or ``every_minutes``
    minutes inside an epoch); best.pt when the monitored metric improves. The verdict (best value,
    epochs without improvement) is kept in ``trainer.loop``, which last.pt saves."""

    all_ranks = True

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0) -> None:
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self._last_save = time.monotonic()

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
        trainer.save_checkpoint(best=trainer.loop.judge(trainer.monitor, row, trainer.higher))


class EarlyStopping(Callback):
    """Ends the run when best.pt has not improved for ``patience`` epochs (0 = never); after
    :class:`ModelCheckpoint`, whose verdict it reads."""

    all_ranks = True  # every process stops

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.patience and trainer.loop.bad_epochs >= self.patience:
            trainer.console.print(f"early stopping: {trainer.monitor} did not improve for {trainer.loop.bad_epochs} epochs")
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


class ProgressBar(Callback):
    """The rich progress display: a bar per epoch with loss, throughput and the monitored metric
    (``*`` when it improved)."""

    def __init__(self) -> None:
        self.progress: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
            TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=trainer.console, transient=False,
        )
        self.progress.start()

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        loop = trainer.loop
        self.bar = self.progress.add_task("train", total=trainer.steps_per_epoch, completed=loop.step,
                                          epoch=f"{epoch + 1}/{trainer.cfg.epochs}",
                                          loss=loop.loss_sum / max(1, loop.n_seen), metric="", ips=0.0)
        self._t0, self._n0 = time.perf_counter(), loop.n_seen

    def on_train_batch_end(self, trainer: Trainer, loss: float) -> None:
        loop = trainer.loop
        self.progress.update(self.bar, advance=1, loss=loop.loss_sum / max(1, loop.n_seen),
                             ips=(loop.n_seen - self._n0) / max(time.perf_counter() - self._t0, 1e-9))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        improved = trainer.loop.bad_epochs == 0  # ModelCheckpoint's verdict on this epoch
        self.progress.update(self.bar, metric=f"{trainer.monitor} {row[trainer.monitor]:.4f}" + (" *" if improved else ""))

    def on_train_end(self, trainer: Trainer) -> None:
        self.progress.stop()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.stop()
