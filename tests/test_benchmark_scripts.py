"""benchmarks/serve.py with exported formats, and benchmarks/compile_speed.py: smoke runs on tiny
models and sizes. No timing assertions (``--quick`` numbers mean nothing): what is checked is that
each format is exported by ``visionlab export``, served by a real ``visionlab serve`` on
127.0.0.1 and run offline, and lands in the table with answered requests; and that the compile
benchmark's children run and fill its table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_serve_benchmark_serves_and_runs_offline_every_format_asked(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    pytest.importorskip("onnxruntime.quantization")
    from visionlab.engine.checkpoint import load_checkpoint

    ckpt = tiny_models["cracks"]
    photos = load_checkpoint(ckpt)["data"]["root"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), "--checkpoint", str(ckpt), "--photos", photos,
                           "--device", "cpu", "--quick", "--formats", "pytorch,onnx-int8"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name in ("visionlab serve", "visionlab serve (onnx-int8)", "naive FastAPI"):
        for clients in (4, 8):
            m = re.search(rf"^\| {re.escape(name)} \| {clients} \| ([0-9.]+) \|.*\| (\d+) of 24 \|$", out, re.M)
            assert m, (name, clients, out)
            assert float(m.group(1)) > 0 and m.group(2) == "0", (name, clients, m.group(0))
    for label in ("offline batched predict |", "offline batched predict (onnx-int8) |"):
        m = re.search(rf"^\| {re.escape(label)} - \| ([0-9.]+) images/s", out, re.M)
        assert m and float(m.group(1)) > 0, (label, out)
    assert "visionlab serve (onnx-int8) at 4 clients:" in out and "its own offline batched throughput" in out


def test_serve_benchmark_refuses_an_unknown_format(tiny_models, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), "--checkpoint", str(tiny_models["cracks"]),
                           "--photos", str(tmp_path), "--formats", "tflite"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--formats takes pytorch,onnx,onnx-int8,openvino,openvino-int8; got 'tflite'" in proc.stderr


def test_compile_benchmark_quick_run_fills_its_table(tmp_path: Path) -> None:
    """The eager variants only (compiling even a tiny model takes minutes on a busy 2-core machine)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compile_speed.py"), "--quick", "--recipes", "lite0,unet",
                           "--variants", "eager fp32 contiguous", "--recipe-steps", "100"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "EfficientNet-Lite0, cracks recipe: 100 training steps" in out and "U-Net (Lite0 encoder), landcover recipe" in out
    rows = re.findall(r"^\| (eager [a-z0-9_ ]+) \| ([0-9.]+) \|  \| ([0-9.]+) \| ([0-9.]+)x \| ([0-9]+) \| ([0-9.]+)x \|$", out, re.M)
    # per recipe: the variant asked for and the recipe's own default, each with a positive throughput
    assert [r[0] for r in rows] == ["eager fp32 contiguous", "eager fp32 channels_last",
                                    "eager fp32 contiguous", "eager bf16 channels_last"], out
    assert all(float(r[2]) > 0 and int(r[4]) > 0 for r in rows)
    assert rows[1][3] == "1.00" and rows[3][3] == "1.00"  # the default against itself
    assert "--quick: the numbers mean nothing" in out


def test_compile_benchmark_refuses_an_unknown_variant(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compile_speed.py"), "--variants", "compiled fp8"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown: compiled fp8" in proc.stderr


def test_int8_ops_counts_what_onnxruntime_runs_in_int8_and_in_fp32(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime.quantization")
    onnx = pytest.importorskip("onnx")
    model = tmp_path / "tiny.int8.onnx"
    exported = subprocess.run([sys.executable, "-m", "visionlab", "export", str(tiny_models["cracks"]), "--int8",
                               "--calibration-images", "16", "--out", str(model)], env=_env(), capture_output=True, text=True,
                              timeout=600)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int8_ops.py"), str(model)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    total = int(re.search(r"runs \((\d+) nodes\)", out).group(1))
    counts = {op: int(n) for op, n in re.findall(r"(\w+) (\d+)", out.split("all operators: ")[1].splitlines()[0])}
    assert sum(counts.values()) == total
    convs = sum(1 for n in onnx.load(str(model)).graph.node if n.op_type == "Conv")  # the QDQ file's convolutions
    fp32 = int(re.search(r"fp32 convolutions: (\d+)", out).group(1))
    assert counts.get("QLinearConv", 0) + fp32 == convs and counts.get("QLinearConv", 0) > 0
    assert f"QuantizeLinear {counts.get('QuantizeLinear', 0)}, DequantizeLinear {counts.get('DequantizeLinear', 0)}" in out
    assert "CPU flags: " in out


def test_int8_ops_says_what_to_pass_for_a_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int8_ops.py"), str(tmp_path / "nope.onnx")], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "is not a file: pass the .onnx that visionlab export --int8 wrote" in proc.stderr
