"""Metrics, reports and plots: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from visionlab.engine.plots import (
    colorize_mask,
    overlay_mask,
    save_confusion_matrix,
    save_training_curves,
)
from visionlab.kinds.segmentation.meter import SegmentationMeter
from visionlab.errors import VisionlabError
from visionlab.kinds.classification.meter import ClassificationMeter
from visionlab.present.evaluation import show_tables, write_confusion_csv


def _logits_from_probs(probs) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


# --------------------------------------------------------------------------- classification


def test_binary_auc_uses_probabilities_not_hard_labels():
    # Positive-class probabilities 0.1, 0.6 | 0.4, 0.9 for targets 0, 0 | 1, 1.
    # Ranking: 3 of 4 (positive, negative) pairs are ordered correctly -> AUC 0.75.
    # Hard labels (0, 1 | 0, 1) would give AUC 0.5.
    p1 = [0.1, 0.6, 0.4, 0.9]
    target = torch.tensor([0, 0, 1, 1])
    meter = ClassificationMeter(2)
    meter.update(_logits_from_probs([[1 - p, p] for p in p1]), target)
    m = meter.compute()
    assert m["roc_auc"] == pytest.approx(0.75)
    assert roc_auc_score(target.numpy(), (np.array(p1) > 0.5).astype(int)) == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert "top3_accuracy" not in m
    np.testing.assert_allclose(meter.probs[:, 1], p1, rtol=1e-6)
    assert meter.probs.dtype == np.float32


@pytest.mark.parametrize("num_classes", [2, 4, 7])
def test_perfect_predictions_score_one(num_classes):
    target = torch.arange(num_classes).repeat(3)
    logits = torch.nn.functional.one_hot(target, num_classes).float() * 10
    meter = ClassificationMeter(num_classes)
    meter.update(logits, target)
    m = meter.compute()
    expected = {"accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"}
    expected |= {f"top{k}_accuracy" for k in (3, 5) if num_classes > k}
    assert set(m) == expected
    for key, value in m.items():
        assert value == pytest.approx(1.0), key


def test_roc_auc_left_out_when_targets_hold_one_class():
    meter = ClassificationMeter(3)
    meter.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.int64))
    assert "roc_auc" not in meter.compute()
    report = meter.report(["a", "b", "c"])
    assert report["metrics"]["roc_auc"] is None
    json.dumps(report)  # JSON-ready: no NaN, no numpy types


def test_classification_matches_sklearn_on_random_data():
    gen = torch.Generator().manual_seed(0)
    n, c = 300, 5
    target = torch.randint(0, c, (n,), generator=gen)
    logits = torch.randn(n, c, generator=gen) + 1.5 * torch.nn.functional.one_hot(target, c)
    meter = ClassificationMeter(c)
    for chunk in range(0, n, 64):  # accumulated over batches
        meter.update(logits[chunk:chunk + 64], target[chunk:chunk + 64])
    assert len(meter) == n
    probs = torch.softmax(logits, 1).numpy()
    y, pred = target.numpy(), probs.argmax(1)
    m = meter.compute()
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-6)
    top3 = np.mean([y[i] in np.argsort(-probs[i])[:3] for i in range(n)])
    assert m["top3_accuracy"] == pytest.approx(top3)
    np.testing.assert_array_equal(meter.confusion_matrix(), confusion_matrix(y, pred, labels=range(c)))


def test_classification_report_per_class_and_confusion_rows_are_true():
    # Targets: a a b b ; predictions: a b b b ; class c never occurs.
    meter = ClassificationMeter(3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 5.0, 0]])
    meter.update(logits, torch.tensor([0, 0, 1, 1]))
    report = meter.report(["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["f1"] == pytest.approx(0.8)
    assert c == {"precision": None, "recall": None, "f1": None, "support": 0, "roc_auc": None}
    # Macro averages run over the classes that occur (a, b), not the absent c.
    assert report["metrics"]["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert report["num_samples"] == 4 and report["primary"] == "accuracy"
    json.dumps(report)


def test_classification_errors():
    meter = ClassificationMeter(3)
    with pytest.raises(VisionlabError, match="no samples"):
        meter.compute()
    with pytest.raises(VisionlabError, match="out of range"):
        meter.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        meter.update(torch.randn(2, 4), torch.tensor([0, 1]))
    meter.update(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class names"):
        meter.report(["a", "b"])
    meter.reset()
    assert len(meter) == 0 and meter.probs.shape == (0, 3)


# --------------------------------------------------------------------------- segmentation


def test_segmentation_hand_computed_and_absent_class_not_averaged():
    # 3 classes, class 2 absent from target and prediction.
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    meter = SegmentationMeter(3)
    meter.update(pred, target)
    m = meter.compute()
    iou0, iou1 = 1 / 2, 2 / 3  # class 0: tp 1, fn 1; class 1: tp 2, fp 1
    assert m["miou"] == pytest.approx((iou0 + iou1) / 2)  # not divided by 3
    assert m["pixel_accuracy"] == pytest.approx(3 / 4)
    assert m["mean_dice"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["fw_iou"] == pytest.approx((2 * iou0 + 2 * iou1) / 4)
    report = meter.report(["road", "water", "building"])
    assert report["per_class"]["building"]["iou"] is None
    assert report["per_class"]["water"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["road"]["pixel_share"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    json.dumps(report)


def test_segmentation_perfect_predictions_from_logits():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    meter = SegmentationMeter(4)
    meter.update(logits, target)
    assert meter.compute() == pytest.approx({"miou": 1.0, "pixel_accuracy": 1.0, "mean_dice": 1.0, "fw_iou": 1.0})


def test_ignore_index_pixels_do_not_count():
    target = torch.tensor([[[0, 1, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 0]]])  # wrong on the ignored pixels only
    meter = SegmentationMeter(2, ignore_index=255)
    meter.update(pred, target)
    assert meter.compute()["pixel_accuracy"] == 1.0
    assert meter.compute()["miou"] == 1.0
    assert meter.confusion_matrix().sum() == 2


def test_excluded_class_drops_out_of_miou():
    target = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    pred = torch.tensor([[[0, 0, 1, 1, 0, 1]]])  # class 2 ("unlabeled") always wrong
    with_all = SegmentationMeter(3)
    excluded = SegmentationMeter(3, exclude=[2])
    for meter in (with_all, excluded):
        meter.update(pred, target)
    assert with_all.compute()["miou"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert excluded.compute()["miou"] == pytest.approx(2 / 3)
    # Excluded pixels still count for pixel accuracy.
    assert excluded.compute()["pixel_accuracy"] == pytest.approx(4 / 6)
    report = excluded.report(["a", "b", "unlabeled"])
    assert report["excluded"] == ["unlabeled"] and report["per_class"]["unlabeled"]["excluded"] is True


def test_segmentation_matches_sklearn_confusion_matrix_on_random_data():
    gen = torch.Generator().manual_seed(2)
    c = 5
    target = torch.randint(0, c, (3, 16, 16), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.1] = 255
    logits = torch.randn(3, c, 16, 16, generator=gen)
    meter = SegmentationMeter(c)
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:], target[2:])
    y = target.numpy().ravel()
    p = logits.argmax(1).numpy().ravel()
    keep = y != 255
    cm = confusion_matrix(y[keep], p[keep], labels=range(c))
    np.testing.assert_array_equal(meter.confusion_matrix(), cm)
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    assert meter.compute()["miou"] == pytest.approx(iou.mean())
    assert meter.compute()["mean_dice"] == pytest.approx(f1_score(y[keep], p[keep], average="macro"))


def _scores_before_smp(target: np.ndarray, pred: np.ndarray, c: int, exclude: list[int]) -> dict:
    """The meter's numbers as main computed them before smp (numpy on the confusion matrix)."""
    keep = target != 255
    cm = np.bincount(target[keep] * c + pred[keep], minlength=c * c).reshape(c, c).astype(np.float64)
    tp, gt, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per = {"iou": np.where(union > 0, tp / union, np.nan), "dice": np.where(gt + predicted > 0, 2 * tp / (gt + predicted), np.nan),
               "precision": np.where(predicted > 0, tp / predicted, np.nan), "recall": np.where(gt > 0, tp / gt, np.nan)}
    averaged = np.ones(c, dtype=bool)
    averaged[exclude] = False
    iou, dice = per["iou"][averaged], per["dice"][averaged]
    present = np.isfinite(iou)
    out = {"miou": float(iou[present].mean()) if present.any() else float("nan"), "pixel_accuracy": float(tp.sum() / cm.sum()),
           "mean_dice": float(dice[present].mean()) if present.any() else float("nan")}
    if gt[averaged].sum() > 0:
        out["fw_iou"] = float((gt[averaged] * np.nan_to_num(iou)).sum() / gt[averaged].sum())
    return {"metrics": out, "per_class": {k: [None if np.isnan(v) else float(v) for v in vs] for k, vs in per.items()}}


