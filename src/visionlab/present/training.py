"""What a user sees of a training run: :class:`ProgressBar`, the callback that shows the
trainer's events (:mod:`visionlab.engine.callbacks`; the trainer itself prints nothing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from visionlab.engine.callbacks import Callback, Notice, ResumeInfo
from visionlab.present import console as default_console

if TYPE_CHECKING:
    from visionlab.engine.trainer import Trainer, TrainResult

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """What a user sees of a fit, on ``console`` (a rich console; stdout by default): the trainer's
    events as lines (warnings, where a resume goes on, the start line, the closing lines) and a
    bar per epoch with loss, throughput and the monitored metric (``*`` when best.pt was rewritten).
    Called on rank 0 only, so the other processes of a job show nothing."""

    #: the colour of a notice's label (others are plain)
    LABEL_STYLES: ClassVar[dict[str, str]] = {"warning": "yellow", "no validation split": "yellow",
                                              "SYNTHETIC DATA": "bold magenta"}

    def __init__(self, console: Any = None) -> None:
        self.console = default_console(console)
        self.progress: Any = None
        self._best_epoch = -1  # the epoch best.pt last holds, for the bar's "*"

    def _line(self, *parts: str | tuple[str, str]) -> None:
        """Print ``parts`` (text, or (text, style)) as one line; no markup is read from the text (paths may hold '[')."""
        from rich.text import Text

        self.console.print(Text.assemble(*parts))

    def on_notice(self, trainer: Trainer, notice: Notice) -> None:
        self._line((notice.label, self.LABEL_STYLES.get(notice.label, "")), f": {notice.text}")

    def on_resume(self, trainer: Trainer, info: ResumeInfo) -> None:
        where = f"epoch {info.epoch}" + (f", step {info.step}/{info.steps_per_epoch} of epoch {info.epoch + 1}" if info.step else "")
        notes = [f"{k} {a} -> {b}" for k, (a, b) in info.changed.items()]
        if info.removed:
            notes.append(f"removed {info.removed} partial checkpoint file(s) of an interrupted write")
        self._line(f"resuming {info.run_dir} from {where}" + (f" ({'; '.join(notes)})" if notes else ""))

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        info, sizes = trainer.info, trainer.info.split_sizes
        self._line((info.task, "bold"),
                   f" | {info.model} ({info.parameters / 1e6:.2f} M params) | {info.classes} classes | device {info.device} | "
                   f"precision {info.precision} | train/val/test {sizes.get('train', 0)}/{sizes.get('val', 0)}/{sizes.get('test', 0)}"
                   f" | cache {info.cache} | run {info.run_dir}"
                   + (f" | {info.world} processes x batch {info.batch_size}" if info.world > 1 else "")
                   + (f" | accumulate {info.accumulate}" if info.accumulate > 1 else ""))
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
            TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
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
        self._show_metric(trainer, row)

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if path.name == "best.pt":  # written at an epoch's end, before or after on_epoch_end reached this callback
            self._best_epoch = trainer.loop.epoch
            self._show_metric(trainer, trainer.loop.history[-1])

    def _show_metric(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.monitor in row and row["epoch"] == trainer.loop.epoch:
            star = " *" if self._best_epoch == row["epoch"] else ""
            self.progress.update(self.bar, metric=f"{trainer.monitor} {row[trainer.monitor]:.4f}{star}")

    def on_train_end(self, trainer: Trainer) -> None:
        self.progress.stop()

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        named = trainer.kind.headline or (trainer.kind.primary,)  # the test metrics the kind names
        test = ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items() if k in named)
        memory = ", ".join(f"{k.replace('peak_', '').replace('_mb', '')} {v:.0f} MB" for k, v in result.peak_memory_mb.items())
        self._line("done", (" (SYNTHETIC DATA)", "bold magenta") if trainer.cfg.is_synthetic else "",
                   f": best {result.monitor} {result.best_metric:.4f} | {result.train_seconds:.1f} s training, "
                   f"{result.images_per_second:.0f} img/s | peak memory {memory}" + (f" | test: {test}" if test else ""))
        self._line(f"checkpoint: {result.best_checkpoint}")

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.stop()
