"""'Unknown' (#22 section 2): after training a classifier, a detector on its penultimate features
(by default Mahalanobis: a float16 whitening matrix and the whitened class means of the training
photos' features; ``unknown_score: knn``, and every checkpoint from before, a float16 bank of them;
a threshold that accepts ``unknown_accept`` of the validation photos) is stored in best.pt, applied by predict, evaluate,
serve and the torch-free runtime (the score is the exported graph's second output), and
``--unknown off|auto|THRESHOLD`` sets it. Old checkpoints say so once and answer as before;
``visionlab calibrate`` adds a detector to them in a new file.

The model is a real tiny training (cracks_cnn, 32 px, CPU) on three colour classes; photos of a
fourth colour it never saw ('blueberry') are the unknown ones.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import REPO, fast_options, make_class_image, write_class_folder

CLASSES = ("zebra", "apple", "kiwi")


def _cli(*args: str, check: bool = True, module: str = "visionlab") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> dict[str, Any]:
    """best.pt of a tiny classifier, its data, a few known photos and photos of a colour it never saw."""
    import visionlab
    from rich.console import Console

    root = tmp_path_factory.mktemp("unknown")
    data = write_class_folder(root / "data", CLASSES, per_class=30)
    strangers = root / "strangers"
    strangers.mkdir()
    for i in range(12):
        make_class_image("blueberry", i).save(strangers / f"blue_{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        quiet = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        result = visionlab.train("cracks", data=str(data), console=quiet,
                                 **fast_options("cracks", root / "runs", model="cracks_cnn", model_args={}, name="u",
                                                epochs=4, max_steps_per_epoch=0, lr=3e-3, val_fraction=0.3, tta="hflip"))
    known = [str(data / c / f"img_{i}.png") for c in CLASSES for i in (1, 7, 13)]
    return {"best": result.best_checkpoint, "data": data, "known": known,
            "strangers": sorted(str(p) for p in strangers.iterdir()), "root": root}


@pytest.fixture(scope="module")
def knn_best(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network with a kNN detector, as every checkpoint from before Mahalanobis carries
    (fitted by ``calibrate --score knn``: the same code wrote those)."""
    root = tmp_path_factory.mktemp("knn")
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    state.pop("unknown")
    torch.save(state, root / "best.pt")
    done = _cli("calibrate", str(root / "best.pt"), "--score", "knn", "--out", str(root / "knn.pt"), "--device", "cpu")
    assert "nearest-neighbour score" in done.stdout
    return root / "knn.pt"


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


def test_training_fits_the_mahalanobis_detector_on_the_validation_split_and_stores_it_compactly(trained: dict[str, Any]):
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    det = state["unknown"]
    whiten, centres = det["whiten"], det["centres"]
    dims = whiten.shape[0]
    assert whiten.dtype == torch.float16 and whiten.shape == (dims, dims) and "bank" not in det
    assert centres.dtype == torch.float32 and centres.shape == (len(CLASSES), dims) and det["classes"] == len(CLASSES)
    assert torch.isfinite(whiten.float()).all() and 0.0 < det["shrinkage"] <= 1.0
    assert det["score"] == "mahalanobis" and det["fitted_on"] == "val" and det["accept"] == 0.95
    assert 0.0 < det["threshold"] <= 1.0
    assert det["accepted"] >= 0.95  # the 'lower' quantile: at least the share asked for
    summary = json.loads((trained["best"].parent / "summary.json").read_text())
    assert 0.0 < summary["test"]["known_accepted"] <= 1.0  # the closing test evaluation applied it


