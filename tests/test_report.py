"""visionlab report / evaluate --report: one self-contained HTML file, opened offline in Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import visionlab
from conftest import offline_page, save_shot
from visionlab.cli import app
from visionlab.report import render_report, write_report


def _quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


@pytest.fixture(scope="module")
def cracks_eval(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cracks-eval")
    visionlab.evaluate(tiny_models["cracks"], out=out, console=_quiet(), report_html=True, device="cpu")
    return out


@pytest.fixture(scope="module")
def landcover_eval(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("landcover-eval")
    visionlab.evaluate(tiny_models["landcover"], out=out, console=_quiet(), report_html=True, device="cpu", examples=3)
    return out


def _no_outside_refs(text: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)""", text)
    assert all(r.startswith("data:") for r in refs), [r for r in refs if not r.startswith("data:")]
    assert "@import" not in text and "url(http" not in text


def test_evaluate_report_of_a_classifier(cracks_eval: Path):
    rows = pd.read_csv(cracks_eval / "predictions.csv")
    assert {"top1_label", "top1_probability", "top2_label", "top2_probability"} <= set(rows.columns)
    assert (rows["top1_label"] == rows["predicted"]).all()
    wrong = rows[~rows["correct"]]
    assert list(wrong.index) == list(range(len(wrong))) and wrong["confidence"].is_monotonic_decreasing
    listing = json.loads((cracks_eval / "examples" / "examples.json").read_text())
    assert len(listing) == min(12, len(wrong))
    for ex, (_, row) in zip(listing, wrong.iterrows()):  # the most confident mistakes, in order
        assert ex["title"] == row["path"] and ex["fields"]["true"] == row["label"]
        assert (cracks_eval / "examples" / ex["images"]["photo"]).is_file()
    text = (cracks_eval / "report.html").read_text()
    _no_outside_refs(text)
    for needle in ("Test metrics", "Training curves", "<svg", "Per class", "Confusion matrix", "true ↓", "predicted →",
                   "Negative", "Positive", "precision", "recall", "f1", "SYNTHETIC"):
        assert needle in text, needle
    metrics = json.loads((cracks_eval / "metrics.json").read_text())
    assert f"{metrics['metrics']['accuracy']:.4f}" in text
    cm = metrics["confusion_matrix"]
    assert f"<b>{cm[0][0]:,}</b>" in text and f"<b>{cm[1][0]:,}</b>" in text
    if listing:
        assert "Most confident mistakes" in text and text.count("data:image/jpeg;base64,") == len(listing)


def test_evaluate_report_of_a_segmenter_shows_worst_images(landcover_eval: Path):
    rows = pd.read_csv(landcover_eval / "predictions.csv")
    assert {"path", "miou", "pixel_accuracy"} <= set(rows.columns) and rows["miou"].is_monotonic_increasing
    listing = json.loads((landcover_eval / "examples" / "examples.json").read_text())
    assert len(listing) == min(3, len(rows))
    assert [ex["title"] for ex in listing] == list(rows["path"][: len(listing)])
    for ex in listing:
        assert list(ex["images"]) == ["photo", "truth", "prediction"]
        sizes = {Image.open(landcover_eval / "examples" / f).size for f in ex["images"].values()}
        assert len(sizes) == 1  # side by side at one size
    text = (landcover_eval / "report.html").read_text()
    _no_outside_refs(text)
    assert "Worst images by IoU" in text and "counts of pixels" in text and "iou" in text
    assert text.count("data:image/jpeg;base64,") == 3 * len(listing)


@pytest.mark.torchfree
def test_labels_and_file_names_are_escaped(tmp_path: Path):
    run = tmp_path / "run"
    ev = run / "eval-test"
    (ev / "examples").mkdir(parents=True)
    evil = "<script>alert(1)</script>"
    (ev / "metrics.json").write_text(json.dumps({
        "kind": "classification", "task": "cracks", "class_names": [evil, "a&b"], "primary": "accuracy",
        "metrics": {"accuracy": 0.5}, "confusion_matrix": [[1, 1], [1, 1]],
        "per_class": {evil: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}, "a&b": {"precision": 0.5}}}))
    Image.new("RGB", (8, 8)).save(ev / "examples" / "01-photo.jpg")
    (ev / "examples" / "examples.json").write_text(json.dumps([
        {"title": f"/data/{evil}.jpg", "images": {"photo": "01-photo.jpg"}, "fields": {"true": evil, "predicted": "a&b"}}]))
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_accuracy\n1,0.9,0.8,0.5\n2,0.7,0.75,0.5\n")
    text = render_report(run, ev)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a&amp;b" in text


