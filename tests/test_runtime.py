"""The torch-free runtime (visionlab.runtime) on tiny ONNX models built here with onnx's helper API.

Nothing here imports torch, so these tests also run in the torch-free venvs of the oldest and newest
supported Pythons (.ci/run). The models are colour detectors whose answers are known: a classifier
that scores the mean of each channel, and a segmenter that scores each pixel's channels.
test_export.py checks the runtime against real exported checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.torchfree

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from visionlab.errors import VisionlabError  # noqa: E402
from visionlab.runtime import FORMAT, load, main  # noqa: E402

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _model(path: Path, dense: bool, metadata: dict[str, object] | None, size: int | None = None) -> Path:
    """Logits = 10 x each channel, per pixel (``dense``) or averaged over the image; opset 17.
    ``size``: the input is size x size (as an exported classifier's), else of any height and width."""
    from onnx import TensorProto, helper

    scale = helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])
    nodes = [helper.make_node("Mul", ["image", "ten"], ["logits" if dense else "scaled"])]
    if not dense:
        nodes.append(helper.make_node("ReduceMean", ["scaled"], ["logits"], axes=[2, 3], keepdims=0))
    out_shape = ["N", 3, "H", "W"] if dense else ["N", 3]
    graph = helper.make_graph(nodes, "colours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size or "H", size or "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], [scale])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))
    return path


def _metadata(kind: str, preprocessing: dict[str, object]) -> dict[str, object]:
    return {"visionlab_format": FORMAT, "task": "colours", "kind": kind, "classes": list(COLOURS), "config": {},
            "model_args": {}, "data": {}, "preprocessing": {"kind": kind, **HALF, **preprocessing}}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pre = {"image_size": 16, "resize": "squash", "background_removal": False, "tta": "d4"}
    return _model(tmp_path_factory.mktemp("onnx") / "classifier.onnx", dense=False, metadata=_metadata("classification", pre))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pre = {"image_size": 32, "resize": "scale", "tile_size": 32, "tile_overlap": 0.25, "seg_scale": 1.0, "values": [0, 7, 9],
           "colors": ["#ff0000", "#00ff00", "#0000ff"], "ignore_index": 255, "ignored_values": [], "tta": "flips"}
    return _model(tmp_path_factory.mktemp("onnx") / "segmenter.onnx", dense=True, metadata=_metadata("segmentation", pre))


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """One 40 x 30 JPEG per colour, and a file that is not an image."""
    out = {}
    for name, rgb in COLOURS.items():
        out[name] = tmp_path / f"{name}.jpg"
        Image.new("RGB", (40, 30), rgb).save(out[name])
    out["broken"] = tmp_path / "broken.jpg"
    out["broken"].write_bytes(b"\xff\xd8 not a jpeg")
    return out


def test_the_classifier_names_each_colour_with_its_metadata(classifier: Path, photos: dict[str, Path]):
    model = load(classifier, threads=1)
    assert (model.task, model.kind, model.classes, model.tta) == ("colours", "classification", list(COLOURS), "d4")
    rows = model.predict([photos[c] for c in COLOURS], top_k=2)
    assert [r["label"] for r in rows] == list(COLOURS) and all(r["error"] is None for r in rows)
    for r in rows:
        assert r["confidence"] > 0.99 and [t["label"] for t in r["top_k"]][0] == r["label"] and len(r["top_k"]) == 2
        assert r["confidence"] == pytest.approx(r["top_k"][0]["probability"])
    array = np.asarray(Image.open(photos["green"]))  # arrays and PIL images as well as paths
    assert [r["label"] for r in model.predict([array, Image.open(photos["blue"])])] == ["green", "blue"]


def test_an_unreadable_file_gets_an_error_and_the_others_their_answers(classifier: Path, photos: dict[str, Path]):
    rows = load(classifier, threads=1).predict([photos["red"], photos["broken"], photos["blue"]], batch_size=2)
    assert [r["label"] for r in rows] == ["red", None, "blue"]
    assert rows[1]["error"] and "\n" not in rows[1]["error"] and rows[1]["path"] == str(photos["broken"])