def test_predict_says_unknown_for_photos_of_a_class_it_never_saw_with_the_guess_in_its_own_column(trained: dict[str, Any],
                                                                                                     tmp_path: Path):
    out = tmp_path / "p.csv"
    _cli("predict", *trained["known"], *trained["strangers"], "--checkpoint", str(trained["best"]), "--device", "cpu",
         "--out", str(out))
    rows = _rows(out)
    known, strangers = rows[: len(trained["known"])], rows[len(trained["known"]):]
    for r in rows:
        assert r["guess"] == r["top1_label"] and r["guess"] in CLASSES
        assert r["label"] == ("unknown" if r["unknown"] == "True" else r["guess"])
    accepted = np.mean([r["unknown"] == "False" for r in known])
    rejected = np.mean([r["unknown"] == "True" for r in strangers])
    assert accepted >= 0.75, known
    assert rejected >= 0.75, strangers
    assert max(float(r["known_score"]) for r in strangers) < np.median([float(r["known_score"]) for r in known])


def test_unknown_off_auto_and_a_threshold_of_ones_own(trained: dict[str, Any], tmp_path: Path):
    best, photos = str(trained["best"]), trained["known"] + trained["strangers"][:3]
    auto = _rows(_json_predict(best, photos, tmp_path / "auto.json"))
    scores = [r["known_score"] for r in auto]
    off = _rows(_json_predict(best, photos, tmp_path / "off.json", "--unknown", "off"))
    assert all("unknown" not in r and "guess" not in r and "known_score" not in r for r in off)
    assert [r["label"] for r in off] == [r["guess"] for r in auto]  # the same classes without the detector
    assert [r["confidence"] for r in off] == pytest.approx([r["confidence"] for r in auto], abs=1e-6)
    own = float(np.median(scores))  # a threshold of one's own: the photos below it are unknown, the others not
    mine = _rows(_json_predict(best, photos, tmp_path / "own.json", "--unknown", repr(own)))
    assert [r["unknown"] for r in mine] == [score < own for score in scores]
    assert any(r["unknown"] for r in mine) and not all(r["unknown"] for r in mine)
    assert all(r["label"] == ("unknown" if r["unknown"] else r["guess"]) for r in mine)
    lowest = _rows(_json_predict(best, photos, tmp_path / "lo.json", "--unknown", "-1"))
    assert all(r["unknown"] is False and r["label"] == r["guess"] for r in lowest)
    bad = _cli("predict", photos[0], "--checkpoint", best, "--unknown", "maybe", check=False)
    said = (bad.stdout + bad.stderr).strip()
    assert bad.returncode != 0 and "--unknown must be off, auto or a threshold" in said and len(said.splitlines()) == 1


def _json_predict(best: str, photos: list[str], out: Path, *flags: str) -> Path:
    _cli("predict", *photos, "--checkpoint", best, "--device", "cpu", "--out", str(out), *flags)
    return out


def test_evaluate_reports_the_share_of_known_photos_accepted_and_the_same_accuracy_with_unknown_off(trained: dict[str, Any],
                                                                                                       tmp_path: Path):
    best = str(trained["best"])
    _cli("evaluate", "--checkpoint", best, "--device", "cpu", "--out", str(tmp_path / "on"))
    _cli("evaluate", "--checkpoint", best, "--device", "cpu", "--out", str(tmp_path / "off"), "--unknown", "off")
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert on["metrics"]["accuracy"] == off["metrics"]["accuracy"]
    u = on["unknown"]
    assert u["images"] == on["images"] and 0 <= u["accepted"] <= u["images"]
    assert on["metrics"]["known_accepted"] == pytest.approx(u["accepted"] / u["images"])
    assert "known_accepted" not in off["metrics"] and "unknown" not in off
    with open(tmp_path / "on" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["unknown"] == "False" for r in rows) == u["accepted"]


