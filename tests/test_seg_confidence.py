"""Landcover's confidence (#22 section 1): the per-pixel confidence map beside the mask on every
surface (predict's files, serve's JSON, the torch-free runtime), the pixel-level calibration that
evaluate reports (ECE, NLL, Brier, before and after the temperature fitted on validation pixels),
and the confidence overlay that is a segmentation's explanation.

One tiny U-Net is trained for the module on a synthetic folder of images larger than its tiles,
scaled by seg_scale 0.5, so that prediction blends several tiles and brings them back to full size;
training fits no temperature for segmentation, so a copy of its checkpoint gets one fitted on the
validation pixels, as ``benchmarks/seg_calibration.py --refit`` does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionlab
from conftest import REPO, fast_options, write_seg_folder
from visionlab.kinds.segmentation.calibration import PixelCalibration, fit_pixel_temperature, pixel_views
from visionlab.kinds.segmentation.confidence import LEGEND_TITLE, colorize_confidence, confidence_overlay
from visionlab.kinds.segmentation.step import TileStep, original_size, predict_probs


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


def _refit(best: Path) -> Path:
    """A copy of ``best`` with a temperature fitted on its validation pixels (best-cal.pt)."""
    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
    from visionlab.kinds import get_kind
    from visionlab.registry import get_task

    state = load_checkpoint(best)
    kind = get_kind(state["kind"])
    runner = kind.runner(config_from_dict(state["config"], kind.options), get_task(state["task"]), torch.device("cpu"))
    runner.use_saved(state)
    runner.prepare()
    calibration = fit_pixel_temperature(runner, load_model(state))
    return save_checkpoint({**state, "calibration": calibration}, best.with_name("best-cal.pt"))


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> dict[str, Path]:
    """A tiny landcover U-Net (64 px tiles, seg_scale 0.5, 2 epochs) on 8 images of 180 x 140 px
    with a validation split: its best.pt as trained (``raw``) and with a fitted temperature
    (``best``), its data and a photo of 230 x 170 px (several tiles)."""
    root = tmp_path_factory.mktemp("segconf")
    data = write_seg_folder(root / "seg", n_images=8, size=(180, 140))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        result = visionlab.train("landcover", data=str(data), console=_quiet(), **fast_options(
            "landcover", root / "runs", name="conf", epochs=2, seg_scale=0.5, ignore_classes=[],
            val_fraction=0.25, test_fraction=0.25, max_steps_per_epoch=3))
        calibrated = _refit(result.best_checkpoint)
    photo = root / "photo.png"
    rng = np.random.default_rng(3)
    img = np.zeros((170, 230, 3), dtype=np.uint8) + np.array([70, 150, 70], dtype=np.uint8)
    img[40:120, 60:200] = [40, 70, 200]
    Image.fromarray(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)).save(photo)
    return {"raw": result.best_checkpoint, "best": calibrated, "data": data, "photo": photo}


def _blended(predictor, photo: Path) -> np.ndarray:
    """The predictor's blended tile probabilities (C, H, W) of ``photo`` at its full size, computed here."""
    pre = predictor.preprocessing
    step = TileStep.of(predictor.model, pre, predictor.normalize, predictor.device, temperature=predictor.temperature)
    with torch.inference_mode():
        return predict_probs(step, predictor.preprocess(str(photo)), out_size=original_size(pre, str(photo))).numpy()


def test_training_fits_no_temperature_and_a_refit_keeps_one_only_where_it_lowers_ece(seg_model):
    assert "calibration" not in torch.load(seg_model["raw"], weights_only=True)  # measured to raise test ECE: not fitted
    assert visionlab.load(seg_model["raw"], device="cpu").temperature == 1.0
    cal = torch.load(seg_model["best"], weights_only=True)["calibration"]
    assert cal["fitted_on"] == "val" and cal["images"] >= 1 and cal["pixels"] > 1000
    assert 0.05 <= cal["temperature"] <= 20.0
    assert cal["nll_after"] <= cal["nll_before"]
    if cal["temperature"] != 1.0:  # kept only where it lowered the validation pixels' ECE
        assert cal["ece_after"] < cal["ece_before"] and cal["method"] in ("nll", "confidence")
    else:
        assert cal["ece_after"] == cal["ece_before"]
    assert visionlab.load(seg_model["best"], device="cpu").temperature == pytest.approx(cal["temperature"])