def test_report_command_evaluates_a_run_that_has_no_evaluation(tiny_models: dict[str, Path], tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_models["cracks"].parent, run, ignore=shutil.ignore_patterns("eval-*"))
    r = CliRunner().invoke(app, ["report", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    evals = list(run.glob("eval-*/report.html"))
    assert len(evals) == 1 and f"wrote {evals[0]}" in r.output.replace("\n", "")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert write_report(evals[0].parent, out=tmp_path / "again.html") == tmp_path / "again.html"


def test_reports_open_offline_in_a_browser(cracks_eval: Path, landcover_eval: Path, chromium, tmp_path: Path):
    for name, folder in (("report-cracks.png", cracks_eval), ("report-landcover.png", landcover_eval)):
        url = (folder / "report.html").as_uri()
        page, leaked = offline_page(chromium, "file://", viewport={"width": 1200, "height": 900})
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(url)
        page.wait_for_load_state("load")
        assert page.locator("svg polyline").count() >= 2  # the curves drew
        assert page.locator("table.cm td").count() >= 4
        broken = page.locator("img").evaluate_all("imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0
        save_shot(page, tmp_path, name)
        assert leaked == [] and [r for r in requests if not r.startswith("data:")] == [url]
        page.context.close()


def _evaluation_folder(run: Path) -> Path:
    """A hand-made eval-test folder of ``run``: a classifier's metrics.json and one example photo."""
    ev = run / "eval-test"
    (ev / "examples").mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps({"kind": "classification", "task": "cracks", "class_names": ["a", "b"],
                                                 "metrics": {"accuracy": 0.5}}))
    Image.new("RGB", (8, 8)).save(ev / "examples" / "01-photo.jpg")
    return ev


def test_report_embeds_no_file_from_outside_the_run_folder(tmp_path: Path):
    """examples.json of someone else's run names ../../secret, an absolute path and a link out:
    none of them is read into the page, each is named as skipped; the run's own image is embedded."""
    import base64

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the reader's private file")
    run = tmp_path / "run"
    ev = _evaluation_folder(run)
    (ev / "examples" / "link.jpg").symlink_to(secret)
    (ev / "examples" / "loop1.jpg").symlink_to("loop2.jpg")  # a loop of links: skipped, not a crash
    (ev / "examples" / "loop2.jpg").symlink_to("loop1.jpg")
    names = {"photo": "01-photo.jpg", "up": "../../../secret.txt", "absolute": str(secret), "link": "link.jpg", "nul": "a\x00b",
             "loop": "loop1.jpg"}
    (ev / "examples" / "examples.json").write_text(json.dumps([{"title": "x.jpg", "images": names, "fields": {}}]))
    text = render_report(run, ev)
    leaked = base64.b64encode(secret.read_bytes()).decode()
    assert leaked not in text and "private" not in text
    assert text.count("data:image/jpeg;base64,") == 1
    for name in ("../../../secret.txt", str(secret), "link.jpg", "a\x00b", "loop1.jpg"):
        assert text.count(f"skipped {name}: not inside the examples folder") == 1, name


@pytest.mark.torchfree
@pytest.mark.parametrize(("name", "content"), [
    ("metrics.json", "not json"), ("metrics.json", "[]"), ("examples/examples.json", '{"a": 1}'),
    ("examples/examples.json", "[1]"), ("examples/examples.json", '[{"images": {"photo": "01-photo.jpg"}}]'),
    ("examples/examples.json", '[{"title": "x.jpg", "images": ["01-photo.jpg"]}]'),
    ("examples/examples.json", '[{"title": "x.jpg", "images": {}, "fields": [1]}]'),
])
def test_a_damaged_evaluation_file_is_one_line_naming_it(tmp_path: Path, name: str, content: str):
    """metrics.json or examples.json that is not JSON, or not the shape evaluate writes: the
    report command says which file is damaged and what to do, in one line (no traceback)."""
    run = tmp_path / "run"
    ev = _evaluation_folder(run)
    (ev / "examples" / "examples.json").write_text('[{"title": "x.jpg", "images": {"photo": "01-photo.jpg"}, "fields": {}}]')
    (ev / name).write_text(content)
    res = CliRunner().invoke(app, ["report", str(ev)])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert f"{ev / name} is damaged" in " ".join(res.output.split()) and "visionlab evaluate" in res.output, res.output


@pytest.mark.torchfree
def test_only_jpegs_of_a_bounded_size_are_embedded(tmp_path: Path):
    """Inside the examples folder too, only what evaluate writes is embedded: a JPEG of at most
    8 MB (visionlab.report.MAX_EXAMPLE_BYTES). A huge file (sparse, just over it), a text file named .jpg, a FIFO and a missing
    name are not read into the page; the first two are named as skipped, with why."""
    run = tmp_path / "run"
    ex = _evaluation_folder(run) / "examples"
    with (ex / "huge.jpg").open("wb") as f:
        f.write(b"\xff\xd8\xff")
        f.truncate((8 << 20) + 1)
    (ex / "text.jpg").write_text("<svg onload=alert(1)>")
    os.mkfifo(ex / "fifo.jpg")
    names = {"photo": "01-photo.jpg", "huge": "huge.jpg", "text": "text.jpg", "fifo": "fifo.jpg", "gone": "gone.jpg"}
    (ex / "examples.json").write_text(json.dumps([{"title": "x.jpg", "images": names, "fields": {}}]))
    text = render_report(run, ex.parent)
    assert text.count("data:image/jpeg;base64,") == 1 and len(text) < 100_000
    assert "skipped huge.jpg: larger than 8 MB" in text and "skipped text.jpg: not a JPEG image" in text
    assert "onload" not in text and "fifo.jpg" not in text and "gone.jpg" not in text


@pytest.mark.torchfree
def test_a_curve_that_never_goes_below_zero_gets_no_negative_tick():
    """A learning rate annealed to 0 drew its axis down to -2.96e-05."""
    import re

    from visionlab.report import _svg_chart

    svg = _svg_chart("learning rate", [{"epoch": 1, "lr": 5e-4}, {"epoch": 2, "lr": 0.0}], ["lr"])
    ticks = [float(t) for t in re.findall(r"text-anchor='end'>([^<]+)<", svg)]
    assert len(ticks) == 5 and min(ticks) == 0.0 and max(ticks) > 5e-4
    loss = _svg_chart("loss", [{"epoch": 1, "val_loss": -0.5}, {"epoch": 2, "val_loss": 0.5}], ["val_loss"])
    assert min(float(t) for t in re.findall(r"text-anchor='end'>([^<]+)<", loss)) < -0.5  # below 0 when the data is
