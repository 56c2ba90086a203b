"""visionlab export: every task's model goes to ONNX with parity proven at export, and the file
answers as the checkpoint does in predict, evaluate and the torch-free runtime.

Each task gets one tiny model (its recipe's architecture, or the seed's, without pretrained
weights, trained for two steps on synthetic data), trained and exported once per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, fast_options
from test_cli import assert_one_line_error, invoke

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import visionlab  # noqa: E402
import visionlab.registry  # noqa: E402  (a submodule is an attribute once imported)
from visionlab.data.io import expand_inputs  # noqa: E402
from visionlab.errors import VisionlabError  # noqa: E402
from visionlab.kinds import get_kind  # noqa: E402
from visionlab.kinds.classification import KNOWN_SCORE  # noqa: E402

# Per task: a model and options that cover the code paths (architectures, TTA modes, tiling, seg_scale).
TASK_OPTIONS = {
    "cracks": {"model": "cracks_cnn", "model_args": {}},  # recipe TTA: flips
    "waste": {"model": "waste_cnn", "model_args": {}, "tta": "hflip"},
    "caltech": {"model": "resnet18", "model_args": {"weights": None}},
    "minerals": {"background_removal": True},  # the recipe's EfficientNet-Lite0 (timm), d4 TTA, the seed's background removal
    "landcover": {"tta": "d4", "seg_scale": 0.5},  # smp U-Net on a Lite0 encoder, 64 px tiles over 160 x 128 images
}


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, session_cache: Path):
    """``models(task)`` -> (checkpoint, export result, sample files), trained and exported once."""
    done: dict[str, tuple[Path, object, list[str]]] = {}
    runs = tmp_path_factory.mktemp("export-runs")

    def get(task: str):
        if task not in done:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("VISIONLAB_CACHE", str(session_cache))
                opts = fast_options(task, runs, name=task, **TASK_OPTIONS.get(task, {}))
                result = visionlab.train(task, data="synthetic", console=_quiet(), **opts)
                exported = visionlab.export_onnx(result.best_checkpoint, console=_quiet())
            from visionlab.engine.checkpoint import load_checkpoint

            state = load_checkpoint(result.best_checkpoint)
            files = [f for f in expand_inputs([state["data"]["root"]]) if Path(f).parent.name != "masks"]
            n = 2 if state["kind"] == "segmentation" else 6  # a segmentation image is many tiles x 8 views
            done[task] = (result.best_checkpoint, exported, files[:: max(1, len(files) // n)][:n])
        return done[task]

    return get


def _same_predictions(a, b) -> None:
    assert [p.error for p in a] == [p.error for p in b] == [None] * len(a)
    assert [p.label for p in a] == [p.label for p in b]
    for p, q in zip(a, b):
        if getattr(p, "mask", None) is not None:  # a mask result; else a class ranking
            assert p.mask.shape == q.mask.shape
            assert (p.mask == q.mask).mean() >= 0.999, (p.source, (p.mask == q.mask).mean())
        else:
            assert [lab for lab, _ in p.top_k] == [lab for lab, _ in q.top_k]
            assert p.confidence == pytest.approx(q.confidence, abs=1e-4)


@pytest.mark.parametrize("task", visionlab.registry.task_names())
def test_every_task_exports_with_parity_and_predicts_as_its_checkpoint(models, task: str) -> None:
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.runtime import load

    ckpt, exported, files = models(task)
    state = load_checkpoint(ckpt)
    p = exported.parity
    assert p.passed and p.max_abs_diff <= 1e-4 and p.agreement >= 0.999
    assert [s[0] for s in p.shapes[:3]] == [1, 2, 5] and p.source.startswith("8 images of ")  # real inputs, not zeros
    e2e = exported.end_to_end  # files in, answers out: the predictor (fp32) against the runtime on the file
    assert e2e.passed and e2e.max_prob_diff <= 1e-4 and e2e.agreement == 1.0, e2e.line()
    assert e2e.source == state["data"]["root"] and e2e.files == (1 if state["kind"] == "segmentation" else 8)
    assert exported.path == ckpt.with_suffix(".onnx") and exported.path.is_file()
    assert sorted(f.name for f in ckpt.parent.iterdir() if f.name.startswith(".")) == []  # no temp files left behind
    meta = {m.key: m.value for m in onnx.load(str(exported.path)).metadata_props}
    assert meta["task"] == task and meta["kind"] == state["kind"]
    assert json.loads(meta["classes"]) == state["classes"]
    assert json.loads(meta["preprocessing"]) == state["preprocessing"]
    assert meta["tta"] == state["preprocessing"]["tta"]
    declared = [o.to_dict() for o in get_kind(state["kind"]).outputs]  # what the runtime reads, then a classifier's score
    assert json.loads(meta["outputs"]) == declared + ([KNOWN_SCORE.to_dict()] if state.get("unknown") else [])
    assert json.loads(meta["outputs"])[0]["per"] == ("pixel" if state["kind"] == "segmentation" else "image")
    assert meta["visionlab_version"] == visionlab.__version__
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()

    torch_preds = visionlab.load(ckpt, device="cpu").predict(files, batch_size=4)
    onnx_preds = visionlab.load(exported.path, device="cpu").predict(files, batch_size=4)
    _same_predictions(torch_preds, onnx_preds)
    runtime = load(exported.path, threads=1)
    assert runtime.classes == state["classes"] and runtime.tta == state["preprocessing"]["tta"]
    rows = runtime.predict(files, batch_size=4)
    assert [r["label"] for r in rows] == [q.label for q in torch_preds]
    for r, q in zip(rows, torch_preds):
        if getattr(q, "mask", None) is not None:
            assert (r["mask"] == q.mask).mean() >= 0.999
        else:
            assert r["confidence"] == pytest.approx(q.confidence, abs=1e-4)


def test_exported_file_has_a_dynamic_batch(models) -> None:
    import torch

    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.runtime import open_session

    ckpt, exported, _ = models("minerals")
    state = load_checkpoint(ckpt)
    model = load_model(state, channels_last=False)
    session = open_session(exported.path, threads=1)
    name = session.get_inputs()[0].name
    x = torch.randn(7, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x).numpy()
    seven = session.run(None, {name: x.numpy()})[0]
    one = session.run(None, {name: x[3:4].numpy()})[0]
    assert seven.shape == (7, len(state["classes"])) and one.shape == (1, len(state["classes"]))
    np.testing.assert_allclose(seven, ref, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(one[0], seven[3], atol=1e-5)


def test_a_lite0_classifier_pads_its_same_convolutions_by_constants_inside_the_convs(models) -> None:
    """timm's TF-style "same" convolutions (Lite0's stride-2 ones) would compute their padding from
    the input's shape at every call and copy the padded tensor; a classifier's graph has a fixed
    height and width, so the export pads by constants, folded into each Conv's own ``pads``, and
    the model keeps its own modules afterwards."""
    import collections

    import torch
    from timm.layers import Conv2dSame

    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.export import _static_same_padding

    ckpt, exported, _ = models("minerals")  # the recipe's Lite0
    graph = onnx.load(exported.path).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    # its five stride-2 convolutions pad themselves (TF "same" on even sizes: one more at the end),
    # with no padding arithmetic and no Pad node
    assert not ops["Ceil"] and not ops["Pad"], ops
    asymmetric = [n for n in graph.node if n.op_type == "Conv"
                  for a in n.attribute if a.name == "pads" and list(a.ints[:2]) != list(a.ints[2:])]
    assert len(asymmetric) == 5
    model = load_model(load_checkpoint(ckpt), channels_last=False)
    before = [type(m) for m in model.modules()]
    with _static_same_padding(model, torch.zeros(1, 3, 32, 32)):
        assert not any(type(m) is Conv2dSame for m in model.modules())
    assert [type(m) for m in model.modules()] == before and Conv2dSame in before
    assert not any("pads" in vars(m) for m in model.modules())


_BLOCK_TORCH = '''
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: this interpreter has no torch")
        return None

sys.meta_path.insert(0, _NoTorch())
'''


def test_runtime_without_torch_gives_the_predictors_labels_and_masks(models, tmp_path: Path) -> None:
    block = tmp_path / "notorch"
    block.mkdir()
    (block / "sitecustomize.py").write_text(_BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO / "src")]), "OMP_NUM_THREADS": "1"}
    no_torch = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert no_torch.returncode != 0 and "blocked" in no_torch.stderr

    for task in ("cracks", "landcover"):
        ckpt, exported, files = models(task)
        out, masks = tmp_path / f"{task}.json", tmp_path / f"{task}-masks"
        script = textwrap.dedent(f"""
            import sys, runpy
            sys.argv = ["visionlab.runtime", {str(exported.path)!r}, *{files!r}, "--json", {str(out)!r}, "--masks", {str(masks)!r}]
            try:
                runpy.run_module("visionlab.runtime", run_name="__main__")
            except SystemExit as exc:
                assert exc.code == 0, exc.code
            assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules), "torch was imported"
            print("TORCH-FREE OK")
        """)
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "TORCH-FREE OK" in proc.stdout, proc.stderr[-2000:]
        rows = json.loads(out.read_text())
        expected = visionlab.load(ckpt, device="cpu").predict(files)
        assert [r["path"] for r in rows] == [p.source for p in expected]
        assert [r["label"] for r in rows] == [p.label for p in expected]
        for r, p in zip(rows, expected):
            if getattr(p, "mask", None) is not None:  # a mask result; else a class ranking
                mask = np.asarray(Image.open(r["mask_file"]))
                assert mask.shape == p.mask.shape and (mask == p.mask).mean() >= 0.999
            else:
                assert r["confidence"] == pytest.approx(p.confidence, abs=1e-4)
                assert [t["label"] for t in r["top_k"]] == [lab for lab, _ in p.top_k]


@pytest.mark.parametrize("task", ["cracks", "landcover"])
def test_cli_predict_and_evaluate_on_onnx_equal_the_checkpoint(models, task: str, tmp_path: Path) -> None:
    ckpt, exported, files = models(task)
    reports, preds = {}, {}
    for name, model in (("pt", ckpt), ("onnx", exported.path)):
        result = invoke("evaluate", "--checkpoint", model, "--out", tmp_path / f"eval-{name}", "--device", "cpu")
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"eval-{name}" / "metrics.json").read_text())
        result = invoke("predict", *files, "--checkpoint", model, "--out", tmp_path / f"pred-{name}" / "preds.json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        preds[name] = json.loads((tmp_path / f"pred-{name}" / "preds.json").read_text())
    pt, ox = reports["pt"], reports["onnx"]
    assert pt["images"] == ox["images"] > 0 and pt["tta"] == ox["tta"]
    assert pt["metrics"].keys() == ox["metrics"].keys()
    for key, value in pt["metrics"].items():
        assert ox["metrics"][key] == pytest.approx(value, abs=1e-3), key
    if pt["kind"] == "classification":  # same labels for every test image
        assert pt["confusion_matrix"] == ox["confusion_matrix"]
        assert (tmp_path / "eval-onnx" / "predictions.csv").read_text().count("\n") == pt["images"] + 1
    assert [r["label"] for r in preds["pt"]] == [r["label"] for r in preds["onnx"]]
    for a, b in zip(preds["pt"], preds["onnx"]):
        if "mask" in a:
            ma, mb = np.asarray(Image.open(a["mask"])), np.asarray(Image.open(b["mask"]))
            assert (ma == mb).mean() >= 0.999
        else:  # fp32 by default on both ways: every probability, not only the top one (bf16 was 1e-4..2e-2 apart)
            assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
            for s, t in zip(a["top_k"], b["top_k"]):
                assert s["probability"] == pytest.approx(t["probability"], abs=1e-5)


def test_precision_is_fp32_unless_asked_and_checked_before_loading(models, tmp_path: Path) -> None:
    ckpt, _, files = models("cracks")
    assert visionlab.load(ckpt, device="cpu").precision.name == "fp32"
    assert visionlab.load(ckpt, device="cpu", precision="auto").precision.name in ("fp32", "bf16")
    result = invoke("predict", files[0], "--checkpoint", ckpt, "--precision", "fp8", "--device", "cpu")
    assert result.exit_code != 0 and "unknown --precision 'fp8'" in result.output and "Traceback" not in result.output
    result = invoke("predict", files[0], "--checkpoint", ckpt, "--precision", "auto", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with pytest.raises(visionlab.VisionlabError, match="unknown precision"):
        visionlab.load(ckpt, device="cpu", precision="half")


def test_broken_and_foreign_onnx_files_give_one_line_errors(models, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from visionlab.runtime import load

    _, exported, files = models("cracks")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(exported.path.read_bytes()[:1000])
    assert_one_line_error(invoke("predict", files[0], "--checkpoint", broken), "broken.onnx is not a readable ONNX model")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    assert_one_line_error(invoke("evaluate", "--checkpoint", foreign), "without visionlab metadata")
    assert_one_line_error(invoke("predict", files[0], "--checkpoint", foreign), "without visionlab metadata")
    with pytest.raises(VisionlabError, match="without visionlab metadata"):
        load(foreign)
    assert_one_line_error(invoke("export", exported.path), "already an exported model")
    assert_one_line_error(invoke("export", exported.path.with_suffix(".pt"), "--format", "tflite"), "unknown export format")


def test_export_to_a_folder_is_refused_before_any_work_naming_the_folder(models, tmp_path: Path) -> None:
    """--out names an existing folder (ending in .onnx): one line naming it and what to pass, and
    the folder is left as it was (was an IsADirectoryError naming a deleted temporary file)."""
    ckpt, _, _ = models("cracks")
    folder = tmp_path / "models.onnx"
    folder.mkdir()
    result = invoke("export", ckpt, "--out", folder)
    assert_one_line_error(result, f"--out {folder} is a folder")
    assert "model.onnx" in result.output and ".models.onnx." not in result.output
    assert _folder_state(tmp_path) == ["models.onnx"] and _folder_state(folder) == []


def test_the_fallback_exporter_prints_no_graph_dump(models, tmp_path: Path) -> None:
    """waste_cnn at 32 px: the TorchScript exporter fails and dynamo takes over. The command prints
    its three lines, not the C++ dump of the whole TorchScript graph that preceded them on stdout."""
    ckpt, exported, _ = models("waste")
    assert exported.exporter == "dynamo"  # the fallback path is the one under test
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "visionlab", "export", str(ckpt), "--out", str(tmp_path / "w.onnx")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Torch IR graph" not in proc.stdout + proc.stderr and "%features" not in proc.stdout, proc.stdout[:2000]
    assert proc.stdout.startswith("exported "), proc.stdout[:2000]


def _folder_state(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir())


def test_parity_failure_fails_the_export_and_leaves_no_file(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import visionlab.export as export

    ckpt, exported, _ = models("minerals")
    assert exported.parity.max_abs_diff > 0  # so a zero tolerance must fail
    out = tmp_path / "out"
    out.mkdir()
    line = assert_one_line_error(invoke("export", ckpt, "--out", out / "m.onnx", "--atol", "0", "--rtol", "0"),
                                 "failed the parity check", "nothing was written")
    assert "max |logit diff|" in line and _folder_state(out) == []

    original = export._finalize

    def tampered(proto, metadata):  # the file's first weight doubled: the graph no longer matches PyTorch
        proto = original(proto, metadata)
        init = proto.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(init) * 2.0 + 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        return proto

    monkeypatch.setattr(export, "_finalize", tampered)
    with pytest.raises(VisionlabError, match="failed the parity check"):
        export.export_onnx(ckpt, out=out / "t.onnx", console=_quiet())
    assert _folder_state(out) == []


@pytest.mark.parametrize("task", ["cracks", "minerals"])  # minerals: background removal on real photos, d4
def test_end_to_end_parity_on_real_photos(models, shared_data: Path, task: str) -> None:
    import torch

    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.device import resolve_precision
    from visionlab.export import check_end_to_end
    from visionlab.kinds import get_kind

    ckpt, exported, _ = models(task)
    state = load_checkpoint(ckpt)
    files = [str(f) for f in get_kind(state["kind"]).sample_inputs(shared_data / task, 8)]
    e2e = check_end_to_end(state, exported.path, files, str(shared_data / task))
    assert e2e.files == 8 and e2e.counted == 8 and e2e.passed and e2e.max_prob_diff <= 1e-4, e2e.line()
    fp16 = dict(state, config=dict(state["config"], precision="fp16"))  # trained on CUDA: no such inference on a CPU
    again = check_end_to_end(fp16, exported.path, files[:2], str(shared_data / task))
    # judged in fp32 whatever the training precision; the note is --precision auto's here (bf16 on CPUs that have it)
    auto = resolve_precision("auto", torch.device("cpu")).name
    assert again.passed and again.own_precision == auto and (again.own_max_prob_diff is None) == (auto == "fp32")
    assert (again.own_line() == "") == (auto == "fp32")


def test_end_to_end_parity_refuses_a_file_whose_preprocessing_differs(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network is the same (tensor parity passes), the file's normalisation is not: only a
    comparison from files to answers sees it, and the export is refused."""
    import visionlab.export as export

    ckpt, _, _ = models("cracks")
    original = export._finalize

    def tampered(proto, metadata):  # the file says mean 0 and std 1: the runtime normalises otherwise
        pre = dict(json.loads(metadata["preprocessing"]), mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
        return original(proto, {**metadata, "preprocessing": json.dumps(pre)})

    monkeypatch.setattr(export, "_finalize", tampered)
    with pytest.raises(VisionlabError, match="failed the end-to-end parity check") as info:
        export.export_onnx(ckpt, out=tmp_path / "t.onnx", console=_quiet())
    assert "max |probability diff|" in str(info.value) and "(allowed 0.001)" in str(info.value)
    assert _folder_state(tmp_path) == []


def test_the_runtime_of_a_background_removal_model_without_opencv_says_what_to_install(models, tmp_path: Path) -> None:
    block = tmp_path / "nocv"
    block.mkdir()
    (block / "sitecustomize.py").write_text(_BLOCK_TORCH.replace('("torch", "torchvision")', '("torch", "torchvision", "cv2")'))
    _, exported, files = models("minerals")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO / "src")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "visionlab.runtime", str(exported.path), files[0]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: this model removes the background before resizing, which needs OpenCV (cv2), not installed. "
        "pip install opencv-python-headless"], proc.stderr[-2000:]


