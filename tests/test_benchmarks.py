"""benchmarks/speed.py: the table logic, and one end-to-end smoke run on tiny synthetic data.

No timing assertions: ``--quick`` runs a handful of steps on 32 synthetic images, so its numbers
mean nothing. What is checked is that every contender (visionlab's trainer, the plain PyTorch
loop, timm's loader, batched and per-image prediction, the from-scratch recipe, the CLI, and
each recipe's training against its limit: the same model on a batch in memory) runs in
its own process and lands in the one table, the Markdown and the JSON with positive figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_ratio_is_visionlab_over_baseline_for_speeds_and_inverted_for_times(speed) -> None:
    fast = speed.Row("plain", "training", "img/s", visionlab=[300.0, 100.0, 200.0], baseline=[50.0, 100.0, 40.0])
    assert fast.ratio == pytest.approx(200.0 / 50.0)  # medians
    assert fast.met() == "yes"
    assert fast.cell(fast.visionlab) == "200 img/s (100-300)"
    slow = speed.Row("cli", "--help", "s", visionlab=[0.5], baseline=[2.0], higher_is_better=False)
    assert slow.ratio == pytest.approx(4.0)
    assert slow.met() == "NO"  # 0.5 s is over the 0.3 s target, whatever the ratio
    assert speed.Row("timm", "x", "img/s", visionlab=[1.0]).ratio is None
    assert speed.Row("to97", "x", "s").met() == "NO"  # never reached: no figure, target missed


def test_markdown_table_has_one_line_per_row_in_order(speed) -> None:
    rows = {
        "cli": speed.Row("cli", "4. help", "s", visionlab=[0.1], baseline=[1.5], higher_is_better=False, target="< 0.3 s"),
        "plain": speed.Row("plain", "1. training", "img/s", visionlab=[90.0], baseline=[30.0], baseline_name="plain loop",
                           target=">= 2x"),
    }
    text = speed.markdown(rows, "header line")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| measurement | visionlab | baseline | ratio | target | note |"
    assert lines[1].startswith("| 1. training | 90 img/s | 30 img/s [plain loop] | 3.00x | >= 2x yes |")
    assert lines[2].startswith("| 4. help | 0.1 s |") and "15.00x" in lines[2] and "< 0.3 s yes" in lines[2]
    assert text.rstrip().endswith("header line")


def test_arguments_are_checked(speed, capsys) -> None:
    args = speed.parse_args(["--quick"])
    assert args.batch_size == 8 and args.steps == 3 and args.workers == [0] and args.sections == list(speed.SECTIONS)
    assert speed.parse_args([]).workers == [1, 2] and speed.parse_args(["--workers", "2,0,2"]).workers == [0, 2]
    assert speed.parse_args(["--sections", "cli, train"]).sections == ["cli", "train"]
    with pytest.raises(SystemExit):
        speed.parse_args(["--sections", "train,bogus"])
    assert "unknown section(s) bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speed.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--workers", "two"])


@pytest.mark.slow  # about 20 s on idle cores: each contender starts its own Python and imports torch
def test_quick_run_prints_the_table(tmp_path: Path) -> None:
    js, md = tmp_path / "speed.json", tmp_path / "speed.md"
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(js), "--markdown", str(md)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "visionlab speed" in out and "QUICK SMOKE RUN" in out
    for label in ("vs plain PyTorch loop", "vs timm create_loader", "cache build", "prediction over a folder",
                  "to 97 % val accuracy", "visionlab --help", "vs its limit", "SYNTHETIC"):
        assert label in out, label

    rows = {r["key"]: r for r in json.loads(js.read_text())["rows"]}
    # the trained checkpoint carries the cracks recipe's TTA (flips): prediction is measured without and with it
    assert set(rows) == {"plain", "timm", "cache", "am_plain", "am_timm", "predict", "predict_tta", "to97", "cli",
                         "limit_cnn", "limit_lite0"}
    for key in ("plain", "timm", "am_plain", "am_timm", "predict", "predict_tta", "cli", "limit_cnn", "limit_lite0"):
        r = rows[key]
        assert len(r["visionlab"]) == len(r["baseline"]) == 1, key
        assert r["visionlab"][0] > 0 and r["baseline"][0] > 0 and r["ratio"] > 0, key
    assert rows["cache"]["visionlab"][0] > 0
    assert "SYNTHETIC" in rows["to97"]["note"] and "test accuracy" in rows["to97"]["note"]
    assert "same label for" in rows["predict"]["note"] and "same label for" in rows["predict_tta"]["note"]
    assert "no TTA on either side" in out and "TTA flips on both sides" in out
    table = [ln for ln in md.read_text().splitlines() if ln.startswith("| ")]
    # the limit rows train each recipe's own model, on both sides at the quick run's size and batch
    assert rows["limit_cnn"]["note"].startswith("cracks_cnn, 32 px, batch 8,")
    assert rows["limit_lite0"]["note"].startswith("efficientnet_lite0, 32 px, batch 8,")
    assert len(table) == 1 + 11  # the column names and one line per row


def test_gpu_check_says_it_needs_a_gpu_here() -> None:
    """benchmarks/gpu_check.py is ready for a CUDA machine; on this one it stops at once, saying why."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run the check itself")
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: no CUDA device here; this check is for a machine with a GPU."


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_benchmark", SCRIPT.parent / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_gpu_check_on_one_gpu_does_not_pass_nccl_on_one_process_but_runs_two_over_gloo(gpu_check, tmp_path: Path) -> None:
    nccl, gloo = gpu_check.ddp_checks(1, tmp_path / "cracks", tmp_path)
    assert (nccl.label, nccl.cmd) == ("cracks, DDP NCCL", None)  # its row: "not run: one GPU"
    assert "--nproc_per_node=2" in gloo.cmd and gloo.cmd[gloo.cmd.index("--device") + 1] == "cuda:0"
    assert gloo.env == {"VISIONLAB_DIST_BACKEND": "gloo"} and gloo.cmd[gloo.cmd.index("--name") + 1] == gloo.run
    (four,) = gpu_check.ddp_checks(4, tmp_path / "cracks", tmp_path)
    assert "--nproc_per_node=4" in four.cmd and four.cmd[four.cmd.index("--device") + 1] == "cuda" and four.env == {}
