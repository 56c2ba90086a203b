"""The Python API (what the CLI calls): runs folders, latest-run lookup, predict outputs, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import visionlab
from visionlab.engine.checkpoint import load_checkpoint
from visionlab.engine.runs import latest_checkpoint, mark_latest, new_run_dir
from visionlab.errors import VisionlabError

from conftest import answered


def _console() -> Console:
    return Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115


def _images(cache_dir: Path) -> Path:
    return cache_dir / "synthetic" / "cracks-v1-s0"


# --------------------------------------------------------------------------- runs folders


def test_runs_go_to_visionlab_runs_by_default(runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast):
    """$VISIONLAB_RUNS is where runs are written and where the latest one is looked up: the same folder."""
    monkeypatch.chdir(tmp_path / "..")  # a relative 'runs' would land here, not in $VISIONLAB_RUNS
    options = fast("cracks", model="cracks_cnn", model_args={})
    options.pop("out")
    result = visionlab.train("cracks", data="synthetic", console=_console(), **options)
    assert result.run_dir.resolve().parent.parent == runs_dir.resolve()
    assert latest_checkpoint("cracks") == result.best_checkpoint
    assert visionlab.load().task == "cracks"


def test_new_run_dir_never_overwrites(tmp_path: Path):
    a = new_run_dir(tmp_path, "cracks", "x")
    b = new_run_dir(tmp_path, "cracks", "x")
    c = new_run_dir(tmp_path, "cracks", "x")
    assert [p.name for p in (a, b, c)] == ["x", "x-2", "x-3"]
    assert new_run_dir(tmp_path, "cracks").name[:2] == "20"  # a timestamp


def test_latest_checkpoint_lookup(tmp_path: Path):
    with pytest.raises(VisionlabError, match="no trained model found for task 'waste'"):
        latest_checkpoint("waste", tmp_path)
    run = new_run_dir(tmp_path, "waste", "r")
    mark_latest(run, tmp_path, "waste")
    with pytest.raises(VisionlabError, match="no trained model found for task 'waste'"):
        latest_checkpoint("waste", tmp_path)  # the pointer names a run without a checkpoint, and there is no other
    (run / "last.pt").write_bytes(b"")
    assert latest_checkpoint("waste", tmp_path) == run / "last.pt"  # best.pt missing: last.pt
    (run / "best.pt").write_bytes(b"")
    assert latest_checkpoint("waste", tmp_path) == run / "best.pt"
    assert latest_checkpoint("waste", tmp_path, which="last") == run / "last.pt"
    assert latest_checkpoint(None, tmp_path) == run / "best.pt"  # the latest of any task


def test_latest_pointer_at_a_run_without_checkpoint_falls_back_to_the_newest_run_with_one(tmp_path: Path):
    """A run stopped before its first checkpoint (Ctrl-C in epoch 1, an older visionlab that marked
    LATEST at the start) must not hide the good run beside it."""
    good = new_run_dir(tmp_path, "waste", "good")
    (good / "best.pt").write_bytes(b"")
    (good / "last.pt").write_bytes(b"")
    older = new_run_dir(tmp_path, "waste", "older")
    (older / "last.pt").write_bytes(b"")
    os.utime(older / "last.pt", (1, 1))  # written long ago
    empty = new_run_dir(tmp_path, "waste", "empty")
    mark_latest(empty, tmp_path, "waste")
    assert latest_checkpoint("waste", tmp_path) == good / "best.pt"
    assert latest_checkpoint("waste", tmp_path, which="last") == good / "last.pt"
    assert latest_checkpoint(None, tmp_path) == good / "best.pt"


# --------------------------------------------------------------------------- train options


def test_train_rejects_unknown_options(runs_dir: Path):
    with pytest.raises(VisionlabError, match="Did you mean 'epochs'"):
        visionlab.train("cracks", epoch=1, out=runs_dir)


def test_train_accepts_a_path_and_overrides(cls_folder: Path, fast):
    options = fast("cracks", model="cracks_cnn", model_args={})
    result = visionlab.train("cracks", data=cls_folder, overrides=["lr=0.02", "augment.hflip=false"], console=_console(), **options)
    state = load_checkpoint(result.best_checkpoint)
    assert state["config"]["data"] == str(cls_folder) and state["config"]["lr"] == 0.02
    assert state["config"]["augment"]["hflip"] is False
    assert result.test_metrics == {} or "accuracy" in result.test_metrics


# --------------------------------------------------------------------------- predict


def test_predict_api_rows_csv_and_json(cracks_model: Path, cache_dir: Path, tmp_path: Path):
    images = _images(cache_dir)
    paths = [images / "Negative" / "img_000.png", str(images / "Positive" / "img_00[0-1].png"), tmp_path / "missing.jpg"]
    rows = [p.to_dict() for p in visionlab.predict(paths, checkpoint=cracks_model, out=tmp_path / "p.csv", top_k=2, console=_console())]
    assert [Path(r["path"]).name for r in rows] == ["img_000.png", "img_000.png", "img_001.png", "missing.jpg"]
    assert rows[-1]["error"] and rows[-1]["label"] is None
    for r in rows[:3]:
        assert r["error"] is None and answered(r) in ("Negative", "Positive") and len(r["top_k"]) == 2
        assert r["top_k"][0]["probability"] + r["top_k"][1]["probability"] == pytest.approx(1.0, abs=1e-4)
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table["label"].fillna("")) == [r["label"] or "" for r in rows]
    assert {"top1_label", "top1_probability", "top2_label", "top2_probability", "error"} <= set(table.columns)
    visionlab.predict(str(images / "Negative"), checkpoint=cracks_model, out=tmp_path / "p.json", console=_console())
    saved = json.loads((tmp_path / "p.json").read_text())
    assert len(saved) == len(list((images / "Negative").iterdir()))


def test_predict_keeps_order_across_batches(cracks_model: Path, cache_dir: Path, tmp_path: Path):
    images = sorted((_images(cache_dir) / "Positive").iterdir())[:7]
    mixed = [images[0], tmp_path / "gone.png", *images[1:]]
    predictor = visionlab.load(cracks_model)
    preds = predictor.predict(mixed, batch_size=3)
    assert [p.source for p in preds] == [str(p) for p in mixed]
    one_by_one = [predictor.predict(p)[0] for p in images]
    assert [p.label for p in preds if not p.error] == [p.label for p in one_by_one]
    for a, b in zip([p for p in preds if not p.error], one_by_one):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)  # batching does not change results


def test_unknown_output_format_fails_before_any_work(cracks_model: Path, cache_dir: Path, tmp_path: Path):
    console = _console()
    with pytest.raises(VisionlabError, match=r"\.csv or \.json"):
        visionlab.predict(str(_images(cache_dir) / "Negative"), checkpoint=cracks_model, out=tmp_path / "p.xlsx", console=console)
    assert "predictions" not in console.export_text(), "the whole batch ran before the --out name was checked"


def test_load_checks_the_task(cracks_model: Path):
    assert visionlab.load(cracks_model, task="cracks").task == "cracks"
    with pytest.raises(VisionlabError, match="for task 'cracks', not 'minerals'"):
        visionlab.load(cracks_model, task="minerals")
    assert "cracks" in repr(visionlab.load(cracks_model))


def test_load_without_any_run(runs_dir: Path):
    with pytest.raises(VisionlabError, match="no trained model found"):
        visionlab.load()
    with pytest.raises(VisionlabError, match="no trained model found for task 'landcover'"):
        visionlab.load(task="landcover")


def test_no_images_matched(cracks_model: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisionlabError, match="no images matched"):
        visionlab.predict(tmp_path / "empty", checkpoint=cracks_model, console=_console())


# --------------------------------------------------------------------------- evaluate


def test_evaluate_splits(cracks_model: Path, tmp_path: Path):
    with pytest.raises(VisionlabError, match="unknown split"):
        visionlab.evaluate(cracks_model, split="holdout", console=_console())
    test = visionlab.evaluate(cracks_model, split="test", out=tmp_path / "t", console=_console())
    every = visionlab.evaluate(cracks_model, split="all", out=tmp_path / "a", console=_console())
    state = load_checkpoint(cracks_model)
    sizes = state["data"]["split_sizes"]
    assert test["images"] == sizes["test"]
    assert every["images"] == sizes["train"] + sizes["val"] + sizes["test"]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["images"] == every["images"]


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_evaluate_lists_every_image_mistakes_first(cracks_model: Path, tmp_path: Path, cache: str):
    import torch

    state = load_checkpoint(cracks_model)
    if cache == "none":  # the streaming path (datasets too big to cache) gives the same rows
        state["config"]["cache"] = "none"
        torch.save(state, tmp_path / "stream.pt")
        cracks_model = tmp_path / "stream.pt"
    report = visionlab.evaluate(cracks_model, split="all", out=tmp_path / "e", console=_console())
    rows = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert list(rows.columns) == ["path", "label", "predicted", "confidence", "correct", "unknown", "known_score",
                                  "top1_label", "top1_probability", "top2_label", "top2_probability"]
    assert (rows["top1_label"] == rows["predicted"]).all()
    assert len(rows) == report["images"] and rows["path"].is_unique
    assert all(Path(p).is_file() and Path(p).parent.name == label for p, label in zip(rows["path"], rows["label"]))
    assert (rows["correct"] == (rows["label"] == rows["predicted"])).all()
    assert rows["correct"].mean() == pytest.approx(report["metrics"]["accuracy"])
    wrong = rows[~rows["correct"]]
    assert list(wrong.index) == list(range(len(wrong))), "mistakes come first"
    assert wrong["confidence"].is_monotonic_decreasing
    assert rows["confidence"].between(0.5, 1.0).all()  # two classes: the top probability
    assert report["tta"] == state["preprocessing"].get("tta", "none")


def test_evaluate_with_another_tta(cracks_model: Path, tmp_path: Path):
    plain = visionlab.evaluate(cracks_model, split="all", out=tmp_path / "a", console=_console(), tta="none")
    flips = visionlab.evaluate(cracks_model, split="all", out=tmp_path / "b", console=_console(), tta="flips")
    assert (plain["tta"], flips["tta"]) == ("none", "flips")
    assert plain["images"] == flips["images"]
    a = pd.read_csv(tmp_path / "a" / "predictions.csv").set_index("path")["confidence"]
    b = pd.read_csv(tmp_path / "b" / "predictions.csv").set_index("path")["confidence"]
    assert not np.allclose(a.sort_index().to_numpy(), b.sort_index().to_numpy()), "averaging 4 flips changes the scores"
    with pytest.raises(VisionlabError, match="unknown tta mode 'spin'"):
        visionlab.evaluate(cracks_model, tta="spin", console=_console())


def test_evaluate_checks_the_task(cracks_model: Path):
    with pytest.raises(VisionlabError, match="not 'landcover'"):
        visionlab.evaluate(cracks_model, task="landcover", console=_console())
