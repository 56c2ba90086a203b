#!/usr/bin/env python
"""visionlab accuracy on real photos: every task's recipe trained and scored on a held-out split.

For each task this trains the default recipe (``configs/<task>.yaml``) and the seed-faithful
variant (``configs/<task>-scratch.yaml``, ``configs/caltech-resnet18.yaml``) on its folder of
``../shared/data`` with :func:`visionlab.train`, evaluates the best checkpoint on the library's
own stratified test split (``test_fraction`` of the recipe; training never sees it) with
:func:`visionlab.evaluate`, and prints one table: task, variant, model, metric, value, target,
test images and training seconds (the trainer's ``train_seconds``: epochs only, without the
one-off decode cache).

Accuracy comes with a 95 % Wilson interval, because the test splits are small (caltech has
about 104 test images, so one error moves accuracy by a whole point). ``--seeds 42,43,44``
repeats each run with other splits and initialisations and pools the test images of all
seeds; the per-seed values are kept in the JSON output.

Usage::

    python benchmarks/accuracy.py                                   # every task, both variants
    python benchmarks/accuracy.py --tasks cracks,waste --variants recipe
    python benchmarks/accuracy.py --seeds 42,43,44 --out benchmarks/accuracy.md
    python benchmarks/accuracy.py --seeds 42,43,44 --scratch-seeds 42  # recipes on three seeds, variants on one
    python benchmarks/accuracy.py --set epochs=3 --tasks minerals   # extra overrides for every run
    python benchmarks/accuracy.py --quick --data synthetic          # seconds: a smoke test
    python benchmarks/accuracy.py --reuse acc.json --out acc.json   # only recipes changed since acc.json train again

A task whose folder is missing is skipped with a message (the data is never in the repository;
see ``../shared/data/SOURCES.md``); so is a variant whose weights cannot be had offline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]

#: task -> folder under the shared data root (the layout of the dataset it stands for).
FOLDERS = {"cracks": "cracks", "caltech": "caltech101", "waste": "waste", "minerals": "minerals", "landcover": "landcover"}
#: task -> config of the seed-faithful variant ('scratch' in --variants).
SEED_CONFIGS = {
    "cracks": "configs/cracks-scratch.yaml",
    "caltech": "configs/caltech-resnet18.yaml",
    "waste": "configs/waste-scratch.yaml",
    "minerals": "configs/minerals-scratch.yaml",
    "landcover": "configs/landcover-scratch.yaml",
}
#: Metrics shown per task kind, primary first.
METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"),
    "segmentation": ("miou", "pixel_accuracy"),
}
#: Issue 3's goals on held-out real photos: (task, variant) -> (metric, minimum).
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("cracks", "recipe"): ("accuracy", 0.996),
    ("cracks", "scratch"): ("accuracy", 0.985),
    ("caltech", "recipe"): ("accuracy", 0.996),
    ("waste", "recipe"): ("accuracy", 0.975),
    ("minerals", "recipe"): ("accuracy", 0.91),
    ("landcover", "recipe"): ("miou", 0.75),
}
#: Tiny settings for --quick (a smoke test, numbers mean nothing).
QUICK = {
    "classification": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "image_size": 64, "early_stopping": 0},
    "segmentation": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 2, "tile_size": 64, "crops_per_image": 2,
                     "early_stopping": 0},
}

__all__ = ["Row", "run_benchmark", "run_one", "run_digest", "load_reusable", "wilson_interval", "format_markdown", "print_table", "describe_model", "main"]


def shared_data() -> Path:
    """``../shared/data`` beside the repository, or ``$VISIONLAB_SHARED_DATA``."""
    env = os.environ.get("VISIONLAB_SHARED_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion; sound at 0 or n successes, unlike p +- 2 se."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Row:
    """One (task, variant): pooled metrics over the seeds run, or why it was skipped."""

    task: str
    variant: str
    model: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    ci: tuple[float, float] | None = None  # Wilson 95 % interval of accuracy
    test_images: int = 0
    train_seconds: float = 0.0  # mean over seeds
    epochs: float = 0.0  # mean over seeds
    seeds: list[int] = field(default_factory=list)
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    target: tuple[str, float] | None = None
    skipped: str = ""
    digest: str = ""  # what was run (resolved config, data, seeds): --reuse keeps a row only while it matches
    measured: str = ""  # when it was measured
    reused: bool = False

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.skipped or self.target[0] not in self.metrics:
            return None
        return self.metrics[self.target[0]] >= self.target[1]


def describe_model(name: str, model_args: dict[str, Any]) -> str:
    """``efficientnet_lite0, ImageNet`` / ``unet (efficientnet_lite0), scratch``: what was trained, in words."""
    from visionlab.models import model_weights

    encoder = f" ({model_args['encoder']})" if "encoder" in model_args else ""
    weights = model_weights(name, **model_args).name
    return f"{name}{encoder}, " + ("scratch" if weights is None else "ImageNet" if weights == "imagenet" else weights)


def _fmt(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if metric in ("roc_auc", "miou", "macro_f1") else f"{100 * value:.2f} %"


def _pool(task_kind: str, reports: list[dict[str, Any]]) -> tuple[dict[str, float], tuple[float, float] | None, int]:
    """Metrics over all seeds: accuracy pooled over the test images (with its interval), others averaged."""
    n = sum(int(r["images"]) for r in reports)
    metrics: dict[str, float] = {}
    for name in METRICS[task_kind]:
        values = [r["metrics"].get(name) for r in reports]
        values = [v for v in values if v is not None]
        if values:
            metrics[name] = sum(values) / len(values)
    ci = None
    if task_kind == "classification":
        correct = sum(r["metrics"]["accuracy"] * int(r["images"]) for r in reports)
        metrics["accuracy"] = correct / max(1, n)
        ci = wilson_interval(round(correct), n)
    return metrics, ci, n


def _overrides_for(kind: str, quick: bool, extra: Sequence[str]) -> list[str]:
    sets = [f"{k}={v}" for k, v in QUICK[kind].items()] if quick else []
    return sets + list(extra)


def run_digest(task: str, config: Path | None, sets: Sequence[str], data: Path | str, seeds: Sequence[int], quick: bool) -> str:
    """A fingerprint of one (task, variant, seed) measurement (``seeds`` holds that one seed): the
    resolved config, the data folder's files, the seed, the library version and the machine
    (training seconds depend on it). Any change to a recipe changes it."""
    import hashlib

    from visionlab import __version__
    from visionlab.api import load_config

    cfg = load_config(task, config, list(sets)).to_dict()
    for key in ("out", "name", "device", "num_workers"):
        cfg.pop(key, None)
    listing = ""
    if str(data) != "synthetic" and Path(data).is_dir():
        files = sorted(p for p in Path(data).rglob("*") if p.is_file())
        listing = "\n".join(f"{p.relative_to(data)}:{p.stat().st_size}" for p in files)
    blob = json.dumps({"config": cfg, "seeds": list(seeds), "quick": quick, "version": __version__, "machine": machine(),
                       "files": hashlib.sha256(listing.encode()).hexdigest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_reusable(paths: Sequence[Path]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The measured seeds of earlier JSON outputs, keyed by (task, variant, the seed's digest): a
    later run with more seeds trains only the seeds it does not have yet."""
    from visionlab.errors import VisionlabError

    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            rows = data["rows"]
        except FileNotFoundError:
            continue  # nothing measured yet: everything runs
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VisionlabError(f"--reuse {path}: not a JSON output of this script ({exc}).", "Pass a file written by --out X.json.") from None
        for r in rows:
            if r.get("skipped"):
                continue
            for entry in r.get("per_seed", []):
                if entry.get("digest"):  # outputs older than per-seed digests are not reused
                    out[(r["task"], r["variant"], entry["digest"])] = entry
    return out


