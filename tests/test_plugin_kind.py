"""The proof of the task-kind design: a sixth task of a new kind, written outside ``src/``.

``examples/regression_kind.py`` registers the kind ``regression`` (a number per photo, MSE loss,
MAE/RMSE lower is better) and the task ``brightness`` with its recipe ``examples/brightness.yaml``.
It is trained, evaluated and predicted through the Python API and through the real CLI in a
subprocess, found as a plugin by ``VISIONLAB_PLUGINS``; nothing in ``src/`` names it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import load_plugin
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PLUGIN = "regression_kind"


def _quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=200)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):
    """The example plugin, found through VISIONLAB_PLUGINS; its registrations are undone afterwards."""
    yield from load_plugin(monkeypatch, PLUGIN)


def test_the_plugin_kind_registers_with_its_task(plugin):
    import visionlab
    from visionlab.cli import app
    from visionlab.kinds import get_kind, kind_names

    spec = visionlab.get_task("brightness")  # the lookup imports the plugin
    kind = get_kind(spec.kind)
    assert kind_names()[-1] == "regression" and spec.model == "disc_cnn" and spec.input_size == 32
    assert not kind.higher_is_better("mae") and not kind.higher_is_better("rmse") and not kind.higher_is_better("loss")
    with pytest.raises(ValueError, match="already registered"):
        from visionlab.kinds import register_kind

        register_kind(type(kind)())
    result = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "brightness" in result.stdout and "regression" in result.stdout


def test_the_plugin_kind_has_config_keys_of_its_own(plugin, runs_dir: Path):
    """``huber_delta`` is the regression kind's key (its Kind.options): routed there from the flat
    recipe and --set, checked, suggested when misspelt, refused on a task of another kind; and read
    by its runner's loss."""
    import torch

    import visionlab
    from visionlab.errors import VisionlabError
    from visionlab.kinds import get_kind

    assert visionlab.load_config("brightness").options.huber_delta == 0.0
    cfg = visionlab.load_config("brightness", overrides=["huber_delta=0.5"])
    assert cfg.options.huber_delta == 0.5 and cfg.to_dict()["huber_delta"] == 0.5 and "tile_size" not in cfg.to_dict()
    with pytest.raises(VisionlabError, match="Did you mean 'huber_delta'"):
        visionlab.load_config("brightness", overrides=["huber_delt=1"])
    with pytest.raises(VisionlabError, match="invalid config: huber_delta must be >= 0"):
        visionlab.load_config("brightness", overrides=["huber_delta=-1"])
    with pytest.raises(VisionlabError, match="huber_delta=0.5 is a regression key; cracks is a classification task"):
        visionlab.load_config("cracks", overrides=["huber_delta=0.5"])
    with pytest.raises(VisionlabError, match="tile_size=64 is a segmentation key; brightness is a regression task"):
        visionlab.load_config("brightness", overrides=["tile_size=64"])
    runner = get_kind("regression").runner(cfg, visionlab.get_task("brightness"), "cpu")
    out, target = torch.tensor([[0.0], [0.0]]), torch.tensor([2.0, 0.25])
    assert float(runner.loss(out, target)) == pytest.approx(((0.5 * (2.0 - 0.25)) + 0.5 * 0.25**2) / 2)
    result = visionlab.train("brightness", data="synthetic", device="cpu", epochs=1, huber_delta=0.5, console=_quiet())
    assert visionlab.load(result.best_checkpoint).state["config"]["huber_delta"] == 0.5


