"""The first thing to run on a machine with CUDA: does every GPU path of visionlab work, how fast?

    python benchmarks/gpu_check.py [--data ../shared/data] [--out gpu_check.md]

In under ten minutes (each step has its own time limit and the whole run a budget):

1. the test suite on ``cuda`` (``VISIONLAB_TEST_DEVICE=cuda``: the training tests run on the GPU,
   and the CUDA-only tests stop being skipped), limited to the training, metric and DDP modules;
2. each task's recipe (``configs/<task>.yaml``) for one epoch on ``cuda`` with mixed precision
   (``precision: auto``: bf16 where the GPU has it, else fp16 with a gradient scaler), on its
   folder of the shared data (synthetic data when the folder is absent, and the table says so);
3. the cracks recipe for one epoch under ``torchrun`` with NCCL over every visible GPU; on a
   machine with one GPU that row says "not run: one GPU", and instead two processes share the GPU
   over gloo (``VISIONLAB_DIST_BACKEND=gloo``, ``--device cuda:0``), so the DDP wrapper, the
   placement on CUDA and the sharded evaluation still run.

It prints one table (images/s, peak GPU memory, the test score, seconds) and writes it as
Markdown with ``--out``: that table goes into the README. It stops by itself; a failing step is
reported in its row and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"cracks": "cracks", "caltech": "caltech101", "waste": "waste", "minerals": "minerals", "landcover": "landcover"}
SCORE = {"landcover": "miou"}  # the rest: accuracy
TEST_FILES = ["tests/test_metrics.py", "tests/test_tasks.py", "tests/test_finetuning.py", "tests/test_distributed.py"]


def run(cmd: list[str], limit: float, env: dict | None = None) -> tuple[int, float, str]:
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})}, cwd=REPO)
        return done.returncode, time.monotonic() - t0, done.stdout[-4000:] + done.stderr[-4000:]
    except subprocess.TimeoutExpired as exc:
        return 124, time.monotonic() - t0, f"timed out after {limit:.0f} s: {(exc.stdout or '')[-2000:]}"


def train_row(label: str, cmd: list[str], summary: Path, task: str, data_note: str, limit: float, env: dict | None = None) -> list[str]:
    rc, seconds, tail = run(cmd, limit, env)
    if rc != 0 or not summary.exists():
        last = tail.strip().splitlines()[-1] if tail.strip() else ""
        return [label, "FAILED", "", "", f"{seconds:.0f}", f"exit {rc}: {last[:160]}"]
    s = json.loads(summary.read_text())
    score = s.get("test", {}).get(SCORE.get(task, "accuracy"))
    gpu = s.get("peak_cuda_mb") or s.get("peak_gpu_mb")
    return [label, f"{s['images_per_second']:.0f}", f"{gpu:.0f}" if gpu else "?",
            f"{SCORE.get(task, 'accuracy')} {score:.4f}" if score is not None else "-", f"{seconds:.0f}", data_note]


class DdpCheck(NamedTuple):
    label: str
    run: str  # the run's name under <work>/cracks/
    cmd: list[str] | None  # None: the row is not run
    env: dict
    note: str


def ddp_checks(gpus: int, data: Path, work: Path) -> list[DdpCheck]:
    """The DDP rows. NCCL needs one GPU per process; on one GPU its row is not run, and two
    processes share the GPU over gloo instead."""
    def torchrun(processes: int, device: str, name: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "visionlab",
                "train", "--task", "cracks", "--data", str(data) if data.is_dir() else "synthetic", "--epochs", "1",
                "--device", device, "--out", str(work), "--name", name]

    if gpus >= 2:
        return [DdpCheck(f"cracks, DDP NCCL x {gpus}", "ddp", torchrun(gpus, "cuda", "ddp"), {},
                         f"{gpus} processes, batch per process as in the recipe")]
    return [DdpCheck("cracks, DDP NCCL", "ddp", None, {}, "NCCL needs one GPU per process"),
            DdpCheck("cracks, DDP gloo x 2 on one GPU", "ddp-gloo", torchrun(2, "cuda:0", "ddp-gloo"), {"VISIONLAB_DIST_BACKEND": "gloo"},
                     "2 processes on cuda:0 over gloo: the DDP wrapper, CUDA placement, sharded evaluation")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("VISIONLAB_SHARED_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--out", type=Path, default=None, help="also write the table as Markdown")
    p.add_argument("--budget", type=float, default=570.0, help="seconds for the whole check")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device here; this check is for a machine with a GPU.", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpus)}))
    start = time.monotonic()

    def left(share: float) -> float:
        return max(20.0, min(share, args.budget - (time.monotonic() - start)))

    rows: list[list[str]] = []
    rc, seconds, tail = run([sys.executable, "-m", "pytest", "-q", "-x", *TEST_FILES], left(180), {"VISIONLAB_TEST_DEVICE": "cuda"})
    summary_line = next((ln for ln in reversed(tail.splitlines()) if " passed" in ln or " failed" in ln), tail.strip()[-160:])
    rows.append(["tests on cuda", "", "", "", f"{seconds:.0f}", ("ok: " if rc == 0 else f"exit {rc}: ") + summary_line])
    work = Path(tempfile.mkdtemp(prefix="visionlab-gpu-"))
    env_cache = {"VISIONLAB_CACHE": str(work / "cache")}
    os.environ.update(env_cache)
    for task, folder in FOLDERS.items():
        data = args.data / folder
        note = str(data) if data.is_dir() else "SYNTHETIC (no data folder)"
        cmd = [sys.executable, "-m", "visionlab", "train", "--task", task, "--data", str(data) if data.is_dir() else "synthetic",
               "--epochs", "1", "--device", "cuda", "--set", "precision=auto", "--out", str(work), "--name", "one-epoch"]
        rows.append(train_row(f"{task}, 1 epoch", cmd, work / task / "one-epoch" / "summary.json", task, note, left(75)))
    for check in ddp_checks(gpus, args.data / "cracks", work):
        if check.cmd is None:
            rows.append([check.label, "not run: one GPU", "", "", "", check.note])
        else:
            rows.append(train_row(check.label, check.cmd, work / "cracks" / check.run / "summary.json", "cracks", check.note,
                                  left(120), check.env))
    header = ["check", "images/s", "peak GPU MB", "test score", "seconds", "notes"]
    title = f"visionlab GPU check: {gpus} x {names}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(title)
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if args.out:
        md = [f"{title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        args.out.write_text("\n".join(md) + "\n")
    return 0 if all(r[1] != "FAILED" for r in rows) and rows[0][5].startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