def run_one(task: str, variant: str, data: Path | str, seeds: Sequence[int], runs: Path, quick: bool,
            extra: Sequence[str], device: str, console: Any, reusable: dict[tuple[str, str, str], dict[str, Any]] | None = None) -> Row:
    """Train and evaluate one (task, variant) for every seed; a user-fixable failure becomes a skipped row.

    A seed of ``reusable`` with the same digest (same resolved config, data and seed) is taken as it
    was measured, instead of training again; the row pools the seeds, reused or new."""
    import visionlab
    from visionlab.api import load_config
    from visionlab.errors import VisionlabError
    from visionlab.models import no_weights_kwargs
    from visionlab.registry import get_task

    spec = get_task(task)
    row = Row(task, variant, target=TARGETS.get((task, variant)), seeds=list(seeds))
    config = None
    if variant == "scratch":
        config = REPO / SEED_CONFIGS[task]
        if not config.exists():
            row.skipped = f"no seed-faithful config {SEED_CONFIGS[task]}"
            return row
    sets = _overrides_for(spec.kind, quick, extra) + [f"device={device}"]
    try:
        digests = [run_digest(task, config, sets, data, [seed], quick) for seed in seeds]
    except VisionlabError as exc:
        row.skipped = exc.message
        return row
    import hashlib

    row.digest = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    row.measured = time.strftime("%Y-%m-%d %H:%M")
    reports, seconds, epochs, reused = [], [], [], 0
    for seed, digest in zip(seeds, digests):
        old = (reusable or {}).get((task, variant, digest))
        if old is not None:
            console.print(f"[cyan]reused[/] {task}/{variant}, seed {seed}: measured {old.get('measured') or 'earlier'} "
                          "with the same config, data and seed")
            row.model = row.model or old.get("model", "")
            row.per_seed.append(old)
            reports.append({"images": old["images"], "metrics": {k: old.get(k) for k in METRICS[spec.kind]}})
            seconds.append(old["train_seconds"])
            epochs.append(old["epochs"])
            reused += 1
            continue
        name = f"{variant}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        console.rule(f"{task} | {variant} | seed {seed}")
        try:
            cfg = load_config(task, config, sets)
            options = {"model_args": {**cfg.model_args, **no_weights_kwargs(cfg.model)}} if quick else {}  # never downloads
            row.model = describe_model(cfg.model, options.get("model_args", cfg.model_args))
            result = visionlab.train(task, data=data, config=config, overrides=sets + [f"seed={seed}", f"out={runs}", f"name={name}"],
                                     console=console, **options)
            report = visionlab.evaluate(result.best_checkpoint, split="test", device=device, out=result.run_dir / "eval-test",
                                        console=console)
        except VisionlabError as exc:
            row.skipped = exc.message
            console.print(f"[yellow]skipped {task}/{variant}[/]: {exc}")
            return row
        reports.append(report)
        seconds.append(result.train_seconds)
        epochs.append(result.epochs_run)
        row.per_seed.append({"seed": seed, "digest": digest, "measured": time.strftime("%Y-%m-%d %H:%M"), "model": row.model,
                             "run_dir": str(result.run_dir), "images": report["images"], "train_seconds": round(result.train_seconds, 1),
                             "epochs": result.epochs_run, **{k: report["metrics"].get(k) for k in METRICS[spec.kind]}})
    row.reused = reused == len(seeds)
    row.metrics, row.ci, row.test_images = _pool(spec.kind, reports)
    row.train_seconds = sum(seconds) / len(seconds)
    row.epochs = sum(epochs) / len(epochs)
    return row


