"""Damaged checkpoints: a last.pt whose callback states, or a checkpoint whose preprocessing record,
was broken by hand is refused in one line that names what is damaged and says what to do; never a
traceback, a hang or a silently different answer. The damaged files are made here from a tiny run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import visionlab
from visionlab.data.preprocessing import MissingKey, Preprocessing
from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint
from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, get_kind

from conftest import fast_options, make_class_image


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """The run folder of one epoch of a tiny cracks classifier, logged to TensorBoard (its tracker's
    state is in last.pt beside early stopping's and checkpointing's)."""
    runs = tmp_path_factory.mktemp("damaged-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        result = visionlab.train("cracks", data="synthetic", progress=False, track="tensorboard",
                                 **fast_options("cracks", runs, model="cracks_cnn", model_args={}, name="tiny", device="cpu"))
    assert set(load_checkpoint(result.last_checkpoint)["callbacks"]) >= {"EarlyStopping", "ModelCheckpoint", "TensorBoardTracker"}
    return result.run_dir


def _damaged_copy(run: Path, where: Path, name: str, change: Any) -> Path:
    """A copy of ``run`` whose checkpoint ``name`` went through ``change`` (state -> None)."""
    copy = where / "run"
    shutil.copytree(run, copy)
    state = load_checkpoint(copy / name)
    change(state)
    save_checkpoint(state, copy / name)
    return copy / name


def _set_callbacks(value: Any):
    return lambda state: state.__setitem__("callbacks", value)


def _set_state(key: str, **values: Any):
    return lambda state: state["callbacks"][key].update(values)


@pytest.mark.parametrize(("change", "expected"), [
    (_set_callbacks({"EarlyStopping": {}}), "the EarlyStopping state: no 'best'"),
    (_set_callbacks("garbage"), "the callbacks' states: str, not a state per callback"),
    (_set_callbacks({"EarlyStopping": "garbage"}), "the callbacks' states: dict, not a state per callback"),
    (_set_state("EarlyStopping", wait="x"), "the EarlyStopping state: invalid literal for int() with base 10: 'x'"),
    (_set_state("ModelCheckpoint", best="high"), "the ModelCheckpoint state: could not convert string to float: 'high'"),
    (_set_state("TensorBoardTracker", log_dir="/tmp/elsewhere"), "the TensorBoardTracker state: log_dir '/tmp/elsewhere' is not a folder inside"),
    (_set_state("TensorBoardTracker", log_dir="../../elsewhere"), "the TensorBoardTracker state: log_dir '../../elsewhere' is not a folder inside"),
    (_set_state("TensorBoardTracker", log_dir=7), "the TensorBoardTracker state: log_dir 7 is not a folder inside the run folder"),
    (_set_state("TensorBoardTracker", log_dir="tb\x00x"), "the TensorBoardTracker state: log_dir 'tb\\x00x' is not a folder inside"),
    (_set_state("TensorBoardTracker", log_dir="..\\..\\evil"), "the TensorBoardTracker state: log_dir '..\\\\..\\\\evil' is not a folder inside"),
], ids=["no-best", "not-a-dict", "state-not-a-dict", "wait-x", "best-high", "logdir-absolute", "logdir-escapes", "logdir-number",
        "logdir-nul", "logdir-windows-escape"])
def test_a_damaged_callback_state_is_one_line_naming_it(tiny_run: Path, tmp_path: Path, change: Any, expected: str):
    last = _damaged_copy(tiny_run, tmp_path, "last.pt", change)
    with pytest.raises(VisionlabError) as info:
        visionlab.train("cracks", resume=last, epochs=2, progress=False, track="tensorboard")
    message = str(info.value)
    assert message.startswith(f"{last} is damaged ({expected}") and "\n" not in message
    assert message.endswith("Train again (a new run), or resume from an undamaged copy of it.")
    assert load_checkpoint(last)["epoch"] == 1  # nothing trained, nothing written over


def test_the_tensorboard_folder_stays_in_the_run_folder_on_the_command_line(tiny_run: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    last = _damaged_copy(tiny_run, tmp_path, "last.pt", _set_state("TensorBoardTracker", log_dir=str(elsewhere)))
    proc = subprocess.run([sys.executable, "-m", "visionlab", "train", "--task", "cracks", "--resume", str(last), "--epochs", "2",
                           "--track", "tensorboard"], capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "is damaged" in line]
    assert len(lines) == 1 and f"log_dir {str(elsewhere)!r} is not a folder inside the run folder" in lines[0]
    assert not elsewhere.exists() and "--logdir" not in proc.stdout + proc.stderr  # no events, no hint to a wrong place


def test_a_saved_tensorboard_folder_is_relative_and_a_resume_goes_on_in_it(tiny_run: Path, tmp_path: Path):
    last = _damaged_copy(tiny_run, tmp_path, "last.pt", lambda state: None)
    assert load_checkpoint(last)["callbacks"]["TensorBoardTracker"] == {"log_dir": "tensorboard"}
    visionlab.train("cracks", resume=last, epochs=2, progress=False, track="tensorboard")
    assert len(list((last.parent / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the first session's and this one's


def _set_pre(**values: Any):
    def change(state: dict[str, Any]) -> None:
        state["preprocessing"].update(values)
        for key in [k for k, v in values.items() if v is None]:
            del state["preprocessing"][key]
    return change


@pytest.mark.parametrize(("change", "expected"), [
    (_set_pre(mean=None), "mean is missing"),
    (_set_pre(mean="abc"), "mean is 'abc', not three numbers"),
    (_set_pre(std=[0.5, 0.5]), "std is [0.5, 0.5], not three numbers"),
    (_set_pre(std=[0, 0, 0]), "std is [0, 0, 0], not three numbers > 0"),
    (_set_pre(image_size="abc"), "image_size is 'abc', not a whole number in 8..4096"),
    (_set_pre(image_size=0), "image_size is 0, not a whole number in 8..4096"),
    (_set_pre(image_size=100000), "image_size is 100000, not a whole number in 8..4096"),
    (_set_pre(resize="weird"), "resize is 'weird', not one of squash, scale"),
    (_set_pre(tta="sideways"), "tta is 'sideways', not one of none, hflip, flips, d4"),
    (_set_pre(background_removal="no"), "background_removal is 'no', not true or false"),
    (lambda state: state.__setitem__("preprocessing", {}), "kind is missing"),
], ids=["no-mean", "mean-abc", "two-stds", "std-0", "size-abc", "size-0", "size-huge", "resize-weird", "tta", "background", "empty"])
def test_a_damaged_preprocessing_record_is_one_line_naming_the_field(tiny_run: Path, tmp_path: Path, change: Any, expected: str):
    best = _damaged_copy(tiny_run, tmp_path, "best.pt", change)
    with pytest.raises(VisionlabError) as info:
        load_checkpoint(best)
    assert str(info.value) == (f"checkpoint {best} is damaged (preprocessing: {expected}). "
                               "Train again, or pass the run's other checkpoint (best.pt or last.pt).")


@pytest.mark.parametrize("classes", [[], ["O", ""], ["O", "O"], ["O", 3]], ids=["none", "empty-name", "twice", "number"])
def test_damaged_classes_are_one_line(tiny_run: Path, tmp_path: Path, classes: list[Any]):
    """A checkpoint without classes, or with empty, repeated or non-text names, would predict
    nothing or answer with the wrong name: it is refused as damaged."""
    best = _damaged_copy(tiny_run, tmp_path, "best.pt", lambda state: state.__setitem__("classes", classes))
    with pytest.raises(VisionlabError) as info:
        load_checkpoint(best)
    assert str(info.value) == (f"checkpoint {best} is damaged (classes: {classes!r}, not distinct non-empty names). "
                               "Train again, or pass the run's other checkpoint (best.pt or last.pt).")


def test_predict_with_a_huge_image_size_says_so_at_once(tiny_run: Path, tmp_path: Path):
    """Was: minutes of decoding to 100000 x 100000 px with nothing printed."""
    best = _damaged_copy(tiny_run, tmp_path, "best.pt", _set_pre(image_size=100000))
    image = tmp_path / "photo.png"
    make_class_image("crack", 0).save(image)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "visionlab", "predict", str(image), "--checkpoint", str(best)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint {best} is damaged (preprocessing: image_size is 100000, not a whole "
                                                "number in 8..4096). Train again, or pass the run's other checkpoint (best.pt or last.pt)."]


class _Thresholded(Kind):
    name = "thresholded_for_tests"
    preprocessing_keys = {"threshold": float}


@pytest.mark.parametrize(("extra", "expected"), [({}, "threshold is missing"), ({"threshold": "high"}, "threshold is 'high', not a number"),
                                                 ({"threshold": True}, "threshold is True, not a number")])
def test_a_kinds_own_preprocessing_key_is_checked(extra: dict[str, Any], expected: str):
    saved = {"kind": _Thresholded.name, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash", **extra}
    with pytest.raises(VisionlabError) as info:
        _Thresholded().saved_preprocessing(saved, "checkpoint x.pt")
    assert str(info.value) == (f"checkpoint x.pt is damaged (preprocessing: {expected}). "
                               "Train (or export) it again, or pass the run's other checkpoint.")
    assert _Thresholded().saved_preprocessing({**saved, "threshold": 0.4}, "x.pt")["threshold"] == 0.4


def test_a_key_a_record_lacks_is_a_one_line_error_and_still_a_key_error():
    pre = Preprocessing.from_dict({"kind": "multilabel", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(MissingKey, match="the preprocessing record of this multilabel model has no 'threshold'") as info:
        pre["threshold"]
    assert isinstance(info.value, KeyError) and isinstance(info.value, VisionlabError) and "\n" not in str(info.value)
    assert pre.get("threshold") is None and "threshold" not in pre


def test_an_unknown_kind_says_how_a_plugins_kind_becomes_known():
    with pytest.raises(VisionlabError) as info:
        get_kind("no_such_kind_here")
    assert str(info.value).startswith("unknown task kind 'no_such_kind_here'. Known kinds: classification, segmentation")
    assert str(info.value).endswith("A plugin's kind is known once its plugin is installed or named (VISIONLAB_PLUGINS=module).")


def test_a_record_of_another_kind_is_damaged():
    saved = {"kind": "classification", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "threshold": 0.4}
    with pytest.raises(VisionlabError, match=r"x.pt is damaged \(preprocessing: kind is 'classification', but the model is of the "
                                             r"thresholded_for_tests kind\)"):
        _Thresholded().saved_preprocessing(saved, "x.pt")


@pytest.mark.parametrize("temperature", ["hot", 0, float("nan"), -1, True, 1e9])
def test_a_damaged_temperature_is_one_line_and_no_calibration_still_predicts(tiny_run: Path, tmp_path: Path, temperature: Any):
    """A fitted temperature that is not a number in 0.05..20 (zero, negative, NaN, text) would give NaN
    probabilities or an inverted ranking: the model is refused as damaged; --no-calibration still runs."""
    import torch

    best = tmp_path / "best.pt"
    state = torch.load(tiny_run / "best.pt", weights_only=False)
    state["calibration"] = {"temperature": temperature, "fitted_on": "val", "images": 4}
    torch.save(state, best)
    with pytest.raises(VisionlabError, match=r"the model's calibration is damaged \(temperature .*not a number in 0.05..20\)"):
        visionlab.load(best, device="cpu")
    assert visionlab.load(best, device="cpu", calibration=False).temperature == 1.0