def test_the_data_doctor_and_the_runtime_ask_the_plugin_kind(plugin, cls_folder: Path, seg_folder: Path):
    """The doctor's guess asks every kind, the plugin's first; a kind without a torch-free runtime
    step says so in one line instead of being run as a classifier."""
    import visionlab
    from visionlab.kinds import check_dataset, guess_kind
    from visionlab.errors import VisionlabError
    from visionlab.kinds import get_kind

    kind = get_kind(visionlab.get_task("brightness").kind)
    discs = kind.synthetic_data(visionlab.get_task("brightness"))
    assert [guess_kind(p) for p in (discs, seg_folder, cls_folder)] == ["regression", "segmentation", "classification"]
    with pytest.raises(VisionlabError, match="no checks for regression datasets"):
        check_dataset(discs)
    with pytest.raises(VisionlabError, match="runtime cannot run regression models") as err:
        kind.runtime_rows(None, [], 3)
    assert "visionlab predict" in err.value.hint


def test_train_evaluate_predict_through_the_api(plugin, runs_dir: Path, tmp_path: Path):
    import visionlab
    from visionlab.kinds import get_kind

    result = visionlab.train("brightness", data="synthetic", device="cpu", console=_quiet())
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1]["val_mae"] < 0.25  # a constant guess of uniform targets is off by 0.25 on average
    state = visionlab.load(result.best_checkpoint).state
    assert state["kind"] == "regression" and state["classes"] == ["brightness"]
    runner = get_kind("regression").runner(visionlab.load_config("brightness"), visionlab.get_task("brightness"), "cpu")
    assert runner.primary == "mae" and not runner.higher_is_better("mae")

    report = visionlab.evaluate(result.best_checkpoint, split="all", out=tmp_path / "eval", console=_quiet())
    assert set(report["metrics"]) == {"mae", "rmse", "loss"} and math.isfinite(report["metrics"]["mae"])
    assert report["images"] == sum(state["data"]["split_sizes"].values()) and report["primary"] == "mae"
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    assert list(rows[0]) == ["path", "target", "predicted", "abs_error"] and len(rows) == report["images"]
    errors = [float(r["abs_error"]) for r in rows]
    assert errors == sorted(errors, reverse=True)  # the worst first

    images = get_kind("regression").demo_inputs(get_kind("regression").synthetic_data(visionlab.get_task("brightness")))
    preds = visionlab.predict(images, checkpoint=result.best_checkpoint, out=tmp_path / "p.csv", console=_quiet())
    assert [p.source for p in preds] == [str(i) for i in images]
    assert all(isinstance(p.value, float) and p.error is None for p in preds)
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [float(r["value"]) for r in table] == [p.value for p in preds]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "visionlab", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_train_evaluate_predict_through_the_cli(runs_dir: Path, tmp_path: Path):
    env = {**os.environ, "VISIONLAB_PLUGINS": PLUGIN, "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    _cli("train", "--task", "brightness", "--data", "synthetic", "--device", "cpu", "--epochs", "2", env=env)
    (ckpt,) = runs_dir.glob("brightness/*/best.pt")
    out = _cli("evaluate", "--task", "brightness", "--out", str(tmp_path / "eval"), "--device", "cpu", env=env).stdout
    assert "mae" in out and "rmse" in out and "predictions.csv (largest error first)" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "regression" and metrics["task"] == "brightness" and metrics["checkpoint"] == str(ckpt)
    images = str(Path(os.environ["VISIONLAB_CACHE"]) / "synthetic" / "brightness-v1-s0" / "images")  # the synthetic data
    out = _cli("predict", images, "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.json"), "--device", "cpu", env=env).stdout
    assert "brightness predictions" in out and "value" in out
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == len(list(Path(images).iterdir())) and all(isinstance(r["value"], float) for r in rows)
    # a kind without explanations (Kind.explain's default): one line, before any image is predicted or written
    done = subprocess.run([sys.executable, "-m", "visionlab", "predict", images, "--checkpoint", str(ckpt), "--explain",
                           "--out", str(tmp_path / "why.json"), "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "error: regression models cannot explain their answers. Leave out --explain (or explain=1 on serve): "
        "this kind has no explanation."], done.stderr
    assert "predictions" not in done.stdout and not (tmp_path / "why.json").exists()
