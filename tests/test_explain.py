"""Why a classifier said what it said (issue #22 section 3): Grad-CAM through ``predict --explain``,
the model zoo's layer per model, and the report's most confident mistakes.

A small CNN learns to tell photos with a bright square (anywhere) from plain dark noise; its
explanation of "square" must then be hot where the square is and cold far from it, in the PNG that
``visionlab predict --explain`` writes (a real subprocess) as in the map itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, answered, fast_options

pytest.importorskip("captum")

SIZE, SIDE = 64, 16  # photo side, square side


def _photo(rng: np.random.Generator, corner: tuple[int, int] | None, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """Dark noise, with a bright square whose top-left corner is ``corner`` (x, y) when given."""
    w, h = size
    img = rng.normal(45, 12, (h, w, 3))
    if corner is not None:
        x, y = corner
        img[y:y + SIDE, x:x + SIDE] = rng.normal(225, 8, (SIDE, SIDE, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_squares(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("square", "blank"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            corner = tuple(int(v) for v in rng.integers(0, SIZE - SIDE, 2)) if name == "square" else None
            _photo(rng, corner).save(root / name / f"img_{i}.png")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "visionlab", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> dict[str, Any]:
    """best.pt of a cracks_cnn that learned bright squares, and its data folder."""
    import visionlab
    from rich.console import Console

    root = tmp_path_factory.mktemp("squares")
    data = _write_squares(root / "data", 40, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        quiet = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        result = visionlab.train("cracks", data=str(data), console=quiet,
                                 **fast_options("cracks", root / "runs", model="cracks_cnn", model_args={}, name="sq",
                                                epochs=10, max_steps_per_epoch=0, batch_size=16, lr=3e-3, image_size=SIZE,
                                                ema=0.0, val_fraction=0.2, test_fraction=0.2))
    return {"best": result.best_checkpoint, "data": data, "root": root}


def _inside(corner: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x, y = corner
    mask[y:y + SIDE, x:x + SIDE] = True
    return mask


def test_the_zoo_names_the_layer_each_model_is_explained_by():
    from visionlab.models import build_model, model_weights, no_weights_kwargs

    expected = {"efficientnet_lite0": "bn2", "cracks_cnn": "features", "waste_cnn": "features", "minerals_cnn": "features",
                "resnet18": "layer4"}
    for name, layer in expected.items():
        assert model_weights(name, **no_weights_kwargs(name)).cam_layer == layer
        modules = dict(build_model(name, 3, **no_weights_kwargs(name)).named_modules())
        assert layer in modules, (name, layer)


def test_predict_explain_writes_a_png_per_image_hot_where_the_square_is(squares: dict[str, Any], tmp_path: Path):
    rng = np.random.default_rng(7)
    corners = {"top_left.png": (4, 4), "bottom_right.png": (44, 44), "middle.png": (24, 30)}
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, corner in corners.items():
        _photo(rng, corner).save(photos / name)
    other = tmp_path / "other"  # the same file name from another folder: a file of its own
    other.mkdir()
    _photo(rng, (40, 6), (96, 64)).save(other / "top_left.png")  # not square: the overlay keeps its proportions
    out = tmp_path / "out" / "p.json"
    done = _cli("predict", str(photos), str(other / "top_left.png"), "--checkpoint", str(squares["best"]), "--explain",
                "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"explanations (<image>_why.png) written to {out.parent}" in done.stdout
    rows = {Path(r["path"]).name if Path(r["path"]).parent == photos else "other": r for r in json.loads(out.read_text())}
    assert all(answered(r) == "square" for r in rows.values()), rows  # the explained class, also behind an "unknown"
    assert rows["other"]["explanation"] == str(out.parent / "top_left-2_why.png")
    for name, corner in corners.items():
        why = Path(rows[name]["explanation"])
        assert why == out.parent / f"{Path(name).stem}_why.png"
        overlay = np.asarray(Image.open(why).convert("RGB"), dtype=np.float32)
        photo = np.asarray(Image.open(photos / name), dtype=np.float32)
        assert overlay.shape == photo.shape
        change = np.abs(overlay - photo).sum(-1)  # the heat's colour where the map is warm; the photo as it is where cold
        inside = _inside(corner, change.shape)
        far = np.ones_like(inside)
        x, y = corner
        far[max(0, y - SIDE):y + 2 * SIDE, max(0, x - SIDE):x + 2 * SIDE] = False
        assert change[inside].mean() > 3 * change[far].mean(), (name, change[inside].mean(), change[far].mean())
    wide = np.asarray(Image.open(rows["other"]["explanation"]))
    assert wide.shape == (64, 96, 3)


def test_the_map_peaks_on_the_square_and_follows_the_answer(squares: dict[str, Any]):
    """The Grad-CAM map itself (not its colours): its peak lies on the square, for each place."""
    import visionlab
    from visionlab.kinds.classification.explain import grad_cam, target_layer

    predictor = visionlab.load(squares["best"], device="cpu")
    rng = np.random.default_rng(3)
    corners = [(2, 40), (40, 2), (24, 24)]
    arrays = [predictor.preprocess(_photo(rng, c)) for c in corners]
    square = predictor.classes.index("square")
    layer = target_layer(predictor.model, predictor.cam_layer)
    assert layer is predictor.model.features
    heat = grad_cam(predictor.model, predictor.normalize, predictor.device, arrays, [square] * 3, layer, predictor.temperature)
    assert heat.shape == (3, SIZE, SIZE) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    for h, corner in zip(heat, corners):
        y, x = np.unravel_index(h.argmax(), h.shape)
        assert corner[0] - 4 <= x < corner[0] + SIDE + 4 and corner[1] - 4 <= y < corner[1] + SIDE + 4, (corner, (x, y))
    # the temperature scales the score, not the map
    again = grad_cam(predictor.model, predictor.normalize, predictor.device, arrays, [square] * 3, layer, 3.0)
    np.testing.assert_allclose(again, heat, atol=1e-4)
    # the predictor's overlays: one per image, of the photo's size; an empty batch asks nothing of the model
    preds = predictor.predict([_photo(rng, (10, 10))], explain=True)
    assert preds[0].explanation.shape == (SIZE, SIZE, 3) and preds[0].explanation.dtype == np.uint8
    assert predictor.explain([], []) == []


def test_predict_explain_into_the_photos_folder_overwrites_no_photo_named_like_its_files(squares: dict[str, Any], tmp_path: Path):
    """--out in the folder being predicted, which holds a.png and a photo named a_why.png (a user's, or an
    earlier run's output read back): a.png's explanation takes another stem and both photos stay as they were."""
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(rng, (4, 4)).save(photos / "a.png")
    _photo(rng, None).save(photos / "a_why.png")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = photos / "p.json"
    done = _cli("predict", str(photos), "--checkpoint", str(squares["best"]), "--explain", "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {n: (photos / n).read_bytes() for n in before} == before
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["a.png"]["explanation"] == str(photos / "a-2_why.png")
    assert rows["a_why.png"]["explanation"] == str(photos / "a_why_why.png")
    assert all(Path(r["explanation"]).is_file() for r in rows.values())


def test_predict_explain_replaces_no_user_file_nor_linked_input_and_a_rerun_reads_no_output_back(squares: dict[str, Any],
                                                                                                 tmp_path: Path):
    """A user's own b_why.png (not an input), and an input a_why.png that is a link to a photo
    elsewhere, are never written over; a second run on the same folder skips the explanations the
    first one wrote (marked in the PNG) and writes its own over them, adding no -2 files."""
    rng = np.random.default_rng(4)
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    for name in ("a.png", "b.png"):
        _photo(rng, (4, 4)).save(photos / name)
    _photo(rng, None).save(elsewhere / "blank.png")
    (photos / "a_why.png").symlink_to(elsewhere / "blank.png")
    (photos / "b_why.png").write_bytes(b"the user's own file, not an image")
    out = photos / "p.json"
    args = ("--checkpoint", str(squares["best"]), "--explain", "--out", str(out), "--device", "cpu", "--batch-size", "1")
    done = _cli("predict", str(photos / "a.png"), str(photos / "a_why.png"), str(photos / "b.png"), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (photos / "a_why.png").is_symlink() and (photos / "b_why.png").read_bytes() == b"the user's own file, not an image"
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["a.png"]["explanation"] == str(photos / "a-2_why.png") and rows["b.png"]["explanation"] == str(photos / "b-2_why.png")
    assert rows["a_why.png"]["label"] == "blank"  # the linked photo itself, not an overlay
    first = sorted(p.name for p in photos.iterdir())
    again = _cli("predict", str(photos), *args)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert sorted(p.name for p in photos.iterdir()) == first  # its files over the first run's, none added
    assert rows["a-2_why.png"]["skipped"] == rows["b-2_why.png"]["skipped"] == "a file visionlab wrote beside earlier predictions"
    assert {n for n, r in rows.items() if not r.get("skipped") and not r.get("error")} == {"a.png", "a_why.png", "b.png"}
    assert rows["b_why.png"]["error"]  # the user's non-image: read and reported, not replaced
    assert (photos / "b_why.png").read_bytes() == b"the user's own file, not an image"


def test_an_exported_model_cannot_explain_and_says_so_in_one_line(squares: dict[str, Any], tmp_path: Path):
    from visionlab.errors import VisionlabError
    from visionlab.kinds.classification.explain import target_layer

    with pytest.raises(VisionlabError, match=r"an exported model \(\.onnx\) cannot explain its answers") as err:
        target_layer(torch.nn.Identity(), "")
    assert "best.pt" in err.value.hint
    with pytest.raises(VisionlabError, match="has no layer 'nope'"):
        target_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "nope")
    conv = torch.nn.Conv2d(4, 4, 3)
    assert target_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), conv, torch.nn.ReLU()), "") is conv  # no name: the last conv


def test_the_report_shows_the_explanation_of_the_most_confident_mistakes(squares: dict[str, Any], tmp_path: Path):
    """Evaluated on a folder whose labels are swapped, every answer is a mistake: each example has its
    photo and its Grad-CAM (hot on the square where it said square), and the report embeds both."""
    swapped = tmp_path / "swapped"
    rng = np.random.default_rng(11)
    corners = {f"img_{i}.png": (int(rng.integers(0, SIZE - SIDE)), int(rng.integers(0, SIZE - SIDE))) for i in range(4)}
    for name, corner in corners.items():
        (swapped / "blank").mkdir(parents=True, exist_ok=True)
        _photo(rng, corner).save(swapped / "blank" / name)  # a square, labelled blank
    (swapped / "square").mkdir()
    for i in range(4):
        _photo(rng, None).save(swapped / "square" / f"plain_{i}.png")
    out = tmp_path / "eval"
    done = _cli("evaluate", "--checkpoint", str(squares["best"]), "--data", str(swapped), "--split", "all", "--out", str(out),
                "--report", "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    examples = json.loads((out / "examples" / "examples.json").read_text())
    said_square = [ex for ex in examples if ex["fields"]["predicted"].startswith("square")]
    assert said_square, examples
    for ex in examples:
        assert set(ex["images"]) == {"photo", "Grad-CAM"}, ex
        assert ex["fields"]["Grad-CAM"] == f"red where it saw {ex['fields']['predicted'].split(' ')[0]}"
    for ex in said_square:
        corner = corners[Path(ex["title"]).name]
        overlay = np.asarray(Image.open(out / "examples" / ex["images"]["Grad-CAM"]).convert("RGB"), dtype=np.float32)
        photo = np.asarray(Image.open(ex["title"]).convert("RGB").resize(overlay.shape[1::-1]), dtype=np.float32)
        change = np.abs(overlay - photo).sum(-1)
        inside = _inside(tuple(round(v * overlay.shape[0] / SIZE) for v in corner), change.shape)
        assert change[inside].mean() > 2 * change[~inside].mean()
    page = (out / "report.html").read_text()
    assert page.count("<figcaption>Grad-CAM</figcaption>") == len(examples)
    assert page.count("alt='Grad-CAM of ") == len(examples) and "red where it saw" in page


def test_an_explanation_stopped_mid_write_leaves_no_truncated_png(tmp_path: Path):
    """Ctrl-C while a <image>_why.png is being encoded (a real SIGALRM raising KeyboardInterrupt in the
    PNG encoder's loop, as Ctrl-C did in a real predict --explain run and left a truncated PNG under
    the finished name): no file of that name, no leftover part; an uninterrupted one is whole."""
    import signal

    from visionlab.kinds.base import Prediction

    noise = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)  # seconds of zlib
    pred = Prediction("photo.jpg", label="x")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            pred.write_explanation(noise, tmp_path, set())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert "explanation" not in pred.files

    small = noise[:40, :60]
    pred.write_explanation(small, tmp_path, set())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_why.png"]
    assert np.array_equal(np.asarray(Image.open(pred.files["explanation"])), small)


def test_sigterm_while_explanations_are_written_says_how_many_and_leaves_no_half_file(squares: dict[str, Any], tmp_path: Path):
    """A real predict --explain stopped by SIGTERM once its first <image>_why.png is on disk: exit 130,
    one line saying how many images' files were written (as many as are there, each whole), no CSV
    and no part file. Before, SIGTERM killed it without a word (and Ctrl-C left a truncated PNG)."""
    import signal
    import time

    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(80):  # large photos: each overlay is 512 px, so writing them all takes seconds
        Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png", compress_level=0)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "predict", str(photos), "--checkpoint", str(squares["best"]),
                             "--explain", "--out", str(out / "p.csv"), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("*_why.png")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    written = sorted(out.glob("*_why.png"))
    assert proc.returncode == 130, stdout + stderr
    assert 0 < len(written) < 80, len(written)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted: the files of {len(written)} of 80 image(s) were written to {out}; "
                                                    "no predictions file was written."), stderr
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in written]  # no CSV, no .part
    for p in written:
        Image.open(p).load()  # whole