@pytest.mark.parametrize("seed", range(20))
def test_segmentation_scores_from_smp_equal_the_numbers_before_it(seed: int):
    """smp's per-class IoU/F1/precision/recall on the meter's counts: the same floats as before, with an
    ignore index, excluded classes and classes that never occur; the counts are smp's get_stats."""
    import segmentation_models_pytorch as smp

    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 8))
    occurring = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
    target, pred = rng.choice(occurring, size=(2, 3, 9, 11))
    target[rng.random(target.shape) < 0.3] = 255
    target[0, 0, 0] = occurring[0]  # at least one labelled pixel
    exclude = sorted(rng.choice(c, size=int(rng.integers(0, c)), replace=False).tolist())
    meter = SegmentationMeter(c, ignore_index=255, exclude=exclude)
    for i in range(3):
        meter.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    want = _scores_before_smp(target.ravel(), pred.ravel(), c, exclude)
    got = meter.compute()
    assert got.keys() == want["metrics"].keys()
    for k, v in want["metrics"].items():
        assert got[k] == v or (np.isnan(v) and np.isnan(got[k])), k
    report = meter.report([f"c{i}" for i in range(c)])["per_class"]
    for k, values in want["per_class"].items():
        assert [report[f"c{i}"][k] for i in range(c)] == values, k
    stats = smp.metrics.get_stats(torch.from_numpy(pred), torch.from_numpy(target), mode="multiclass", num_classes=c, ignore_index=255)
    assert all(torch.equal(a.sum(0, keepdim=True).double(), b) for a, b in zip(stats, meter._stats()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_segmentation_meter_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2, 32, 32), generator=gen)
    logits = torch.randn(2, 3, 32, 32, generator=gen)
    cpu, gpu = SegmentationMeter(3), SegmentationMeter(3)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    np.testing.assert_array_equal(cpu.confusion_matrix(), gpu.confusion_matrix())


