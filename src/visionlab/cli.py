"""The ``visionlab`` command line: a thin layer over the Python API.

Parsing only: every command looks the task up and calls the library. torch is imported
lazily inside commands, so ``visionlab --help`` and ``visionlab tasks`` answer fast.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from visionlab.errors import TrainingInterrupted, VisionlabError

app = typer.Typer(
    name="visionlab",
    help="Train, evaluate and predict five vision tasks with one trainer.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Check and download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_STATE = {"debug": False}


def _console():
    from rich.console import Console

    return Console()


def _fail(msg: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {msg}\n")
    raise typer.Exit(code)


def _debug_from_env() -> bool:
    return os.environ.get("VISIONLAB_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


_DEBUG_PARAM = inspect.Parameter(
    "debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--debug", help="Show full tracebacks on errors (also: visionlab --debug CMD, VISIONLAB_DEBUG=1)."),
)


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and a non-zero exit (traceback with --debug).

    The command also gets its own ``--debug`` option, so ``visionlab CMD ... --debug`` works as
    well as ``visionlab --debug CMD ...`` and ``VISIONLAB_DEBUG=1``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.pop("debug", False) or _STATE["debug"] or _debug_from_env():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):  # typer.Exit is a RuntimeError: let it through
            raise
        except TrainingInterrupted as exc:
            _fail(str(exc), 130)
        except VisionlabError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted.", 130)
        except MemoryError:
            _fail("out of memory; lower --batch-size or set cache=none.")
        except OSError as exc:  # an unwritable --out, a file where a folder should be, a full disk
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or type(exc).__name__}{where}; check the paths given (run with --debug for the traceback).")
        except RuntimeError as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "out of memory" in text.lower():
                _fail(f"out of memory ({text[:120]}); lower --batch-size or image size.")
            _fail(f"{text} (run with --debug for the traceback).")

    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), _DEBUG_PARAM])  # type: ignore[attr-defined]
    return wrapper


def _print_version(value: bool) -> None:
    """Eager: runs before the 'missing command' check, so ``visionlab --version`` works alone."""
    if value:
        from visionlab._version import __version__

        typer.echo(f"visionlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    _STATE["debug"] = debug


def _recipe(task: str) -> dict:
    """The task's default recipe (configs/<task>.yaml), read without importing torch."""
    import yaml

    from visionlab.config import config_path

    path = config_path(task)
    return (yaml.safe_load(path.read_text()) or {}) if path else {}


@app.command("tasks")
@handle_errors
def tasks_cmd(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also build the models and count their parameters (imports torch).")) -> None:
    """List the registered tasks: kind, recipe model (and the seed's), input size, classes."""
    from rich.table import Table

    from visionlab.registry import list_tasks

    table = Table(title="visionlab tasks")
    for col in ("task", "kind", "model (recipe / seed)", "input (recipe / seed)", "default classes", "description"):
        table.add_column(col, overflow="fold")
    if verbose:
        table.add_column("params (recipe / seed)", justify="right")
    for spec in list_tasks():
        rec = _recipe(spec.name)
        recipe = str(rec.get("model", spec.model))
        model = recipe if recipe == spec.model else f"{recipe} / {spec.model}"
        size = rec.get("tile_size" if spec.kind == "segmentation" else "image_size", spec.input_size)
        size_txt = f"{size} px" if size == spec.input_size else f"{size} / {spec.input_size} px"
        row = [spec.name, spec.kind, model, size_txt, ", ".join(spec.default_classes), spec.description]
        if verbose:
            from visionlab.models import build_model, no_weights_kwargs

            def count(name: str) -> str:
                args = dict(rec.get("model_args") or {}) if name == recipe else {}
                m = build_model(name, len(spec.default_classes), **{**args, **no_weights_kwargs(name)})
                return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"

            row.append(count(recipe) if recipe == spec.model else f"{count(recipe)} / {count(spec.model)}")
        table.add_row(*row)
    _console().print(table)


@app.command("train")
@handle_errors
def train_cmd(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see 'visionlab tasks')."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset folder/CSV, or 'synthetic'."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (defaults: configs/<task>.yaml)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Runs folder (default: runs)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: a timestamp)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: Optional[str] = typer.Option(None, "--resume", help="last.pt to resume from, or 'last' for the latest run; continues it with its own config (only --epochs, --device and a few runtime keys may change)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key: --set lr=0.001 (repeatable)."),
    track: List[str] = typer.Option([], "--track", help="Also log to an experiment tracker: tensorboard, mlflow (repeatable or comma-separated; "
                                    "'none' stops it on --resume). Needs pip install 'visionlab[tracking]'."),
) -> None:
    """Train a task; writes checkpoints, metrics.csv and curves to runs/<task>/<name>/."""
    import signal

    from visionlab.api import train

    def stop(signum: int, frame: object) -> None:  # SIGTERM (a scheduler, kill, docker stop) stops like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    overrides = list(set_)
    for key, val in (("epochs", epochs), ("batch_size", batch_size), ("device", device), ("out", out), ("name", name), ("seed", seed)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if data is not None:
        overrides.append(f"data={data}")
    if track:
        overrides.append("track=" + ",".join(track))
    train(task, config=config, overrides=overrides, resume=resume)


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-k", help="Checkpoint (.pt). Default: latest run of --task, or latest run overall."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Folder in the task's layout (default: the training data's held-out split)."),
    split: str = typer.Option("test", "--split", help="test, val, train or all."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json and confusion matrix (default: next to the checkpoint)."),
    tta: Optional[str] = typer.Option(None, "--tta", help="Test-time augmentation: none, hflip, flips or d4 (default: as saved with the model)."),
) -> None:
    """Evaluate a trained model: accuracy, P/R/F1, confusion matrix, ROC AUC; IoU for segmentation."""
    from visionlab.api import evaluate

    evaluate(checkpoint=checkpoint, task=task, data=data, split=split, device=device, batch_size=batch_size, out=out, tta=tta)


@app.command("predict")
@handle_errors
def predict_cmd(
    paths: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-k"),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Classes to list per image, >= 1 (default 3; at most the model's classes)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results to .csv or .json; segmentation masks go next to it."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
) -> None:
    """Predict labels (or masks) for images with a trained model."""
    from visionlab.api import predict

    predict(paths, checkpoint=checkpoint, task=task, top_k=top_k, out=out, device=device, batch_size=batch_size)


@app.command("demo")
@handle_errors
def demo_cmd(
    task: str = typer.Option("cracks", "--task", "-t"),
    device: str = typer.Option("auto", "--device"),
    out: str = typer.Option("runs", "--out", "-o"),
) -> None:
    """Synthetic data, a short training, evaluation and one prediction (about a minute on CPU)."""
    from visionlab.api import demo

    demo(task, device=device, out=out)


@data_app.command("check")
@handle_errors
def data_check_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (or CSV) to inspect."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task whose layout to expect (default: guessed)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of tables."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when errors are found."),
) -> None:
    """Find what is wrong with a dataset before training."""
    from visionlab.data.doctor import run_check

    code = run_check(path, task=task, as_json=as_json, strict=strict)
    raise typer.Exit(code)


@data_app.command("download")
@handle_errors
def data_download_cmd(
    task: str = typer.Argument(..., help="Task whose seed dataset to download."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default: $VISIONLAB_DATA or the user cache)."),
    force: bool = typer.Option(False, "--force", help="Download again even if present."),
) -> None:
    """Download a seed dataset (checksummed, resumable) into the data root."""
    from visionlab.data.download import run_download

    run_download(task, root=root, force=force)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