def test_the_fit_sees_every_tile_view_and_only_labelled_pixels(seg_model):
    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_model
    from visionlab.kinds import get_kind
    from visionlab.registry import get_task

    state = torch.load(seg_model["best"], weights_only=True)
    kind = get_kind("segmentation")
    runner = kind.runner(config_from_dict(state["config"], kind.options), get_task("landcover"), torch.device("cpu"))
    runner.use_saved(state, tta="d4")
    runner.prepare()
    model = load_model(state)
    img, mask = runner.train_pair(int(runner.splits["val"][0]))
    mask = mask.copy()
    mask[:, : mask.shape[1] // 2] = runner.ignore_index  # half of it not annotated
    step = TileStep.of(model, runner.preprocessing, runner.normalize, runner.device)
    with torch.inference_mode():
        views, y = pixel_views(step, img, mask, runner.ignore_index, torch.Generator().manual_seed(0), per_tile=64)
    assert views.shape[0] == 8 and views.shape[1] == len(y) > 0 and views.shape[2] == len(runner.classes)  # d4: 8 views
    assert set(y.tolist()) <= set(range(len(runner.classes)))  # 255 never
    # the views of one pixel are the same network on rotated copies of the same tile: they mostly agree
    assert (views.argmax(2) == views[0].argmax(1)).float().mean() > 0.5
    fit = fit_pixel_temperature(runner, model)
    assert fit is not None and fit["pixels"] > 0 and fit["images"] == len(runner.splits["val"])


def test_predict_writes_a_confidence_map_beside_the_mask_named_in_csv_and_json(seg_model, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "visionlab", "predict", str(seg_model["photo"]), "--checkpoint",
                           str(seg_model["best"]), "--out", str(tmp_path / "p.csv"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert f"masks, overlays and confidence maps written to {tmp_path}" in " ".join(done.stdout.split())
    visionlab.predict([seg_model["photo"]], checkpoint=seg_model["best"], out=tmp_path / "p.json", device="cpu", console=_quiet())
    import pandas as pd

    (row,) = pd.read_csv(tmp_path / "p.csv").to_dict("records")
    (entry,) = json.loads((tmp_path / "p.json").read_text())
    assert row["confidence_map"] == entry["confidence_map"] == str(tmp_path / "photo_confidence.png")
    predictor = visionlab.load(seg_model["best"], device="cpu")
    probs = _blended(predictor, seg_model["photo"])
    conf = probs.max(0)
    assert entry["mean_confidence"] == pytest.approx(float(conf.mean()), abs=1e-4) == row["mean_confidence"]
    png = np.asarray(Image.open(entry["confidence_map"]).convert("RGB"))
    assert png.shape[1] == 230 and png.shape[0] > 170  # the map at the photo's full size, the legend under it
    assert np.abs(png[:170].astype(int) - colorize_confidence(conf).astype(int)).max() <= 1
    legend = png[170:]
    assert (legend == 255).mean() > 0.3 and (legend < 128).any()  # white strip with a colour bar and black text


def test_calibrate_says_a_segmentation_checkpoint_has_nothing_to_fit_not_that_it_lacks_validation_images(
        seg_model, tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "visionlab", "calibrate", str(seg_model["raw"]), "--out", str(tmp_path / "c.pt"),
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "segmentation models have no temperature or unknown detector" in said, said
    assert "validation" not in said and not (tmp_path / "c.pt").exists()  # its run has a validation split


def test_the_tiled_map_is_full_size_the_blend_of_the_tiles_and_has_no_seams(seg_model):
    from visionlab.data.geometry import tile_plan

    predictor = visionlab.load(seg_model["best"], device="cpu")
    (pred,) = predictor.predict(str(seg_model["photo"]))
    conf = pred.confidence_map
    assert conf.shape == pred.mask.shape == (170, 230) and conf.dtype == np.float32
    probs = _blended(predictor, seg_model["photo"])
    assert np.allclose(conf, probs.max(0), atol=1e-6)
    assert conf.min() >= 1 / len(predictor.classes) - 1e-6 and conf.max() <= 1.0
    assert (probs.argmax(0) == np.searchsorted(predictor.preprocessing.values, pred.mask)).all()
    # the tiles meet in the scaled image (seg_scale 0.5): across the middle of each overlap the map
    # changes no faster than elsewhere (a hard stitch would jump there)
    pre = predictor.preprocessing
    h, w = predictor.preprocess(str(seg_model["photo"])).shape[:2]
    plan = tile_plan(h, w, int(pre.tile_size), float(pre.tile_overlap), 32)
    for axis, starts, size, full in ((1, sorted({x for _, x in plan.coords}), plan.tile_w, 230),
                                     (0, sorted({y for y, _ in plan.coords}), plan.tile_h, 170)):
        mids = [round((a + size + b) / 2 * full / (w if axis == 1 else h)) for a, b in zip(starts, starts[1:]) if a + size > b]
        assert mids, "the photo must need several tiles"
        step = np.abs(np.diff(conf, axis=axis)).mean(axis=1 - axis)
        at = [m for m in mids if 0 <= m < len(step)]
        assert step[at].mean() <= 1.5 * step.mean(), (axis, step[at], step.mean())


def test_evaluate_reports_pixel_ece_nll_brier_before_and_after_with_a_reliability_diagram(seg_model, tmp_path: Path):
    from visionlab.report import write_report

    state = torch.load(seg_model["best"], weights_only=True)
    report = visionlab.evaluate(checkpoint=seg_model["best"], device="cpu", console=_quiet(), out=tmp_path / "eval")
    m, cal = report.metrics, report["calibration"]
    for key in ("ece", "nll", "brier", "ece_before", "nll_before", "brier_before"):
        assert isinstance(m[key], float) and m[key] >= 0, key
    assert cal["applied"] and cal["unit"] == "pixel" and cal["temperature"] == pytest.approx(state["calibration"]["temperature"])
    assert cal["pixels"]["sampled"] == cal["pixels"]["labelled"] > 0  # small images: every labelled pixel
    rel = report["reliability"]
    assert sum(rel["after"]["count"]) == sum(rel["before"]["count"]) == cal["pixels"]["sampled"]
    assert (m["ece"] == m["ece_before"]) == (cal["temperature"] == 1.0)
    raw = visionlab.evaluate(checkpoint=seg_model["best"], device="cpu", console=_quiet(), calibration=False, out=tmp_path / "raw")
    assert not raw["calibration"]["applied"] and raw.metrics["ece"] == raw.metrics["ece_before"]
    assert raw.metrics["ece"] == pytest.approx(m["ece_before"], abs=1e-6)  # the raw softmax, scored two ways
    trained = visionlab.evaluate(checkpoint=seg_model["raw"], device="cpu", console=_quiet(), out=tmp_path / "trained")
    assert not trained["calibration"]["applied"] and trained.metrics["ece"] == pytest.approx(m["ece_before"], abs=1e-6)
    assert (tmp_path / "eval" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    html = write_report(seg_model["best"].parent, eval_dir=tmp_path / "eval").read_text()
    assert "Calibration" in html and "NLL in nats per pixel" in html and "alt='reliability diagram'" in html


def test_pixel_ece_is_torchmetrics_over_the_annotated_pixels_only():
    from torchmetrics.classification import MulticlassCalibrationError

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, (3, 40, 50)).astype(np.float32))
    probs = logits.softmax(0)
    mask = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    mask[:, :20] = 255  # not annotated: whatever the model says there must not count
    cal = PixelCalibration(images=1)
    cal.update(0, probs, mask)
    got = cal.report()
    flat, target = probs.reshape(3, -1).T, torch.from_numpy(mask.astype(np.int64)).reshape(-1)
    want = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1", ignore_index=255)(flat, target)
    assert got["metrics"]["ece"] == pytest.approx(float(want), abs=1e-6)
    keep = target != 255
    assert got["metrics"]["nll"] == pytest.approx(float(torch.nn.functional.nll_loss(flat[keep].log(), target[keep])), abs=1e-5)
    assert got["pixels"] == {"sampled": int(keep.sum()), "labelled": int(keep.sum())}
    # a large image gives a seeded sample of its pixels: the same every time
    big = PixelCalibration(images=1000)
    assert big.per_image < 40 * 50 * 100
    a, b = PixelCalibration(images=10**6), PixelCalibration(images=10**6)
    for c in (a, b):
        c.per_image = 100
        c.update(7, probs, mask)
    assert a.report() == b.report() and a.report()["pixels"]["sampled"] == 100


def test_the_runtime_writes_the_same_confidence_map_from_the_onnx_file(seg_model, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from visionlab.runtime import load, main

    exported = visionlab.export_onnx(seg_model["best"], out=tmp_path / "seg.onnx", console=_quiet())
    assert exported.end_to_end.passed, exported.end_to_end.line()  # confidence maps are part of its comparison
    runtime = load(exported.path, threads=1)
    assert runtime.temperature == pytest.approx(torch.load(seg_model["best"], weights_only=True)["calibration"]["temperature"], rel=1e-4)
    (row,) = runtime.predict([seg_model["photo"]])
    (pred,) = visionlab.load(seg_model["best"], device="cpu").predict(str(seg_model["photo"]))
    assert row["confidence_map"].shape == (170, 230)
    assert np.abs(row["confidence_map"] - pred.confidence_map).max() < 1e-4
    assert row["mean_confidence"] == pytest.approx(pred.mean_confidence, abs=1e-4)
    masks, out = tmp_path / "masks", tmp_path / "rows.json"
    assert main([str(exported.path), str(seg_model["photo"]), "--masks", str(masks), "--json", str(out), "--threads", "1"]) == 0
    (saved,) = json.loads(out.read_text())
    assert saved["confidence_file"] == str(masks / "photo_confidence.png") and "confidence_map" not in saved
    png = np.asarray(Image.open(saved["confidence_file"]).convert("RGB"))
    assert np.abs(png[:170].astype(int) - colorize_confidence(pred.confidence_map).astype(int)).max() <= 1


def test_serve_answers_the_confidence_map_as_a_png(seg_model):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("python_multipart")
    httpx = pytest.importorskip("httpx")
    from test_serve import Server

    server = Server([seg_model["best"]], max_wait_ms=5.0, device="cpu")
    try:
        server.wait_ready()
        photo = seg_model["photo"]
        r = httpx.post(server.url + "/predict", files={"image": (photo.name, photo.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
    finally:
        server.stop()
    (pred,) = visionlab.load(seg_model["best"], device="cpu").predict(str(photo))
    png = Image.open(io.BytesIO(base64.b64decode(res["confidence_map"])))
    assert png.format == "PNG" and png.size[0] == 230 and png.size[1] > 170
    top = np.asarray(png.convert("RGB"))[:170].astype(int)
    assert np.abs(top - colorize_confidence(pred.confidence_map).astype(int)).max() <= 1
    assert res["mean_confidence"] == pytest.approx(pred.mean_confidence, abs=1e-4)


def test_explain_is_the_confidence_map_over_the_photo(seg_model):
    from visionlab.kinds import get_kind

    predictor = visionlab.load(seg_model["best"], device="cpu")
    photo = str(seg_model["photo"])
    arrays = [predictor.preprocess(photo)]
    preds = predictor.predict(photo)
    (overlay,) = get_kind("segmentation").explain(predictor.loaded(), arrays, preds)
    assert overlay.dtype == np.uint8 and overlay.shape == (170, 230, 3)
    assert np.array_equal(overlay, confidence_overlay(arrays[0], preds[0].confidence_map))
    # where the model is unsure the overlay leans to viridis' dark end, where sure to its yellow
    conf = preds[0].confidence_map
    sure, unsure = conf >= np.quantile(conf, 0.9), conf <= np.quantile(conf, 0.1)
    assert overlay[sure][:, :2].mean() > overlay[unsure][:, :2].mean()


def test_the_confidence_png_reads_as_a_colour_map_with_a_legend(tmp_path: Path):
    from visionlab.kinds.segmentation.confidence import confidence_image

    ramp = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (80, 1))
    image = confidence_image(ramp)
    assert image.size[0] == 300 and image.size[1] > 80
    rgb = np.asarray(image)
    assert tuple(rgb[0, 0]) == (68, 1, 84) and tuple(rgb[0, -1]) == (253, 231, 37)  # viridis: dark purple 0 %, yellow 100 %
    assert (np.diff(rgb[:80].astype(int).sum(2), axis=1) >= -2).all()  # brighter as the probability rises
    assert LEGEND_TITLE.startswith("confidence")
    image.save(tmp_path / "ramp.png")


def test_real_landcover_photo_gets_a_full_size_map(seg_model, shared_data: Path):
    photos = sorted((shared_data / "landcover" / "images").iterdir(), key=lambda p: p.stat().st_size)
    photo = photos[0]  # the smallest, to keep the test short
    (pred,) = visionlab.load(seg_model["best"], device="cpu").predict(str(photo))
    with Image.open(photo) as im:
        assert pred.confidence_map.shape == (im.size[1], im.size[0]) == pred.mask.shape
    assert np.isfinite(pred.confidence_map).all()


def test_the_benchmark_refits_and_prints_before_and_after(seg_model, tmp_path: Path):
    best = seg_model["raw"]  # runs/landcover/conf/best.pt, finished: the benchmark measures it without training
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "segcal.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "seg_calibration.py"), "--data", str(seg_model["data"]),
                           "--runs", str(best.parents[2]), "--name", best.parent.name, "--refit", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    refit = torch.load(best.with_name("best-refit.pt"), weights_only=True)["calibration"]
    assert saved["checkpoint"] == str(best.with_name("best-refit.pt"))
    assert saved["calibration"]["temperature"] == pytest.approx(refit["temperature"])
    assert refit["temperature"] == pytest.approx(torch.load(seg_model["best"], weights_only=True)["calibration"]["temperature"], rel=1e-4)
    lines = done.stdout.splitlines()
    ece = next(ln for ln in lines if ln.startswith("ece"))
    assert ece.split()[1:] == [f"{saved['metrics']['ece_before']:.4f}", f"{saved['metrics']['ece']:.4f}"]
    missing = subprocess.run([sys.executable, str(REPO / "benchmarks" / "seg_calibration.py"), "--data", str(tmp_path / "nope"),
                              "--runs", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode != 0 and "not found: pass --data" in missing.stderr and "Traceback" not in missing.stderr