def test_segmentation_errors():
    meter = SegmentationMeter(3)
    with pytest.raises(VisionlabError, match="no labelled pixels"):
        meter.compute()
    with pytest.raises(VisionlabError, match="out of range"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.int64), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        meter.update(torch.zeros(1, 2, 3, dtype=torch.int64), torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMeter(3, ignore_index=1)
    with pytest.raises(ValueError, match="exclude"):
        SegmentationMeter(3, exclude=[3])


def test_each_meter_reports_its_kinds_primary_metric():
    from visionlab.errors import VisionlabError
    from visionlab.kinds import get_kind

    for meter in (ClassificationMeter, SegmentationMeter):
        kind = get_kind(meter.kind)
        assert meter.primary == kind.primary and kind.higher_is_better(meter.primary)
        assert not kind.higher_is_better("loss")
    with pytest.raises(VisionlabError, match="unknown task kind 'detection'"):
        get_kind("detection")


# --------------------------------------------------------------------------- reports


def test_show_tables_prints_class_names_and_tables():
    meter = ClassificationMeter(3)
    meter.update(torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]]), torch.tensor([0, 1, 2, 1]))
    names = ["biotite", "pyrite", "quartz"]
    console = Console(record=True, width=140)
    show_tables(meter.report(names), names, console, title="minerals")
    text = console.export_text()
    for name in names + ["macro_f1", "confusion matrix", "minerals"]:
        assert name in text
    assert "0.7500" in text  # accuracy 3/4

    seg = SegmentationMeter(3, exclude=[2])
    seg.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
    console = Console(record=True, width=140)
    show_tables(seg.report(["land", "water", "unlabeled"]), console=console, title="landcover")
    text = console.export_text()
    for word in ["land", "water", "unlabeled (excluded)", "miou", "iou", "dice"]:
        assert word in text


