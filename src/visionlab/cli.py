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

from visionlab.errors import Interrupted, VisionlabError
from visionlab.kinds.base import DEFAULT_TOP_K, unknown_mode

app = typer.Typer(
    name="visionlab",
    help="Train, evaluate and predict five vision tasks with one trainer.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Check and download datasets, and find photos whose label is probably wrong.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_STATE = {"debug": False}


def _console():
    from visionlab.present import console

    return console()


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
        except Interrupted as exc:
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
    from visionlab.process import tune_process

    tune_process()  # visionlab's own commands tune their process; a library import does not


tasks_app = typer.Typer(help="List the tasks (built-in, plugins', the user folder's); 'tasks new' writes one for a folder of photos.")
app.add_typer(tasks_app, name="tasks")


def _short(names: tuple[str, ...], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


@tasks_app.callback(invoke_without_command=True)
@handle_errors
def tasks_cmd(ctx: typer.Context,
              verbose: bool = typer.Option(False, "--verbose", "-v", help="Also build the models and count their parameters (imports torch).")) -> None:
    """List the registered tasks: kind, the model its recipe trains (and the seed's), input size, classes, where it comes from."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape
    from rich.table import Table

    from visionlab.registry import list_tasks

    table = Table(title="visionlab tasks")
    for col in ("task", "kind", "model (recipe / seed)", "input", "default classes", "description", "source"):
        table.add_column(col, overflow="fold")
    if verbose:
        table.add_column("params (recipe / seed)", justify="right")
    for spec in list_tasks():
        seed = spec.seed_model or spec.model
        model = spec.model if seed == spec.model else f"{spec.model} / {seed}"
        row = [escape(str(v)) for v in (spec.name, spec.kind, model, f"{spec.input_size} px", _short(spec.default_classes),
                                        spec.description, spec.origin)]  # a user task's names are data, not rich markup
        if verbose:
            from visionlab.models import build_model, no_weights_kwargs

            def count(name: str) -> str:
                args = dict(spec.recipe_values().get("model_args") or {}) if name == spec.model else {}
                m = build_model(name, len(spec.default_classes), **{**args, **no_weights_kwargs(name)})
                return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"

            row.append(count(spec.model) if seed == spec.model else f"{count(spec.model)} / {count(seed)}")
        table.add_row(*row)
    _console().print(table)


@tasks_app.command("new")
@handle_errors
def tasks_new_cmd(
    name: str = typer.Argument(..., help="The new task's name (also its file: NAME.yaml in the user task folder)."),
    data: str = typer.Option(..., "--data", "-d", help="The folder of photos the task is for: its kind and classes are read from it."),
    from_task: Optional[str] = typer.Option(None, "--from", help="Train with this task's recipe (a task of the same kind; default: the kind's general recipe)."),
    force: bool = typer.Option(False, "--force", help="Overwrite NAME.yaml if it exists."),
) -> None:
    """Write a task YAML for a folder of photos into the user task folder ($VISIONLAB_TASKS, else ~/.config/visionlab/tasks)."""
    import shlex

    from visionlab.api import new_task

    path, spec = new_task(name, data, from_task=from_task, force=force)
    typer.echo(f"wrote {path}: task {spec.name!r}, {spec.kind}, {len(spec.default_classes)} classes "
               f"({_short(spec.default_classes)}), recipe {spec.recipe}.")
    typer.echo(f"Train it with: visionlab train --task {shlex.quote(spec.name)} --data {shlex.quote(data)}")


@app.command("train")
@handle_errors
def train_cmd(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name (see 'visionlab tasks'). Without it, --data DIR is "
                                       "trained as a task named after the folder, with its kind's general recipe."),
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
    devices: Optional[int] = typer.Option(None, "--devices", min=1, help="Train as one job of N processes on this machine "
                                          "(torchrun --standalone --nproc_per_node N; one per GPU, or gloo on CPU)."),
) -> None:
    """Train a task (or, with no --task, the folder --data DIR); writes checkpoints, metrics.csv and curves to runs/<task>/<name>/."""
    import os
    import signal

    from visionlab.api import train

    if devices and devices > 1:
        if "WORLD_SIZE" in os.environ:  # torchrun (or a leftover variable) already decides the processes
            raise VisionlabError(f"--devices {devices} starts processes of its own, but WORLD_SIZE={os.environ['WORLD_SIZE']} "
                                 "says this process is already one of a job.",
                                 "Under torchrun leave --devices out; otherwise unset WORLD_SIZE.")
        raise typer.Exit(_launch(devices))

    def stop(signum: int, frame: object) -> None:  # SIGTERM (a scheduler, kill, docker stop) stops like Ctrl-C
        raise KeyboardInterrupt

    # held while torch imports (seconds): an interrupt inside it is swallowed by torch's C init (numpy "fails
    # to load", the run goes on as if never stopped) or breaks the import into a raw ImportError; delivered after
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGTERM, stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    overrides = list(set_)
    for key, val in (("epochs", epochs), ("batch_size", batch_size), ("device", device), ("out", out), ("name", name), ("seed", seed)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if data is not None:
        overrides.append(f"data={data}")
    if track:
        overrides.append("track=" + ",".join(track))
    train(task, config=config, overrides=overrides, resume=resume)


def _launch(processes: int) -> int:
    """``visionlab train ... --devices N``: the same command under torchrun with N processes on this machine."""
    from visionlab.engine.distributed import launch

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            argv.append(arg)
    return launch(argv, processes)


def _precision_option() -> typer.models.OptionInfo:
    return typer.Option("fp32", "--precision", help="fp32 (the same answers as the exported .onnx), auto (bf16 where the CPU/GPU has it: faster), bf16, fp16 (CUDA).")


def _unknown_option() -> typer.models.OptionInfo:
    return typer.Option("auto", "--unknown", help="Photos of none of the classes: auto (below the model's fitted threshold: "
                        "'unknown', with the best guess), a threshold of your own, or off (every photo gets a class).")


def _precision(value: str) -> str:
    """--precision of evaluate, predict and serve, checked before any model is loaded."""
    from visionlab.config import PRECISIONS

    if value.lower() not in PRECISIONS:
        raise VisionlabError(f"unknown --precision {value!r}.", "Use fp32, auto, bf16 or fp16 (CUDA).")
    return value.lower()


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-k", help="Checkpoint (.pt) or exported model (.onnx). Default: latest run of --task, or latest run overall."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Folder in the task's layout (default: the training data's held-out split)."),
    split: str = typer.Option("test", "--split", help="test, val, train or all."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json and confusion matrix (default: next to the checkpoint)."),
    tta: Optional[str] = typer.Option(None, "--tta", help="Test-time augmentation: none, hflip, flips or d4 (default: as saved with the model)."),
    report: bool = typer.Option(False, "--report", help="Also write the run's HTML report (report.html in the output folder)."),
    precision: str = _precision_option(),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration", help="Apply the model's fitted temperature (default), or show the raw softmax."),
    unknown: str = _unknown_option(),
) -> None:
    """Evaluate a trained model: accuracy, P/R/F1, confusion matrix, ROC AUC; IoU for segmentation."""
    from visionlab.api import evaluate

    evaluate(checkpoint=checkpoint, task=task, data=data, split=split, device=device, batch_size=batch_size, out=out, tta=tta,
             report_html=report, precision=_precision(precision), calibration=calibration, unknown=unknown)


@app.command("report")
@handle_errors
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (runs/<task>/<name>) or one of its eval-* folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: report.html in the evaluation folder)."),
    device: str = typer.Option("auto", "--device", help="Device for the evaluation, when the run has none yet."),
) -> None:
    """One self-contained HTML page of a run: curves, metrics, confusion matrix, the images worth a look."""
    from visionlab.api import run_report

    typer.echo(f"wrote {run_report(run_dir, out=out, device=device, console=_console())}")


@app.command("serve")
@handle_errors
def serve_cmd(
    checkpoint: List[Path] = typer.Option([], "--checkpoint", "-k", help="Checkpoint to serve (repeat for several tasks)."),
    task: List[str] = typer.Option([], "--task", "-t", help="Serve the latest run of this task (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; another than localhost needs --api-key."),
    port: int = typer.Option(8000, "--port", "-p", help="Port (0: a free one, printed at start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require this key on every request but /health (default: $VISIONLAB_API_KEY)."),
    insecure_no_key: bool = typer.Option(False, "--insecure-no-key", help="Listen off localhost without a key: anyone who can reach it may use it."),
    allowed_host: List[str] = typer.Option([], "--allowed-host", help="Also answer this Host name (repeatable; '*' any; 0.0.0.0 answers any unless given)."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Let pages of this origin call the API, e.g. https://app.example (repeatable)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Most images in one forward pass."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long the first image of a batch waits for others."),
    max_queue: int = typer.Option(128, "--max-queue", help="Images admitted at once; beyond, 503 with Retry-After."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body; larger ones get 413."),
    max_bodies_mb: float = typer.Option(256.0, "--max-bodies-mb", help="Request bodies held at once, all requests together; beyond, 503 with Retry-After."),
    max_megapixels: float = typer.Option(24.0, "--max-megapixels", help="Pixels of all the images of one request together; more get 413 before decoding."),
    max_queue_megapixels: float = typer.Option(96.0, "--max-queue-megapixels", help="Pixels admitted at once, all requests together; beyond, 503 with Retry-After."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a request body may take to arrive; slower ones get 408."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection may take to send a request's headers; slower ones are closed."),
    device: str = typer.Option("auto", "--device"),
    drain_seconds: float = typer.Option(30.0, "--drain-seconds", help="On SIGTERM, how long requests in flight may take to finish."),
    precision: str = _precision_option(),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration", help="Apply the model's fitted temperature (default), or show the raw softmax."),
    unknown: str = _unknown_option(),
) -> None:
    """Serve models over HTTP: a JSON API with batching, metrics, and a camera/upload page at /."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise VisionlabError(f"visionlab serve needs {exc.name}, which is not installed.", 'pip install "visionlab[serve]"') from None
    from visionlab.serve.app import Settings, run

    for name, value in (("--max-batch-size", max_batch_size), ("--max-queue", max_queue)):
        if value < 1:
            raise VisionlabError(f"{name} must be at least 1, got {value}.")
    for name, value in (("--max-upload-mb", max_upload_mb), ("--max-megapixels", max_megapixels),
                        ("--body-timeout", body_timeout), ("--header-timeout", header_timeout)):
        if value <= 0:
            raise VisionlabError(f"{name} must be positive, got {value:g}.")
    if max_bodies_mb < max_upload_mb:
        raise VisionlabError(f"--max-bodies-mb {max_bodies_mb:g} is below --max-upload-mb {max_upload_mb:g}: "
                             "the largest body could never be read.", "Raise --max-bodies-mb.")
    if max_queue_megapixels < max_megapixels:
        raise VisionlabError(f"--max-queue-megapixels {max_queue_megapixels:g} is below --max-megapixels {max_megapixels:g}: "
                             "the largest request could never be admitted.", "Raise --max-queue-megapixels.")
    if max_wait_ms < 0 or drain_seconds < 0:
        raise VisionlabError("--max-wait-ms and --drain-seconds cannot be negative.")
    run(_served_paths(checkpoint, task), Settings(host=host, port=port, api_key=api_key, insecure_no_key=insecure_no_key, allowed_hosts=list(allowed_host),
                        cors_origins=list(cors_origin), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                        max_queue=max_queue, max_upload_mb=max_upload_mb, max_bodies_mb=max_bodies_mb, max_megapixels=max_megapixels, device=device,
                        precision=_precision(precision), calibration=calibration, unknown=unknown_mode(unknown),
                        drain_seconds=drain_seconds, body_timeout=body_timeout, header_timeout=header_timeout, max_queue_megapixels=max_queue_megapixels))


def _served_paths(checkpoint: List[Path], task: List[str]) -> List[Path]:
    """The checkpoints of serve: those given, and the latest run of each task given."""
    from visionlab.engine.runs import latest_checkpoint
    from visionlab.registry import get_task

    paths = list(checkpoint)
    for t in task:
        get_task(t)  # unknown task -> the list of known ones
        paths.append(latest_checkpoint(t))
    if not paths:
        raise VisionlabError("nothing to serve.", "Pass --checkpoint CKPT or --task T (repeatable), e.g. --task cracks.")
    return paths


@app.command("predict")
@handle_errors
def predict_cmd(
    paths: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-k", help="Checkpoint (.pt) or exported model (.onnx)."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help=f"Classes to list per image, >= 1 (default {DEFAULT_TOP_K}; at most the model's classes)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results to .csv or .json; segmentation masks go next to it."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    precision: str = _precision_option(),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration", help="Apply the model's fitted temperature (default), or show the raw softmax."),
    explain: bool = typer.Option(False, "--explain", help="Also write, per image, IMAGE_why.png: what the model looked at "
                                 "(Grad-CAM for classifiers), beside --out (named in its explanation column)."),
    unknown: str = _unknown_option(),
) -> None:
    """Predict labels (or masks) for images with a trained model."""
    import signal

    from visionlab.api import predict

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C: it says what was written

    predict(paths, checkpoint=checkpoint, task=task, top_k=top_k, out=out, device=device, batch_size=batch_size,
            precision=_precision(precision), calibration=calibration, explain=explain, unknown=unknown)


@app.command("calibrate")
@handle_errors
def calibrate_cmd(
    checkpoint: Path = typer.Argument(..., help="A classifier's checkpoint (.pt), e.g. one trained before the unknown detector existed."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Its training data folder (default: where the run read it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The new checkpoint (default: NAME-calibrated.pt beside it; never an existing file)."),
    accept: Optional[float] = typer.Option(None, "--accept", help="Share of known validation photos the unknown threshold accepts (default: the run's unknown_accept, 0.95)."),
    score: Optional[str] = typer.Option(None, "--score", help="The unknown detector's score: mahalanobis or knn (default: the run's unknown_score, mahalanobis)."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Fit a checkpoint's temperature and unknown detector on its validation split, into a new checkpoint."""
    from visionlab.api import calibrate

    if accept is not None and not 0.5 <= accept < 1:
        raise VisionlabError(f"--accept must be a share in [0.5, 1), got {accept:g}.", "Pass e.g. --accept 0.95.")
    if score is not None and score not in ("mahalanobis", "knn"):
        raise VisionlabError(f"unknown_score must be mahalanobis or knn, got {score!r}.", "Pass --score mahalanobis (the default) or --score knn.")
    calibrate(checkpoint, data=data, out=out, device=device, accept=accept, score=score, console=_console())


@app.command("export")
@handle_errors
def export_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint (.pt). Default: latest run of --task, or latest run overall."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format: onnx, or openvino (NAME.xml + NAME.bin)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The .onnx file (default: the checkpoint's name with .onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (11-20)."),
    atol: float = typer.Option(1e-4, "--atol", help="Parity: largest allowed |logit difference| (plus --rtol x |logit|)."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Parity: relative part of the allowed logit difference."),
    external_data: bool = typer.Option(False, "--external-data", help="Store the weights in FILE.data beside the model."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantisation (QDQ), calibrated on training photos and "
                                                    "scored on the validation split against fp32 (default out: NAME.int8.onnx)."),
    calibration_images: int = typer.Option(300, "--calibration-images", help="--int8: training photos to calibrate on."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="--int8: largest allowed drop of the primary metric "
                                             "on the validation split (default: the kind's, 0.005 accuracy or 0.01 mIoU)."),
) -> None:
    """Export a trained model to ONNX; fails unless onnxruntime's answers match PyTorch's (parity)."""
    options = dict(task=task, out=out, format=fmt, opset=opset, atol=atol, rtol=rtol, external_data=external_data)
    if str(fmt).lower() == "openvino":
        if external_data:
            raise VisionlabError("--external-data is for .onnx files: an OpenVINO model's weights always go to NAME.bin.",
                                 "Leave out --external-data.")
        from visionlab.openvino import export_openvino

        export_openvino(checkpoint, task=task, out=out, int8=int8, calibration_images=calibration_images, max_drop=max_drop,
                        opset=opset, atol=atol, rtol=rtol)
        return
    if int8:
        from visionlab.quantize import export_int8

        export_int8(checkpoint, calibration_images=calibration_images, max_drop=max_drop, **options)
        return
    from visionlab.export import export_onnx

    export_onnx(checkpoint, **options)


@app.command("benchmark")
@handle_errors
def benchmark_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt) of a trained run (its data's test split is scored)."),
    formats: str = typer.Option(",".join(("pytorch", "pytorch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8")),
                                "--formats", help="Comma-separated formats to measure (PyTorch fp32 is always measured)."),
    images: int = typer.Option(200, "--images", help="At most this many test-split images scored per format."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Accuracy tolerance of the int8 exports and of the pick "
                                             "(default: the kind's, 0.005 accuracy or 0.01 mIoU)."),
) -> None:
    """Export a checkpoint to every format and measure size, test metric, batch-1 latency and batch-16 throughput."""
    from visionlab.benchmark import benchmark
    from visionlab.present.benchmark import show_benchmark

    console = _console()
    show_benchmark(benchmark(checkpoint, formats=formats, images=images, max_drop=max_drop, console=console), console)


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
    from visionlab.present.doctor import run_check

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
    from visionlab.api import download_task
    from visionlab.present.messages import show_download

    console = _console()
    source, target, images = download_task(task, root=root, force=force, console=console)
    show_download(source, images, target, console)


@data_app.command("suspects")
@handle_errors
def data_suspects_cmd(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Classification task whose recipe is trained (see 'visionlab tasks')."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset folder or CSV; every labelled photo is checked, whatever its split."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for suspects.csv and suspects.html (default: <runs>/<task>/suspects-<time>)."),
    folds: int = typer.Option(5, "--folds", "-k", help="K stratified folds: each is held out once and predicted by a model fitted on the others."),
    minutes: float = typer.Option(10.0, "--minutes", "-m", help="Time budget of all K trainings together (--method fine-tune)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="Epochs per fold instead of a time budget (fine-tune; --method auto then fine-tunes)."),
    method: str = typer.Option("auto", "--method", help="features: a logistic head per fold on the recipe backbone's frozen pretrained features; "
                               "fine-tune: K trainings of the recipe (--minutes, --epochs); auto: features where the backbone is pretrained."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move the flagged photos into DIR/<given label>/ (with a moved.csv manifest)."),
    undo: Optional[Path] = typer.Option(None, "--undo", help="Move the photos a --move-to put in DIR back where they were, and stop."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key of the trainings: --set lr=0.001 (repeatable)."),
) -> None:
    """Find photos whose label is probably wrong: out-of-fold predictions (a head per fold on frozen features, or K short trainings), ranked by confident learning."""
    import signal

    from visionlab.api import suspects, undo_suspects

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C: the temporary folds are removed

    if undo is not None:
        if task or data or move_to:
            raise VisionlabError("--undo takes only the quarantine folder.", f"Run: visionlab data suspects --undo {undo}")
        undo_suspects(undo)
        return
    if not task or not data:
        raise VisionlabError("--task and --data are needed.", "Run e.g.: visionlab data suspects --task cracks --data DIR")
    suspects(task, data, out=out, folds=folds, minutes=minutes, epochs=epochs, move_to=move_to, overrides=list(set_), method=method)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
