"""Experiment tracking: what TensorBoard and MLflow hold is read back with their own readers and
must equal metrics.csv; a resume continues the same MLflow run; failed and interrupted runs end
FAILED/KILLED; a missing package is a one-line error before any work. Local files only: the MLflow
store is a SQLite file in tmp, and MLflow's telemetry is off."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import visionlab
from visionlab.api import load_config, resume_config
from visionlab.config import TRACKER_NAMES
from visionlab.errors import TrainingInterrupted, VisionlabError

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from mlflow.tracking import MlflowClient  # noqa: E402
from rich.console import Console  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from visionlab.cli import app  # noqa: E402
from visionlab.engine.trainer import Callback  # noqa: E402
from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from visionlab.engine.tracking import TRACKERS, RUN_ID_FILE, MLflowTracker, write_test_figures  # noqa: E402

CLI_FAST = ["--data", "synthetic", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--set", "model=cracks_cnn",
            "--set", "model_args={}", "--set", "image_size=32", "--set", "max_steps_per_epoch=2", "--set", "num_workers=0",
            "--set", "precision=fp32", "--set", "warmup_epochs=0", "--set", "early_stopping=0"]
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# MLflow's SQLite store on SQLAlchemy 2.1 warns about its own use of a deprecated loader
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in NO_TELEMETRY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the tests that name it (each in its own experiment): made once, about 3 s."""
    return tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"


