"""Confidence that means what it says (#22): after training a classifier, one temperature fitted on
its validation split (Guo et al. 2017), stored in best.pt and the .onnx metadata, applied by
predict, evaluate, serve and the torch-free runtime; ``--no-calibration`` shows the raw softmax;
evaluate reports ECE, NLL and Brier score before and after, and draws a reliability diagram.

The model is a real tiny training (cracks_cnn, 32 px, CPU) on four classes, two of which look
alike (``plum`` and ``sloe`` get the same colour), so it must guess between them: its validation
split has mistakes, and the temperature has work to do. The same network with its last layer
scaled up is the deliberately over-confident model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import REPO, fast_options, served_url, write_class_folder

CLASSES = ("zebra", "apple", "plum", "sloe")  # plum and sloe: the same colour, told apart by chance only
ORDER: list[str] = []  # the trained model's class order (set by the fixture)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "visionlab", *args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> dict[str, Any]:
    """best.pt of the over-confident model, its data folder and a few of its photos."""
    import visionlab
    from rich.console import Console

    root = tmp_path_factory.mktemp("calibration")
    data = write_class_folder(root / "data", CLASSES, per_class=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        quiet = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        result = visionlab.train("cracks", data=str(data), console=quiet,
                                 **fast_options("cracks", root / "runs", model="cracks_cnn", model_args={}, name="t",
                                                epochs=12, max_steps_per_epoch=0, lr=3e-3, label_smoothing=0.0, ema=0.0,
                                                val_fraction=0.3))
    photos = [str(data / c / f"img_{i}.png") for c in CLASSES for i in (0, 5)]
    ORDER[:] = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["classes"]
    return {"best": result.best_checkpoint, "data": data, "photos": photos, "root": root}


def _expected_probs(best: Path, photos: list[str], temperature: float) -> np.ndarray:
    """The probabilities of ``photos`` computed here by hand: the checkpoint's network on each of the
    four flips of the preprocessed photo, softmax(logits / temperature), averaged (the recipe's tta: flips)."""
    from visionlab.data.io import load_for_model
    from visionlab.engine.checkpoint import load_checkpoint, load_model

    state = load_checkpoint(best)
    assert state["preprocessing"]["tta"] == "flips"
    model = load_model(state)
    pre = state["preprocessing"]
    x = torch.from_numpy(np.stack([load_for_model(p, pre) for p in photos])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        views = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
        return torch.stack([(model(v) / temperature).softmax(1) for v in views]).mean(0).numpy()


def _probs_of(rows: list[dict[str, Any]]) -> np.ndarray:
    """Each row's probability of every class (rows with top_k over all the classes), in the model's class order."""
    order = ORDER or sorted(CLASSES)
    return np.array([[{t["label"]: t["probability"] for t in r["top_k"]}[c] for c in order] for r in rows])


def _temperature(best: Path) -> float:
    return float(torch.load(best, map_location="cpu", weights_only=True)["calibration"]["temperature"])


# --------------------------------------------------------------------------- the fit


def test_training_fits_a_temperature_that_lowers_the_validation_nll_and_stores_it(trained: dict[str, Any]):
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    cal = state["calibration"]
    assert cal["fitted_on"] == "val" and cal["images"] == state["data"]["split_sizes"]["val"] > 0
    # the fit moved T off 1, so it lowered the NLL it minimised
    assert cal["temperature"] != 1.0 and cal["method"] == "nll"
    assert cal["nll_after"] < cal["nll_before"]
    # evaluate on the split it was fitted on gives the same two numbers, before and after
    metrics = _evaluate(trained, "val")["metrics"]
    assert metrics["nll"] == pytest.approx(cal["nll_after"], rel=1e-4)
    assert metrics["nll_before"] == pytest.approx(cal["nll_before"], rel=1e-4)
    assert metrics["nll"] <= metrics["nll_before"]
    summary = json.loads((trained["best"].parent / "summary.json").read_text())
    assert summary["calibration"]["temperature"] == cal["temperature"]


def test_an_over_confident_model_gets_a_temperature_above_one_through_the_kinds_hook(trained: dict[str, Any]):
    """The trained network with its classifier layer times 4 answers logits 4 times larger: the same
    probabilities at 4 times the temperature, so the fit on it must find that (and soften: T > 1)."""
    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.kinds import get_kind
    from visionlab.registry import get_task

    state = load_checkpoint(trained["best"])
    sure = dict(state, model={k: v * 4 if k.startswith("classifier.") else v for k, v in state["model"].items()})
    kind = get_kind(state["kind"])
    runner = kind.runner(config_from_dict(state["config"], kind.options), get_task(state["task"]), torch.device("cpu"))
    runner.use_saved(state)
    runner.prepare()
    cal = kind.calibrate(runner, load_model(sure))
    assert cal["temperature"] == pytest.approx(4 * state["calibration"]["temperature"], rel=1e-3)
    assert cal["temperature"] > 1.0 and cal["nll_after"] < cal["nll_before"]
    assert cal["nll_after"] == pytest.approx(state["calibration"]["nll_after"], rel=1e-4)


def test_the_fit_finds_the_temperature_that_made_logits_over_confident_and_is_deterministic():
    from visionlab.kinds.classification.calibration import BOUNDS, fit_temperature

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=gen) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)  # calibrated by construction
    fit = fit_temperature(3.0 * logits, labels)  # three times too sure
    assert fit.temperature == pytest.approx(3.0, rel=0.08)
    assert fit.nll_after < fit.nll_before and fit.method == "nll"
    assert fit_temperature(3.0 * logits, labels) == fit
    # test-time augmentation: (V, N, C) views, each divided by T before their probabilities are averaged
    views = torch.stack([3.0 * logits, 3.0 * logits + 0.1 * torch.randn(4000, 5, generator=gen)])
    assert fit_temperature(views, labels).temperature == pytest.approx(3.0, rel=0.1)
    # a split without a mistake has no NLL optimum (surer is always better there): an under-confident model is
    # sharpened until its mean confidence is (n + 1) / (n + 2), one already surer than that keeps T = 1
    labels4 = torch.tensor([0, 1, 2, 1])
    meek = torch.eye(3)[labels4] * 2  # right, at softmax probability 0.79 each
    fit = fit_temperature(meek, labels4)
    assert fit.method == "confidence" and fit.temperature < 1.0 and fit.nll_after < fit.nll_before
    assert float((meek / fit.temperature).softmax(1).max(1).values.mean()) == pytest.approx(5 / 6, abs=1e-6)
    sure = fit_temperature(meek * 5, labels4)
    assert (sure.temperature, sure.method, sure.nll_after) == (1.0, "confidence", sure.nll_before)
    # the bounds hold for labels the logits get wrong every time
    worst = fit_temperature(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([1, 0]))
    assert BOUNDS[0] <= worst.temperature <= BOUNDS[1] and worst.nll_after <= worst.nll_before


