"""Experiment trackers: TensorBoard and MLflow, chosen with the config key ``track``.

``metrics.csv`` is always written; ``track: [tensorboard, mlflow]`` (``--track mlflow``) also logs
the run to a tracker. Each tracker is a :class:`~visionlab.engine.trainer.Callback` built from the
config by :func:`build_trackers` (``visionlab.train`` does it), which imports the tracker's package
at once, so a missing one is a one-line error before any work. Importing this module imports
neither package.

What is logged: the resolved config as parameters (flattened: ``augment.hflip``) with the number of
processes and the global batch (``world_size``, ``global_batch``), every numeric key
of each epoch's row of metrics.csv with step = epoch, the test metrics (``test_<name>``, step =
the last epoch), the test confusion matrix as a PNG and the per-class table (precision/recall/F1,
or IoU/Dice for segmentation), and for MLflow the run folder's best.pt, curves.png, config.yaml,
metrics.csv and summary.json as artifacts.

An epoch's metrics are logged once its last.pt is written, so a tracker never holds an epoch that
a resume would train again; a resume first logs the checkpoint's epochs the tracker misses, then
goes on in the same MLflow run and the same TensorBoard folder (``<run>/tensorboard``): each
tracker keeps them in last.pt as its callback state (runs of visionlab before that kept the MLflow
run id in ``<run>/mlflow_run_id``, which a resume of such a run still reads). A run that fails
ends FAILED in MLflow, an interrupted one KILLED. What a tracker has to say (where it logs) is a
``trainer.notify`` line, which the progress display shows.

Under ``torchrun`` the trainer calls callbacks on rank 0 only, so one process logs; the trackers
hold no rank logic of their own.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

from visionlab._version import __version__
from visionlab.config import TRACKER_NAMES
from visionlab.engine.distributed import INTERRUPTED, peer_failure
from visionlab.engine.trainer import Callback, Trainer, TrainResult
from visionlab.errors import TrainingInterrupted, VisionlabError

__all__ = ["Tracker", "TensorBoardTracker", "MLflowTracker", "TRACKERS", "build_trackers", "flatten_config", "epoch_scalars"]

RUN_ID_FILE = "mlflow_run_id"  # where runs of earlier versions kept the MLflow run id (read on their resume)
DEFAULT_TRACKING_URI_FILE = "mlflow.db"  # in the current folder, unless MLFLOW_TRACKING_URI says otherwise
ARTIFACTS_FOLDER = "mlartifacts"  # next to the SQLite file, as 'mlflow server' does
RUN_FILES = ("best.pt", "curves.png", "config.yaml", "metrics.csv", "summary.json")  # MLflow artifacts from the run folder


def flatten_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"augment": {"hflip": True}}`` -> ``{"augment.hflip": True}``; lists and scalars stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_params(trainer: Trainer) -> dict[str, Any]:
    """The flattened config, and the run's shape the config does not hold: the number of processes
    (``world_size``) and the images per optimiser step (``global_batch``: batch_size x processes x accumulate)."""
    cfg, world = trainer.cfg, trainer.dist.world
    return {**flatten_config(cfg.to_dict()), "world_size": world, "global_batch": cfg.batch_size * world * cfg.accumulate}


def param_text(value: Any) -> str:
    """A config value as text, spelt as in config.yaml for non-strings (true, null, [0.85, 1.0])."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch's row, without the epoch itself (it is the step)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, Real) and not isinstance(v, bool)}


def held_out_scalars(result: TrainResult) -> dict[str, float]:
    """``test_<metric>`` for each numeric test metric (an undefined one, such as AUC of one class, is None)."""
    return {f"test_{k}": float(v) for k, v in result.test_metrics.items() if isinstance(v, Real) and not isinstance(v, bool)}


def per_class_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The test report's per-class table: one row per class, its scores as columns."""
    return [{"class": name, **stats} for name, stats in (report.get("per_class") or {}).items()]