def run_benchmark(tasks: Sequence[str], variants: Sequence[str], data_root: Path | str, seeds: Sequence[int] = (42,),
                  runs: Path | str = "runs/accuracy", quick: bool = False, extra: Sequence[str] = (), device: str = "auto",
                  console: Any = None, reusable: dict[tuple[str, str, str], dict[str, Any]] | None = None,
                  scratch_seeds: Sequence[int] | None = None) -> list[Row]:
    """Every (task, variant) in order; a missing data folder yields a skipped row, not an error. The
    seed-faithful variants run on ``scratch_seeds`` (default: ``seeds``)."""
    from rich.console import Console

    console = console or Console()
    rows = []
    for task in tasks:
        if str(data_root) == "synthetic":
            data: Path | str = "synthetic"
        else:
            data = Path(data_root) / FOLDERS[task]
            if not data.is_dir():
                console.print(f"[yellow]skipping {task}[/]: {data} is absent (see ../shared/data/SOURCES.md).")
                rows += [Row(task, v, target=TARGETS.get((task, v)), skipped=f"{data} absent") for v in variants]
                continue
        for variant in variants:
            variant_seeds = scratch_seeds if variant == "scratch" and scratch_seeds else seeds
            rows.append(run_one(task, variant, data, variant_seeds, Path(runs), quick, extra, device, console, reusable))
    return rows


def _table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """Flat rows: one line per metric (primary first), the run's facts on its first line only."""
    from visionlab.registry import get_task

    out = []
    for r in rows:
        if r.skipped:
            out.append([r.task, r.variant, r.model or "-", "-", f"skipped: {r.skipped}", "-", "-", "-", "-", "-"])
            continue
        kind = get_task(r.task).kind
        for i, name in enumerate(m for m in METRICS[kind] if m in r.metrics):
            value = _fmt(name, r.metrics[name])
            if name == "accuracy" and r.ci:
                errors = round(r.test_images * (1 - r.metrics[name]))
                value += f" [{100 * r.ci[0]:.2f}, {100 * r.ci[1]:.2f}], {errors} wrong"
            target = ""
            if r.target and r.target[0] == name:
                target = f">= {_fmt(name, r.target[1])} " + ("pass" if r.passed else "MISS")
            first = i == 0
            out.append([r.task if first else "", r.variant if first else "", r.model if first else "", name, value, target,
                        str(r.test_images) if first else "", f"{r.train_seconds:.0f}" if first else "",
                        f"{r.epochs:g}" if first else "", (r.measured or "-") if first else ""])
    return out


HEADER = ["task", "variant", "model", "metric", "value [95 % CI]", "target", "test images", "train s", "epochs", "measured"]


