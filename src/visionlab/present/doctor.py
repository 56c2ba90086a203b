"""``visionlab data check``'s output: the doctor's :class:`~visionlab.data.doctor.Report` as rich
tables (counts per class and split, or class pixel shares; statistics; findings by severity)
or as JSON, and the exit code that ``--strict`` asks for.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from visionlab.data.doctor import Finding, Report, plural
from visionlab.kinds import check_dataset
from visionlab.present import console as default_console

__all__ = ["show_report", "run_check", "MAX_FILES_SHOWN"]

#: Files listed per finding in the tables (JSON lists them all).
MAX_FILES_SHOWN = 10

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def _show_files(f: Finding, root: str, limit: int = MAX_FILES_SHOWN) -> str:
    if f.groups:
        items = [" = ".join(_rel(p, root) for p in g) for g in f.groups]
    else:
        items = [_rel(p, root) for p in f.files]
    lines = items[:limit]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more")
    return "\n".join(lines)


def show_report(report: Report, console: Any = None) -> None:
    """Render a report as rich tables: counts, statistics, then findings by severity."""
    from rich.table import Table

    console = default_console(console)
    console.print(f"[bold]{report.root}[/]: {report.kind}, {report.n_images} images, {len(report.classes)} classes")
    splits = list(report.split_counts)
    if report.counts:
        t = Table(title="images")
        t.add_column("class", overflow="fold")
        for sp in splits:
            t.add_column(sp, justify="right")
        if splits != ["all"]:
            t.add_column("total", justify="right")
        for c, row in report.counts.items():
            cells = [str(row.get(sp, 0)) for sp in splits]
            if splits != ["all"]:
                cells.append(str(sum(row.values())))
            t.add_row(c, *cells)
        if splits != ["all"]:
            t.add_row("[bold]total[/]", *[str(report.split_counts[sp]) for sp in splits], str(report.n_images))
        console.print(t)
    else:
        t = Table(title="class pixel shares")
        t.add_column("class", overflow="fold")
        t.add_column("pixel share", justify="right")
        for name in report.classes:
            t.add_row(name, f"{report.pixel_shares[name]:.1%}" if name in report.pixel_shares else "-")
        console.print(t)
        if splits != ["all"]:
            console.print("images per split: " + ", ".join(f"{k} {v}" for k, v in report.split_counts.items()))

    s = Table(title="statistics", show_header=False)
    s.add_column("what")
    s.add_column("value", overflow="fold")
    for key in ("width", "height", "min_side"):
        v = report.sizes.get(key)
        if v:
            s.add_row(f"{key} (px)", f"min {v['min']}  median {v['median']:g}  max {v['max']}")
    s.add_row("modes", ", ".join(f"{k} {v}" for k, v in report.modes.items()) or "-")
    s.add_row("formats", ", ".join(f"{k} {v}" for k, v in report.formats.items()) or "-")
    if report.imbalance_ratio is not None:
        s.add_row("largest/smallest class", f"{report.imbalance_ratio:.2f}")
    s.add_row("checked in", f"{report.seconds:.1f} s")
    console.print(s)

    if report.findings:
        f_table = Table(title="findings")
        f_table.add_column("severity")
        f_table.add_column("code")
        f_table.add_column("message", overflow="fold", ratio=2)
        f_table.add_column("files", overflow="fold", ratio=2)
        for f in report.findings:
            style = _STYLE[f.severity]
            f_table.add_row(f"[{style}]{f.severity}[/]", f.code, f.message, _show_files(f, report.root))
        console.print(f_table)
    verdict = (f"[bold red]{plural(len(report.errors), 'error')}[/]" if report.errors else "[green]no errors[/]")
    console.print(f"{verdict}, {plural(len(report.warnings), 'warning')}, {len(report.info)} info.")


def run_check(path: str | os.PathLike, task: str | None = None, as_json: bool = False, strict: bool = False) -> int:
    """What ``visionlab data check`` does: check (a progress bar on a terminal), print tables or
    JSON, return the exit code.

    The kind comes from ``task`` when given, else it is guessed. Returns 1 when ``strict``
    and errors were found, else 0.
    """
    kind = None
    if task is not None:
        from visionlab.registry import get_task

        kind = get_task(task).kind
    if as_json or not sys.stderr.isatty():
        report = check_dataset(path, kind=kind)
    else:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            job = bar.add_task("checking images", total=None)
            report = check_dataset(path, kind=kind, progress=lambda d, n: bar.update(job, completed=d, total=n))
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        show_report(report)
    return 1 if strict and report.errors else 0