def write_test_figures(report: dict[str, Any], folder: Path, confusion_unit: str) -> list[Path]:
    """test_confusion_matrix.png and test_per_class.csv of a test report, in ``folder``; the matrix
    counts ``confusion_unit`` (the kind's :attr:`~visionlab.kinds.Kind.confusion_unit`)."""
    from visionlab.engine.plots import save_confusion_matrix

    written = []
    cm, names = report.get("confusion_matrix"), report.get("class_names") or list(report.get("per_class") or {})
    if cm is not None and len(cm) and names:
        written.append(save_confusion_matrix(cm, names, folder / "test_confusion_matrix.png", title="Test confusion matrix"
                                             + ("" if confusion_unit == "images" else f" ({confusion_unit})")))
    rows = per_class_rows(report)
    if rows:
        path = folder / "test_per_class.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
    return written


def _missing(tracker: str, package: str, exc: ImportError) -> VisionlabError:
    return VisionlabError(f"--track {tracker} needs the {package} package ({exc}).",
                          "Install it with: pip install 'visionlab[tracking]' (or train without it: --track none).")


class Tracker(Callback):
    """An experiment tracker: holds an epoch's row back until the epoch's last.pt is written.

    Subclasses implement :meth:`log_epochs` and the start and end of a run."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._pending = row

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        row = self._pending
        if row is not None and path.name == "last.pt" and trainer.loop.epoch == row["epoch"]:
            self._pending = None
            self.log_epochs([row])


class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard``: scalars per epoch, the config (text and HParams), the
    test scores, confusion matrix (image) and per-class table (text). A resume appends to the same
    folder: the events of the earlier sessions from epoch 1 on are purged and written again from
    the checkpoint's history, so TensorBoard shows exactly the epochs of metrics.csv."""

    name = "tensorboard"

    def __init__(self) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing(self.name, "tensorboard", exc) from None
        self._writer_class = SummaryWriter
        self.writer: Any = None
        self.log_dir = "tensorboard"  # in the run folder; a resume goes on in the one its last.pt names

    def state_dict(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The folder a resume goes on in: a folder inside the run folder, as saved; one that is not
        (a path, absolute or out through '..', or odd bytes) is a damaged last.pt, refused (the trainer says so)."""
        log_dir = state["log_dir"]
        if not (isinstance(log_dir, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", log_dir) and ".." not in log_dir):
            raise ValueError(f"log_dir {log_dir!r} is not a folder inside the run folder")  # one plain name, as saved
        self.log_dir = log_dir

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard.summary import hparams

        folder = trainer.run_dir / self.log_dir
        fresh = not any(folder.glob("events.out.tfevents.*"))
        # a resume: hide every epoch the earlier sessions logged, then log the checkpoint's history again
        self.writer = self._writer_class(str(folder), purge_step=None if fresh else 1)
        flat = run_params(trainer)
        self.writer.add_text("config", "\n".join(f"    {k}: {param_text(v)}" for k, v in flat.items()), trainer.loop.epoch)
        if fresh:  # HParams: written once, by the session that made the folder (the config of the run's start)
            values = {k: v if isinstance(v, (bool, int, float, str)) else param_text(v) for k, v in flat.items()}
            for summary in hparams(values, {trainer.monitor: None}):
                self.writer.file_writer.add_summary(summary)
        self.log_epochs(trainer.loop.history)
        trainer.notify("tensorboard", f"logging to {folder} (to view: tensorboard --logdir {trainer.runs_folder})")

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            for key, value in epoch_scalars(row).items():
                self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()  # on disk before the next epoch: a kill loses nothing a checkpoint holds

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        import numpy as np
        from PIL import Image

        step = result.epochs_run
        for key, value in held_out_scalars(result).items():
            self.writer.add_scalar(key, value, step)
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_test_figures(result.test_report, Path(tmp), trainer.kind.confusion_unit):
                if path.suffix == ".png":
                    with Image.open(path) as png:
                        image = np.asarray(png.convert("RGB"))
                    self.writer.add_image(path.stem, image, step, dataformats="HWC")
                else:
                    self.writer.add_text(path.stem, _markdown_table(per_class_rows(result.test_report)), step)
        self._close()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or a SQLite file ``mlflow.db`` in the current folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path.cwd() / DEFAULT_TRACKING_URI_FILE).as_posix()}"


def sqlite_artifact_root(uri: str, experiment: str) -> str | None:
    """``mlartifacts/<experiment>`` beside the SQLite file of ``uri`` (None for other stores: theirs)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if not database.is_absolute():
        database = Path.cwd() / database
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "default"
    return (database.parent / ARTIFACTS_FOLDER / slug).as_uri()


class MLflowTracker(Tracker):
    """An MLflow run per visionlab run, through ``MlflowClient`` (no global active run is touched).

    The store is ``MLFLOW_TRACKING_URI``, by default ``sqlite:///mlflow.db`` in the current folder,
    with artifacts in ``mlartifacts/`` beside it; the experiment is ``MLFLOW_EXPERIMENT_NAME``, by
    default the task's name. Parameters longer than MLflow's limit are cut (config.yaml, an artifact,
    holds them whole); on a resume, a parameter the resume changed (epochs) keeps its first value and
    the change is a tag ``visionlab.resume.epoch_<N>``, since MLflow parameters cannot change.
    Its state in last.pt is the MLflow run's id and the store it is in."""

    name = "mlflow"

    def __init__(self) -> None:
        super().__init__()
        self.tracking_uri = default_tracking_uri()
        needed = ["mlflow"] + (["sqlalchemy", "alembic"] if self.tracking_uri.startswith("sqlite:") else [])
        for package in needed:  # the SQLite store needs the last two, which the mlflow-skinny package lacks
            try:
                __import__(package)
            except ImportError as exc:
                raise _missing(self.name, package, exc) from None
        self.client: Any = None
        self.run_id: str | None = None  # of the MLflow run while it is open (ended once: None again)
        self.logged_to: dict[str, str] = {}  # the run this visionlab run logs to: run_id and tracking_uri (the state)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.logged_to)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logged_to = {k: str(v) for k, v in state.items()}

    # ------------------------------------------------------------- the run
    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=sqlite_artifact_root(self.tracking_uri, name))
            except MlflowException:  # created meanwhile by another process
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise VisionlabError(f"the MLflow experiment {name!r} in {self.tracking_uri} is deleted.",
                                 "Restore it (mlflow experiments restore), or set MLFLOW_EXPERIMENT_NAME to another name.")
        return experiment.experiment_id

    def _previous_run(self, trainer: Trainer) -> Any:
        """The MLflow run of a resumed visionlab run (its last.pt's state, or the side file of an
        earlier version's run), if the store still has it."""
        from mlflow.exceptions import MlflowException

        path = trainer.run_dir / RUN_ID_FILE
        run_id = self.logged_to.get("run_id") or (path.read_text().strip() if path.exists() else None)
        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            before = self.logged_to.get("tracking_uri", self.tracking_uri)
            trainer.notify("warning", f"MLflow run {run_id} of this run folder is not in {self.tracking_uri}"
                           + (f" (it was logged to {before})" if before != self.tracking_uri else "")
                           + "; logging to a new MLflow run")
            return None
        return run

    def on_fit_start(self, trainer: Trainer) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        params = {k: param_text(v) for k, v in run_params(trainer).items()}
        run = self._previous_run(trainer)
        if run is None:
            tags = {"mlflow.source.name": "visionlab", "visionlab.task": trainer.spec.name, "visionlab.version": __version__,
                    "visionlab.run_dir": str(trainer.run_dir.resolve()), "visionlab.synthetic": str(trainer.cfg.is_synthetic).lower()}
            experiment_id = self._experiment_id(os.environ.get("MLFLOW_EXPERIMENT_NAME") or trainer.spec.name)
            run = self.client.create_run(experiment_id, tags=tags, run_name=trainer.run_dir.name)
            self.run_id = run.info.run_id
            self._log_params(params)
            logged: set[int] = set()
            verb = "logging to new"
        else:
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            old = run.data.params
            self._log_params({k: v for k, v in params.items() if k not in old})
            changed = [f"{k}: {old[k]} -> {v}" for k, v in self._cut(params).items() if k in old and old[k] != v]
            if changed:
                self.client.set_tag(self.run_id, f"visionlab.resume.epoch_{trainer.loop.epoch}", "; ".join(changed))
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
            verb = "continuing"
        self.logged_to = {"run_id": self.run_id, "tracking_uri": self.tracking_uri}
        self.log_epochs([r for r in trainer.loop.history if int(r["epoch"]) not in logged])
        experiment = self.client.get_experiment(run.info.experiment_id).name
        trainer.notify("mlflow", f"{verb} run {self.run_id} of experiment {experiment!r} in {self.tracking_uri}")

    @staticmethod
    def _cut(params: dict[str, str]) -> dict[str, str]:
        """Values within MLflow's length limit: a longer one is cut and ends in '...'."""
        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # the limit of older MLflow releases
            limit = 500
        return {k: v if len(v) <= limit else v[: limit - 3] + "..." for k, v in params.items()}

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in self._cut(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per request
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if values:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._log_metrics(epoch_scalars(row), int(row["epoch"]))

    # ------------------------------------------------------------- the end
    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        self._log_metrics(held_out_scalars(result), result.epochs_run)
        for name in RUN_FILES:
            if (result.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(result.run_dir / name))
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_test_figures(result.test_report, Path(tmp), trainer.kind.confusion_unit):
                self.client.log_artifact(self.run_id, str(path))
        run_id, artifacts = self.run_id, self.client.get_run(self.run_id).info.artifact_uri
        self._end("FINISHED")
        trainer.notify("mlflow", f"run {run_id} finished; artifacts in {artifacts}")

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """FAILED, or KILLED for Ctrl-C/SIGTERM (FAILED when another process of the job failed); the
        error is the tag ``visionlab.error``. Once only.

        A store that fails now is a warning: the training's own error is the one raised."""
        if self.run_id is None:
            return
        run_id = self.run_id
        interrupted = isinstance(exc, (TrainingInterrupted, KeyboardInterrupt))
        # under torchrun a SIGTERM may be the job ending for another process's failure, even one that
        # arrives while this process reports its own error: the cause that process left is the run's
        cause = peer_failure(trainer.dist) if interrupted and getattr(trainer, "dist", None) is not None else None
        cause = None if cause and cause.endswith(INTERRUPTED) else cause  # all were stopped: KILLED
        try:
            self.client.set_tag(run_id, "visionlab.error", (cause or str(exc) or type(exc).__name__)[:5000])
            self._end("KILLED" if interrupted and not cause else "FAILED")
        except Exception as err:  # noqa: BLE001 - whatever the store raises, the run's error goes on
            self.run_id = None
            trainer.notify("warning", f"could not mark MLflow run {run_id} as ended ({type(err).__name__}: {err})")

    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        self.run_id = None


# name in the config key ``track`` -> tracker; the names are config.TRACKER_NAMES (config imports no torch)
TRACKERS: dict[str, type[Tracker]] = {cls.name: cls for cls in (TensorBoardTracker, MLflowTracker)}
assert tuple(TRACKERS) == TRACKER_NAMES, "config.TRACKER_NAMES and tracking.TRACKERS must name the same trackers"


def build_trackers(names: list[str]) -> list[Tracker]:
    """The trackers of the config key ``track``; a missing package is a VisionlabError now."""
    return [TRACKERS[name]() for name in names]
