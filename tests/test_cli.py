"""The command line: train/evaluate/predict/tasks/demo on synthetic data, and every user error
as one 'error:' line with a non-zero exit and no traceback (a traceback only with --debug)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from visionlab.cli import app

from conftest import answered

FAST = ["--epochs", "1", "--set", "model=cracks_cnn", "--set", "image_size=32", "--set", "max_steps_per_epoch=2",
        "--set", "num_workers=0", "--batch-size", "8"]
SEG_FAST = ["--epochs", "1", "--set", "model_args.encoder_weights=none", "--set", "tile_size=32", "--set", "crops_per_image=2",
            "--set", "max_steps_per_epoch=1", "--set", "num_workers=0", "--set", "seg_scale=1.0", "--set", "ignore_classes=[]",
            "--batch-size", "4"]


def invoke(*args: str):
    """Run the CLI in-process; stderr is kept apart from stdout."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code != 0, exactly one line on stderr starting with 'error:', no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """One small cracks model trained through the CLI, shared by the tests of this module."""
    runs = tmp_path_factory.mktemp("cli-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        mp.setenv("COLUMNS", "200")
        result = invoke("train", "--task", "cracks", "--data", "synthetic", *FAST, "--out", runs, "--name", "shared")
    assert result.exit_code == 0, result.output
    ckpt = runs / "cracks" / "shared" / "best.pt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture
def images(cache_dir: Path, trained: Path) -> Path:
    """The synthetic cracks images (made when the shared model was trained)."""
    return cache_dir / "synthetic" / "cracks-v1-s0"


# --------------------------------------------------------------------------- commands that work


def test_train_writes_a_run_and_says_synthetic(runs_dir: Path):
    result = invoke("train", "--task", "cracks", "--data", "synthetic", *FAST, "--out", runs_dir, "--name", "t1", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC DATA" in result.stdout
    run = runs_dir / "cracks" / "t1"
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    assert "seed: 3" in (run / "config.yaml").read_text()
    assert (runs_dir / "cracks" / "LATEST").read_text().strip() == str(run.resolve())
    # the same name again: a new folder, nothing overwritten
    result = invoke("train", "--task", "cracks", "--data", "synthetic", *FAST, "--out", runs_dir, "--name", "t1")
    assert result.exit_code == 0 and (runs_dir / "cracks" / "t1-2" / "best.pt").is_file()


def test_train_with_a_config_file_and_augment_override(runs_dir: Path, tmp_path: Path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("model: cracks_cnn\nimage_size: 32\nlr: 0.01\n")
    result = invoke("train", "--task", "cracks", "--config", cfg, "--set", "augment.hflip=false", "--set", "max_steps_per_epoch=1",
                    "--epochs", "1", "--out", runs_dir, "--name", "c")
    assert result.exit_code == 0, result.output
    saved = (runs_dir / "cracks" / "c" / "config.yaml").read_text()
    assert "lr: 0.01" in saved and "hflip: false" in saved and "model_args: {}" in saved


def test_train_with_mixup_and_cutmix(runs_dir: Path):
    result = invoke("train", "--task", "cracks", "--data", "synthetic", *FAST, "--set", "mixup=0.4", "--set", "cutmix=1.0",
                    "--out", runs_dir, "--name", "mix")
    assert result.exit_code == 0, result.output
    rows = (runs_dir / "cracks" / "mix" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "nan" not in rows[1]
    assert "mixup: 0.4" in (runs_dir / "cracks" / "mix" / "config.yaml").read_text()
    # masks cannot be blended: mixup is refused for segmentation in one line, CutMix trains
    assert_one_line_error(invoke("train", "--task", "landcover", "--data", "synthetic", *SEG_FAST, "--out", runs_dir, "--set", "mixup=0.4"),
                          "mixup=0.4 is a classification key", "masks cannot be blended", "'cutmix' works for segmentation")
    result = invoke("train", "--task", "landcover", "--data", "synthetic", *SEG_FAST, "--out", runs_dir, "--set", "cutmix=1", "--name", "segmix")
    assert result.exit_code == 0, result.output
    assert_one_line_error(invoke("train", "--task", "cracks", "--set", "mixup=-1"), "mixup is a Beta alpha")


def test_evaluate_a_checkpoint(trained: Path, tmp_path: Path):
    result = invoke("evaluate", "--checkpoint", trained, "--out", tmp_path / "ev", "--split", "val")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["task"] == "cracks" and report["split"] == "val" and report["synthetic"] is True
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert (tmp_path / "ev" / "confusion_matrix.csv").is_file() and (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert "SYNTHETIC" in result.stdout


def test_predict_a_folder_a_glob_and_a_missing_file(trained: Path, images: Path, tmp_path: Path):
    missing = tmp_path / "not-there.png"
    pattern = str(images / "Positive" / "img_00[0-2].png")
    out = tmp_path / "preds.csv"
    args = ("predict", images / "Negative", pattern, missing, "--checkpoint", trained, "--out", out)
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "600"})  # wide: rich folds no path
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    n_negative = len(list((images / "Negative").iterdir()))
    assert len(table) == n_negative + 3 + 1  # the folder, the glob's 3 files, the missing one
    bad = table[table["path"] == str(missing)]
    assert len(bad) == 1 and "not found" in bad["error"].iloc[0]
    good = table[table["path"] != str(missing)]
    assert good["error"].isna().all()
    assert set(good["label"]) <= {"Negative", "Positive", "unknown"}  # the detector rejects a share of known photos too
    answered = good["label"].where(good["label"] != "unknown", good["guess"])  # an unknown's best guess is its top class
    assert set(answered) <= {"Negative", "Positive"} and (good["top1_label"] == answered).all()
    row = next(ln for ln in result.stdout.splitlines() if "not-there" in ln)  # reported in the table, in its row
    assert [c.strip() for c in row.split("│")[1:3]] == [str(missing), "error"] and "could not be read" in result.stdout


def test_predict_fails_when_no_image_is_readable(trained: Path, tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    result = invoke("predict", broken, tmp_path / "missing.png", "--checkpoint", trained, "--out", out)
    assert_one_line_error(result, "none of the 2 image(s) could be read")
    assert len(pd.read_csv(out)) == 2  # the per-file errors are still written


def test_predict_writes_json(trained: Path, images: Path, tmp_path: Path):
    out = tmp_path / "sub" / "preds.json"
    result = invoke("predict", images / "Positive" / "img_000.png", "--checkpoint", trained, "--out", out, "--top-k", "1")
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and answered(rows[0]) in ("Negative", "Positive") and len(rows[0]["top_k"]) == 1
    assert rows[0]["error"] is None


def test_predict_and_evaluate_without_checkpoint_use_the_latest_run(trained: Path, images: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VISIONLAB_RUNS", str(trained.parents[2]))
    result = invoke("predict", images / "Positive" / "img_001.png")
    assert result.exit_code == 0, result.output
    assert f"using the most recently trained model: {trained}" in result.stdout
    result = invoke("evaluate", "--task", "cracks")
    assert result.exit_code == 0, result.output
    assert f"using the latest cracks model: {trained}" in result.stdout


def test_segmentation_predict_writes_masks_next_to_out(seg_folder: Path, runs_dir: Path, tmp_path: Path):
    result = invoke("train", "--task", "landcover", "--data", seg_folder, *SEG_FAST, "--out", runs_dir, "--name", "s")
    assert result.exit_code == 0, result.output
    out = tmp_path / "pred" / "masks.csv"
    result = invoke("predict", seg_folder / "images", "--checkpoint", runs_dir / "landcover" / "s" / "best.pt", "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == 4
    assert {"share_ground", "share_water", "share_roof", "mask", "overlay"} <= set(table.columns)
    from PIL import Image

    for mask in table["mask"]:
        assert Path(mask).parent == out.parent
        assert Image.open(mask).size == (90, 70)
    # two images with the same file name in different folders get a mask each
    other = tmp_path / "other"
    other.mkdir()
    Image.open(seg_folder / "images" / "tile_1.png").resize((45, 35)).save(other / "tile_0.png")
    result = invoke("predict", seg_folder / "images" / "tile_0.png", other / "tile_0.png", "--checkpoint",
                    runs_dir / "landcover" / "s" / "best.pt", "--out", tmp_path / "same" / "m.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "same" / "m.json").read_text())
    assert len({r["mask"] for r in rows}) == 2
    assert [Image.open(r["mask"]).size for r in rows] == [(90, 70), (45, 35)]
    # and the segmentation model evaluates through the CLI
    result = invoke("evaluate", "--checkpoint", runs_dir / "landcover" / "s" / "best.pt", "--split", "all", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["images"] == 4 and 0.0 <= report["metrics"]["miou"] <= 1.0


def test_tasks_command():
    result = invoke("tasks")
    assert result.exit_code == 0
    assert all(t in result.stdout for t in ("minerals", "waste", "cracks", "caltech", "landcover"))


def test_demo(tmp_path: Path):
    result = invoke("demo", "--task", "cracks", "--out", tmp_path / "demo-runs", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.stdout
    runs = list((tmp_path / "demo-runs" / "cracks").glob("demo-*"))
    assert len(runs) == 1 and (runs[0] / "best.pt").is_file()
    assert list(runs[0].glob("eval-test-*/metrics.json"))
    assert "Negative" in result.stdout and "Positive" in result.stdout  # one prediction per class


# --------------------------------------------------------------------------- user errors


def test_missing_data_path(runs_dir: Path):
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", "/no/such/folder", "--out", runs_dir), "/no/such/folder", "does not exist")


def test_unknown_task():
    assert_one_line_error(invoke("train", "--task", "crackz"), "unknown task 'crackz'", "cracks", "landcover")


def test_unknown_task_on_predict_and_evaluate(trained: Path, images: Path):
    assert_one_line_error(invoke("evaluate", "--task", "nope"), "unknown task")
    assert_one_line_error(invoke("predict", images / "Positive", "--task", "nope"), "unknown task")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "/abs/escaped"])
def test_a_run_name_cannot_put_the_run_outside_out(tmp_path: Path, name: str):
    """--name is one folder inside <out>/<task>/: '../..' or an absolute path would write the run elsewhere."""
    out = tmp_path / "deep" / "runs"
    name = str(tmp_path / "abs" / "escaped") if name.startswith("/") else name
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", "synthetic", "--out", out, "--name", name, *FAST),
                          "name must be one folder name", repr(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder anywhere, inside --out or out of it


def test_a_run_resumed_from_another_folder_marks_its_own_runs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A relative --out is saved as given: resumed from another working folder, the latest-run pointers
    went to a stray <cwd>/<out>/ there (and TensorBoard's --logdir named it), not to the run's own."""
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir(), other.mkdir()
    monkeypatch.chdir(first)
    assert invoke("train", "--task", "cracks", "--data", "synthetic", "--out", "rel", "--name", "r", *FAST).exit_code == 0
    run = first / "rel" / "cracks" / "r"
    (first / "rel" / "LATEST").unlink()
    monkeypatch.chdir(other)
    result = invoke("train", "--resume", run / "last.pt", "--epochs", "2")  # the task is the checkpoint's
    assert result.exit_code == 0, result.output
    assert list(other.iterdir()) == []
    assert (first / "rel" / "LATEST").read_text().strip() == str(run)
    assert [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())][-1] == "2"
    assert_one_line_error(invoke("train", "--resume", "last"), "--resume last needs the task", "Pass --task T")