def test_entries_that_are_not_predicted_are_listed_with_why(classifier: Path, photos: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]):
    """A folder, a FIFO, /dev/zero and a broken link named on the command line, and a README in a
    folder: each is a row saying why it was skipped, as in visionlab predict (they vanished
    without a word, and with nothing else given the command printed nothing and exited 1)."""
    import os

    folder = tmp_path / "folder.jpg"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "README.txt").write_text("notes")
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    named = [str(fifo), "/dev/zero", str(tmp_path / "dangling.jpg"), str(folder)]
    rows = load(classifier, threads=1).predict([photos["red"], *named])
    assert [(r["label"], r["error"], r.get("skipped")) for r in rows] == [
        ("red", None, None), (None, None, "not a regular file"), (None, None, "not a regular file"),
        (None, None, "broken symbolic link"), (None, None, "not an image")]
    assert main([str(classifier), *named]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{fifo}\tskipped\tnot a regular file", "/dev/zero\tskipped\tnot a regular file",
                   f"{tmp_path / 'dangling.jpg'}\tskipped\tbroken symbolic link", f"{folder / 'sub' / 'README.txt'}\tskipped\tnot an image"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(classifier), str(empty)]) == 1
    assert capsys.readouterr().err.startswith("error: no images matched the given paths.")