def test_write_confusion_csv_roundtrip(tmp_path):
    cm = [[5, 1], [2, 7]]
    path = write_confusion_csv(cm, ["O", "R"], tmp_path / "sub" / "cm.csv")
    frame = pd.read_csv(path, index_col=0)
    assert list(frame.index) == ["O", "R"] and list(frame.columns) == ["O", "R"]
    np.testing.assert_array_equal(frame.to_numpy(), cm)
    with pytest.raises(ValueError, match="does not match"):
        write_confusion_csv(cm, ["a", "b", "c"], tmp_path / "bad.csv")


# --------------------------------------------------------------------------- plots


def _open_png(path, min_side=200, max_side=4000):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min_side <= img.width <= max_side and min_side <= img.height <= max_side
        return img.size


@pytest.mark.parametrize("n", [2, 20])
def test_save_confusion_matrix_png(tmp_path, n):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(n, n))
    cm[0] = 0  # a class with no samples must not divide by zero
    path = save_confusion_matrix(cm, [f"class_{i}" for i in range(n)], tmp_path / "cm.png")
    _open_png(path)


def test_save_training_curves_png(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 20,
         "train_accuracy": 0.55 + e / 20, "val_macro_f1": 0.4 + e / 20, "lr": 1e-3 * 0.5**e, "note": "x"}
        for e in range(1, 6)
    ]
    history[2]["val_macro_f1"] = None  # a gap, not a crash
    w, h = _open_png(save_training_curves(history, tmp_path / "curves.png"))
    assert w > 2 * h  # three panels side by side
    w2, _ = _open_png(save_training_curves([{"epoch": 1, "train_loss": 0.3}], tmp_path / "one.png"))
    assert w2 < w
    with pytest.raises(ValueError, match="empty"):
        save_training_curves([], tmp_path / "none.png")


def test_colorize_and_overlay_mask():
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    colors = {0: "#ff0000", 1: "#00ff00", 2: "#0000ff"}
    rgba = np.asarray(colorize_mask(mask, colors))
    assert rgba.shape == (2, 2, 4)
    assert tuple(rgba[0, 0]) == (255, 0, 0, 255) and tuple(rgba[1, 0]) == (0, 0, 255, 255)
    assert rgba[1, 1, 3] == 0  # ignore pixel is transparent

    image = Image.new("RGB", (2, 2), (100, 100, 100))
    out = np.asarray(overlay_mask(image, mask, colors, alpha=0.5)).astype(int)
    assert out.shape == (2, 2, 3)
    assert tuple(out[1, 1]) == (100, 100, 100)  # ignore pixel untouched
    np.testing.assert_allclose(out[0, 0], (178, 50, 50), atol=2)  # half red over grey
    with pytest.raises(ValueError, match="image is"):
        overlay_mask(Image.new("RGB", (3, 2)), mask, colors)




def test_an_empty_segmentation_meter_takes_the_counts_of_the_parts_merged_into_it():
    """A process whose shard held no pixels merges the others' counts (it read ``None.device`` before)."""
    part = SegmentationMeter(3)
    part.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 1]]]))
    merged = SegmentationMeter(3).merge(part)
    assert np.array_equal(merged.confusion_matrix(), part.confusion_matrix())
    part.update(torch.tensor([[[0]]]), torch.tensor([[[0]]]))  # a copy: the part's later counts are its own
    assert merged.confusion_matrix()[0, 0] == 1
