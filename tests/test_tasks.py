"""Every registered task trains, checkpoints, reloads and predicts; resume; class names from the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionlab
from visionlab.config import config_from_dict
from visionlab.kinds import get_kind
from visionlab.engine.checkpoint import FORMAT, load_checkpoint
from visionlab.errors import VisionlabError

from conftest import answered

TASKS = [spec.name for spec in visionlab.list_tasks()]


def _synthetic_images(task: str, n: int = 2) -> list[Path]:
    """A few files of the task's synthetic dataset (made once per session)."""
    spec = visionlab.get_task(task)
    root = get_kind(spec.kind).synthetic_data(spec)
    if spec.kind == "segmentation":
        return sorted((root / "images").iterdir())[:n]
    return [sorted((root / c).iterdir())[0] for c in spec.default_classes[:n]]


@pytest.mark.parametrize("task", TASKS)
def test_two_step_fit_checkpoint_reload_predict(task: str, fast):
    spec = visionlab.get_task(task)
    result = visionlab.train(task, data="synthetic", **fast(task))

    # the run folder holds everything a run promises
    run = result.run_dir
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    assert result.epochs_run == 1 and len(result.history) == 1
    assert np.isfinite(result.history[0]["train_loss"]) and result.history[0]["train_loss"] > 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == task and summary["synthetic"] is True

    # a plain dict, readable with weights_only=True, that carries everything predict needs
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert state["format"] == FORMAT
    assert state["task"] == task and state["kind"] == spec.kind
    assert state["visionlab_version"] == visionlab.__version__
    assert state["classes"] == list(spec.default_classes)
    assert state["epoch"] == 1
    pre = state["preprocessing"]
    assert len(pre["mean"]) == 3 and len(pre["std"]) == 3 and pre["kind"] == spec.kind
    cfg = config_from_dict(state["config"], get_kind(spec.kind).options)
    assert cfg.task == task and cfg.epochs == 1 and cfg.max_steps_per_epoch == 2
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert state["data"]["synthetic"] is True

    # predict from the checkpoint alone
    predictor = visionlab.load(result.best_checkpoint, device="cpu")
    assert predictor.task == task and predictor.classes == state["classes"]
    images = _synthetic_images(task)
    preds = predictor.predict(images)
    assert [p.source for p in preds] == [str(p) for p in images]
    for p, path in zip(preds, images):
        assert p.error is None
        assert answered(p) in state["classes"]
        assert 0.0 <= p.confidence <= 1.0
        if spec.kind == "segmentation":
            w, h = Image.open(path).size
            assert p.mask.shape == (h, w), "the mask has the image's full size"
            assert set(np.unique(p.mask)) <= set(pre["values"])
            assert sum(p.class_shares.values()) == pytest.approx(1.0, abs=1e-3)
            assert set(p.class_shares) == set(state["classes"])
        else:
            assert p.top_k[0] == (p.label, p.confidence)
            probs = [pr for _, pr in p.top_k]
            assert probs == sorted(probs, reverse=True)
            assert len(p.top_k) == min(3, len(state["classes"]))

    # the same image as a path, a PIL image and an array gives the same answer
    as_pil = predictor.predict(Image.open(images[0]))[0]
    as_array = predictor.predict(np.asarray(Image.open(images[0]).convert("RGB")))[0]
    assert as_pil.label == as_array.label == preds[0].label
    assert as_pil.confidence == pytest.approx(preds[0].confidence, abs=1e-4)


