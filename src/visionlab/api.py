"""The Python API; the CLI is a thin layer over these functions.

>>> import visionlab
>>> result = visionlab.train("cracks", data="synthetic", epochs=2)
>>> model = visionlab.load(result.best_checkpoint)
>>> model.predict(["photo.jpg"])
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from visionlab.errors import VisionlabError

__all__ = ["train", "evaluate", "predict", "demo", "load"]


def _console(console: Any = None) -> Any:
    from rich.console import Console

    return console or Console()


def train(
    task: str,
    data: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    console: Any = None,
    callbacks: Sequence[Any] = (),
    **options: Any,
):
    """Train ``task``. ``options`` are config keys (epochs=3, lr=1e-3, ...); see configs/<task>.yaml.

    ``resume`` (a last.pt, or 'last' for the latest run of ``task``) continues that run with its own
    saved config: ``config``, ``overrides`` and ``options`` may then change only the keys in
    :data:`visionlab.config.RESUME_SAFE_KEYS` (epochs, device, ...); anything else is an error.

    ``callbacks`` are :class:`visionlab.engine.trainer.Callback` objects (reports...); the experiment
    trackers of the config key ``track`` (:mod:`visionlab.engine.tracking`) are added after them.
    Returns a :class:`visionlab.engine.trainer.TrainResult` (run_dir, best_checkpoint, history, ...).
    """
    from visionlab.config import load_config, parse_overrides, resume_config
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.tracking import build_trackers
    from visionlab.engine.trainer import Trainer, resolve_resume
    from visionlab.registry import get_task

    layers = parse_overrides(overrides)
    layers.update(options)
    if data is not None:
        layers["data"] = os.fspath(data)
    if resume is None:
        cfg = load_config(task, config, layers)
    else:
        path = resolve_resume(resume, get_task(task).name, layers.get("out"))
        cfg, _ = resume_config(load_checkpoint(path, expect_task=task)["config"], config, layers)
        resume = path
    trackers = build_trackers(cfg.track)  # a missing package is an error now, before any work
    trainer = Trainer(cfg, console=_console(console), callbacks=[*callbacks, *trackers])
    try:
        return trainer.fit(resume=resume)
    except BaseException as exc:
        # the trainer tells callbacks of errors in its loop; this also ends a tracked run that failed
        # after it (test evaluation, another callback's on_fit_end). A tracker ends its run once.
        for tracker in trackers:
            tracker.on_exception(trainer, exc)
        raise


def load(checkpoint: str | os.PathLike | None = None, device: str = "auto", task: str | None = None):
    """A :class:`visionlab.engine.predict.Predictor` from a checkpoint (default: latest run)."""
    from visionlab.engine.predict import load as _load

    return _load(checkpoint, device=device, task=task)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VisionlabError(f"--batch-size must be a positive integer, got {batch_size!r}.", "Pass e.g. --batch-size 32.")


def _resolve_checkpoint(checkpoint: str | os.PathLike | None, task: str | None, console: Any) -> Path:
    from visionlab.engine.runs import latest_checkpoint

    if checkpoint:
        return Path(checkpoint)
    if task:
        from visionlab.registry import get_task

        get_task(task)  # unknown task -> list of known ones
    path = latest_checkpoint(task)
    console.print(f"using {'the latest ' + task + ' model' if task else 'the most recently trained model'}: {path}")
    return path


def evaluate(
    checkpoint: str | os.PathLike | None = None,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    console: Any = None,
    tta: str | None = None,
    examples: int = 12,
    report_html: bool = False,
) -> dict[str, Any]:
    """Evaluate a trained model on a split of its data, or on any folder in the task's layout.

    With ``data`` pointing at another folder than the training data, the whole folder is the test
    set (its own test/ split if it has one). ``tta`` overrides the test-time augmentation saved
    with the model (none, hflip, flips, d4). Writes metrics.json (and the confusion matrix as CSV
    and PNG), predictions.csv, thumbnails of the ``examples`` images most worth a look, and with
    ``report_html`` the run's HTML report (:func:`visionlab.report.write_report`); returns the report.
    """
    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, model_from_state
    from visionlab.engine.device import resolve_device, resolve_precision
    from visionlab.engine.metrics import render_report, write_confusion_csv
    from visionlab.engine.plots import save_confusion_matrix
    from visionlab.engine.tta import TTA_MODES
    from visionlab.registry import get_task
    from visionlab.tasks.base import runner_for

    console = _console(console)
    _check_batch_size(batch_size)
    if split not in ("test", "val", "train", "all"):
        raise VisionlabError(f"unknown split {split!r}.", "Use test, val, train or all.")
    if tta is not None and tta not in TTA_MODES:
        raise VisionlabError(f"unknown tta mode {tta!r}.", f"Use one of {', '.join(TTA_MODES)}.")
    path = _resolve_checkpoint(checkpoint, task, console)
    state = load_checkpoint(path, expect_task=task)
    spec = get_task(state["task"])
    cfg = config_from_dict(state["config"])
    external = data is not None and os.fspath(data) != cfg.data
    if data is not None:
        cfg.data = os.fspath(data)
    if spec.kind == "classification":
        cfg.classes = list(state["classes"])
    cfg.cache = "none" if cfg.cache == "none" else "auto"
    dev = resolve_device(device)
    runner = runner_for(cfg, spec, dev)
    runner.fixed_preprocessing = dict(state["preprocessing"])
    if tta is not None:
        runner.fixed_preprocessing["tta"] = tta
    runner.examples = examples
    runner.prepare(console)
    if list(runner.classes) != list(state["classes"]):
        raise VisionlabError(f"the data's classes {runner.classes} differ from the model's {state['classes']}.", "Evaluate on data of the same classes.")
    import numpy as np

    if split == "all" or (external and not getattr(runner.index, "has_splits", False)):
        runner.splits["test"] = np.concatenate([runner.splits[s] for s in ("train", "val", "test")])
        split = "test"
    if runner.split_size(split) == 0:
        raise VisionlabError(f"the {split} split of {cfg.data} is empty.", "Pass --split all, or --data with a held-out folder.")
    model = model_from_state(state).to(dev)
    if cfg.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(cfg.precision, dev)
    t0 = time.perf_counter()
    result = runner.evaluate(model, split, precision.autocast, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    synthetic = bool(runner.data_info.get("synthetic"))
    title = f"{spec.name} | {split} split of {cfg.data} | {runner.split_size(split)} images" + (" | SYNTHETIC DATA" if synthetic else "")
    render_report(result.report, state["classes"], console=console, title=title)
    out_dir = Path(out) if out else path.parent / f"eval-{split}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(result.report)
    report.update({"task": spec.name, "checkpoint": str(path), "data": cfg.data, "split": split, "synthetic": synthetic,
                   "images": runner.split_size(split), "seconds": round(seconds, 2),
                   "tta": str(runner.preprocessing.get("tta", "none"))})
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    cm = np.asarray(report.get("confusion_matrix", []))
    if cm.size:
        write_confusion_csv(cm, state["classes"], out_dir / "confusion_matrix.csv")
        save_confusion_matrix(cm, state["classes"], out_dir / "confusion_matrix.png")
    written = ["metrics.json"] + (["confusion_matrix.csv/png"] if cm.size else [])
    if result.files:
        import pandas as pd

        # in the runner's order: the images worth looking at first
        pd.DataFrame([_flat_row(r) for r in result.files]).to_csv(out_dir / "predictions.csv", index=False)
        written.append(f"predictions.csv ({result.files_note})" if result.files_note else "predictions.csv")
    if result.examples is not None:  # also when there is none (no mistakes): examples.json says so
        _write_examples(result.examples, out_dir / "examples")
        n = len(result.examples)
        written.append(f"examples/ ({n} image{'' if n == 1 else 's'} worth a look)")
    console.print(f"wrote to {out_dir}: " + ", ".join(written))
    if report_html:
        from visionlab.report import write_report

        console.print(f"report: {write_report(path.parent, eval_dir=out_dir)}")
    return report


def _check_top_k(top_k: int | None) -> None:
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise VisionlabError(f"--top-k must be an integer >= 1, got {top_k!r}.",
                             "Pass e.g. --top-k 3 (a value above the number of classes shows them all).")


def _check_writable(folder: Path, what: str) -> None:
    """Fail now, not after every prediction, when ``folder`` cannot be created or written to."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".visionlab-write-check-"):
            pass
    except OSError as exc:
        where = exc.filename or folder
        raise VisionlabError(f"{what}: cannot write to {folder} ({exc.strerror or type(exc).__name__}: {where}).",
                             "Pass an --out in a folder you can write to.") from None