def test_an_error_names_a_file_with_a_newline_in_its_name_whole(classifier: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]):
    """'new\\nline.jpg' (not an image) and 'gone\\tfile.jpg' (missing): the one-line error names the
    whole file, the control characters escaped (it said only '.../new', cut at the newline), and so
    does the runtime command's line of it."""
    from visionlab.data.io import UnreadableImage, load_image

    odd = tmp_path / "new\nline.jpg"
    odd.write_text("not an image")
    rows = load(classifier, threads=1).predict([odd, tmp_path / "gone\tfile.jpg"])
    assert [r["error"] for r in rows] == [
        f"{tmp_path}/new\\nline.jpg: cannot decode image (not a JPEG, PNG, GIF, BMP, TIFF, WebP or PPM file). "
        "Convert it to one of those, or remove it.", f"{tmp_path}/gone\\tfile.jpg: file not found. Check the path."]
    with pytest.raises(UnreadableImage, match=r"new\\nline\.jpg: cannot decode"):
        load_image(odd)
    assert main([str(classifier), str(odd)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path}/new\\nline.jpg\terror\t{rows[0]['error']}"]


@pytest.mark.parametrize("option", [["--top-k", "0"], ["--top-k", "-1"], ["--threads", "0"], ["--threads", "-2"]])
def test_a_top_k_or_thread_count_below_one_is_refused(classifier: Path, photos: dict[str, Path], option: list[str],
                                                      capsys: pytest.CaptureFixture[str]):
    """As visionlab predict refuses --top-k 0: one line, exit 2 (it answered with the top 1, or ran
    onnxruntime on a negative thread count)."""
    assert main([str(classifier), str(photos["red"]), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option[0][2:].replace('-', '_')} must be") and err.count("\n") == 1, err


def test_the_segmenter_tiles_and_maps_classes_to_the_datasets_values(segmenter: Path, tmp_path: Path):
    img = np.zeros((50, 70, 3), dtype=np.uint8)  # not a multiple of the tile: padded, blended, cropped back
    img[:, :30] = COLOURS["red"]
    img[:, 30:] = COLOURS["blue"]
    img[:20, 30:] = COLOURS["green"]
    Image.fromarray(img).save(tmp_path / "aerial.png")
    (row,) = load(segmenter, threads=1).predict(tmp_path / "aerial.png")
    expected = np.full((50, 70), 9, dtype=np.uint8)
    expected[:, :30], expected[:20, 30:] = 0, 7
    assert row["error"] is None and row["mask"].shape == (50, 70)
    assert (row["mask"] == expected).mean() > 0.98
    assert row["label"] == "red"  # the largest share: 30 x 50 of 70 x 50 pixels
    assert row["class_shares"] == pytest.approx({"red": 30 / 70, "green": 40 * 20 / 3500, "blue": 40 * 30 / 3500}, abs=0.02)


def test_the_command_line_writes_json_and_masks(segmenter: Path, classifier: Path, photos: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "rows.json"
    assert main([str(classifier), str(photos["red"]), str(photos["broken"]), "--json", str(out), "--threads", "1"]) == 0
    rows = json.loads(out.read_text())
    assert [r["label"] for r in rows] == ["red", None] and "red" in capsys.readouterr().out
    masks = tmp_path / "masks"
    assert main([str(segmenter), str(photos["green"]), "--masks", str(masks), "--threads", "1"]) == 0
    assert np.unique(np.asarray(Image.open(masks / "green_mask.png"))).tolist() == [7]
    assert main([str(classifier), str(photos["broken"])]) == 1  # nothing could be predicted


_WITHOUT_RICH = """
import sys

class Refuse:  # the runtime's own install has numpy, Pillow and onnxruntime: no torch, no rich
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "rich"):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, Refuse())
from visionlab.runtime import main

raise SystemExit(main(sys.argv[1:]))
"""


def test_the_command_line_needs_neither_torch_nor_rich(classifier: Path, photos: dict[str, Path]):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WITHOUT_RICH, str(classifier), str(photos["red"]), "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\t")[1] == "red"


@pytest.mark.parametrize(("change", "expected"), [
    ({"preprocessing": {"image_size": None}}, "image_size is missing"), ({"classes": ["red", "green"]}, "2 classes for a network with 3 outputs"),
    ({"classes": []}, "not a list of class names"), ({"preprocessing": {"tta": "bogus"}}, "tta is 'bogus', not one of none, hflip"),
    ({"preprocessing": {"std": [0.5, 0.5]}}, "std is [0.5, 0.5], not three numbers"), ({"preprocessing": {"std": [0, 1, 1]}}, "not three numbers > 0"),
    ({"preprocessing": {"image_size": [16]}}, "image_size is [16], not a whole number in 8..4096"),
    ({"preprocessing": {"image_size": 24}}, "the network takes 16x16 inputs, the preprocessing makes 24x24"),
    ({"preprocessing": {"resize": "scale"}}, "the network takes 16x16 inputs, the preprocessing makes whole images of any size"),
    ({"preprocessing": {"resize": "weird"}}, "resize is 'weird', not one of squash, scale"),
    ({"preprocessing": {"mean": "abc"}}, "mean is 'abc', not three numbers"), ({"preprocessing": {"mean": None}}, "mean is missing"),
    ({"preprocessing": {"image_size": 0}}, "image_size is 0, not a whole number in 8..4096"),
    ({"preprocessing": {"image_size": 100000}}, "image_size is 100000, not a whole number in 8..4096"),
    ({"preprocessing": {"background_removal": "no"}}, "background_removal is 'no', not true or false"),
    ({"outputs": []}, "'outputs' is [], not a list of the network's outputs"),
    ({"outputs": [{"name": "logits", "per": "voxel", "activation": "softmax"}]}, "per must be image or pixel"),
    ({"outputs": [{"name": "logits", "per": "pixel", "activation": "softmax"}]}, "scores per pixel, but the network's output has 2 axes"),
])
def test_metadata_the_runtime_cannot_use_is_one_line(tmp_path: Path, photos: dict[str, Path], change: dict[str, dict],
                                                     expected: str, capsys: pytest.CaptureFixture[str]):
    """A file whose classes or preprocessing are missing, do not fit the network (its classes, its
    input size) or name an unknown view: refused on load in one line (was a KeyError, IndexError,
    ValueError or onnxruntime's InvalidArgument at the first image)."""
    meta = _metadata("classification", {"image_size": 16, "resize": "squash", "tta": "none"})
    meta["preprocessing"] = {k: v for k, v in {**meta["preprocessing"], **change.get("preprocessing", {})}.items() if v is not None}
    meta["classes"] = change.get("classes", meta["classes"])
    meta.update({k: v for k, v in change.items() if k == "outputs"})
    path = _model(tmp_path / "tampered.onnx", dense=False, metadata=meta, size=16)
    with pytest.raises(VisionlabError, match="its visionlab metadata is incomplete or damaged") as info:
        load(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert main([str(path), str(photos["red"])]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_missing_broken_and_foreign_files_are_one_line_errors(classifier: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(classifier.read_bytes()[:100])
    foreign = _model(tmp_path / "foreign.onnx", dense=False, metadata=None)
    older = _model(tmp_path / "older.onnx", dense=False, metadata={"visionlab_format": "visionlab-onnx/0"})
    damaged = _model(tmp_path / "damaged.onnx", dense=False, metadata={"visionlab_format": FORMAT, "classes": "[oops"})
    for path, expected in ((tmp_path / "nowhere.onnx", "does not exist"), (broken, "is not a readable ONNX model"),
                           (foreign, "without visionlab metadata"), (older, "has metadata format 'visionlab-onnx/0'"),
                           (damaged, "incomplete or damaged")):
        with pytest.raises(VisionlabError, match=expected) as info:
            load(path)
        assert "\n" not in str(info.value)
        assert main([str(path), str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err


def test_files_without_an_output_description_read_it_from_the_graph(classifier: Path, segmenter: Path):
    """Files exported before the kinds described their outputs: class logits before softmax, per
    pixel when the graph's output has four axes."""
    assert [(o.name, o.per, o.activation) for o in load(classifier).metadata["outputs"]] == [("logits", "image", "softmax")]
    assert load(segmenter).output.dense and load(segmenter).output.activation == "softmax"


def test_the_described_activation_is_the_one_applied(tmp_path: Path):
    """An output described as sigmoid (several labels per photo) is scored per class, not over the classes."""
    meta = {**_metadata("classification", {"image_size": 16, "resize": "squash", "tta": "none"}),
            "outputs": [{"name": "logits", "per": "image", "activation": "sigmoid", "meaning": "a score per label"}]}
    model = load(_model(tmp_path / "labels.onnx", dense=False, metadata=meta))
    assert model.output.activation == "sigmoid" and not model.output.dense
    yellow = (230, 230, 20)  # red and green at once
    row = model.predict([np.full((30, 40, 3), yellow, dtype=np.uint8)], top_k=3)[0]
    probs = {t["label"]: t["probability"] for t in row["top_k"]}
    logits = 10 * (np.asarray(yellow) / 255 - 0.5) / 0.5
    assert probs == pytest.approx(dict(zip(COLOURS, 1 / (1 + np.exp(-logits)))), abs=1e-4)
    assert probs["red"] > 0.99 and probs["green"] > 0.99  # both labels: not a softmax over them


def test_a_file_without_outputs_takes_its_kinds_not_a_guess_from_the_graph(tmp_path: Path):
    """A file exported before the metadata described its outputs: its kind's declared outputs apply
    (a sigmoid kind's scores each label on its own; the graph's rank alone would have said softmax)."""
    from visionlab.kinds import Kind, Output, kind_names, register_kind

    class Labels(Kind):
        name = "colour_labels_without_outputs"
        outputs = (Output("logits", "image", "sigmoid", "a score per label"),)

    if Labels.name not in kind_names():
        register_kind(Labels())
    model = load(_model(tmp_path / "labels.onnx", dense=False, metadata=_metadata(Labels.name, {"image_size": 16, "resize": "squash"})))
    assert [(o.per, o.activation) for o in model.metadata["outputs"]] == [("image", "sigmoid")]
    yellow = np.full((1, 16, 16, 3), (230, 230, 20), dtype=np.uint8).transpose(0, 3, 1, 2)
    probs = model.probs(model.normalize(yellow))[0]
    logits = 10 * (np.asarray((230, 230, 20)) / 255 - 0.5) / 0.5
    assert probs == pytest.approx(1 / (1 + np.exp(-logits)), abs=1e-4)  # a softmax would give red and green ~0.5 each


def test_a_file_of_a_kind_not_registered_here_says_to_load_its_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _model(tmp_path / "plugin.onnx", dense=False, metadata=_metadata("kind_of_no_plugin_here", {"image_size": 16, "resize": "squash"}))
    with pytest.raises(VisionlabError, match="exported from the task kind 'kind_of_no_plugin_here', which is not registered here") as info:
        load(path)
    assert "install or name its plugin (VISIONLAB_PLUGINS=module) and run again." in str(info.value)
    assert main([str(path), str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