def test_export_carries_the_threshold_and_the_runtime_computes_the_same_score_from_the_second_output(
        trained: dict[str, Any], tmp_path: Path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    onnx_path = tmp_path / "m.onnx"
    done = _cli("export", str(trained["best"]), "--out", str(onnx_path))
    assert "parity" in done.stdout
    session = ort.InferenceSession(str(onnx_path))
    assert [o.name for o in session.get_outputs()] == ["logits", "known_score"]
    meta = session.get_modelmeta().custom_metadata_map
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    assert json.loads(meta["unknown"])["threshold"] == pytest.approx(state["unknown"]["threshold"])
    assert json.loads(meta["unknown"])["score"] == "mahalanobis"
    assert not {"bank", "whiten", "centres"} & set(json.loads(meta["unknown"]))  # the tensors are in the graph
    photos = trained["known"] + trained["strangers"][:4]
    ours = _rows(_json_predict(str(trained["best"]), photos, tmp_path / "pt.json"))
    _cli(str(onnx_path), *photos, "--json", str(tmp_path / "rt.json"), module="visionlab.runtime")
    theirs = _rows(tmp_path / "rt.json")
    assert [r["label"] for r in theirs] == [r["label"] for r in ours]
    assert [r["known_score"] for r in theirs] == pytest.approx([r["known_score"] for r in ours], abs=1e-4)
    off = _cli(str(onnx_path), photos[0], "--unknown", "off", "--json", str(tmp_path / "rt-off.json"), module="visionlab.runtime")
    assert off.returncode == 0 and "known_score" not in _rows(tmp_path / "rt-off.json")[0]
    # predict and evaluate on the .onnx itself read the score from its graph
    via_onnx = _rows(_json_predict(str(onnx_path), photos, tmp_path / "onnx.json"))
    assert [r["known_score"] for r in via_onnx] == pytest.approx([r["known_score"] for r in ours], abs=1e-4)


def _with_unknown_metadata(onnx_path: Path, dest: Path, value: str | None) -> Path:
    """A copy of ``onnx_path`` whose 'unknown' metadata is ``value`` (None: none at all)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "unknown"] + ([("unknown", value)] if value else [])
    del proto.metadata_props[:]
    for key, text in kept:
        proto.metadata_props.add(key=key, value=text)
    onnx.save(proto, str(dest))
    return dest


def test_an_exported_file_with_a_detector_that_is_not_an_object_or_none_says_so_truly(trained: dict[str, Any], tmp_path: Path):
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "m.onnx"
    _cli("export", str(trained["best"]), "--out", str(onnx_path))
    listed = _with_unknown_metadata(onnx_path, tmp_path / "list.onnx", "[1, 2]")
    for args in (("predict", trained["known"][0], "--checkpoint", str(listed), "--device", "cpu"), (str(listed), trained["known"][0])):
        done = _cli(*args, check=False, module="visionlab" if args[0] == "predict" else "visionlab.runtime")
        said = (done.stdout + done.stderr).strip()
        assert done.returncode != 0 and "'unknown' is not an object" in said and len(said.splitlines()) == 1, said
    bare = _with_unknown_metadata(onnx_path, tmp_path / "bare.onnx", None)
    done = _cli(str(bare), trained["known"][0], module="visionlab.runtime")
    note = " ".join((done.stdout + done.stderr).split())
    assert "carries no unknown detector" in note and f"visionlab calibrate {bare}" not in note  # calibrate refuses an .onnx
    assert "checkpoint (.pt) it was exported from" in note
    refused = _cli("calibrate", str(bare), check=False)
    assert refused.returncode != 0 and "exported model" in refused.stdout + refused.stderr


def test_the_parity_check_compares_the_exported_score(trained: dict[str, Any], tmp_path: Path):
    """check_parity runs every output of the wrapped network: a real graph whose score is shifted
    (its logits exact) fails it, the graph of the network itself passes."""
    pytest.importorskip("onnxruntime")
    import warnings

    import onnxruntime as ort

    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.export import check_parity
    from visionlab.kinds import get_kind

    state = load_checkpoint(trained["best"])
    module, outputs = get_kind(state["kind"]).exported(state, load_model(state).float())

    class Shifted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, shift: float) -> None:
            super().__init__()
            self.inner, self.shift = inner, shift

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, score = self.inner(x)
            return logits, score + self.shift

    x = [torch.randn(2, 3, 32, 32)]
    for shift, passes in ((0.0, True), (0.05, False)):
        path = tmp_path / f"shift{shift}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Shifted(module, shift).eval(), (x[0],), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits", "known_score"])
        assert check_parity(ort.InferenceSession(str(path)), module, x, "random", outputs[0]).passed is passes


def _served(best: Path, photos: list[str], *flags: str) -> tuple[list[dict[str, Any]], str]:
    """What `visionlab serve` answers for ``photos``, and what it printed before serving."""
    httpx = pytest.importorskip("httpx")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "serve", "--checkpoint", str(best), "--port", "0",
                             "--device", "cpu", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines, url, deadline = [], None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url, "".join(lines)
        while httpx.get(url + "/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        files = [("images", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in photos]
        r = httpx.post(url + "/predict?top_k=3", files=files, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["results"], "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_answers_unknown_and_the_guess_and_keeps_the_probabilities(trained: dict[str, Any], tmp_path: Path):
    pytest.importorskip("fastapi")
    photos = trained["known"][:3] + trained["strangers"][:3]
    ours = _rows(_json_predict(str(trained["best"]), photos, tmp_path / "pt.json"))
    served, said = _served(trained["best"], photos)
    assert "no unknown detector" not in said
    for s, o in zip(served, ours):
        assert s["unknown"] is o["unknown"] and s["guess"] == o["guess"] and s["label"] == o["label"]
        assert len(s["top_k"]) == 3 and s["top_k"][0]["label"] == s["guess"]
    assert any(s["unknown"] for s in served[3:])
    off, _ = _served(trained["best"], photos, "--unknown", "off")
    assert all("unknown" not in s and "guess" not in s and s["label"] in CLASSES for s in off)


def test_an_old_checkpoint_without_a_detector_works_as_before_says_so_once_and_calibrate_adds_one(trained: dict[str, Any],
                                                                                                     tmp_path: Path):
    old = tmp_path / "old" / "best.pt"
    old.parent.mkdir()
    shutil.copy(trained["best"], old)
    state = torch.load(old, map_location="cpu", weights_only=True)
    fitted = state.pop("unknown")
    torch.save(state, old)
    photos = trained["known"] + trained["strangers"][:3]
    done = _cli("predict", *photos, "--checkpoint", str(old), "--device", "cpu", "--out", str(tmp_path / "old.json"))
    said = done.stdout + done.stderr
    assert said.count("carries no unknown detector") == 1, said
    assert all(r["label"] in CLASSES and "unknown" not in r for r in _rows(tmp_path / "old.json"))
    ev = _cli("evaluate", "--checkpoint", str(old), "--device", "cpu", "--out", str(tmp_path / "ev"))
    assert (ev.stdout + ev.stderr).count("carries no unknown detector") == 1
    quiet = _cli("predict", photos[0], "--checkpoint", str(old), "--device", "cpu", "--unknown", "off")
    assert "unknown detector" not in quiet.stdout + quiet.stderr
    # calibrate fits it again on the run's own splits, into a new file, never over one
    cal = _cli("calibrate", str(old), "--device", "cpu")
    new = old.with_name("best-calibrated.pt")
    assert new.exists() and f"wrote {new}" in cal.stdout.replace("\n", "")
    again = torch.load(new, map_location="cpu", weights_only=True)["unknown"]
    assert again["score"] == fitted["score"] == "mahalanobis"
    assert again["threshold"] == pytest.approx(fitted["threshold"], abs=1e-5)
    assert torch.equal(again["whiten"], fitted["whiten"]) and torch.allclose(again["centres"], fitted["centres"])
    assert "unknown" not in torch.load(old, map_location="cpu", weights_only=True)  # the one given is unchanged
    refused = _cli("calibrate", str(old), "--device", "cpu", check=False)
    out = (refused.stdout + refused.stderr).strip()
    assert refused.returncode != 0 and "never writes over a file" in out and len(out.splitlines()) == 1


def test_calibrate_on_data_without_validation_photos_says_that_not_that_classifiers_have_no_calibration(
        trained: dict[str, Any], tmp_path: Path):
    data = tmp_path / "no-val"
    for split in ("train", "test"):  # a folder with its own splits and no val/: nothing to fit a threshold on
        for c in CLASSES:
            (data / split / c).mkdir(parents=True)
            shutil.copy(trained["data"] / c / "img_1.png", data / split / c / "img_1.png")
    done = _cli("calibrate", str(trained["best"]), "--data", str(data), "--out", str(tmp_path / "new.pt"), "--device", "cpu",
                check=False)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "no validation photos" in said and "models have no" not in said, said
    assert not (tmp_path / "new.pt").exists()


@pytest.mark.parametrize("threshold", ["x", 5.0, None])
def test_a_damaged_threshold_is_refused_in_one_line(trained: dict[str, Any], tmp_path: Path, threshold: Any):
    bad = tmp_path / "bad.pt"
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    state["unknown"]["threshold"] = threshold
    torch.save(state, bad)
    done = _cli("predict", trained["known"][0], "--checkpoint", str(bad), "--device", "cpu", check=False)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "unknown detector is damaged" in said and len(said.splitlines()) == 1, said
    ok = _cli("predict", trained["known"][0], "--checkpoint", str(bad), "--device", "cpu", "--unknown", "off")
    assert ok.returncode == 0


def _damaged_bank(state: dict[str, Any], damage: str) -> None:
    bank = state["unknown"]["bank"]
    changes = {"narrow": {"bank": bank[:, :3]}, "nan": {"bank": torch.full_like(bank, float("nan"))},
               "empty": {"bank": bank[:0]}, "k0": {"k": 0}, "ktext": {"k": "abc"}}
    state["unknown"].update(changes[damage])


@pytest.mark.parametrize("damage", ["narrow", "nan", "empty", "k0", "ktext"])
def test_a_damaged_bank_or_k_is_refused_in_one_line_not_a_traceback_nor_every_photo_known(
        trained: dict[str, Any], knn_best: Path, tmp_path: Path, damage: str):
    bad = tmp_path / "bad.pt"
    state = torch.load(knn_best, map_location="cpu", weights_only=True)  # a kNN detector (as every one from before)
    _damaged_bank(state, damage)
    torch.save(state, bad)
    done = _cli("predict", trained["strangers"][0], "--checkpoint", str(bad), "--device", "cpu", check=False)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "unknown detector is damaged" in said and len(said.splitlines()) == 1, said
    assert "Traceback" not in said and "visionlab calibrate" in said


def test_the_threshold_accepts_the_share_asked_for_and_the_score_is_the_kth_neighbours_similarity():
    from visionlab.kinds.classification.unknown import bank_rows, fit_threshold, knn_similarity

    scores = np.linspace(0.0, 1.0, 101)
    t = fit_threshold(scores, 0.95)
    assert (scores >= t).mean() >= 0.95 and (scores >= np.nextafter(t, 2)).mean() < 0.95
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    q = torch.tensor([[2.0, 0.0]])
    assert knn_similarity(q, bank, 1).item() == pytest.approx(1.0)
    assert knn_similarity(q, bank, 2).item() == pytest.approx(2 ** -0.5)
    assert knn_similarity(q, bank, 3).item() == pytest.approx(0.0, abs=1e-7)
    assert list(bank_rows(5, 10)) == [0, 1, 2, 3, 4] and len(bank_rows(10000)) == 2048


@pytest.mark.parametrize("flags,detector", [(("--int8",), "knn"), (("--int8",), "mahalanobis"),
                                            (("--format", "openvino"), "mahalanobis")],
                         ids=["int8-knn", "int8-mahalanobis", "openvino"])
def test_int8_and_openvino_files_give_the_same_score_through_the_same_paths(trained: dict[str, Any], knn_best: Path,
                                                                             tmp_path: Path, flags: tuple[str, ...], detector: str):
    """The score's nodes stay fp32 in the int8 file (only the network's part is quantised); the
    OpenVINO IR answers it through the runtime's same code path. The int8 network's own features
    move, though: the cosine (kNN) score barely, the Mahalanobis one, which divides each direction by
    its spread, by more than a tolerance on this tiny net of flat colours (see the README's int8
    note): for it only the graph is checked here."""
    pytest.importorskip("onnxruntime")
    if "openvino" in flags:
        pytest.importorskip("openvino")
    import onnx

    best = str(knn_best if detector == "knn" else trained["best"])
    fp32, other = tmp_path / "m.onnx", tmp_path / ("m.xml" if "openvino" in flags else "m.int8.onnx")
    _cli("export", best, "--out", str(fp32))
    _cli("export", best, *flags, "--out", str(other))
    photos = trained["known"] + trained["strangers"][:4]
    rows = {}
    for name, path in (("fp32", fp32), ("other", other)):
        _cli(str(path), *photos, "--json", str(tmp_path / f"{name}.json"), module="visionlab.runtime")
        rows[name] = _rows(tmp_path / f"{name}.json")
    if detector == "knn" or "openvino" in flags:
        assert [r["known_score"] for r in rows["other"]] == pytest.approx([r["known_score"] for r in rows["fp32"]], abs=2e-3)
    if "--int8" in flags:
        graph = onnx.load(str(other)).graph
        makers = {o: n for n in graph.node for o in n.output}
        assert makers["known_score"].op_type != "DequantizeLinear"  # the score itself is not quantised
        assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the network is
        constants = {i.name: i for i in graph.initializer}
        products = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
        assert products and all(constants[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in products)  # fp32 bank / W


def test_the_report_says_what_the_detector_accepted(trained: dict[str, Any], tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(trained["best"].parent, run)
    _cli("report", str(run), "--out", str(tmp_path / "r.html"), "--device", "cpu")
    html = (tmp_path / "r.html").read_text()
    assert "Unknown photos" in html and "known photos accepted" in html


def test_the_mahalanobis_score_is_the_distance_to_the_nearest_class_mean_under_the_shrunk_covariance():
    """The stored form (whitening W, whitened means, two matrix products) gives the textbook
    distance (q - m)^T P (q - m), P the inverse of the Ledoit-Wolf covariance, as 1 / (1 + d2 / D)."""
    from sklearn.covariance import LedoitWolf

    from visionlab.kinds.classification.unknown import fit_mahalanobis, mahalanobis_score

    gen = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)  # 30 photos, 40 dimensions: the plain covariance is singular
    feats = gen.normal(size=(30, 40)) + 3 * np.eye(40)[y]
    det = fit_mahalanobis(torch.from_numpy(feats).float(), torch.from_numpy(y))
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    means = np.stack([f[y == c].mean(0) for c in range(3)])
    precision = np.linalg.inv(LedoitWolf().fit(f - means[y]).covariance_)
    q = gen.normal(size=(5, 40)) + 3 * np.eye(40)[[0, 1, 2, 0, 7]]
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    d2 = np.stack([np.einsum("nd,de,ne->n", qn - m, precision, qn - m) for m in means], 1).min(1)
    got = mahalanobis_score(torch.from_numpy(q).float(), det["whiten"], det["centres"]).numpy()
    assert got == pytest.approx(1 / (1 + d2 / 40), rel=2e-2)  # the float16 whitening: within a few parts per thousand
    assert got[:4].min() > got[4]  # the photo of no class is the least known


@pytest.mark.parametrize("damage", ["whiten-shape", "centres-shape", "whiten-nan", "centres-nan", "method"])
def test_a_damaged_mahalanobis_entry_is_refused_in_one_line(trained: dict[str, Any], tmp_path: Path, damage: str):
    bad = tmp_path / "bad.pt"
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    det = state["unknown"]
    if damage == "whiten-shape":
        det["whiten"] = det["whiten"][:-1]
    elif damage == "centres-shape":
        det["centres"] = det["centres"][:, :-1]
    elif damage == "method":
        det["score"] = "cosine"
    else:
        name = damage.split("-")[0]
        det[name] = det[name].clone()
        det[name][0, 0] = float("nan")
    torch.save(state, bad)
    done = _cli("predict", trained["known"][0], "--checkpoint", str(bad), "--device", "cpu", check=False)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "unknown detector is damaged" in said and len(said.splitlines()) == 1, said
    assert ("NaN" in said) is damage.endswith("nan")
    assert _cli("export", str(bad), "--out", str(tmp_path / "bad.onnx"), check=False).returncode != 0


def test_an_old_knn_checkpoint_answers_as_before_through_every_path(trained: dict[str, Any], knn_best: Path, tmp_path: Path):
    """A detector of before (``score: knn``, a float16 bank; here fitted by ``calibrate --score knn``, the
    same code) keeps its method: predict's score is the cosine similarity to the nearest bank row (mean
    over the hflip views), and its .onnx gives the runtime the same score."""
    from visionlab.data.io import load_for_model
    from visionlab.data.preprocessing import Preprocessing
    from visionlab.data.transforms import Normalize
    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.kinds.classification.step import StepContext, run_views
    from visionlab.kinds.classification.unknown import feature_views, knn_similarity

    knn = knn_best
    old = load_checkpoint(knn)
    assert old["unknown"]["score"] == "knn" and old["unknown"]["bank"].dtype == torch.float16 and "whiten" not in old["unknown"]
    photos = trained["known"] + trained["strangers"][:4]
    ours = _rows(_json_predict(str(knn), photos, tmp_path / "pt.json"))
    model, pre = load_model(old).eval(), Preprocessing.from_dict(old["preprocessing"])
    assert pre.tta_mode == "hflip"
    with torch.inference_mode():
        _, feats = feature_views(model, lambda f: run_views(StepContext(f, Normalize(pre.mean, pre.std), torch.device("cpu"), "hflip"),
                                                            [load_for_model(p, pre) for p in photos]))
        expected = torch.stack([knn_similarity(v, old["unknown"]["bank"].float(), 1) for v in feats]).mean(0)
    assert [r["known_score"] for r in ours] == pytest.approx(expected.tolist(), abs=1e-4)
    assert [r["unknown"] for r in ours] == [r["known_score"] < old["unknown"]["threshold"] for r in ours]
    assert any(r["unknown"] for r in ours[len(trained["known"]):])
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "knn.onnx"
    _cli("export", str(knn), "--out", str(onnx_path))
    _cli(str(onnx_path), *photos, "--json", str(tmp_path / "rt.json"), module="visionlab.runtime")
    assert [r["known_score"] for r in _rows(tmp_path / "rt.json")] == pytest.approx([r["known_score"] for r in ours], abs=1e-4)


def test_unknown_score_is_a_validated_config_key(trained: dict[str, Any], tmp_path: Path):
    done = _cli("calibrate", str(trained["best"]), "--score", "cosine", "--out", str(tmp_path / "x.pt"), "--device", "cpu", check=False)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "unknown_score must be mahalanobis or knn" in said and len(said.splitlines()) == 1, said
    assert not (tmp_path / "x.pt").exists()
    from visionlab.api import load_config
    from visionlab.errors import VisionlabError

    assert load_config("caltech").options.unknown_score == "mahalanobis"  # the measured default
    assert load_config("caltech", overrides=["unknown_score=knn"]).options.unknown_score == "knn"
    with pytest.raises(VisionlabError, match="unknown_score must be mahalanobis or knn"):
        load_config("caltech", overrides=["unknown_score=cosine"])
