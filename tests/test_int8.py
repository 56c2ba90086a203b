"""visionlab export --int8: static QDQ quantisation, calibrated on the run's training photos and
scored against fp32 on its validation split; refused (nothing written) when the primary metric
drops too far; the int8 file answers through predict, evaluate, serve and the torch-free runtime.

The models are the session's tiny checkpoints (conftest's ``tiny_models``: a cracks_cnn and a
landcover U-Net trained for two steps on synthetic data); each is quantised once per module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import answered
from test_cli import assert_one_line_error, invoke

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

import visionlab  # noqa: E402
from visionlab.data.io import expand_inputs  # noqa: E402
from visionlab.engine.checkpoint import load_checkpoint  # noqa: E402
from visionlab.errors import VisionlabError  # noqa: E402
from visionlab.kinds import get_kind  # noqa: E402


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115


@pytest.fixture(scope="module")
def int8(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """``int8(task)`` -> the export result of the tiny model's int8 file (made once)."""
    from visionlab.quantize import export_int8

    done: dict[str, object] = {}
    folder = tmp_path_factory.mktemp("int8")

    def get(task: str):
        if task not in done:
            done[task] = export_int8(tiny_models[task], out=folder / f"{task}.int8.onnx", calibration_images=40, console=_quiet())
        return done[task]

    return get


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _files(ckpt: Path, n: int) -> list[str]:
    root = load_checkpoint(ckpt)["data"]["root"]
    files = [f for f in expand_inputs([root]) if Path(f).parent.name != "masks"]
    return files[:: max(1, len(files) // n)][:n]


@pytest.mark.parametrize("task", ["cracks", "landcover"])
def test_int8_export_is_quantised_scored_and_says_what_it_was_calibrated_on(int8, tiny_models, task: str) -> None:
    result = int8(task)
    ckpt = tiny_models[task]
    state = load_checkpoint(ckpt)
    kind = get_kind(state["kind"])
    q = result.quantization
    assert result.path.is_file() and result.files == [result.path]
    assert not [f for f in result.path.parent.iterdir() if f.name.startswith(".")]  # no staging folder left
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    weights = [i for i in onnx.load(str(result.path)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and any(len(w.dims) == 4 for w in weights)  # int8 conv weights
    assert q.metric == kind.primary and q.split == "val" and q.images > 0 and q.passed
    assert q.max_drop == kind.max_quantization_drop and q.drop == pytest.approx(q.fp32 - q.int8)
    assert q.calibration["split"] == "train" and q.calibration["run"] == ckpt.parent.name
    assert 0 < q.calibration["inputs"] <= 40
    meta = _meta(result.path)
    assert meta["precision"] == "int8" and meta["task"] == task and json.loads(meta["classes"]) == state["classes"]
    assert json.loads(meta["preprocessing"]) == state["preprocessing"]
    assert json.loads(meta["quantization"])["calibrated_on"] == q.calibration
    assert json.loads(meta.get("calibration", "null")) == state.get("calibration")  # the temperature is kept
    check = json.loads(meta["quantization_check"])
    assert check["fp32"] == q.fp32 and check["int8"] == q.int8 and check["metric"] == kind.primary
    assert json.loads(meta["quantization"])["format"] == "QDQ"


def test_int8_answers_as_fp32_does_through_the_runtime_and_predict(int8, tiny_models) -> None:
    """The tiny classifier's int8 file gives the fp32 file's labels, raw probabilities within a few
    hundredths (raw: the fitted temperature of a barely trained model sharpens small logit differences)."""
    from visionlab.export import export_onnx
    from visionlab.runtime import load

    result, ckpt = int8("cracks"), tiny_models["cracks"]
    fp32 = export_onnx(ckpt, out=result.path.parent / "cracks.fp32.onnx", console=_quiet())
    assert result.size_bytes < 0.5 * fp32.size_bytes  # int8 weights
    files = _files(ckpt, 8)
    a, b = (load(f.path, threads=1, calibration=False).predict(files) for f in (fp32, result))
    assert [r["error"] for r in b] == [None] * len(files)
    assert np.mean([x["label"] == y["label"] for x, y in zip(a, b)]) >= 0.75
    assert max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b) if x["label"] == y["label"]) < 0.1
    preds = visionlab.load(result.path, device="cpu", calibration=False).predict(files)
    assert [p.label for p in preds] == [r["label"] for r in b]


@pytest.mark.parametrize("task", ["cracks", "landcover"])
def test_cli_predict_and_evaluate_run_the_int8_file(int8, tiny_models, task: str, tmp_path: Path) -> None:
    result = int8(task)
    out = tmp_path / "eval"
    r = invoke("evaluate", "--checkpoint", result.path, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] > 0 and get_kind(metrics["kind"]).primary in metrics["metrics"]
    r = invoke("predict", *_files(tiny_models[task], 2), "--checkpoint", result.path, "--out", tmp_path / "p" / "preds.json",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "p" / "preds.json").read_text())
    assert len(rows) == 2 and all(row["error"] is None and row["label"] for row in rows)


def test_serve_answers_with_the_int8_file(int8) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from conftest import make_class_image
    from test_serve import Server, _jpeg

    s = Server([int8("cracks").path], device="cpu")
    try:
        s.wait_ready()
        r = httpx.post(s.url + "/predict", content=_jpeg(make_class_image("zebra", 1, 48)), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert answered(r.json()["results"][0]) in ("Negative", "Positive")
    finally:
        s.stop()


def test_a_drop_beyond_max_drop_is_refused_with_both_figures_and_leaves_no_file(tiny_models, tmp_path: Path) -> None:
    """--max-drop -1 asks int8 to beat fp32 by a whole accuracy: no quantised model can, so it must be refused."""
    dest = tmp_path / "out" / "refused.int8.onnx"
    r = invoke("export", tiny_models["cracks"], "--int8", "--calibration-images", "8", "--max-drop", "-1", "--out", dest)
    line = assert_one_line_error(r, "int8 export refused, nothing was written", "accuracy on the val split", "fp32 ",
                                 "int8 ", "allowed -1", "--max-drop", "without --int8")
    fp32, int8_score = map(float, re.search(r"fp32 ([0-9.]+), int8 ([0-9.]+)", line).groups())
    assert 0.0 <= fp32 <= 1.0 and 0.0 <= int8_score <= 1.0
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # not even a staging folder


def test_bad_int8_options_are_refused_before_any_work(tiny_models, tmp_path: Path) -> None:
    ckpt = tiny_models["cracks"]
    assert_one_line_error(invoke("export", ckpt, "--int8", "--calibration-images", "0", "--out", tmp_path / "a.onnx"),
                          "--calibration-images must be an integer >= 1")
    assert_one_line_error(invoke("export", ckpt, "--int8", "--max-drop", "nan", "--out", tmp_path / "a.onnx"),
                          "--max-drop must be a finite number")
    assert_one_line_error(invoke("benchmark", ckpt, "--max-drop", "inf"), "--max-drop must be a finite number")
    assert_one_line_error(invoke("export", ckpt, "--int8", "--external-data", "--out", tmp_path / "a.onnx"),
                          "--int8 writes one file")
    assert list(tmp_path.iterdir()) == []
    from visionlab.quantize import Quantizer

    with pytest.raises(VisionlabError, match="--calibration-images must be an integer"):
        Quantizer(calibration_images=True)


def test_calibration_uses_the_training_split_only(tiny_models) -> None:
    """The calibration inputs are windows of training photos, never of validation or test ones."""
    from visionlab.engine.runner import prepared_runner
    from visionlab.registry import get_task

    ckpt = tiny_models["cracks"]
    state = load_checkpoint(ckpt)
    runner, _ = prepared_runner(get_task("cracks"), get_kind("classification"), state, ckpt, device="cpu")
    train, held = set(map(str, runner.split_files("train"))), set(map(str, runner.split_files("val") + runner.split_files("test")))
    assert train and held and not train & held


def _table_rows(output: str) -> dict[str, str]:
    """The benchmark table's rows by format (rich draws them between box characters)."""
    rows = {}
    for line in output.splitlines():
        line = line.strip()
        cells = [c.strip() for c in line[1:-1].split("│")] if line.startswith("│") else []
        if len(cells) == 6 and cells[0] and cells[0] != "format":
            rows[cells[0]] = line
    return rows


def test_benchmark_prints_a_row_per_format_with_ratios_and_a_pick(tiny_models) -> None:
    from visionlab import benchmark as b
    from visionlab.benchmark import benchmark

    r = invoke("benchmark", tiny_models["cracks"], "--formats", "onnx,onnx-int8,pytorch-bf16", "--images", "6")
    assert r.exit_code == 0, r.output
    rows = _table_rows(r.stdout)
    assert list(rows) == ["pytorch", "onnx", "onnx-int8", "pytorch-bf16"]  # the baseline first, always measured
    assert "accuracy " in rows["onnx-int8"] and "(1.00x)" in rows["pytorch"] and "failed" not in r.stdout
    assert "pick: " in r.stdout and "within 0.005 of PyTorch fp32" in r.stdout
    result = benchmark(tiny_models["cracks"], formats="onnx,onnx-int8", images=6, console=_quiet())
    assert [row.format for row in result.rows] == ["pytorch", "onnx", "onnx-int8"]
    for row in result.rows:
        assert row.error is None and row.size_bytes > 0 and 0.0 <= row.metric <= 1.0 and row.throughput > 0
        median, p95 = row.latency_ms
        assert 0 < median <= p95 and 1 <= row.calls[0] <= b.LATENCY_CALLS and 1 <= row.calls[1] <= b.THROUGHPUT_CALLS  # bounded
    assert result.rows[2].size_bytes < 0.5 * result.rows[1].size_bytes
    best, why = result.choice()
    fine = [row for row in result.rows if result.within_tolerance(row)]
    assert best in fine and best.latency_ms[0] == min(row.latency_ms[0] for row in fine) and "fastest" in why


def test_benchmark_times_the_formats_interleaved_in_rounds_and_a_failing_one_gets_its_reason() -> None:
    """Each round gives every format a slice of its calls (so load that changes during the run slows
    all alike); a model that breaks in round 2 loses its figures, gets a reason, and the others go on."""
    import contextlib

    import torch

    from visionlab import benchmark as b

    order: list[str] = []

    class Net(torch.nn.Module):
        def __init__(self, name: str, breaks_after: int | None = None) -> None:
            super().__init__()
            self.name, self.breaks_after, self.conv = name, breaks_after, torch.nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            order.append(self.name)
            if self.breaks_after is not None and order.count(self.name) > self.breaks_after:
                raise RuntimeError("the runtime lost its device\nsecond line")
            return self.conv(x)

    per_round = -(-b.LATENCY_CALLS // b.ROUNDS) + -(-b.THROUGHPUT_CALLS // b.ROUNDS) + 2 * b.SLICE_WARMUP_CALLS  # untimed ones too
    warm = 2 * b.WARMUP_CALLS
    rows = [b.FormatRow("a"), b.FormatRow("b"), b.FormatRow("c")]
    b._interleaved([b._Timer(rows[0], Net("a"), contextlib.nullcontext, 8),
                    b._Timer(rows[1], Net("b"), contextlib.nullcontext, 8),
                    b._Timer(rows[2], Net("c", breaks_after=warm + per_round), contextlib.nullcontext, 8)])
    timed = order[3 * warm:]
    runs = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]  # consecutive calls collapsed
    assert runs == ["a", "b", "c"] + ["a", "b", "c"] + ["a", "b"] * (b.ROUNDS - 2)
    for row in rows[:2]:
        assert row.error is None and row.calls == (b.LATENCY_CALLS, b.THROUGHPUT_CALLS) and row.throughput > 0
        assert 0 < row.latency_ms[0] <= row.latency_ms[1]
    assert rows[2].error == "RuntimeError: the runtime lost its device" and rows[2].latency_ms is None


def test_a_format_that_fails_gets_a_row_saying_why(tiny_models) -> None:
    """--max-drop -1: the int8 export is refused, and its row says so; the others are measured."""
    r = invoke("benchmark", tiny_models["cracks"], "--formats", "pytorch,onnx-int8", "--images", "6", "--max-drop", "-1")
    assert r.exit_code == 0, r.output
    rows = _table_rows(r.stdout)
    assert list(rows) == ["pytorch", "onnx-int8"] and "Traceback" not in r.output
    assert "failed: int8 export refused, nothing was written" in rows["onnx-int8"]
    assert "failed" not in rows["pytorch"]
    assert "pick: none (no format ran within the accuracy tolerance" in r.stdout
    assert_one_line_error(invoke("benchmark", tiny_models["cracks"], "--formats", "onnx,tflite"),
                          "unknown benchmark format(s): tflite", "pytorch,pytorch-bf16,onnx")


# --------------------------------------------------------------------------- OpenVINO

_BLOCK = '''
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
'''


def _blocking(folder: Path, *names: str) -> dict[str, str]:
    """An environment whose interpreter cannot import ``names``, visionlab from this tree."""
    from conftest import REPO

    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_BLOCK.replace("BLOCKED", repr(names)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_without_openvino_export_and_the_runtime_name_the_extra(tiny_models, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = _blocking(tmp_path / "block", "openvino")
    proc = subprocess.run([sys.executable, "-m", "visionlab", "export", str(tiny_models["cracks"]), "--format", "openvino",
                           "--out", str(tmp_path / "m.xml")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: --format openvino needs openvino, which is not installed. pip install 'visionlab[openvino]'."], proc.stderr[-2000:]
    (tmp_path / "m.xml").write_text("<net/>")  # any .xml: the runtime asks for openvino before reading it
    proc = subprocess.run([sys.executable, "-m", "visionlab.runtime", str(tmp_path / "m.xml"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs openvino, which is not installed. pip install 'visionlab[openvino]'" in proc.stderr


@pytest.fixture(scope="module")
def openvino_models(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("openvino")
    from visionlab.export import export_onnx
    from visionlab.openvino import export_openvino

    folder = tmp_path_factory.mktemp("openvino")
    out = {}
    for task in ("cracks", "landcover"):
        out[task] = (export_openvino(tiny_models[task], out=folder / f"{task}.xml", console=_quiet()),
                     export_onnx(tiny_models[task], out=folder / f"{task}.onnx", console=_quiet()))
    return out


@pytest.mark.parametrize("task", ["cracks", "landcover"])
def test_openvino_ir_carries_the_metadata_passes_parity_and_answers_as_the_onnx(openvino_models, tiny_models, task: str,
                                                                                 tmp_path: Path) -> None:
    from visionlab.runtime import load, open_session, read_metadata

    ir, ox = openvino_models[task]
    assert [f.name for f in ir.files] == [f"{task}.xml", f"{task}.bin"] and all(f.is_file() for f in ir.files)
    assert not [f for f in ir.path.parent.iterdir() if f.name.startswith(".")]
    assert ir.parity.passed and ir.parity.runtime == "OpenVINO" and ir.parity.max_abs_diff <= 1e-4 and ir.end_to_end.passed
    assert "OpenVINO vs PyTorch fp32" in ir.parity.line()
    if task == "landcover":
        assert len(ir.parity.shapes) == 4  # another height and width: the IR keeps the dynamic spatial axes
    meta, onnx_meta = (read_metadata(open_session(p, threads=1), p) for p in (ir.path, ox.path))
    for key in ("task", "kind", "classes", "preprocessing", "outputs", "config", "checkpoint_sha256"):
        assert meta[key] == onnx_meta[key], key
    assert meta["visionlab_runtime"].startswith("openvino ")
    files = _files(tiny_models[task], 2)
    a, b = load(ox.path, threads=1).predict(files), load(ir.path, threads=1).predict(files)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert all(abs(x["confidence"] - y["confidence"]) < 1e-3 for x, y in zip(a, b))
    reports = {}
    for name, model in (("onnx", ox.path), ("ir", ir.path)):
        r = invoke("evaluate", "--checkpoint", model, "--out", tmp_path / name, "--device", "cpu")
        assert r.exit_code == 0, r.output
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    for key, value in reports["onnx"].items():
        assert reports["ir"][key] == pytest.approx(value, abs=1e-3), key


def test_openvino_ir_runs_without_torch_and_in_serve(openvino_models, tiny_models, tmp_path: Path) -> None:
    import subprocess
    import sys

    httpx = pytest.importorskip("httpx")
    from conftest import make_class_image
    from test_serve import Server, _jpeg

    ir, _ = openvino_models["cracks"]
    files = _files(tiny_models["cracks"], 2)
    env = _blocking(tmp_path / "notorch", "torch", "torchvision")
    proc = subprocess.run([sys.executable, "-m", "visionlab.runtime", str(ir.path), *files], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == 2
    s = Server([ir.path], device="cpu")
    try:
        s.wait_ready()
        r = httpx.post(s.url + "/predict", content=_jpeg(make_class_image("zebra", 1, 48)), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and answered(r.json()["results"][0]) in ("Negative", "Positive"), r.text
    finally:
        s.stop()


def test_openvino_int8_is_the_int8_onnx_converted_and_scored_again(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from visionlab.openvino import export_openvino
    from visionlab.runtime import load, open_session, read_metadata

    result = export_openvino(tiny_models["cracks"], out=tmp_path / "m.int8.xml", int8=True, calibration_images=20, console=_quiet())
    q = result.quantization
    assert q.runtime == "OpenVINO" and q.passed and q.calibration["split"] == "train" and "in OpenVINO" in q.line()
    meta = read_metadata(open_session(result.path, threads=1), result.path)
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["calibrated_on"]["inputs"] == q.calibration["inputs"]
    rows = load(result.path, threads=1).predict(_files(tiny_models["cracks"], 3))
    assert all(r["error"] is None and answered(r) in ("Negative", "Positive") for r in rows)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.int8.bin", "m.int8.xml"]
