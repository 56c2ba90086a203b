"""The second plugin kind: ``examples/multilabel_kind.py`` (several labels per photo), written
outside ``src/`` in one module, through every surface of the real CLI in subprocesses, found by
``VISIONLAB_PLUGINS``: train, evaluate, predict, serve (an HTTP POST of a photo), export (with
its parity checks) and the torch-free runtime on the exported file."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import load_plugin, served_url

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PLUGIN = "multilabel_kind"
THRESHOLD = 0.4  # the recipe says 0.5: the run's own value must be the one every surface applies
CHANCE_MAP = 0.6  # the labels are present half the time: a blind guess scores an average precision near 0.5


def _env() -> dict[str, str]:
    return {**os.environ, "VISIONLAB_PLUGINS": PLUGIN, "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _cli(*args: str, module: str = "visionlab") -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _truth(data: Path) -> dict[str, set[str]]:
    with (data / "labels.csv").open(newline="") as f:
        return {str(data / r["path"]): {s for s in r["labels"].split("|") if s} for r in csv.DictReader(f)}


def _serve_one(ckpt: Path, photo: Path) -> dict:
    """``visionlab serve`` in a subprocess, and its answer to one photo POSTed to /predict."""
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "serve", "--checkpoint", str(ckpt), "--port", "0", "--device", "cpu"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = served_url(proc)[0]
        r = httpx.post(url + "/predict", files={"image": (photo.name, photo.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["task"] == "shapes"
        return r.json()["results"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_the_multilabel_plugin_through_every_surface(runs_dir: Path, tmp_path: Path):
    # the kind's own config key, set on the command line, travels with the weights to every surface
    _cli("train", "--task", "shapes", "--data", "synthetic", "--device", "cpu", "--epochs", "3", "--set", f"label_threshold={THRESHOLD}")
    (ckpt,) = runs_dir.glob("shapes/*/best.pt")
    data = Path(os.environ["VISIONLAB_CACHE"]) / "synthetic" / "shapes-v1-s0"
    truth = _truth(data)

    out = _cli("evaluate", "--task", "shapes", "--out", str(tmp_path / "eval"), "--device", "cpu", "--split", "all")
    assert "map" in out and "ap" in out and "images with a wrong label, listed first" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "multilabel" and metrics["primary"] == "map" and metrics["threshold"] == THRESHOLD
    assert metrics["metrics"]["map"] > CHANCE_MAP, metrics["metrics"]
    assert set(metrics["per_class"]) == {"circle", "square", "stripes", "triangle"}
    assert all({"precision", "recall", "f1", "ap", "support"} <= set(row) for row in metrics["per_class"].values())

    photos = sorted(data.glob("images/*.png"))[:8]
    _cli("predict", *map(str, photos), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.json"), "--device", "cpu")
    rows = json.loads((tmp_path / "p.json").read_text())
    for r in rows:
        assert r["labels"] == [c for c, p in r["probabilities"].items() if p >= THRESHOLD] and r["label"] == "|".join(r["labels"])
    hits = sum(len(set(r["labels"]) & truth[r["path"]]) for r in rows)
    assert hits >= 0.7 * sum(len(truth[r["path"]]) for r in rows)  # the labels present are listed
    _cli("predict", *map(str, photos), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.csv"), "--device", "cpu")
    flat = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [float(r["circle_probability"]) for r in flat] == [r["probabilities"]["circle"] for r in rows]

    served = _serve_one(ckpt, photos[0])
    assert served["labels"] == rows[0]["labels"] and served["probabilities"].keys() == rows[0]["probabilities"].keys()

    out = _cli("export", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert out.count(": passed") == 2
    _cli(str(tmp_path / "m.onnx"), *map(str, photos), "--json", str(tmp_path / "r.json"), module="visionlab.runtime")
    ran = json.loads((tmp_path / "r.json").read_text())
    assert [r["labels"] for r in ran] == [r["labels"] for r in rows]
    assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for a, b in zip(ran, rows) for c in a["probabilities"]) < 1e-3


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):
    """The plugin found through VISIONLAB_PLUGINS in this process; its registrations undone afterwards."""
    yield from load_plugin(monkeypatch, PLUGIN)


def test_the_doctor_recognizes_a_labels_csv_with_several_labels(plugin, tmp_path: Path, cls_folder: Path):
    import visionlab
    from visionlab.kinds import guess_kind
    from visionlab.errors import VisionlabError
    from visionlab.kinds import get_kind

    kind = get_kind(visionlab.get_task("shapes").kind)
    shapes = kind.synthetic_data(visionlab.get_task("shapes"))
    assert [guess_kind(p) for p in (shapes, cls_folder)] == ["multilabel", "classification"]
    (tmp_path / "labels.csv").write_text("path,labels\na.png,cat\nb.png,dog\n")  # one label each: not multi-label
    assert not kind.recognizes(tmp_path)
    (tmp_path / "labels.csv").write_text("file,tags\na.png,cat|dog\n")
    with pytest.raises(VisionlabError, match="needs the columns path and labels"):
        kind.runner(visionlab.load_config("shapes", overrides={"data": str(tmp_path)}), visionlab.get_task("shapes"), "cpu").prepare()


def test_the_threshold_is_a_config_key_of_the_kind_with_its_checks(plugin):
    import visionlab
    from visionlab.errors import VisionlabError

    assert visionlab.load_config("shapes").options.label_threshold == 0.5  # the recipe's
    assert visionlab.load_config("shapes", overrides={"label_threshold": 0.7}).options.label_threshold == 0.7
    with pytest.raises(VisionlabError, match="label_threshold must be between 0 and 1"):
        visionlab.load_config("shapes", overrides={"label_threshold": 1.5})
    with pytest.raises(VisionlabError, match="label_threshold"):  # a misspelt key: the close match is suggested
        visionlab.load_config("shapes", overrides={"label_treshold": 0.5})
    with pytest.raises(VisionlabError, match="label_threshold"):  # another kind's task has no such key
        visionlab.load_config("cracks", overrides={"label_threshold": 0.3})
