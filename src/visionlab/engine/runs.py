"""Run folders: ``<out>/<task>/<name>/`` and a ``LATEST`` pointer per task and overall."""

from __future__ import annotations

import os
import time
from pathlib import Path

from visionlab.errors import VisionlabError

__all__ = ["new_run_dir", "mark_latest", "latest_checkpoint", "runs_root"]


DEFAULT_RUNS = "runs"


def runs_root(out: str | os.PathLike | None = None) -> Path:
    """The runs folder: ``out``; when that is unset or the default 'runs', ``$VISIONLAB_RUNS`` if set.

    Training (``out: runs`` in every recipe) and the latest-run lookup (no ``out``) must agree,
    so the default value is treated like no value.
    """
    if out is None or os.fspath(out) in ("", DEFAULT_RUNS):
        out = os.environ.get("VISIONLAB_RUNS") or DEFAULT_RUNS
    return Path(out).expanduser()


def new_run_dir(out: str | os.PathLike, task: str, name: str | None = None) -> Path:
    """A fresh folder for a run; an existing name gets a numeric suffix (nothing is overwritten)."""
    base = runs_root(out) / task
    stem = name or time.strftime("%Y%m%d-%H%M%S")
    path, i = base / stem, 1
    while path.exists():
        i += 1
        path = base / f"{stem}-{i}"
    path.mkdir(parents=True)
    return path


def mark_latest(run_dir: Path, out: str | os.PathLike, task: str) -> None:
    root = runs_root(out)
    for pointer in (root / task / "LATEST", root / "LATEST"):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(pointer.name + ".tmp")
        tmp.write_text(str(run_dir.resolve()) + "\n")
        os.replace(tmp, pointer)


def latest_checkpoint(task: str | None = None, out: str | os.PathLike | None = None, which: str = "best") -> Path:
    """The best (or last) checkpoint of the most recent run of ``task`` (or of any task)."""
    root = runs_root(out)
    pointer = root / task / "LATEST" if task else root / "LATEST"
    what = f"task {task!r}" if task else "any task"
    if not pointer.exists():
        raise VisionlabError(f"no trained model found for {what} under {root}/.", "Train one (visionlab train --task T) or pass --checkpoint PATH.")
    run = Path(pointer.read_text().strip())
    for name in (f"{which}.pt", "best.pt", "last.pt"):
        if (run / name).exists():
            return run / name
    raise VisionlabError(f"latest run {run} of {what} has no checkpoint.", "Train again or pass --checkpoint PATH.")