def test_resume_continues_from_the_saved_epoch(fast):
    opts = fast("cracks", model="cracks_cnn", model_args={}, name="resumable")
    first = visionlab.train("cracks", data="synthetic", **opts)
    assert load_checkpoint(first.last_checkpoint)["epoch"] == 1
    before = {k: v.clone() for k, v in load_checkpoint(first.last_checkpoint)["model"].items()}

    resumed = visionlab.train("cracks", data="synthetic", resume=first.last_checkpoint, **{**opts, "epochs": 2})
    assert resumed.run_dir == first.run_dir  # the same run continues, no new folder
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 is not trained again
    state = load_checkpoint(resumed.last_checkpoint)
    assert state["epoch"] == 2
    assert any(not torch.equal(before[k], state["model"][k]) for k in before), "epoch 2 changed the weights"
    rows = list(csv.DictReader((first.run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]

    # 'last' finds the latest run of the task by itself; nothing is left to do at epoch 2 of 2
    again = visionlab.train("cracks", data="synthetic", resume="last", **{**opts, "epochs": 2})
    assert again.run_dir == first.run_dir and len(again.history) == 2


def test_resume_from_a_checkpoint_of_another_task_is_refused(fast):
    result = visionlab.train("cracks", data="synthetic", **fast("cracks", model="cracks_cnn", model_args={}))
    with pytest.raises(VisionlabError, match="is for task 'cracks'"):
        visionlab.train("waste", data="synthetic", resume=result.last_checkpoint, **fast("waste"))


def _train_easy(folder: Path, fast, **extra):
    """Enough steps of a small CNN to separate red apples from striped zebras."""
    opts = fast("cracks", model="cracks_cnn", model_args={}, image_size=24, epochs=6, max_steps_per_epoch=4,
                batch_size=4, lr=3e-3, val_fraction=0.0, test_fraction=0.0, augment={"hflip": False, "scale": [1.0, 1.0],
                "translate": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}, **extra)
    return visionlab.train("cracks", data=folder, **opts)


def test_class_names_come_from_the_data_sorted(cls_folder: Path, fast):
    result = _train_easy(cls_folder, fast)
    state = load_checkpoint(result.best_checkpoint)
    assert state["classes"] == ["apple", "zebra"]  # sorted folder names, not the task's defaults
    predictor = visionlab.load(result.best_checkpoint)
    labels = [p.label for p in predictor.predict([cls_folder / "apple" / "img_0.png", cls_folder / "zebra" / "img_0.png"])]
    assert labels == ["apple", "zebra"]


def test_class_order_from_the_config_is_kept(cls_folder: Path, fast):
    result = _train_easy(cls_folder, fast, classes=["zebra", "apple"])
    state = load_checkpoint(result.best_checkpoint)
    assert state["classes"] == ["zebra", "apple"]
    predictor = visionlab.load(result.best_checkpoint)
    assert predictor.classes == ["zebra", "apple"]
    preds = predictor.predict([cls_folder / "apple" / "img_1.png", cls_folder / "zebra" / "img_1.png"])
    assert [p.label for p in preds] == ["apple", "zebra"]  # names survive the round trip, indices are not swapped


def test_config_classes_choose_a_subset(make_cls_folder, fast):
    folder = make_cls_folder("three", classes=("apple", "kiwi", "zebra"), per_class=4)
    result = visionlab.train("cracks", data=folder, **fast("cracks", model="cracks_cnn", model_args={}, classes=["kiwi", "apple"],
                                                          val_fraction=0.0, test_fraction=0.0))
    assert load_checkpoint(result.best_checkpoint)["classes"] == ["kiwi", "apple"]
    assert result.run_dir.joinpath("config.yaml").read_text().count("kiwi") == 1


def test_unreadable_training_image_is_skipped_and_reported(cls_folder: Path, fast):
    (cls_folder / "apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    from rich.console import Console

    console = Console(record=True, width=200)
    result = visionlab.train("cracks", data=cls_folder, console=console,
                             **fast("cracks", model="cracks_cnn", model_args={}, val_fraction=0.0, test_fraction=0.0))
    state = load_checkpoint(result.best_checkpoint)
    assert [Path(p).name for p in state["data"]["unreadable"]] == ["broken.jpg"]
    assert state["data"]["split_sizes"]["train"] == 16
    assert "skipped 1 unreadable image" in console.export_text()


def test_streaming_without_cache_trains_small_datasets(cls_folder: Path, fast):
    """cache=none must train as many steps as the cached path, also when the data is smaller than a batch."""
    result = visionlab.train("cracks", data=cls_folder, **fast("cracks", model="cracks_cnn", model_args={}, cache="none",
                                                              batch_size=32, val_fraction=0.0, test_fraction=0.0))
    assert result.history[0]["train_loss"] > 0
    assert result.history[0]["images_per_second"] > 0


def test_evaluate_on_another_folder_writes_metrics(cls_folder: Path, make_cls_folder, tmp_path: Path, fast):
    result = _train_easy(cls_folder, fast)
    held_out = make_cls_folder("held-out", classes=("apple", "zebra"), per_class=3)
    report = visionlab.evaluate(result.best_checkpoint, data=held_out, out=tmp_path / "eval")
    assert report["images"] == 6 and report["split"] == "test"
    assert report["metrics"]["accuracy"] == pytest.approx(1.0)
    assert np.asarray(report["confusion_matrix"]).sum() == 6
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == report["metrics"]["accuracy"] and saved["task"] == "cracks"
    assert (tmp_path / "eval" / "confusion_matrix.csv").is_file()
    # a folder whose classes differ from the model's is refused
    other = make_cls_folder("other", classes=("kiwi", "zebra"), per_class=2)
    with pytest.raises(VisionlabError):
        visionlab.evaluate(result.best_checkpoint, data=other)


def test_segmentation_on_a_folder_ignores_unlabelled_pixels(seg_folder: Path, fast):
    result = visionlab.train("landcover", data=seg_folder, **fast("landcover", ignore_classes=[], val_fraction=0.25,
                                                                  test_fraction=0.0))
    state = load_checkpoint(result.best_checkpoint)
    assert state["classes"] == ["ground", "water", "roof"]  # from classes.json
    assert state["preprocessing"]["values"] == [0, 1, 2] and state["preprocessing"]["ignore_index"] == 255
    assert 0.0 <= result.history[0]["val_miou"] <= 1.0
    pred = visionlab.load(result.best_checkpoint).predict(seg_folder / "images" / "tile_0.png")[0]
    assert pred.mask.shape == (70, 90) and set(np.unique(pred.mask)) <= {0, 1, 2}


def test_caltech_with_the_seed_resnet18_and_no_weights(fast):
    result = visionlab.train("caltech", data="synthetic", **fast("caltech", model="resnet18", model_args={"weights": None}))
    state = load_checkpoint(result.best_checkpoint)
    assert state["model_name"] == "resnet18" and state["model_args"] == {"weights": None}
    assert state["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert answered(visionlab.load(result.best_checkpoint).predict(_synthetic_images("caltech", 1))[0]) in state["classes"]


def test_real_cracks_photos(shared_data: Path, fast, tmp_path: Path):
    """A few steps on the real METU/pavement photos; a real photo comes back with a real class name."""
    root = shared_data / "cracks"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    files = {c: sorted((root / c).glob("*.jpg"))[:24] for c in ("Negative", "Positive")}
    table = tmp_path / "subset.csv"  # references the real files, copies nothing
    table.write_text("path,label\n" + "".join(f"{p},{c}\n" for c, ps in files.items() for p in ps))
    result = visionlab.train("cracks", data=table, **fast("cracks", model="cracks_cnn", model_args={}, image_size=64,
                                                           max_steps_per_epoch=3, batch_size=8))
    state = load_checkpoint(result.best_checkpoint)
    assert state["classes"] == ["Negative", "Positive"]
    assert state["data"]["unreadable"] == []
    photo = files["Positive"][0]
    pred = visionlab.load(result.best_checkpoint).predict(photo)[0]
    assert pred.error is None and answered(pred) in ("Negative", "Positive")
    assert {lab for lab, _ in pred.top_k} == {"Negative", "Positive"}


def test_segmentation_with_fewer_crops_than_a_batch_still_trains(seg_folder: Path, fast):
    """3 training images x 2 crops < batch 8: one (partial) batch, as for classification, not zero steps."""
    result = visionlab.train("landcover", data=seg_folder, **fast("landcover", ignore_classes=[], batch_size=8,
                                                                  val_fraction=0.25, test_fraction=0.0))
    assert result.history[0]["train_loss"] > 0
    assert result.history[0]["images_per_second"] > 0


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_same_seed_same_run(kind: str, cls_folder: Path, seg_folder: Path, fast):
    """seed covers splits, init and augmentation: two runs with one seed train identically."""
    if kind == "segmentation":
        task, data, extra = "landcover", seg_folder, {"ignore_classes": [], "val_fraction": 0.25, "test_fraction": 0.0}
    else:
        task, data, extra = "cracks", cls_folder, {"model": "cracks_cnn", "model_args": {}}
    options = fast(task, seed=7, **extra)
    if options["device"] != "cpu":
        pytest.skip("bitwise reproducibility is checked on the CPU (cuDNN autotuning picks kernels per run)")
    runs = [visionlab.train(task, data=data, **options) for _ in range(2)]
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    a, b = (load_checkpoint(r.best_checkpoint)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unreadable_image_is_reported_without_cache(cls_folder: Path, fast):
    (cls_folder / "apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = visionlab.train("cracks", data=cls_folder, **fast("cracks", model="cracks_cnn", model_args={}, cache="none",
                                                              val_fraction=0.0, test_fraction=0.0))
    assert [Path(p).name for p in load_checkpoint(result.best_checkpoint)["data"]["unreadable"]] == ["broken.jpg"]


def test_ties_of_the_monitored_metric_go_to_the_lower_validation_loss(make_cls_folder, fast):
    folder = make_cls_folder("ties", per_class=12)
    opts = fast("cracks", model="cracks_cnn", model_args={}, image_size=24, epochs=8, max_steps_per_epoch=4, batch_size=4,
                lr=3e-3, val_fraction=0.25, test_fraction=0.0, augment={"hflip": False, "scale": [1.0, 1.0], "translate": 0.0,
                "brightness": 0.0, "contrast": 0.0, "saturation": 0.0})
    result = visionlab.train("cracks", data=folder, **opts)
    rows = [(h["val_accuracy"], -h["val_loss"], h["epoch"]) for h in result.history]
    best_acc, neg_loss, epoch = max(rows)
    state = load_checkpoint(result.best_checkpoint)
    assert state["epoch"] == epoch, rows
    assert state["best_metric"] == best_acc and state["best_loss"] == pytest.approx(-neg_loss)


def test_without_a_validation_split_best_is_the_lowest_training_loss(make_cls_folder, fast):
    folder = make_cls_folder("noval", per_class=8)
    opts = fast("cracks", model="cracks_cnn", model_args={}, image_size=24, epochs=3, max_steps_per_epoch=2, batch_size=4,
                val_fraction=0.0, test_fraction=0.0)
    result = visionlab.train("cracks", data=folder, **opts)
    assert result.monitor == "train_loss"
    assert all("val_accuracy" not in h for h in result.history)
    losses = [h["train_loss"] for h in result.history]
    state = load_checkpoint(result.best_checkpoint)
    assert state["epoch"] == 1 + losses.index(min(losses)) and state["best_metric"] == pytest.approx(min(losses))


def test_a_monitor_that_is_not_measured_stops_with_the_epoch_saved(make_cls_folder, fast):
    folder = make_cls_folder("badmon", per_class=8)
    opts = fast("cracks", model="cracks_cnn", model_args={}, image_size=24, epochs=3, max_steps_per_epoch=1, batch_size=4,
                val_fraction=0.25, test_fraction=0.0, monitor="val_acc", name="badmon")
    with pytest.raises(VisionlabError, match="monitor='val_acc' is not measured") as err:
        visionlab.train("cracks", data=folder, **opts)
    assert "val_accuracy" in err.value.hint
    last = Path(opts["out"]) / "cracks" / "badmon" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1


# --------------------------------------------------------------------------- splits

from visionlab.data.splits import split_indices, split_keys  # noqa: E402


def _cracks_like(n: int = 1500, start: int = 0) -> tuple[list[str], np.ndarray]:
    """Dataset-relative names of a two-class folder of n photos each (METU-style numbered JPEGs)."""
    keys = [f"{c}/{i:05d}.jpg" for c in ("Negative", "Positive") for i in range(start, start + n)]
    return keys, np.repeat([0, 1], n)


def _split_of(keys: list[str], splits: dict[str, np.ndarray]) -> dict[str, str]:
    return {keys[i]: name for name, idx in splits.items() for i in idx}


def test_split_is_stratified_per_class_within_the_documented_bound():
    keys, labels = _cracks_like()
    splits = split_indices(keys, labels, [None] * len(keys), 0.15, 0.15, seed=42)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(keys)))  # a partition
    # Binomial per class: 225 +- 3 sd, sd = sqrt(1500 * 0.15 * 0.85) = 13.8 (the docstring's guarantee).
    for name in ("val", "test"):
        per_class = np.bincount(labels[splits[name]], minlength=2)
        assert all(abs(int(c) - 225) <= 42 for c in per_class), (name, per_class)
    # ... and exact in expectation: over 40 seeds the mean test count of a class is 225 +- 2.5 (> 3 sd of the mean).
    counts = [np.bincount(labels[split_indices(keys, labels, [None] * len(keys), 0.15, 0.15, seed=s)["test"]], minlength=2)
              for s in range(40)]
    assert np.abs(np.mean(counts, axis=0) - 225).max() < 2.5


def test_adding_files_never_moves_a_file_between_splits():
    keys, labels = _cracks_like(300)
    before = _split_of(keys, split_indices(keys, labels, [None] * len(keys), 0.15, 0.15, seed=7))
    new_keys, new_labels = _cracks_like(200, start=300)
    grown = keys + new_keys + ["Positive/zzz_new_photo.jpg"]
    grown_labels = np.concatenate([labels, new_labels, [1]])
    order = np.random.default_rng(0).permutation(len(grown))  # listed in another order, too
    shuffled = [grown[i] for i in order]
    after = _split_of(shuffled, split_indices(shuffled, grown_labels[order], [None] * len(grown), 0.15, 0.15, seed=7))
    assert {k: after[k] for k in keys} == before
    assert split_indices(keys, labels, [None] * len(keys), 0.15, 0.15, seed=8)["test"].tolist() != \
        split_indices(keys, labels, [None] * len(keys), 0.15, 0.15, seed=7)["test"].tolist()  # the seed matters


def test_small_classes_keep_a_training_image_and_val_fraction_zero_works():
    keys = ["big/" + f"{i}.png" for i in range(40)] + ["one/a.png", "two/a.png", "two/b.png"]
    labels = np.array([0] * 40 + [1] + [2, 2])
    for seed in range(30):
        s = split_indices(keys, labels, [None] * len(keys), 0.3, 0.3, seed=seed)
        assert set(labels[s["train"]].tolist()) == {0, 1, 2}, seed
        none = split_indices(keys, labels, [None] * len(keys), 0.0, 0.15, seed=seed)
        assert len(none["val"]) == 0 and len(none["train"]) + len(none["test"]) == len(keys)
    assert {k: len(v) for k, v in split_indices([], np.array([], dtype=np.int64), [], 0.15, 0.15, 0).items()} == \
        {"train": 0, "val": 0, "test": 0}


def test_split_folders_win_and_a_missing_val_is_carved_stably_from_train():
    keys = [f"{s}/c{c}/{i}.png" for s in ("train", "test") for c in (0, 1) for i in range(50)]
    labels = np.tile(np.repeat([0, 1], 50), 2)
    folders = ["train"] * 100 + ["test"] * 100
    s = split_indices(keys, labels, folders, 0.2, 0.15, seed=1)
    assert s["test"].tolist() == list(range(100, 200))  # the dataset's test folder, untouched
    assert 0 < len(s["val"]) < 45 and set(s["val"].tolist()) | set(s["train"].tolist()) == set(range(100))
    grown = split_indices(keys + ["train/c0/new.png"], np.append(labels, 0), folders + ["train"], 0.2, 0.15, seed=1)
    assert grown["val"].tolist()[: len(s["val"])] == s["val"].tolist()


def test_split_keys_do_not_depend_on_where_the_dataset_lives(tmp_path: Path):
    a = [tmp_path / "one" / "data" / "x" / "1.png", tmp_path / "one" / "data" / "y" / "2.png"]
    b = [tmp_path / "elsewhere" / "deeper" / "data" / "x" / "1.png", tmp_path / "elsewhere" / "deeper" / "data" / "y" / "2.png"]
    assert split_keys(a, tmp_path / "one" / "data") == split_keys(b, tmp_path / "elsewhere" / "deeper" / "data") == ["x/1.png", "y/2.png"]


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_moving_the_dataset_folder_keeps_every_split(kind: str, make_cls_folder, tmp_path: Path):
    import shutil

    from conftest import write_seg_folder
    from visionlab.api import load_config
    from visionlab.registry import get_task
    from visionlab.kinds import runner_for

    task = "cracks" if kind == "classification" else "landcover"
    first = make_cls_folder("first", per_class=12) if kind == "classification" else write_seg_folder(tmp_path / "first", n_images=12)

    def splits(root: Path) -> dict[str, list[str]]:
        extra = {"ignore_classes": [], "model_args": {"encoder_weights": None}} if kind == "segmentation" else {}
        cfg = load_config(task, overrides={"data": str(root), "cache": "none", **extra})
        runner = runner_for(cfg, get_task(task), torch.device("cpu"))
        runner.prepare()
        files = runner.index.paths if kind == "classification" else runner.index.images
        return {s: sorted(Path(files[i]).relative_to(root).as_posix() for i in idx) for s, idx in runner.splits.items()}

    before = splits(first)
    moved = tmp_path / "moved" / "below"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    assert splits(moved) == before
    assert sum(map(len, before.values())) == (24 if kind == "classification" else 12)


def test_small_pools_get_a_test_and_val_file_and_never_gain_an_old_training_file():
    keys = [f"tiles/tile_{i}.png" for i in range(12)]  # the synthetic landcover set: 1.8 test images expected
    for seed in range(60):
        s = split_indices(keys, None, [None] * 12, 0.15, 0.15, seed=seed)
        assert len(s["test"]) >= 1 and len(s["val"]) >= 1 and len(s["train"]) >= 1, (seed, s)
        grown_keys = keys + [f"tiles/new_{i}.png" for i in range(6)]
        grown = split_indices(grown_keys, None, [None] * 18, 0.15, 0.15, seed=seed)
        old_train = set(s["train"].tolist())
        assert not old_train & (set(grown["val"].tolist()) | set(grown["test"].tolist())), seed
    tiny = split_indices(["a.png", "b.png"], None, [None, None], 0.15, 0.15, seed=0)
    assert len(tiny["train"]) == 2  # 0.3 expected test/val files: nothing is forced out of training


def test_callbacks_see_every_epoch_checkpoint_and_the_end(fast):
    from visionlab.engine.trainer import Callback

    class Record(Callback):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def on_fit_start(self, trainer):
            self.calls.append(("start", trainer.run_dir.name, list(trainer.runner.classes)))

        def on_epoch_end(self, trainer, row):
            self.calls.append(("epoch", row["epoch"], row["train_loss"]))

        def on_checkpoint(self, trainer, path):
            self.calls.append(("checkpoint", path.name))

        def on_fit_end(self, trainer, result):
            self.calls.append(("end", result.epochs_run, bool(result.test_report)))

    rec = Record()
    result = visionlab.train("cracks", data="synthetic", callbacks=[rec], name="cb", **fast("cracks", epochs=2, model="cracks_cnn", model_args={}))
    assert rec.calls[0] == ("start", "cb", ["Negative", "Positive"])
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    assert epochs == [("epoch", h["epoch"], h["train_loss"]) for h in result.history]
    assert ("checkpoint", "last.pt") in rec.calls and ("checkpoint", "best.pt") in rec.calls
    assert rec.calls.index(("checkpoint", "last.pt")) > rec.calls.index(epochs[0])  # written after the epoch's row
    assert rec.calls[-1] == ("end", 2, True)


def test_callbacks_hear_of_an_error(fast):
    from visionlab.engine.trainer import Callback

    seen = []

    class Record(Callback):
        def on_exception(self, trainer, exc):
            seen.append(type(exc).__name__)

    with pytest.raises(VisionlabError, match="training diverged"):
        visionlab.train("cracks", data="synthetic", callbacks=[Record()], **fast("cracks", model="cracks_cnn", model_args={}, lr=1e6))
    assert seen == ["Diverged"]
