"""Run folders: ``<out>/<task>/<name>/`` and a ``LATEST`` pointer per task and overall.

A pointer is written when a run saves its first checkpoint, so a run that stopped before that
(Ctrl-C or divergence in epoch 1) never hides the good run beside it; the lookup also falls back
to the newest run that holds a checkpoint when the pointer names one that has none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from visionlab.errors import VisionlabError

__all__ = ["new_run_dir", "mark_latest", "latest_checkpoint", "resolve_checkpoint", "runs_root", "CHECKPOINT_NAMES"]


DEFAULT_RUNS = "runs"
CHECKPOINT_NAMES = ("best.pt", "last.pt")


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


def _checkpoint_in(run: Path, which: str) -> Path | None:
    for name in (f"{which}.pt", *CHECKPOINT_NAMES):
        if (run / name).is_file():
            return run / name
    return None


def _newest_run_with_checkpoint(root: Path, task: str | None) -> Path | None:
    """The run folder whose checkpoint was written last, of ``task`` or of any task."""
    runs = (root / task).glob("*") if task else root.glob("*/*")
    best: tuple[float, Path] | None = None
    for run in runs:
        if not run.is_dir():
            continue
        times = [(run / n).stat().st_mtime for n in CHECKPOINT_NAMES if (run / n).is_file()]
        if times and (best is None or max(times) > best[0]):
            best = (max(times), run)
    return best[1] if best else None


def latest_checkpoint(task: str | None = None, out: str | os.PathLike | None = None, which: str = "best") -> Path:
    """The best (or last) checkpoint of the most recent run of ``task`` (or of any task) that has one."""
    root = runs_root(out)
    pointer = root / task / "LATEST" if task else root / "LATEST"
    what = f"task {task!r}" if task else "any task"
    if pointer.exists():
        found = _checkpoint_in(Path(pointer.read_text().strip()), which)
        if found is not None:
            return found
    run = _newest_run_with_checkpoint(root, task)
    if run is None:
        raise VisionlabError(f"no trained model found for {what} under {root}/.", "Train one (visionlab train --task T) or pass --checkpoint PATH.")
    return _checkpoint_in(run, which)  # type: ignore[return-value]


def resolve_checkpoint(checkpoint: str | os.PathLike | None, task: str | None = None,
                       check_task: Callable[[str], object] | None = None) -> Path:
    """``checkpoint`` when one is named, else the best checkpoint of the latest run of ``task`` (or
    of any task): what evaluate, predict and export use. Before that lookup ``check_task(task)``
    (the registry's ``get_task``, passed in: the engine knows no registry) refuses an unknown name
    with the list of known ones."""
    if checkpoint:
        return Path(checkpoint)
    if task and check_task is not None:
        check_task(task)
    return latest_checkpoint(task)