def format_markdown(rows: Sequence[Row], context: dict[str, Any]) -> str:
    """The table as markdown, preceded by the command, machine and date it came from."""
    lines = [f"- command: `{context['command']}`", f"- machine: {context['machine']}", f"- date: {context['date']}",
             f"- seeds: {', '.join(map(str, context['seeds']))} (seed-faithful variants: "
             f"{', '.join(map(str, context.get('scratch_seeds') or context['seeds']))})", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for cells in _table_rows(rows):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: Sequence[Row], context: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"visionlab accuracy on held-out real photos ({context['date']}, {context['machine']})")
    for col in HEADER:
        table.add_column(col, overflow="fold")
    for cells in _table_rows(rows):
        if cells[0] and table.row_count:
            table.add_section()
        table.add_row(*cells)
    console.print(table)


def machine() -> str:
    """CPU, cores and accelerator, in words."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {platform.system()}"


def _write(path: Path, rows: Sequence[Row], context: dict[str, Any]) -> None:
    from visionlab.errors import VisionlabError

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({**context, "rows": [asdict(r) | {"passed": r.passed} for r in rows]}, indent=2, default=str))
    elif path.suffix.lower() == ".md":
        path.write_text(format_markdown(rows, context))
    else:
        raise VisionlabError(f"--out {path}: unknown format.", "Use a .md or .json file name.")


def _seeds(flag: str, text: str) -> list[int]:
    from visionlab.errors import VisionlabError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise VisionlabError(f"{flag} {text!r} must be comma-separated integers.", f"E.g. {flag} 42,43,44.")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    from visionlab.errors import VisionlabError
    from visionlab.process import tune_process
    from visionlab.registry import task_names

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="root holding the task folders (default ../shared/data), or 'synthetic'")
    p.add_argument("--tasks", default=",".join(FOLDERS), help="comma-separated tasks (default: all five)")
    p.add_argument("--variants", default="recipe,scratch", help="recipe (configs/<task>.yaml) and/or scratch (the seed-faithful config)")
    p.add_argument("--seeds", default="42", help="comma-separated seeds; each changes the split and the initialisation")
    p.add_argument("--scratch-seeds", default=None, help="seeds of the seed-faithful variants (default: --seeds), e.g. 42 "
                                                         "while the recipes run on 42,43,44")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)")
    p.add_argument("--runs", default=str(REPO / "runs" / "accuracy"), help="where the training runs go")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="one epoch of two tiny steps per run, random weights: a smoke test, not a measurement")
    p.add_argument("--out", action="append", default=[], help="also write the table to this .md or .json file (repeatable)")
    p.add_argument("--reuse", action="append", default=[], metavar="JSON",
                   help="reuse the rows of an earlier --out JSON whose recipe, data and seeds are unchanged (repeatable; "
                        "a missing file is fine): after changing one recipe, only that row trains again")
    args = p.parse_args(argv)
    console = Console()
    tune_process()  # trains as fast as the visionlab command does
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in FOLDERS]
        if unknown:
            raise VisionlabError(f"unknown task(s) {', '.join(unknown)}.", f"Known tasks: {', '.join(task_names())}.")
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not variants or any(v not in ("recipe", "scratch") for v in variants):
            raise VisionlabError(f"--variants {args.variants!r} must name recipe and/or scratch.", "E.g. --variants recipe,scratch.")
        seeds = _seeds("--seeds", args.seeds)
        scratch_seeds = _seeds("--scratch-seeds", args.scratch_seeds) if args.scratch_seeds else seeds
        for out in args.out:
            if Path(out).suffix.lower() not in (".md", ".json"):
                raise VisionlabError(f"--out {out}: unknown format.", "Use a .md or .json file name.")
        root: Path | str = args.data or shared_data()
        if str(root) != "synthetic" and not Path(root).is_dir():
            console.print(f"[yellow]skipped[/]: the data folder {root} is absent; nothing to measure "
                          "(pass --data PATH, set VISIONLAB_SHARED_DATA, or --data synthetic for a smoke run).")
            return 0
        context = {"command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "seeds": seeds, "scratch_seeds": scratch_seeds,
                   "data": str(root), "quick": args.quick}
        reusable = load_reusable([Path(p) for p in args.reuse])
        rows = run_benchmark(tasks, variants, root, seeds, args.runs, args.quick, args.sets, args.device, console, reusable,
                             scratch_seeds)
        print_table(rows, context, console)
        if args.quick or str(root) == "synthetic":
            console.print("[bold magenta]not a measurement[/]: --quick and/or synthetic data.")
        for out in args.out:
            _write(Path(out), rows, context)
            console.print(f"wrote {out}")
    except VisionlabError as exc:
        console.print(f"[red]error[/]: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