def test_bad_set_key():
    assert_one_line_error(invoke("train", "--task", "cracks", "--set", "epoch=3"), "'epoch'", "Did you mean 'epochs'?", "Valid keys")


def test_bad_set_values(runs_dir: Path):
    assert_one_line_error(invoke("train", "--task", "cracks", "--set", "augment.rotate=abc"), "rotate")
    assert_one_line_error(invoke("train", "--task", "cracks", "--set", "optimizer=adam"), "adamw, sgd")
    assert_one_line_error(invoke("train", "--task", "cracks", "--set", "lr"), "key=value")
    # a segmentation loss on a classifier is refused, not silently ignored
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", "synthetic", "--out", runs_dir, "--set", "loss=focal"),
                          "loss='focal' is a segmentation key", "label_smoothing")


def test_folder_with_no_images(tmp_path: Path, runs_dir: Path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    (empty / "a" / "notes.txt").write_text("no images here")
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", empty, "--out", runs_dir), "no images found")
    assert_one_line_error(invoke("predict", empty, "--checkpoint", "x.pt"), "no images matched")


def test_a_dataset_of_one_class_says_two_are_needed(make_cls_folder, tmp_path: Path, runs_dir: Path):
    only = make_cls_folder("only-apples", classes=("apple",), per_class=3)
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", only, "--out", runs_dir),
                          "holds one class folder (apple); training needs at least two classes")
    shutil.copy(only / "apple" / "img_0.png", only / "loose.png")  # not a wrapper now: apple/ is not descended into
    assert_one_line_error(invoke("train", "--task", "cracks", "--data", only, "--out", runs_dir),
                          "only one class (apple) found", "at least two classes")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nonly-apples/apple/img_0.png,apple\nonly-apples/apple/img_1.png,apple\n")
    assert_one_line_error(invoke("data", "check", csv), "only one class (apple) found")