def test_ece_from_torchmetrics_matches_a_direct_computation_and_nll_and_brier_their_definitions():
    from visionlab.kinds.classification.meter import ECE_BINS, calibration_metrics, reliability_bins

    probs = np.array([[0.90, 0.05, 0.05], [0.60, 0.30, 0.10], [0.20, 0.75, 0.05],
                      [0.34, 0.33, 0.33], [0.10, 0.10, 0.80], [0.50, 0.45, 0.05]])
    y = np.array([0, 1, 1, 2, 2, 0])
    conf, hit = probs.max(1), probs.argmax(1) == y
    ece = 0.0
    for b in range(ECE_BINS):  # bins [b/15, (b+1)/15)
        inside = (conf >= b / ECE_BINS) & (conf < (b + 1) / ECE_BINS)
        if inside.any():
            ece += inside.sum() / len(y) * abs(hit[inside].mean() - conf[inside].mean())
    got = calibration_metrics(torch.tensor(np.log(probs), dtype=torch.float32), torch.tensor(y))
    assert got["ece"] == pytest.approx(ece, abs=1e-6) and ece > 0.1
    assert got["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), y])), abs=1e-6)
    assert got["brier"] == pytest.approx(np.mean(((probs - np.eye(3)[y]) ** 2).sum(1)), abs=1e-6)
    bins = reliability_bins(probs.astype(np.float32), y)
    assert sum(bins["count"]) == 6 and bins["count"][13] == 1 and bins["accuracy"][13] == 1.0  # 0.90 is in [13/15, 14/15)
    assert bins["confidence"][0] is None and bins["accuracy"][0] is None


# --------------------------------------------------------------------------- every surface


def _evaluate(trained: dict[str, Any], split: str, *flags: str) -> dict[str, Any]:
    out = trained["root"] / f"eval-{split}-{'-'.join(f.strip('-') for f in flags) or 'calibrated'}"
    _cli("evaluate", "--checkpoint", str(trained["best"]), "--split", split, "--device", "cpu", "--out", str(out), *flags)
    return json.loads((out / "metrics.json").read_text())


def test_predict_divides_the_logits_by_the_temperature_and_no_calibration_shows_the_raw_softmax(trained: dict[str, Any],
                                                                                                  tmp_path: Path):
    import visionlab

    best, photos = trained["best"], trained["photos"]
    t = _temperature(best)
    calibrated, raw = _expected_probs(best, photos, t), _expected_probs(best, photos, 1.0)
    assert np.abs(calibrated - raw).max() > 0.01  # the temperature changes the answers
    api = visionlab.load(best, device="cpu").predict(photos, top_k=4)
    assert np.allclose(_probs_of([p.to_dict() for p in api]), calibrated, atol=1e-5)
    plain = visionlab.load(best, device="cpu", calibration=False).predict(photos, top_k=4)
    assert np.allclose(_probs_of([p.to_dict() for p in plain]), raw, atol=1e-5)
    for flags, want in (((), calibrated), (("--no-calibration",), raw)):
        out = tmp_path / f"p{len(flags)}.json"
        done = _cli("predict", *photos, "--checkpoint", str(best), "--top-k", "4", "--device", "cpu", "--out", str(out), *flags)
        assert np.allclose(_probs_of(json.loads(out.read_text())), want, atol=1e-5)
        assert "temperature" not in done.stdout + done.stderr  # a calibrated model needs no notice


def test_evaluate_reports_ece_nll_and_brier_before_and_after_and_draws_the_reliability_diagram(trained: dict[str, Any]):
    out = trained["root"] / "eval-report"
    _cli("evaluate", "--checkpoint", str(trained["best"]), "--device", "cpu", "--out", str(out), "--report")
    rep = json.loads((out / "metrics.json").read_text())
    m = rep["metrics"]
    for key in ("ece", "nll", "brier", "ece_before", "nll_before", "brier_before"):
        assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] >= 0, key
    assert m["ece"] <= 1 and m["brier"] <= 2
    fitted = torch.load(trained["best"], map_location="cpu", weights_only=True)["calibration"]
    assert rep["calibration"] == {"temperature": fitted["temperature"], "applied": True, "fitted": fitted}
    assert f"fitted on the val split ({fitted['images']} images)" in (out / "report.html").read_text()
    assert sum(rep["reliability"]["after"]["count"]) == rep["images"] == sum(rep["reliability"]["before"]["count"])
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "<h2>Calibration</h2>" in page and "data:image/png;base64," in page and f"{m['ece']:.4f}" in page
    # --no-calibration: the raw softmax is what is scored, so after equals before
    raw = _evaluate(trained, "test", "--no-calibration")
    assert raw["calibration"] == {"temperature": 1.0, "applied": False, "fitted": fitted}
    for key in ("ece", "nll", "brier"):
        assert raw["metrics"][key] == pytest.approx(raw["metrics"][f"{key}_before"], abs=1e-7)
        assert raw["metrics"][f"{key}_before"] == pytest.approx(m[f"{key}_before"], abs=1e-6)


