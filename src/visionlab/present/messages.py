"""The one-line messages of the CLI's other commands: which checkpoint was picked, what export
wrote and proved, the demo's opening, what a download brought, where the server listens and how it stopped.

The server's lines are plain ``print`` calls flushed at once (scripts read the ``serving`` line
from a pipe, where a rich console would wrap it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from visionlab.data.download import Source
    from visionlab.export import ExportResult

__all__ = ["show_note", "show_chosen_checkpoint", "show_report_written", "show_demo_start", "show_export", "show_download", "show_serving", "show_unkeyed", "show_stopped"]


def show_note(note: str, out: Any) -> None:
    """A notice about the model in use (one line; nothing when ``note`` is empty)."""
    if note:
        out.print(note, markup=False, highlight=False)


def show_fitted(lines: Sequence[str], dest: Path, out: Any) -> None:
    """What ``visionlab calibrate`` fitted, and the new checkpoint it wrote."""
    for line in lines:
        out.print(line, markup=False, highlight=False)
    out.print(f"wrote {dest} (the checkpoint given is unchanged)", markup=False, highlight=False)


def show_chosen_checkpoint(path: Path, task: str | None, out: Any) -> None:
    """Which checkpoint a command without ``--checkpoint`` uses."""
    out.print(f"using {'the latest ' + task + ' model' if task else 'the most recently trained model'}: {path}")


def show_report_written(path: Path, out: Any) -> None:
    """Where the HTML report of a run went."""
    out.print(f"report: {path}")


def show_demo_start(task: str, model: str, random_weights: bool, out: Any) -> None:
    """The rule that opens ``visionlab demo``, and a note when its model starts from random weights."""
    out.rule(f"visionlab demo: {task} on SYNTHETIC data")
    if random_weights:
        out.print(f"(demo: {model} starts from random weights; real training uses ImageNet weights)")


def show_export(result: ExportResult, out: Any) -> None:
    """What export wrote, and the two parity checks it passed."""
    out.print(f"exported {result.checkpoint} -> {', '.join(map(str, result.files))} ({result.size_bytes / 2**20:.1f} MB, "
              f"{result.exporter} exporter, opset {result.opset}, {result.seconds:.1f} s)")
    out.print(result.parity.line() + ": passed")
    out.print(result.end_to_end.line() + ": passed")
    if result.quantization is not None:
        out.print(result.quantization.line())
    if result.end_to_end.own_line():
        out.print(result.end_to_end.own_line())


def show_download(source: Source, images: int, target: Path, out: Any) -> None:
    """What ``visionlab data download`` brought, its licence, and how to train on it."""
    out.print(f"{source.title}: {images:,} images in {target}")
    if source.license:
        out.print(f"licence: {source.license} ({source.homepage})")
    out.print(f"train with:  visionlab train --task {source.task} --data {target}")


def show_serving(models: Sequence[Any], url: str, keyed: bool, calibration: bool = True, unknown: Any = "auto") -> None:
    """The served models (task, file, sha256, a notice about its calibration and its unknown detector)
    and the line that says where the server listens."""
    for m in models:
        print(f"model {m.task}: {m.path} (sha256 {m.sha256[:12]})", flush=True)
        for note in (m.calibration_note(calibration), m.unknown_note(unknown)):
            if note:
                print(note, flush=True)
    print(f"serving {len(models)} model(s) at {url} | page {url}/ | POST {url}/predict"
          + ("/{task}" if len(models) > 1 else "") + f" | ready when {url}/ready answers 200"
          + (" | API key required" if keyed else ""), flush=True)


def show_unkeyed(host: str) -> None:
    """The warning of a server that listens off loopback without an API key (``--insecure-no-key``)."""
    print(f"warning: listening on {host} without an API key (--insecure-no-key).", file=sys.stderr)


def show_stopped(cut_off: int, why: str) -> None:
    """The server's last line: every request in flight answered, or how many were cut off, and why."""
    print("stopped" + (f" with {cut_off} request(s) cut off (answered 503) {why}"
                       if cut_off else ", every request in flight answered") + ".", flush=True)