def test_external_data_is_written_beside_the_file_and_found_on_load(models, tmp_path: Path) -> None:
    import shutil

    from visionlab.runtime import load

    ckpt, exported, files = models("cracks")
    result = visionlab.export_onnx(ckpt, out=tmp_path / "a" / "ext.onnx", external_data=True, console=_quiet())
    assert [f.name for f in result.files] == ["ext.onnx", "ext.onnx.data"] and result.parity.passed
    assert (tmp_path / "a" / "ext.onnx").stat().st_size < 100_000 < (tmp_path / "a" / "ext.onnx.data").stat().st_size
    shutil.move(tmp_path / "a", tmp_path / "moved")  # the pair travels together
    model = tmp_path / "moved" / "ext.onnx"
    assert [r["label"] for r in load(model).predict(files)] == [p.label for p in visionlab.load(exported.path).predict(files)]


def test_importing_visionlab_and_help_load_no_onnx() -> None:
    code = ("import sys, visionlab, visionlab.cli, visionlab.engine.checkpoint\n"
            "from typer.testing import CliRunner\n"
            "assert CliRunner().invoke(visionlab.cli.app, ['--help']).exit_code == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript')))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_export_speed_benchmark_runs_and_reports_parity(tmp_path: Path) -> None:
    """A smoke run (numbers meaningless): the table, the JSON rows at both batches, parity passed."""
    out = tmp_path / "speed.json"
    # no photos there: random uint8 inputs, so the run takes seconds (decoding photos is not what is tested)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VISIONLAB_SHARED_DATA": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "export_speed.py"), "--quick", "--models", "cracks_cnn",
                           "--threads", "1", "--json", str(out), "--strict"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "QUICK SMOKE RUN, not a measurement" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 32]
    for r in rows:
        assert all(v[0] > 0 for v in r["ips"].values()) and r["ratio_fp32"] > 0
        assert "passed" in r["parity"]