def test_the_exported_file_carries_the_temperature_and_the_runtime_applies_it(trained: dict[str, Any], tmp_path: Path):
    pytest.importorskip("onnxruntime")
    import visionlab
    from visionlab.export import export_onnx
    from visionlab.runtime import Runtime

    best, photos = trained["best"], trained["photos"]
    onnx = tmp_path / "model.onnx"
    export_onnx(best, out=onnx, console=_quiet())  # its end-to-end parity check compares the calibrated answers
    runtime = Runtime(onnx)
    assert runtime.calibration == torch.load(best, map_location="cpu", weights_only=True)["calibration"]
    ours = visionlab.load(best, device="cpu").predict(photos, top_k=4)
    assert np.allclose(_probs_of(runtime.predict(photos, top_k=4)), _probs_of([p.to_dict() for p in ours]), atol=1e-5)
    raw = _expected_probs(best, photos, 1.0)
    assert np.allclose(_probs_of(Runtime(onnx, calibration=False).predict(photos, top_k=4)), raw, atol=1e-5)
    # python -m visionlab.runtime, with and without it
    from visionlab.runtime import main

    for flags, want in (((), _probs_of([p.to_dict() for p in ours])), (("--no-calibration",), raw)):
        out = tmp_path / f"runtime{len(flags)}.json"
        assert main([str(onnx), *photos, "--top-k", "4", "--json", str(out), *flags]) == 0
        assert np.allclose(_probs_of(json.loads(out.read_text())), want, atol=1e-5)
    # the .onnx file as a checkpoint of predict applies the same temperature
    assert np.allclose(_probs_of([p.to_dict() for p in visionlab.load(onnx, device="cpu").predict(photos, top_k=4)]),
                       _expected_probs(best, photos, _temperature(best)), atol=1e-5)