def _write_examples(examples: list[dict[str, Any]], folder: Path) -> None:
    """Each example's images as JPEG files, and examples.json that lists them with the fields."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for n, ex in enumerate(examples, 1):
        files = {}
        for caption, image in ex["images"].items():
            name = f"{n:02d}-{caption}.jpg"
            image.convert("RGB").save(folder / name, quality=85)
            files[caption] = name
        listing.append({"title": ex["title"], "images": files, "fields": ex["fields"]})
    (folder / "examples.json").write_text(json.dumps(listing, indent=2))


def predict(
    paths: Sequence[str | os.PathLike] | str,
    checkpoint: str | os.PathLike | None = None,
    task: str | None = None,
    top_k: int | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    console: Any = None,
) -> list[dict[str, Any]]:
    """Predict files, folders or globs; print a table; write CSV/JSON (and masks for segmentation).

    Returns one row per entry named (see :func:`visionlab.engine.predict.scan_inputs`): a
    prediction, an ``error`` (a file that could not be read) or ``skipped`` (why an entry was not
    predicted: not an image, a broken link, a directory...), in the order they were named.
    ``top_k`` (>= 1; default 3) is clipped to the number of classes; an explicit value above it
    is said so."""
    from rich.markup import escape
    from rich.table import Table

    from visionlab.engine.predict import Prediction, Predictor, scan_inputs

    console = _console(console)
    _check_batch_size(batch_size)
    _check_top_k(top_k)
    out_path = Path(out) if out else None
    if out_path is not None:  # before any work is done
        if out_path.suffix.lower() not in (".csv", ".json"):
            raise VisionlabError(f"--out {out_path}: unknown format.", "Use a .csv or .json file name.")
        if out_path.is_dir():
            raise VisionlabError(f"--out {out_path} is a folder.", "Pass a file name ending in .csv or .json.")
        _check_writable(out_path.parent, f"--out {out_path}")
    entries = scan_inputs([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if not entries:
        raise VisionlabError("no images matched the given paths.", "Pass image files, folders or glob patterns.")
    if all(e.skipped for e in entries):  # nothing to predict: say why, before loading a model
        rows = [Prediction(e.path, skipped=e.skipped).to_dict() for e in entries]
        table = Table(title="skipped")
        table.add_column("path", overflow="fold")
        table.add_column("why", overflow="fold")
        for e in entries:
            table.add_row(escape(e.path), escape(e.skipped or ""))
        console.print(table)
        if out_path is not None:
            _write_rows(rows, out_path)
        n = len(entries)
        raise VisionlabError(f"no images matched the given paths: {n} entr{'y was' if n == 1 else 'ies were'} skipped (see the table).",
                             "Pass image files, or folders and glob patterns that hold images.")
    path = _resolve_checkpoint(checkpoint, task, console)
    predictor = Predictor.from_checkpoint(path, device=device, task=task)
    mask_dir = (out_path.parent if out_path else path.parent / "predictions") if predictor.kind == "segmentation" else None
    if mask_dir is not None and out_path is None:
        _check_writable(mask_dir, "segmentation masks")
    asked, top_k = top_k, 3 if top_k is None else top_k
    todo = [e.path for e in entries if e.skipped is None]
    done = iter(predictor.predict(todo, top_k=top_k, batch_size=batch_size) if todo else [])
    preds = [Prediction(e.path, skipped=e.skipped) if e.skipped else next(done) for e in entries]
    rows = [p.to_dict() for p in preds]
    k = min(top_k, len(predictor.classes))
    title = f"{predictor.task} predictions" + (" (model trained on SYNTHETIC DATA)" if predictor.synthetic else "")
    table = Table(title=title)
    for col in ("path", "label", "confidence", f"top-{k}" if predictor.kind == "classification" else "class shares"):
        table.add_column(col, overflow="fold")
    taken: set[str] = set()
    for p, row in zip(preds, rows):
        if p.skipped:
            table.add_row(escape(p.source), "[yellow]skipped[/]", "", escape(p.skipped))
            continue
        if p.error:
            table.add_row(escape(p.source), "[red]error[/]", "", escape(p.error))
            continue
        if predictor.kind == "segmentation":
            row.update(_write_masks(p, mask_dir, taken))
            detail = ", ".join(f"{c} {s:.0%}" for c, s in sorted(p.class_shares.items(), key=lambda kv: -kv[1]) if s > 0.005)
        else:
            detail = ", ".join(f"{lab} {pr:.2f}" for lab, pr in p.top_k)
        table.add_row(escape(p.source), p.label or "", f"{p.confidence:.3f}" if p.confidence is not None else "", detail)
    console.print(table)
    if predictor.kind == "classification" and asked is not None and asked > k:
        console.print(f"--top-k {top_k} is more than the model's {k} classes: all {k} are shown.")
    errors = sum(1 for p in preds if p.error)
    skipped = sum(1 for p in preds if p.skipped)
    predicted = len(preds) - errors - skipped
    if not predicted:
        if out_path is not None:
            _write_rows(rows, out_path)
        extra = f"; {skipped} other entr{'y was' if skipped == 1 else 'ies were'} skipped" if skipped else ""
        raise VisionlabError(f"none of the {errors} image(s) could be read{extra} (see the table).", "Check the paths and files.")
    closing = [f"{predicted} predicted"]
    if errors:
        closing.append(f"[yellow]{errors} of {predicted + errors} image(s) could not be read[/]")
    if skipped:
        closing.append(f"[yellow]{skipped} skipped[/]")
    console.print(", ".join(closing) + (" (listed above)." if errors or skipped else "."))
    if mask_dir is not None:
        console.print(f"masks and overlays written to {mask_dir}")
    if out_path is not None:
        _write_rows(rows, out_path)
        console.print(f"wrote {out_path}")
    return rows


def _write_masks(p: Any, folder: Path, taken: set[str]) -> dict[str, str]:
    from PIL import Image

    from visionlab.data.io import UnreadableImage

    folder.mkdir(parents=True, exist_ok=True)
    stem = base = Path(p.source).stem
    n = 1
    while stem in taken:  # same file name from another folder: a mask of its own
        n += 1
        stem = f"{base}-{n}"
    taken.add(stem)
    mask_path, overlay_path = folder / f"{stem}_mask.png", folder / f"{stem}_overlay.png"
    Image.fromarray(p.mask).save(mask_path)
    try:
        overlay = p.overlay(p.source)
    except UnreadableImage:  # the photo is unreadable now: the mask alone, in colour
        overlay = p.overlay()
    overlay.save(overlay_path)
    return {"mask": str(mask_path), "overlay": str(overlay_path)}


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2))
        return
    if path.suffix.lower() != ".csv":
        raise VisionlabError(f"--out {path}: unknown format.", "Use a .csv or .json file name.")
    import pandas as pd

    pd.DataFrame([_flat_row(r) for r in rows]).to_csv(path, index=False)


def _flat_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row: top_k as top1_label, top1_probability, ...; class_shares as share_<class>."""
    f = {k: v for k, v in r.items() if k not in ("top_k", "class_shares")}
    for i, t in enumerate(r.get("top_k", []), 1):
        f[f"top{i}_label"], f[f"top{i}_probability"] = t["label"], t["probability"]
    for c, s in r.get("class_shares", {}).items():
        f[f"share_{c}"] = s
    return f


