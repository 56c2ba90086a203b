"""Tasks as data: the built-in tasks read from configs/tasks/*.yaml, the user task folder
(``$VISIONLAB_TASKS``), ``visionlab tasks new``, and ``visionlab train --data DIR`` with no
``--task``: a folder of photos of classes no task knows, trained, evaluated, predicted and served
through the real command line, with no task name and no Python.

Every command is a real subprocess (``python -m visionlab``); ``VISIONLAB_TASKS`` and
``VISIONLAB_RUNS`` point into this test's tmp folder (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, served_url, write_class_folder, write_seg_folder
from visionlab.api import folder_task, load_config
from visionlab.errors import VisionlabError
from visionlab.registry import BUILTIN_TASKS, TASK_KEYS, get_task

#: The five built-in TaskSpecs as registry.py defined them in Python on main at 862dac0 (before they
#: became configs/tasks/*.yaml), with what their recipes train: the YAMLs must describe the same tasks.
ON_MAIN = json.loads((Path(__file__).with_name("builtin_tasks_on_main.json")).read_text())
#: Tiny training settings: a small CNN at 32 px, two steps, no workers.
FAST = ["--epochs", "1", "--set", "model=cracks_cnn", "--set", "model_args={}", "--set", "image_size=32",
        "--set", "max_steps_per_epoch=2", "--set", "num_workers=0", "--batch-size", "4", "--device", "cpu"]


def _run(*args: str | Path, ok: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "visionlab", *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "COLUMNS": "400"})
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _error(*args: str | Path) -> str:
    """The one ``error:`` line of a command that fails (exit 2, no traceback)."""
    proc = _run(*args, ok=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stdout + proc.stderr
    return lines[0]


def _user_folder() -> Path:
    return Path(os.environ["VISIONLAB_TASKS"])


# --------------------------------------------------------------------------- the built-in tasks


@pytest.mark.torchfree
def test_the_builtin_tasks_are_their_yaml_files_and_the_same_tasks_as_before():
    files = sorted((REPO / "configs" / "tasks").glob("*.yaml"))
    assert sorted(p.stem for p in files) == sorted(BUILTIN_TASKS) == sorted(ON_MAIN)
    assert list(BUILTIN_TASKS) == list(ON_MAIN)  # listed in the order they always were
    for name, before in ON_MAIN.items():
        spec = get_task(name)
        assert spec.source == str(REPO / "configs" / "tasks" / f"{name}.yaml") and spec.origin == "built-in"
        now = {"kind": spec.kind, "default_classes": list(spec.default_classes), "description": spec.description,
               "dataset": spec.dataset, "seed_model": spec.seed_model, "seed_project": spec.seed_project,
               "model": spec.model, "input_size": spec.input_size, "recipe_file": spec.recipe_path.name}
        assert now == before, name
        assert spec.recipe_path == REPO / "configs" / f"{name}.yaml"


def test_tasks_lists_the_builtin_ones_with_their_source_and_classes():
    out = _run("tasks").stdout
    for name, before in ON_MAIN.items():
        row = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert before["kind"] in row and "built-in" in row and f"{before['input_size']} px" in row, row
        assert ", ".join(before["default_classes"][:3]) in row, row


# --------------------------------------------------------------------------- visionlab tasks new


def test_tasks_new_writes_a_task_yaml_that_tasks_lists_and_its_config_uses(tmp_path: Path):
    photos = write_class_folder(tmp_path / "garden", ("zebra", "apple", "kiwi"))
    out = _run("tasks", "new", "bees", "--data", photos).stdout.splitlines()
    path = _user_folder() / "bees.yaml"
    assert out[0] == (f"wrote {path}: task 'bees', classification, 3 classes (apple, kiwi, zebra), "
                      "recipe configs/classify.yaml."), out
    assert out[1] == f"Train it with: visionlab train --task bees --data {photos}"
    written = yaml.safe_load(path.read_text())
    assert set(written) <= set(TASK_KEYS)
    assert written["kind"] == "classification" and written["classes"] == ["apple", "kiwi", "zebra"]
    listed = next(line for line in _run("tasks").stdout.splitlines() if line.startswith("│ bees "))
    assert "classification" in listed and "apple, kiwi, zebra" in listed and "224 px" in listed, listed
    assert str(_user_folder()) in _run("tasks").stdout  # its source: the file

    # --from a task of the same kind takes that task's recipe reference; --force overwrites
    out = _run("tasks", "new", "bees", "--data", photos, "--from", "cracks", "--force").stdout
    assert "recipe configs/cracks.yaml." in out.splitlines()[0]
    assert yaml.safe_load(path.read_text())["recipe"] == "configs/cracks.yaml"
    listed = next(line for line in _run("tasks").stdout.splitlines() if line.startswith("│ bees "))
    assert "160 px" in listed, listed  # the cracks recipe's image size
    cfg = load_config("bees")  # what `visionlab train --task bees` trains: the cracks recipe
    assert cfg.task == "bees" and cfg.image_size == 160 and cfg.model == load_config("cracks").model


def test_tasks_new_refuses_with_one_line_each(tmp_path: Path):
    photos = write_class_folder(tmp_path / "garden")
    segs = write_seg_folder(tmp_path / "roofs")
    _run("tasks", "new", "bees", "--data", photos)
    msg = _error("tasks", "new", "bees", "--data", photos)
    assert "bees.yaml already exists" in msg and "--force" in msg, msg
    assert "'cracks' is a built-in task" in _error("tasks", "new", "cracks", "--data", photos, "--force")
    assert f"--data {tmp_path / 'nowhere'} does not exist" in _error("tasks", "new", "wasps", "--data", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no images found" in _error("tasks", "new", "wasps", "--data", tmp_path / "empty")
    msg = _error("tasks", "new", "wasps", "--data", photos, "--from", "landcover")
    assert "looks like a classification dataset, but task 'landcover' is segmentation" in msg, msg
    msg = _error("tasks", "new", "roofs", "--data", segs, "--from", "cracks")
    assert "looks like a segmentation dataset, but task 'cracks' is classification" in msg, msg
    assert "is not a task name" in _error("tasks", "new", "my bees", "--data", photos)
    assert "Windows reserves it for a device" in _error("tasks", "new", "CON", "--data", photos)
    assert "Windows reserves it for a device" in _error("tasks", "new", "lpt1.x", "--data", photos)
    assert sorted(p.name for p in _user_folder().iterdir()) == ["bees.yaml"]  # nothing written by a refusal

    # a segmentation folder: its kind and classes.json's classes, the general segment recipe
    out = _run("tasks", "new", "roofs", "--data", segs).stdout
    assert "task 'roofs', segmentation, 3 classes (ground, water, roof), recipe configs/segment.yaml." in out, out


def test_a_broken_or_clashing_user_yaml_is_one_line_naming_the_file():
    folder = _user_folder()
    folder.mkdir(parents=True)
    bad = folder / "bees.yaml"
    bad.write_text("kind: classification\nclases: [bee, wasp]\n")
    msg = _error("tasks")
    assert f"{bad}: unknown key 'clases' (did you mean 'classes'?)" in msg and "Known keys: name, kind, classes" in msg, msg
    bad.write_text("kind: classification\nclasses: [bee, wasp\n")
    assert f"{bad}: not valid YAML" in _error("tasks")
    bad.write_text("kind: regression\nclasses: [bee, wasp]\n")
    assert f"{bad}: key 'kind': unknown task kind 'regression'" in _error("tasks")
    bad.write_text("kind: classification\nclasses: [bee, wasp]\nrecipe: mine.yaml\n")
    assert f"{bad}: key 'recipe': mine.yaml is not a file" in _error("tasks")
    bad.unlink()
    clash = folder / "cracks.yaml"
    clash.write_text("kind: classification\nclasses: [bee, wasp]\n")
    assert f"{clash}: task 'cracks' is a built-in task" in _error("tasks")
    clash.unlink()
    # a recipe named relative to the task YAML (in a sub-folder: every YAML of the folder itself is a task)
    (folder / "recipes").mkdir()
    (folder / "recipes" / "mine.yaml").write_text("model: cracks_cnn\nimage_size: 48\n")
    (folder / "bees.yaml").write_text("kind: classification\nclasses: [bee, wasp]\nrecipe: recipes/mine.yaml\n")
    row = next(line for line in _run("tasks").stdout.splitlines() if line.startswith("│ bees "))
    assert "cracks_cnn" in row and "48 px" in row, row


# --------------------------------------------------------------------------- train --data DIR, no --task


@pytest.fixture
def odd_photos(shared_data: Path, tmp_path: Path) -> Path:
    """A class-folder dataset of three Caltech101 classes that no task knows (8 real photos each,
    symbolic links to ../shared/data/ood/caltech101-other), in a folder whose name needs sanitizing."""
    source = shared_data / "ood" / "caltech101-other"
    if not source.is_dir():
        pytest.skip(f"{source} not found (../shared/data/SOURCES.md lists it)")
    root = tmp_path / "Odd Things"
    for name in ("accordion", "anchor", "bonsai"):
        (root / name).mkdir(parents=True)
        for photo in sorted((source / name).glob("*.jpg"))[:8]:
            (root / name / photo.name).symlink_to(photo)
    return root


def _serve_one(checkpoint: Path, photo: Path) -> dict:
    """``visionlab serve`` of ``checkpoint`` on 127.0.0.1 (a free port), and its answer to ``photo``."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = served_url(proc)[0]
        r = httpx.post(url + "/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_folder_of_photos_no_task_knows_trains_evaluates_predicts_and_serves_with_no_task(odd_photos: Path, tmp_path: Path):
    classes = ["accordion", "anchor", "bonsai"]
    train = _run("train", "--data", odd_photos, *FAST).stdout
    first = train.strip().splitlines()[0]
    assert first == (f"No --task: {odd_photos} looks like a classification dataset (3 classes); training task 'odd-things' "
                     "with the classify recipe (configs/classify.yaml)."), first
    (ckpt,) = Path(os.environ["VISIONLAB_RUNS"]).glob("odd-things/*/best.pt")
    assert not _user_folder().exists()  # nothing was registered

    evaluation = _run("evaluate", "--out", tmp_path / "eval", "--device", "cpu").stdout
    assert str(ckpt) in evaluation  # the latest run, said
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "odd-things" and metrics["kind"] == "classification"
    assert sorted(metrics["per_class"]) == classes

    photo = next((odd_photos / "anchor").iterdir())
    _run("predict", photo, "--out", tmp_path / "preds.csv", "--device", "cpu")
    row = pd.read_csv(tmp_path / "preds.csv").iloc[0]
    assert row["label"] in classes and 0 < row["confidence"] <= 1

    answer = _serve_one(ckpt, photo)
    assert answer["task"] == "odd-things"
    assert answer["results"][0]["label"] in classes


@pytest.mark.torchfree
def test_a_folder_named_as_a_task_trains_that_task_if_the_kinds_agree(tmp_path: Path):
    """What ``train --data DIR`` with no --task picks (its first line), without training."""
    cracks = write_class_folder(tmp_path / "cracks", ("Negative", "Positive"))
    spec, note = folder_task(cracks)
    assert spec is get_task("cracks")
    assert note == (f"No --task: {cracks} looks like a classification dataset (2 classes); training task 'cracks' "
                    "(built-in, named as the folder) with its recipe (configs/cracks.yaml).")
    roofs = write_seg_folder(tmp_path / "My Roofs!")
    spec, note = folder_task(roofs)
    assert (spec.name, spec.kind, spec.default_classes, spec.recipe_path) == (
        "my-roofs", "segmentation", ("ground", "water", "roof"), REPO / "configs" / "segment.yaml")
    assert note.endswith("training task 'my-roofs' with the segment recipe (configs/segment.yaml)."), note
    folder = _user_folder()
    folder.mkdir()
    (folder / "my-roofs.yaml").write_text("kind: classification\nclasses: [ground, water, roof]\n")
    with pytest.raises(VisionlabError, match="looks like a segmentation dataset, but task 'my-roofs' .the folder's name. is classification"):
        folder_task(roofs)


def test_a_broken_user_yaml_spoils_only_its_own_task():
    """In process: a task file that does not read is said when the tasks are listed and when its own
    name is looked up; built-in tasks, other user tasks and unknown names are found (or not) as before."""
    from visionlab.errors import VisionlabError
    from visionlab.registry import find_task, get_task, list_tasks

    folder = _user_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.yaml").write_text("classes: [a, b\n")
    (folder / "fine.yaml").write_text("kind: classification\nclasses: [a, b]\ndescription: fine\n")
    assert get_task("cracks").name == "cracks" and find_task("fine").name == "fine"
    assert find_task("nope") is None
    with pytest.raises(VisionlabError, match=r"broken\.yaml"):
        get_task("broken")
    with pytest.raises(VisionlabError, match=r"broken\.yaml"):
        list_tasks()


def test_another_tasks_recipe_does_not_bring_its_class_picks():
    """tasks new --from caltech: caltech's recipe picks six Caltech101 classes; the new task's classes are its folder's."""
    from visionlab.api import load_config
    from visionlab.registry import TaskSpec

    assert load_config("caltech").classes == ["Faces", "brain", "camera", "dollar_bill", "ketch", "watch"]
    bees = TaskSpec(name="bees", kind="classification", default_classes=("bee", "wasp"), description="", recipe="configs/caltech.yaml")
    cfg = load_config(bees)
    assert cfg.classes is None and cfg.image_size == 224 and cfg.model == "efficientnet_lite0"