def _quiet() -> Any:
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


def _served(best: Path, photos: list[str], *flags: str) -> tuple[np.ndarray, str]:
    """The probabilities `visionlab serve` answers for ``photos``, and what it printed before serving."""
    httpx = pytest.importorskip("httpx")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "serve", "--checkpoint", str(best), "--port", "0",
                             "--device", "cpu", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, printed = served_url(proc)
        files = [("images", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in photos]
        r = httpx.post(url + "/predict?top_k=4", files=files, timeout=60)
        assert r.status_code == 200, r.text
        return _probs_of(r.json()["results"]), printed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_applies_the_temperature_and_no_calibration_answers_the_raw_softmax(trained: dict[str, Any]):
    pytest.importorskip("fastapi")
    best, photos = trained["best"], trained["photos"][:4]
    got, said = _served(best, photos)
    assert np.allclose(got, _expected_probs(best, photos, _temperature(best)), atol=1e-4)
    assert "no fitted temperature" not in said
    raw, _ = _served(best, photos, "--no-calibration")
    assert np.allclose(raw, _expected_probs(best, photos, 1.0), atol=1e-4)


# --------------------------------------------------------------------------- old checkpoints


def test_a_checkpoint_without_a_temperature_works_as_before_and_says_so_once(trained: dict[str, Any], tmp_path: Path):
    old = tmp_path / "old" / "best.pt"
    old.parent.mkdir()
    shutil.copy(trained["best"], old)
    state = torch.load(old, map_location="cpu", weights_only=True)
    del state["calibration"]
    torch.save(state, old)
    photos = trained["photos"]
    out = tmp_path / "old.json"
    done = _cli("predict", *photos, "--checkpoint", str(old), "--top-k", "4", "--device", "cpu", "--out", str(out))
    said = done.stdout + done.stderr
    assert said.count("carries no fitted temperature") == 1, said
    assert np.allclose(_probs_of(json.loads(out.read_text())), _expected_probs(old, photos, 1.0), atol=1e-5)
    ev = _cli("evaluate", "--checkpoint", str(old), "--device", "cpu", "--out", str(tmp_path / "ev"))
    assert (ev.stdout + ev.stderr).count("carries no fitted temperature") == 1
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["calibration"] == {"temperature": 1.0, "applied": False}
    assert metrics["metrics"]["ece"] == pytest.approx(metrics["metrics"]["ece_before"], abs=1e-7)
    # --no-calibration asks for the raw softmax: nothing to note
    quiet = _cli("predict", photos[0], "--checkpoint", str(old), "--device", "cpu", "--no-calibration")
    assert "fitted temperature" not in quiet.stdout + quiet.stderr