_DEMO = {
    "classification": {"epochs": 4, "batch_size": 16, "early_stopping": 0, "lr": 2e-3},
    "segmentation": {"epochs": 3, "batch_size": 8, "tile_size": 128, "crops_per_image": 8, "early_stopping": 0},
}


def demo(task: str = "cracks", device: str = "auto", out: str = "runs", console: Any = None) -> dict[str, Any]:
    """Synthetic data, a short training, an evaluation and one prediction."""
    from visionlab.engine.predict import expand_inputs
    from visionlab.models import no_weights_kwargs
    from visionlab.registry import get_task

    console = _console(console)
    spec = get_task(task)
    console.rule(f"visionlab demo: {task} on SYNTHETIC data")
    options: dict[str, Any] = dict(_DEMO[spec.kind])
    options.update(data="synthetic", device=device, out=out, name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    options["model"] = spec.model  # the seed's architecture
    no_weights = no_weights_kwargs(spec.model)
    if no_weights:  # the demo never downloads weights
        options["model_args"] = no_weights
        console.print(f"(demo: {spec.model} starts from random weights; real training uses ImageNet weights)")
    result = train(task, console=console, **options)
    report = evaluate(result.best_checkpoint, console=console)
    folder = _synthetic_folder(task)
    if spec.kind == "segmentation":
        sample = expand_inputs([folder])[:2]
    else:  # one image of each class
        sample = [expand_inputs([d])[0] for d in sorted(folder.iterdir()) if d.is_dir()][:6]
    rows = predict(sample, checkpoint=result.best_checkpoint, console=console)
    return {"train": result, "evaluate": report, "predict": rows}


def _synthetic_folder(task: str) -> Path:
    from visionlab.data.synthetic import make_synthetic
    from visionlab.registry import get_task

    spec = get_task(task)
    root = make_synthetic(spec.name, spec.kind, list(spec.default_classes), seed=0)
    return root / "images" if spec.kind == "segmentation" else root