@pytest.fixture
def mlflow_env(store: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return MlflowClient(tracking_uri=f"sqlite:///{store}")


def _quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


def _csv(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _run_id(run: Path) -> str:
    """The MLflow run a visionlab run logs to: the tracker's state in its last.pt."""
    return load_checkpoint(run / "last.pt")["callbacks"]["MLflowTracker"]["run_id"]


def _assert_history_equals_csv(client: MlflowClient, run_id: str, rows: list[dict[str, str]]) -> None:
    keys = [k for k in rows[0] if k != "epoch"]
    for key in keys:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert logged == [(int(r["epoch"]), float(r[key])) for r in rows], key


def _tensorboard(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _assert_scalars_equal_csv(events: EventAccumulator, rows: list[dict[str, str]]) -> None:
    for key in (k for k in rows[0] if k != "epoch"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in logged] == [int(r["epoch"]) for r in rows], key
        assert [v for _, v in logged] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key  # float32 in the events


# --------------------------------------------------------------------------- a run through the CLI, both trackers


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """`visionlab train --track tensorboard --track mlflow`, 2 epochs, in a folder without MLFLOW_TRACKING_URI:
    the default store, ./mlflow.db, and its artifacts land there."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(key, raising=False)
        for key, value in {"VISIONLAB_CACHE": str(session_cache), "COLUMNS": "200", **NO_TELEMETRY}.items():
            mp.setenv(key, value)
        result = CliRunner().invoke(app, ["train", "--task", "cracks", *CLI_FAST, "--out", "runs", "--name", "tracked",
                                          "--track", "tensorboard", "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    assert f"tensorboard: logging to {Path('runs/cracks/tracked/tensorboard')}" in result.stdout
    assert "mlflow: logging to new run " in result.stdout and "of experiment 'cracks' in sqlite:///" in result.stdout
    return cwd


def test_mlflow_holds_the_config_the_epochs_of_metrics_csv_and_the_artifacts(cli_run: Path, tmp_path: Path):
    run = cli_run / "runs" / "cracks" / "tracked"
    client = MlflowClient(tracking_uri=f"sqlite:///{cli_run / 'mlflow.db'}")
    info = client.get_run(_run_id(run))
    assert info.info.status == "FINISHED" and info.info.run_name == "tracked"
    assert client.get_experiment(info.info.experiment_id).name == "cracks"  # the task's name by default
    # artifacts next to the database, not in ./mlruns (the file store recent MLflow refuses)
    assert info.info.artifact_uri.startswith((cli_run / "mlartifacts" / "cracks").as_uri())
    assert not (cli_run / "mlruns").exists()

    params, config = info.data.params, yaml.safe_load((run / "config.yaml").read_text())
    expected = {f"{k}.{sub}" for k, v in config.items() if isinstance(v, dict) and v for sub in v}
    expected |= {k for k, v in config.items() if not (isinstance(v, dict) and v)}
    assert set(params) == expected | {"world_size", "global_batch"}  # the run's shape, which the config does not hold
    assert (params["world_size"], params["global_batch"]) == ("1", "4")
    assert params["augment.hflip"] == "true" and params["model"] == "cracks_cnn" and params["epochs"] == "2"
    assert params["track"] == '["tensorboard", "mlflow"]' and params["name"] == "tracked" and params["model_args"] == "{}"
    lo, hi = config["augment"]["scale"]
    assert float(params["lr"]) == config["lr"] and params["augment.scale"] == f"[{lo}, {hi}]"

    rows = _csv(run)
    assert len(rows) == 2
    _assert_history_equals_csv(client, info.info.run_id, rows)
    summary = yaml.safe_load((run / "summary.json").read_text())
    test = {k: v for k, v in summary["test"].items() if v is not None}
    assert test and {k: client.get_metric_history(info.info.run_id, f"test_{k}")[0].value for k in test} == test
    assert {m.step for k in test for m in client.get_metric_history(info.info.run_id, f"test_{k}")} == {2}

    artifacts = {a.path for a in client.list_artifacts(info.info.run_id)}
    assert artifacts == {"best.pt", "curves.png", "config.yaml", "metrics.csv", "summary.json", "test_confusion_matrix.png", "test_per_class.csv"}
    best = client.download_artifacts(info.info.run_id, "best.pt", str(tmp_path))
    assert Path(best).read_bytes() == (run / "best.pt").read_bytes()
    table = Path(client.download_artifacts(info.info.run_id, "test_per_class.csv", str(tmp_path))).read_text().splitlines()
    assert table[0] == "class,precision,recall,f1,support,roc_auc" and [r.split(",")[0] for r in table[1:]] == ["Negative", "Positive"]
    from PIL import Image

    with Image.open(client.download_artifacts(info.info.run_id, "test_confusion_matrix.png", str(tmp_path))) as png:
        assert png.format == "PNG" and min(png.size) > 100


def test_tensorboard_holds_the_epochs_of_metrics_csv_the_config_and_the_test_scores(cli_run: Path):
    run = cli_run / "runs" / "cracks" / "tracked"
    events = _tensorboard(run)
    rows = _csv(run)
    _assert_scalars_equal_csv(events, rows)
    summary = yaml.safe_load((run / "summary.json").read_text())
    for key, value in summary["test"].items():
        if value is not None:
            assert [(e.step, e.value) for e in events.Scalars(f"test_{key}")] == [(2, pytest.approx(value, rel=1e-6))]
    assert [i.step for i in events.Images("test_confusion_matrix")] == [2]
    tags = events.Tags()["tensors"]
    assert "config/text_summary" in tags and "test_per_class/text_summary" in tags
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    augment.hflip: true" in config.splitlines() and "    model: cracks_cnn" in config.splitlines()
    assert "    world_size: 1" in config.splitlines() and "    global_batch: 4" in config.splitlines()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


# --------------------------------------------------------------------------- resume, failures, interrupts


def test_a_resume_goes_on_in_the_same_mlflow_run_and_tensorboard_folder(fast, mlflow_env: MlflowClient):
    opts = fast("cracks", model="cracks_cnn", model_args={}, track="tensorboard,mlflow", name="again")
    first = visionlab.train("cracks", data="synthetic", console=_quiet(), **opts)
    run_id = _run_id(first.run_dir)
    again = visionlab.train("cracks", resume=first.last_checkpoint, epochs=2, console=_quiet())
    assert _run_id(again.run_dir) == run_id
    info = mlflow_env.get_run(run_id)
    assert info.info.status == "FINISHED"
    assert info.data.params["epochs"] == "1" and info.data.tags["visionlab.resume.epoch_1"] == "epochs: 1 -> 2"
    rows = _csv(again.run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    _assert_history_equals_csv(mlflow_env, run_id, rows)  # epoch 1 once, epoch 2 appended
    assert [m.step for m in mlflow_env.get_metric_history(run_id, "test_accuracy")] == [1, 2]  # each finish scored
    assert len(mlflow_env.search_runs([info.info.experiment_id])) == 1
    events = _tensorboard(again.run_dir)
    _assert_scalars_equal_csv(events, rows)  # the first session's epochs purged and logged again: no doubles
    assert [e.step for e in events.Scalars("test_accuracy")] == [2]
    assert load_checkpoint(again.last_checkpoint)["callbacks"]["TensorBoardTracker"] == {"log_dir": "tensorboard"}
    assert not (again.run_dir / RUN_ID_FILE).exists()  # the id is the tracker's state in last.pt, no side file


def test_a_resume_of_a_run_that_kept_the_mlflow_run_id_in_a_side_file_goes_on_in_that_run(fast, mlflow_env: MlflowClient):
    """A last.pt without callback states (visionlab before they had them) and <run>/mlflow_run_id beside it."""
    first = visionlab.train("cracks", data="synthetic", console=_quiet(),
                            **fast("cracks", model="cracks_cnn", model_args={}, track=["mlflow"], name="side"))
    state = load_checkpoint(first.last_checkpoint)
    run_id = state.pop("callbacks")["MLflowTracker"]["run_id"]
    save_checkpoint(state, first.last_checkpoint)
    (first.run_dir / RUN_ID_FILE).write_text(run_id + "\n")
    console = Console(record=True, width=300)
    again = visionlab.train("cracks", resume=first.last_checkpoint, epochs=2, console=console)
    assert f"mlflow: continuing run {run_id} of experiment" in console.export_text()
    assert _run_id(again.run_dir) == run_id and mlflow_env.get_run(run_id).info.status == "FINISHED"
    _assert_history_equals_csv(mlflow_env, run_id, _csv(again.run_dir))


def test_a_diverging_run_is_marked_failed(fast, mlflow_env: MlflowClient):
    with pytest.raises(VisionlabError, match="training diverged"):
        visionlab.train("cracks", data="synthetic", console=_quiet(), name="boom",
                        **fast("cracks", model="cracks_cnn", model_args={}, lr=1e6, track=["mlflow"]))
    (run,) = mlflow_env.search_runs([mlflow_env.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id])
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["visionlab.error"].startswith("training diverged at epoch 1")
    assert run.data.metrics == {}  # no epoch was finished


class _Raise(Callback):
    def __init__(self, hook: str, exc: BaseException) -> None:
        self.hook, self.exc = hook, exc

    def on_epoch_end(self, trainer, row):
        if self.hook == "on_epoch_end":
            raise self.exc

    def on_fit_end(self, trainer, result):
        if self.hook == "on_fit_end":
            raise self.exc


@pytest.mark.parametrize(("hook", "exc", "raised", "status", "epochs_logged"), [
    ("on_epoch_end", KeyboardInterrupt(), TrainingInterrupted, "KILLED", 0),  # Ctrl-C or SIGTERM in training
    ("on_fit_end", RuntimeError("the report failed"), RuntimeError, "FAILED", 1),  # after the trainer's loop
])
def test_an_interrupted_or_failing_run_is_not_left_running(fast, mlflow_env: MlflowClient, hook, exc, raised, status, epochs_logged):
    with pytest.raises(raised):
        visionlab.train("cracks", data="synthetic", console=_quiet(), callbacks=[_Raise(hook, exc)],
                        **fast("cracks", model="cracks_cnn", model_args={}, track=["mlflow"], name=hook))
    (run,) = mlflow_env.search_runs([mlflow_env.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id])
    assert run.info.status == status
    assert len(mlflow_env.get_metric_history(run.info.run_id, "train_loss")) == epochs_logged


# --------------------------------------------------------------------------- packages, imports, config

_BLOCKED_RUN = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from visionlab.cli import main
sys.argv = ["visionlab", "train", "--task", "cracks", "--data", "synthetic", "--out", {out!r}, "--track", {track!r}]
main()
"""


@pytest.mark.parametrize(("track", "blocked"), [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_one_line_before_any_work(tmp_path: Path, track: str, blocked: str):
    script = _BLOCKED_RUN.format(blocked=blocked, out=str(tmp_path / "runs"), track=track)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: --track {track} needs the {blocked} package (No module named '{blocked}'). "
        "Install it with: pip install 'visionlab[tracking]' (or train without it: --track none)."]
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []  # no run folder, no store


def test_importing_visionlab_and_its_help_import_no_tracker():
    script = textwrap.dedent("""
        import sys
        import visionlab, visionlab.engine.tracking
        from typer.testing import CliRunner
        from visionlab.cli import app
        for args in (["--help"], ["train", "--help"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
        assert "--track" in result.output
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "tensorboard", "tensorboardX")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_track_is_a_list_of_known_trackers_and_may_change_on_resume():
    assert tuple(TRACKERS) == TRACKER_NAMES
    assert load_config("cracks").track == []  # metrics.csv only, by default
    assert load_config("cracks", overrides=["track=TensorBoard, mlflow,tensorboard"]).track == ["tensorboard", "mlflow"]
    assert load_config("cracks", overrides={"track": ["mlflow"]}).track == ["mlflow"]
    assert load_config("cracks", overrides=["track=none"]).track == []
    with pytest.raises(VisionlabError, match="unknown tracker 'mlflw' in track. Did you mean 'mlflow'?"):
        load_config("cracks", overrides=["track=mlflw"])
    saved = load_config("cracks", overrides=["track=mlflow"])
    cfg, changed = resume_config(saved, overrides=["track=tensorboard,mlflow"])
    assert cfg.track == ["tensorboard", "mlflow"] and changed == {"track": (["mlflow"], ["tensorboard", "mlflow"])}
    assert resume_config(saved, overrides=["track=none"])[0].track == []


def test_long_parameters_are_cut_to_mlflows_limit():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    cut = MLflowTracker._cut({"classes": "x" * (MAX_PARAM_VAL_LENGTH + 10), "lr": "0.001"})
    assert len(cut["classes"]) == MAX_PARAM_VAL_LENGTH and cut["classes"].endswith("...") and cut["lr"] == "0.001"


def test_segmentation_logs_a_per_class_iou_table(tmp_path: Path):
    import torch

    from visionlab.kinds import get_kind
    from visionlab.kinds.segmentation.meter import SegmentationMeter

    meter = SegmentationMeter(3)
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 1, 0]]])
    meter.update(torch.tensor([[[0, 1, 1, 1], [2, 2, 1, 0]]]), target)  # predicted indices
    report = meter.report(["ground", "water", "roof"])
    written = write_test_figures(report, tmp_path, get_kind("segmentation").confusion_unit)
    assert [p.name for p in written] == ["test_confusion_matrix.png", "test_per_class.csv"]
    with (tmp_path / "test_per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["ground", "water", "roof"]
    assert [float(r["iou"]) for r in rows] == pytest.approx([s["iou"] for s in report["per_class"].values()])
    assert [float(r["iou"]) for r in rows] == pytest.approx([2 / 3, 3 / 4, 1.0])