def test_checkpoint_of_another_task(trained: Path, images: Path):
    assert_one_line_error(invoke("evaluate", "--task", "waste", "--checkpoint", trained), "is for task 'cracks', not 'waste'")
    assert_one_line_error(invoke("predict", images / "Positive", "--task", "waste", "--checkpoint", trained), "'cracks'")


def test_corrupt_and_missing_checkpoints(tmp_path: Path, images: Path, trained: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert_one_line_error(invoke("evaluate", "--checkpoint", bad), "not a readable checkpoint")
    assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", bad), "not a readable checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:5000])
    assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", truncated), "truncated.pt")
    not_ours = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    assert_one_line_error(invoke("evaluate", "--checkpoint", not_ours), "not a visionlab checkpoint")
    assert_one_line_error(invoke("evaluate", "--checkpoint", tmp_path / "nope.pt"), "does not exist")


def test_no_trained_model_yet(runs_dir: Path, images: Path):
    assert_one_line_error(invoke("predict", images / "Positive"), "no trained model found")
    assert_one_line_error(invoke("evaluate", "--task", "cracks"), "no trained model found for task 'cracks'")


def test_unknown_output_format(trained: Path, images: Path, tmp_path: Path):
    assert_one_line_error(invoke("predict", images / "Positive" / "img_000.png", "--checkpoint", trained, "--out", tmp_path / "x.txt"),
                          ".csv or .json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(runs_dir: Path, trained: Path, images: Path):
    assert_one_line_error(invoke("train", "--task", "cracks", *FAST, "--device", "cuda", "--out", runs_dir), "no CUDA GPU")
    assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", trained, "--device", "cuda"), "no CUDA GPU")


def test_unknown_device(trained: Path, images: Path):
    assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", trained, "--device", "tpu"), "unknown device 'tpu'")


def test_corrupt_image_in_training_data_is_skipped_and_reported(cls_folder: Path, runs_dir: Path):
    (cls_folder / "zebra" / "truncated.png").write_bytes((cls_folder / "zebra" / "img_0.png").read_bytes()[:60])
    result = invoke("train", "--task", "cracks", "--data", cls_folder, *FAST, "--out", runs_dir)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image" in result.stdout and "truncated.png" in result.stdout


def test_corrupt_image_given_to_predict_is_reported(trained: Path, images: Path, tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "p.json"
    result = invoke("predict", broken, images / "Positive" / "img_000.png", "--checkpoint", trained, "--out", out)
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stdout and "1 of 2 image(s) could not be read" in result.stdout
    rows = json.loads(out.read_text())
    assert "cannot decode" in rows[0]["error"] and rows[0]["label"] is None
    assert rows[1]["error"] is None and answered(rows[1]) in ("Negative", "Positive")


# --------------------------------------------------------------------------- the installed console script


def _console_script() -> str:
    script = Path(sys.executable).with_name("visionlab")
    found = str(script) if script.exists() else shutil.which("visionlab")
    if not found:
        pytest.skip("the visionlab console script is not installed (pip install -e .)")
    return found


def test_console_script_error_is_one_line_and_debug_shows_the_traceback(runs_dir: Path):
    exe = _console_script()
    proc = subprocess.run([exe, "train", "--task", "cracks", "--data", "/no/such/data", "--out", str(runs_dir)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: data path /no/such/data")
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = subprocess.run([exe, "--debug", "train", "--task", "cracks", "--data", "/no/such/data", "--out", str(runs_dir)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "VisionlabError" in proc.stderr


def test_console_script_predicts(trained: Path, images: Path, tmp_path: Path):
    out = tmp_path / "p.json"
    proc = subprocess.run([_console_script(), "predict", str(images / "Negative" / "img_000.png"), "--checkpoint", str(trained),
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert answered(json.loads(out.read_text())[0]) in ("Negative", "Positive")


def test_bad_batch_size(trained: Path, images: Path):
    assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", trained, "--batch-size", "0"), "batch")
    assert_one_line_error(invoke("evaluate", "--checkpoint", trained, "--batch-size", "-1"), "batch")


def test_unwritable_output_locations(trained: Path, images: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder is needed")
    assert_one_line_error(invoke("predict", images / "Positive" / "img_000.png", "--checkpoint", trained, "--out", blocker / "p.csv"),
                          "a-file")
    assert_one_line_error(invoke("train", "--task", "cracks", *FAST, "--out", blocker / "runs"), "a-file")
    assert_one_line_error(invoke("evaluate", "--checkpoint", trained, "--out", blocker / "ev"), "a-file")


# --------------------------------------------------------------------------- every entry named gets a row


def _mixed_folder(tmp_path: Path, images: Path) -> Path:
    """Photos with odd names, and the things a photo folder also holds."""
    from PIL import Image

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.jpg").mkdir()  # a directory with an image's name
    shutil.copy(images / "Positive" / "img_000.png", folder / "a.png")
    shutil.copy(images / "Negative" / "img_000.png", folder / "sub" / "b.png")
    photo = Image.open(images / "Positive" / "img_001.png").convert("RGB")
    photo.save(folder / "noext", format="JPEG")  # a real JPEG without an extension
    photo.save(folder / "x.dat", format="JPEG")
    photo.save(folder / ".hidden.png")  # dotfiles are passed over silently (README)
    (folder / "README.txt").write_text("photos of the north wall\n")
    (folder / "broken.jpg").symlink_to(folder / "gone.jpg")
    return folder


def test_predict_lists_every_entry_of_a_folder_and_a_glob(trained: Path, images: Path, tmp_path: Path):
    folder = _mixed_folder(tmp_path, images)
    out = tmp_path / "p.csv"
    result = invoke("predict", folder, str(folder / "*.jpg"), "--checkpoint", trained, "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    rows = {(Path(p).relative_to(folder).as_posix(), s if isinstance(s, str) else None) for p, s in zip(table["path"], table["skipped"])}
    assert rows == {
        ("a.png", None), ("noext", None), ("x.dat", None), ("sub/b.png", None),
        ("README.txt", "not an image"), ("broken.jpg", "broken symbolic link"), ("x.jpg", "empty folder"),  # the folder
        ("broken.jpg", "broken symbolic link"), ("x.jpg", "is a directory"),  # the glob
    }
    assert len(table) == 9 and table["error"].isna().all()
    predicted = table[table["skipped"].isna()]
    assert set(predicted["label"]) <= {"Negative", "Positive"} and predicted["confidence"].notna().all()
    assert table[table["skipped"].notna()]["label"].isna().all()
    assert "4 predicted, 5 skipped (listed above)." in result.stdout
    assert "README.txt" in result.stdout and "not an image" in result.stdout and ".hidden" not in result.stdout


def test_predict_api_returns_the_skipped_rows_too(trained: Path, images: Path, tmp_path: Path):
    import visionlab

    folder = _mixed_folder(tmp_path, images)
    preds = visionlab.predict([folder / "README.txt", folder / "broken.jpg", folder / "noext"], checkpoint=trained, device="cpu")
    rows = [p.to_dict() for p in preds]
    assert [(Path(r["path"]).name, r["skipped"]) for r in rows] == [("README.txt", None), ("broken.jpg", "broken symbolic link"), ("noext", None)]
    assert rows[0]["error"] and "cannot decode" in rows[0]["error"]  # named directly: tried, and its error reported
    assert answered(rows[2]) in ("Negative", "Positive") and rows[2]["error"] is None


def test_predict_with_nothing_but_skipped_entries_says_so(tmp_path: Path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("nothing to see")
    out = tmp_path / "p.csv"
    result = invoke("predict", tmp_path / "notes", "--checkpoint", tmp_path / "none.pt", "--out", out)
    assert_one_line_error(result, "no images matched the given paths: 1 entry was skipped")  # before the model is looked for
    assert "todo.txt" in result.stdout and "not an image" in result.stdout
    assert pd.read_csv(out)["skipped"].tolist() == ["not an image"]


@pytest.mark.parametrize("k", ["0", "-1"])
def test_top_k_below_one_is_refused(trained: Path, images: Path, k: str):
    assert_one_line_error(invoke("predict", images / "Positive" / "img_000.png", "--checkpoint", trained, "--top-k", k),
                          "--top-k must be an integer >= 1", f"got {k}")


def test_top_k_above_the_number_of_classes_is_clipped_and_said(trained: Path, images: Path, tmp_path: Path):
    out = tmp_path / "p.json"
    result = invoke("predict", images / "Positive" / "img_000.png", "--checkpoint", trained, "--top-k", "5", "--out", out)
    assert result.exit_code == 0, result.output
    assert "top-2" in result.stdout and "top-5" not in result.stdout
    assert "--top-k 5 is more than the model's 2 classes: all 2 are shown." in result.stdout
    assert len(json.loads(out.read_text())[0]["top_k"]) == 2


def _unwritable_folder(tmp_path: Path) -> Path:
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions; /sys refuses even root
        folder = Path("/sys")
        if os.access(folder, os.W_OK) and not Path("/sys/fs").is_dir():
            pytest.skip("no unwritable folder on this machine")
    return folder


def test_read_only_out_is_refused_before_the_model_is_loaded(images: Path, tmp_path: Path):
    folder = _unwritable_folder(tmp_path)
    try:
        # the checkpoint does not even exist: the --out check comes first
        line = assert_one_line_error(invoke("predict", images / "Positive", "--checkpoint", tmp_path / "none.pt",
                                            "--out", folder / "p.csv"), "cannot write to", str(folder))
        assert "none.pt" not in line
        assert not (folder / "p.csv").exists()
    finally:
        (tmp_path / "read-only").chmod(0o755)


# --------------------------------------------------------------------------- checkpoints that are not quite ours


def test_checkpoint_with_missing_fields_names_them(trained: Path, images: Path, tmp_path: Path):
    from visionlab.engine.checkpoint import FORMAT

    state = torch.load(trained, map_location="cpu", weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k not in ("classes", "preprocessing")}, partial)
    for cmd in (["predict", images / "Positive" / "img_000.png"], ["evaluate"]):
        assert_one_line_error(invoke(*cmd, "--checkpoint", partial), "partial.pt is incomplete (missing classes, preprocessing)")
    bare = tmp_path / "bare.pt"
    torch.save({"format": FORMAT, "task": "cracks", "model": "not a state dict"}, bare)
    line = assert_one_line_error(invoke("evaluate", "--checkpoint", bare), "missing kind, model_name, model_args, classes, preprocessing, config")
    assert "wrong type of model" in line


class _NotAllowed:  # a class the weights-only unpickler refuses
    pass


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch ran-code-from-a-pickle",))


def test_plain_pickles_give_one_line_and_never_run_code(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    files = {"object.pt": _NotAllowed(), "evil.pt": _RunsCode()}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"format": "visionlab-checkpoint/1", "obj": _NotAllowed()}, f, protocol=4)  # torch warns on protocol 4
    for name in (*files, "plain.pkl"):
        proc = subprocess.run([sys.executable, "-m", "visionlab", "predict", str(images / "Positive"), "--checkpoint", name],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)  # a fresh process: warnings are not deduplicated
        assert proc.returncode != 0
        assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # no UserWarning lines before it
        assert proc.stderr.startswith(f"error: {name} is not a readable checkpoint")
    assert not (tmp_path / "ran-code-from-a-pickle").exists()


# --------------------------------------------------------------------------- --debug anywhere


_FAILING = {
    "train": ["train", "--task", "cracks", "--data", "/no/such/data"],
    "evaluate": ["evaluate", "--checkpoint", "/no/such.pt"],
    "predict": ["predict", "x.png", "--checkpoint", "/no/such.pt"],
    "demo": ["demo", "--task", "no-such-task"],
    "data check": ["data", "check", "/no/such/data"],
    "data download": ["data", "download", "no-such-task"],
}


@pytest.mark.parametrize("command", sorted(_FAILING))
def test_debug_after_the_command_and_from_the_environment_shows_the_traceback(command: str, monkeypatch: pytest.MonkeyPatch):
    from visionlab.errors import VisionlabError

    args = _FAILING[command]
    assert_one_line_error(invoke(*args))  # without it: one line
    for result in (invoke(*args, "--debug"), invoke("--debug", *args)):
        assert isinstance(result.exception, VisionlabError), (args, result.output)  # raised: the traceback is shown
    monkeypatch.setenv("VISIONLAB_DEBUG", "1")
    assert isinstance(invoke(*args).exception, VisionlabError)
    monkeypatch.setenv("VISIONLAB_DEBUG", "0")
    assert_one_line_error(invoke(*args))


def test_console_script_debug_after_the_command(runs_dir: Path):
    proc = subprocess.run([_console_script(), "train", "--task", "cracks", "--data", "/no/such/data", "--out", str(runs_dir), "--debug"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "VisionlabError: data path /no/such/data" in proc.stderr


def test_csv_cells_never_start_a_spreadsheet_formula(trained: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Files in a folder named '=data', one named '=SUM(1,2).png', given as relative paths, and
    classes named '=a' / '@b': no cell of predict's CSV, predictions.csv or confusion_matrix.csv
    starts with = + - @ (a spreadsheet would run it); the JSON keeps the names exactly."""
    import csv
    import shutil

    from visionlab.present.evaluation import write_confusion_csv

    monkeypatch.chdir(tmp_path)
    for c in ("Negative", "Positive"):
        (tmp_path / "=data" / c).mkdir(parents=True)
        for i, src in enumerate(sorted((images / c).iterdir())[:3]):
            shutil.copy(src, tmp_path / "=data" / c / ("=SUM(1,2).png" if i == 0 else src.name))
    evil = "=data/Negative/=SUM(1,2).png"
    assert invoke("predict", evil, "=data/Positive", "--checkpoint", trained, "--out", "p.csv").exit_code == 0
    assert invoke("predict", evil, "--checkpoint", trained, "--out", "p.json").exit_code == 0
    assert json.loads(Path("p.json").read_text())[0]["path"] == evil
    assert invoke("evaluate", "--checkpoint", trained, "--data", "=data", "--out", "ev").exit_code == 0
    write_confusion_csv([[1, 0], [0, 1]], ["=a", "@b"], tmp_path / "cm.csv")
    for name in ("p.csv", "ev/predictions.csv", "ev/confusion_matrix.csv", "cm.csv"):
        cells = [cell for row in csv.reader(Path(name).open()) for cell in row]
        assert cells and not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not c[1:2].isdigit())], name
    assert [r for r in csv.reader(Path("p.csv").open())][1][0] == "'" + evil