def _strings(value):
    """Every string inside a metadata value (JSON fields decoded)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_exported_file_carries_no_local_path(tiny_models, tmp_path: Path, session_cache: Path) -> None:
    """A model trained on a real folder: its file keeps the classes, preprocessing, hash, task and
    kind, and no path of this machine (the data folder, the runs folder, the cache, the home);
    evaluating it then asks for --data and gives the checkpoint's numbers with it."""
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.runtime import JSON_FIELDS

    folder = load_checkpoint(tiny_models["cracks"])["data"]["root"]  # the synthetic photos, as a plain folder
    result = visionlab.train("cracks", data=folder, console=_quiet(), **fast_options(
        "cracks", tmp_path / "runs", model="cracks_cnn", model_args={}, name="paths", epochs=1))
    exported = visionlab.export_onnx(result.best_checkpoint, console=_quiet())
    meta = {m.key: m.value for m in onnx.load(str(exported.path)).metadata_props}
    strings = [s for k, v in meta.items() for s in _strings(json.loads(v) if k in JSON_FIELDS else v)]
    assert not [s for s in strings if os.path.isabs(s) or s.startswith("~")]
    for local in (folder, str(tmp_path), str(session_cache), str(Path.home())):
        assert not [s for s in strings if local in s], local
    state = load_checkpoint(result.best_checkpoint)
    assert json.loads(meta["classes"]) == state["classes"] and json.loads(meta["preprocessing"]) == state["preprocessing"]
    assert meta["checkpoint"] == "best.pt" and meta["checkpoint_sha256"] == hashlib.sha256(result.best_checkpoint.read_bytes()).hexdigest()
    assert (meta["task"], meta["kind"], json.loads(meta["config"])["image_size"]) == ("cracks", "classification", 32)

    assert_one_line_error(invoke("evaluate", "--checkpoint", exported.path, "--device", "cpu"),
                          "does not say where its data is", "--data")
    reports = {}
    for name, model in (("pt", result.best_checkpoint), ("onnx", exported.path)):
        extra = ["--data", folder] if name == "onnx" else []
        r = invoke("evaluate", "--checkpoint", model, *extra, "--out", tmp_path / name, "--device", "cpu")
        assert r.exit_code == 0, r.output
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert reports["onnx"]["images"] == reports["pt"]["images"] > 0  # the same test split
    assert reports["onnx"]["metrics"]["accuracy"] == pytest.approx(reports["pt"]["metrics"]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("case", ["spatial zeros", "reflect", "channels", "value 1", "two readers"])
def test_only_a_zero_spatial_pad_read_by_one_conv_is_folded_into_it(case: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from visionlab.export import _fold_pads_into_convs

    rng = np.random.default_rng(0)
    pads = [0, 1, 0, 0, 0, 0, 1, 1] if case == "channels" else [0, 0, 0, 1, 0, 0, 1, 2]
    inits = [numpy_helper.from_array(np.array(pads, dtype=np.int64), "pads"),
             numpy_helper.from_array(np.array([1.0 if case == "value 1" else 0.0], dtype=np.float32), "value"),
             numpy_helper.from_array(rng.standard_normal((4, 3 if case != "channels" else 4, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode="reflect" if case == "reflect" else "constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if case == "two readers":
        nodes.append(helper.make_node("Relu", ["p"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    folded = _fold_pads_into_convs(model)
    assert [n.op_type for n in folded.graph.node].count("Pad") == (0 if case == "spatial zeros" else 1)
    after = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
