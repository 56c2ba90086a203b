"""The Python API; the CLI is a thin layer over these functions.

They return values; what they show (tables, the lines of a lookup) is :mod:`visionlab.present`'s,
on the ``console`` given (default: a rich console on stdout).

>>> import visionlab
>>> result = visionlab.train("cracks", data="synthetic", epochs=2)
>>> model = visionlab.load(result.best_checkpoint)
>>> model.predict(["photo.jpg"])
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from visionlab.errors import Interrupted, TrainingInterrupted, VisionlabError
from visionlab.kinds import EvaluationReport, Prediction, get_kind
from visionlab.kinds.base import DEFAULT_TOP_K, check_top_k, unknown_mode

if TYPE_CHECKING:
    from visionlab.config import Config
    from visionlab.data.download import Source
    from visionlab.data.io import InputEntry
    from visionlab.registry import TaskSpec

__all__ = ["train", "evaluate", "run_report", "predict", "demo", "load", "load_config", "resume_config", "folder_task", "new_task",
           "download_task", "suspects", "undo_suspects"]


def load_config(task: "str | TaskSpec", config: str | os.PathLike | None = None,
                overrides: Iterable[str] | Mapping[str, Any] | None = None) -> "Config":
    """The resolved :class:`visionlab.config.Config` of the task called ``task`` (or of the
    :class:`~visionlab.registry.TaskSpec` given): defaults, its recipe, ``config`` (a YAML file),
    ``overrides`` (``["lr=0.01"]`` or a mapping). Its kind's own keys go to ``cfg.options``; a key of
    another kind is refused, saying what to use instead."""
    from visionlab.config import resolve_config
    from visionlab.registry import get_task

    spec = get_task(task) if isinstance(task, str) else task
    return resolve_config(spec, get_kind(spec.kind), config, overrides, others=_kinds())


def _kinds() -> list[Any]:
    """Every registered kind: what a key of another kind than a task's is judged against."""
    from visionlab.kinds import kind_names

    return [get_kind(n) for n in kind_names()]


def resume_config(saved: "Config | Mapping[str, Any]", config: str | os.PathLike | None = None,
                  overrides: Iterable[str] | Mapping[str, Any] | None = None) -> tuple["Config", dict[str, tuple[Any, Any]]]:
    """:func:`visionlab.config.resume_config` of a run's saved config (a Config, or the dict of a
    checkpoint), its task's kind looked up by name."""
    from visionlab.config import Config, resume_config as resume
    from visionlab.registry import get_task

    task = saved.task if isinstance(saved, Config) else str(saved["task"])
    return resume(saved, get_kind(get_task(task).kind), config, overrides, others=_kinds())


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _data_folder(data: str | os.PathLike, hint: str) -> tuple[Path, Any, list[str]]:
    """The folder ``data``, the kind its layout has (the kinds' ``recognizes``) and its classes;
    a missing folder or one with no data of that kind is a one-line error."""
    from visionlab.kinds import guess_kind

    root = Path(str(data)).expanduser()
    if str(data) == "synthetic":
        raise VisionlabError("--data synthetic needs --task: synthetic data is made for a task's classes.",
                             "Pass --task T (see 'visionlab tasks'), or --data DIR, a folder of photos.")
    if not root.exists():
        raise VisionlabError(f"--data {data} does not exist.", hint)
    kind = get_kind(guess_kind(root))
    return root, kind, kind.dataset_classes(root)


def folder_task(data: str | os.PathLike) -> tuple["TaskSpec", str]:
    """The task ``visionlab train --data DIR`` trains with no ``--task``: the registered task (or user
    task YAML) named as the folder, if there is one of the kind DIR's layout has; else a task named after
    the folder (sanitized), of that kind, with the kind's general recipe (``configs/<kind.general_recipe>.yaml``).
    Returns the task and the line that says which (and why)."""
    import re

    from visionlab.registry import TaskSpec, find_task

    root, kind, classes = _data_folder(data, "Pass --data DIR, the folder of your photos, or --task T (see 'visionlab tasks').")
    folder = root.resolve()
    name = re.sub(r"[^a-z0-9_.-]+", "-", (folder.stem if folder.is_file() else folder.name).lower()).strip("-.") or "photos"
    looks = f"No --task: {data} looks like {_a(kind.name)} dataset ({len(classes)} classes)"
    known = find_task(name)
    if known is not None:
        if known.kind != kind.name:
            raise VisionlabError(f"{data} looks like {_a(kind.name)} dataset, but task {name!r} (the folder's name) is {known.kind}.",
                                 "Pass --task T, or train a copy of the folder under another name.")
        recipe = known.recipe or f"configs/{known.name}.yaml"
        return known, f"{looks}; training task {name!r} ({known.origin}, named as the folder) with its recipe ({recipe})."
    if not kind.general_recipe:
        raise VisionlabError(f"{data} looks like {_a(kind.name)} dataset, and that kind has no general recipe.", "Pass --task T (see 'visionlab tasks').")
    recipe = f"configs/{kind.general_recipe}.yaml"
    spec = TaskSpec(name=name, kind=kind.name, default_classes=tuple(classes), recipe=recipe,
                    description=f"{kind.name} of the photos in {root} ({kind.general_recipe} recipe)")
    return spec, f"{looks}; training task {name!r} with the {kind.general_recipe} recipe ({recipe})."


def _recipe_reference(base: "TaskSpec", where: Path) -> str:
    """``base``'s recipe as a task YAML in the folder ``where`` names it: its reference when that names
    the same file from there (``configs/cracks.yaml``), else the file's absolute path."""
    from visionlab.registry import resolve_recipe

    path = base.recipe_path
    if path is None or not path.is_file():
        raise VisionlabError(f"task {base.name!r} has no recipe to start from.", "Leave --from out: the kind's general recipe is used.")
    ref = base.recipe or f"configs/{base.name}.yaml"
    return ref if resolve_recipe(ref, where).resolve() == path.resolve() else str(path.resolve())


def new_task(name: str, data: str | os.PathLike, from_task: str | None = None, force: bool = False) -> tuple[Path, "TaskSpec"]:
    """Write the task YAML ``<name>.yaml`` into the user task folder (:func:`visionlab.paths.tasks_home`):
    the kind and the classes of the folder ``data``, and ``from_task``'s recipe (of the same kind) or
    the kind's general one. Refuses a built-in name, an existing file (unless ``force``), a missing
    folder and one with no recognisable data. Returns the file and the task read back from it."""
    from visionlab.paths import tasks_home
    from visionlab.registry import TaskSpec, check_task_name, find_task, get_task, read_task_file, task_yaml

    check_task_name(name)
    dest = tasks_home() / f"{name}.yaml"
    known = find_task(name)
    if known is not None and known.origin == "built-in":
        raise VisionlabError(f"{name!r} is a built-in task.", f"Choose another name (e.g. my-{name}); --from {name} starts from its recipe.")
    if dest.exists() and not force:
        raise VisionlabError(f"{dest} already exists.", "Pass --force to overwrite it, or choose another name.")
    if known is not None and known.source != str(dest):
        raise VisionlabError(f"task {name!r} is already registered ({known.origin}).", "Choose another name.")
    root, kind, classes = _data_folder(data, "Pass --data DIR, the folder of the task's photos.")
    recipe, origin = f"configs/{kind.general_recipe}.yaml", f"the {kind.name} kind's general recipe"
    if from_task is not None:
        base = get_task(from_task)
        if base.kind != kind.name:
            raise VisionlabError(f"{data} looks like {_a(kind.name)} dataset, but task {from_task!r} is {base.kind}.",
                                 f"Pass --from a {kind.name} task (see 'visionlab tasks'), or leave --from out.")
        recipe, origin = _recipe_reference(base, dest.parent), f"the recipe of task {from_task!r}"
    elif not kind.general_recipe:
        raise VisionlabError(f"{kind.name} has no general recipe.", f"Pass --from T, a {kind.name} task to copy the recipe of.")
    spec = TaskSpec(name=name, kind=kind.name, default_classes=tuple(classes), recipe=recipe,
                    description=f"{kind.name.capitalize()} of the photos in {root.resolve()}, trained with {origin}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(task_yaml(spec, f"Task {name!r}, written by 'visionlab tasks new' from {root.resolve()} "
                                    f"({time.strftime('%Y-%m-%d')}).\nKeys: README, Adding a task."), encoding="utf-8")
    return dest, read_task_file(dest)


def _train_task(task: "str | TaskSpec | None", layers: Mapping[str, Any], console: Any, shown: bool,
                resume: "str | os.PathLike | None" = None) -> "TaskSpec":
    """The task ``train`` trains: the one named or given, else the resumed checkpoint's, else the
    folder's (:func:`folder_task`, said first)."""
    from visionlab import present
    from visionlab.registry import checkpoint_task, get_task

    if task is not None:
        return get_task(task) if isinstance(task, str) else task
    if resume is not None and str(resume) != "last":
        from visionlab.engine.checkpoint import load_checkpoint

        return checkpoint_task(load_checkpoint(resume))
    if resume is not None:
        raise VisionlabError("--resume last needs the task whose latest run to continue.",
                             "Pass --task T, or --resume PATH/last.pt.")
    if "data" not in layers:
        raise VisionlabError("no task and no data to train.", "Pass --data DIR (a folder of your photos) or --task T (see 'visionlab tasks').")
    spec, note = folder_task(layers["data"])
    if shown and os.environ.get("RANK", "0") == "0":
        present.console(console).print(note, markup=False, highlight=False, soft_wrap=True)
    return spec


def train(
    task: "str | TaskSpec | None",
    data: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    console: Any = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    **options: Any,
):
    """Train ``task`` (a name or a :class:`~visionlab.registry.TaskSpec`; None: the task of the folder
    ``data``, see :func:`folder_task`). ``options`` are config keys (epochs=3, lr=1e-3, ...); see configs/<task>.yaml.

    ``resume`` (a last.pt, or 'last' for the latest run of ``task``) continues that run with its own
    saved config: ``config``, ``overrides`` and ``options`` may then change only the keys in
    :data:`visionlab.config.RESUME_SAFE_KEYS` (epochs, device, ...); anything else is an error.

    ``callbacks`` are :class:`visionlab.engine.trainer.Callback` objects (reports...); the experiment
    trackers of the config key ``track`` (:mod:`visionlab.engine.tracking`) are added after them.
    The progress display (:class:`visionlab.present.training.ProgressBar`, on ``console``: stdout by
    default) comes first, unless ``progress`` is false or ``callbacks`` hold a ProgressBar of their
    own: then the library prints nothing.
    Returns a :class:`visionlab.engine.trainer.TrainResult` (run_dir, best_checkpoint, history, ...).
    """
    from visionlab import present
    from visionlab.config import parse_overrides
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.tracking import build_trackers
    from visionlab.engine.trainer import Trainer, resolve_resume
    from visionlab.config import resume_config as resumed
    from visionlab.present.training import ProgressBar

    layers = parse_overrides(overrides)
    layers.update(options)
    if data is not None:
        layers["data"] = os.fspath(data)
    shown = progress and not any(isinstance(cb, ProgressBar) for cb in callbacks)
    spec = _train_task(task, layers, console, shown, resume)
    if resume is None:
        cfg = load_config(spec, config, layers)
    else:
        path = resolve_resume(resume, spec.name, layers.get("out"))
        cfg, _ = resumed(load_checkpoint(path, expect_task=spec.name)["config"], get_kind(spec.kind), config, layers, _kinds())
        resume = path
    trackers = build_trackers(cfg.track)  # a missing package is an error now, before any work
    trainer = Trainer(cfg, spec, get_kind(spec.kind),
                      callbacks=[*([ProgressBar(present.console(console))] if shown else []), *callbacks, *trackers])
    try:
        return trainer.fit(resume=resume)
    except BaseException as exc:
        # the trainer tells callbacks of errors in its loop; this also ends a tracked run that failed
        # after it (test evaluation, another callback's on_fit_end). A tracker ends its run once.
        for tracker in trackers:
            tracker.on_exception(trainer, exc)
        raise


def load(checkpoint: str | os.PathLike | None = None, device: str = "auto", task: str | None = None,
         precision: str = "fp32", calibration: bool = True, unknown: str | float = "auto"):
    """A :class:`visionlab.engine.predict.Predictor` from a checkpoint (default: latest run). It
    computes in ``precision``: fp32 (the same answers as the exported .onnx), or auto (bf16 where
    the CPU/GPU has it: faster, probabilities a little apart), bf16, fp16 (CUDA). ``calibration``
    False: the raw softmax, without the model's fitted temperature. ``unknown``: 'auto' answers 'unknown'
    below the model's fitted threshold (a classifier's detector), a number below that one, 'off' never."""
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.predict import Predictor
    from visionlab.engine.runs import latest_checkpoint

    path = Path(checkpoint) if checkpoint else latest_checkpoint(task)
    state = load_checkpoint(path, expect_task=task)
    return Predictor(state, get_kind(state["kind"]), device=device, source=str(path), precision=precision,
                     calibration=calibration, unknown=unknown)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VisionlabError(f"--batch-size must be a positive integer, got {batch_size!r}.", "Pass e.g. --batch-size 32.")


def _checkpoint(checkpoint: str | os.PathLike | None, task: str | None, console: Any) -> Path:
    """The checkpoint to use (:func:`visionlab.engine.runs.resolve_checkpoint`), said when it was looked up."""
    from visionlab.engine.runs import resolve_checkpoint
    from visionlab.present.messages import show_chosen_checkpoint
    from visionlab.registry import get_task

    path = resolve_checkpoint(checkpoint, task, check_task=get_task)
    if not checkpoint:
        show_chosen_checkpoint(path, task, console)
    return path


def _model_notes(kind: Any, path: Path, state: dict[str, Any], calibration: bool, unknown: str | float, console: Any) -> None:
    """The notices of a model without the calibration or the unknown detector its kind fits (once each)."""
    from visionlab.present.messages import show_note

    if calibration:
        show_note(kind.calibration_note(path, state.get("calibration")), console)
    if unknown != "off":
        show_note(kind.unknown_note(path, state.get("unknown")), console)


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
    precision: str = "fp32",
    calibration: bool = True,
    unknown: str | float = "auto",
) -> EvaluationReport:
    """Evaluate a trained model on a split of its data, or on any folder in the task's layout.

    With ``data`` pointing at another folder than the training data, the whole folder is the test
    set (its own test/ split if it has one). ``tta`` overrides the test-time augmentation saved
    with the model (none, hflip, flips, d4). Shows the tables on ``console`` and writes (:mod:`visionlab.present.evaluation`)
    metrics.json (and the confusion matrix as CSV and PNG), predictions.csv, thumbnails of the
    ``examples`` images most worth a look into ``out`` (default: an ``eval-*`` folder beside the
    checkpoint), and with ``report_html`` the run's HTML report (:func:`visionlab.report.write_report`).
    With the model's unknown detector (``unknown`` 'auto', or a threshold; 'off' leaves it out) it
    also reports the share of the known photos it accepts; the accuracy is that of every photo either way.
    Returns the :class:`~visionlab.kinds.EvaluationReport` (``report["metrics"]`` reads metrics.json's keys)."""
    from visionlab import present
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.data.geometry import TTA_MODES
    from visionlab.kinds import get_kind
    from visionlab.present.evaluation import show_evaluation, show_written, write_evaluation
    from visionlab.registry import checkpoint_task
    from visionlab.engine.runner import evaluate_checkpoint

    console = present.console(console)
    _check_batch_size(batch_size)
    if split not in ("test", "val", "train", "all"):
        raise VisionlabError(f"unknown split {split!r}.", "Use test, val, train or all.")
    if tta is not None and tta not in TTA_MODES:
        raise VisionlabError(f"unknown tta mode {tta!r}.", f"Use one of {', '.join(TTA_MODES)}.")
    unknown = unknown_mode(unknown)
    path = _checkpoint(checkpoint, task, console)
    state = load_checkpoint(path, expect_task=task)
    spec = checkpoint_task(state)
    _model_notes(get_kind(spec.kind), path, state, calibration, unknown, console)
    report = evaluate_checkpoint(spec, get_kind(spec.kind), state, path, data=data, split=split, device=device,
                                 batch_size=batch_size, tta=tta, examples=examples, console=console, precision=precision,
                                 calibration=calibration, unknown=unknown)
    show_evaluation(report, console)
    out_dir = Path(out) if out else path.parent / f"eval-{report.split}-{time.strftime('%Y%m%d-%H%M%S')}"
    show_written(out_dir, write_evaluation(report, out_dir), console)
    if report_html:
        from visionlab.present.messages import show_report_written
        from visionlab.report import write_report

        show_report_written(write_report(path.parent, eval_dir=out_dir), console)
    return report


def run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, device: str = "auto", console: Any = None) -> Path:
    """The HTML report of a run (:mod:`visionlab.report`); a run without an evaluation has its
    best checkpoint evaluated on its test split first. Returns the page's path."""
    from visionlab import present
    from visionlab.present.evaluation import show_evaluating_first
    from visionlab.report import find_evaluation, run_checkpoint, write_report

    run, eval_dir = find_evaluation(run_dir)
    if eval_dir is None:
        console = present.console(console)
        ckpt = run_checkpoint(run)
        show_evaluating_first(run, ckpt, console)
        evaluate(ckpt, device=device, console=console)
        run, eval_dir = find_evaluation(run)
    return write_report(run, out=out, eval_dir=eval_dir)


def _entries_to_predict(paths: Sequence[str | os.PathLike] | str, out_path: Path | None, console: Any) -> list[InputEntry]:
    """The entries ``paths`` names (:func:`visionlab.engine.predict.scan_inputs`); raises, before a
    model is loaded, when none matched or all were skipped (those are shown, and written to ``out_path``)."""
    from visionlab.engine.predict import scan_inputs
    from visionlab.present.predictions import show_skipped, write_predictions

    entries = scan_inputs([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if not entries:
        raise VisionlabError("no images matched the given paths.", "Pass image files, folders or glob patterns.")
    if all(e.skipped for e in entries):  # nothing to predict: say why, before loading a model
        skipped = [Prediction(e.path, skipped=e.skipped) for e in entries]
        show_skipped(skipped, console)
        if out_path is not None:
            write_predictions(skipped, out_path)
        n = len(entries)
        raise VisionlabError(f"no images matched the given paths: {n} entr{'y was' if n == 1 else 'ies were'} skipped (see the table).",
                             "Pass image files, or folders and glob patterns that hold images.")
    return entries


def _close_predictions(preds: list[Prediction], out_path: Path | None, mask_dir: Path | None, console: Any) -> None:
    """The CSV/JSON written to ``out_path`` and the closing lines; raises when no image could be read."""
    from visionlab.present.predictions import show_closing, write_predictions

    if out_path is not None:
        write_predictions(preds, out_path)
    errors = sum(1 for p in preds if p.error)
    skipped = sum(1 for p in preds if p.skipped)
    if errors + skipped == len(preds):
        extra = f"; {skipped} other entr{'y was' if skipped == 1 else 'ies were'} skipped" if skipped else ""
        raise VisionlabError(f"none of the {errors} image(s) could be read{extra} (see the table).", "Check the paths and files.")
    show_closing(preds, out_path, mask_dir, console)


def _stopped_writing(done: int, todo: int, folder: Path) -> Interrupted:
    return Interrupted(f"interrupted: the files of {done} of {todo} image(s) were written to {folder}; "
                       "no predictions file was written.", "Run it again to write them all.")


def _input_stems(todo: Sequence[str], folder: Path | None) -> set[str]:
    """The stems no file written beside the predictions may take: those of ``STEM_word.png`` images
    being predicted that lie in ``folder`` itself (``a_mask.png``, ``a_why.png``: a user's photo, or an
    earlier run's output read back), so ``a.jpg``'s files become ``a-2_mask.png``... and overwrite no input."""
    if folder is None:
        return set()
    here = {Path(os.path.abspath(folder))}
    try:
        here.add(folder.resolve())
    except (OSError, RuntimeError):  # a folder that cannot be resolved (a symlink loop)
        pass
    # the name's own folder (a link there is replaced by a file written there, wherever it points)
    return {f.stem.rsplit("_", 1)[0] for f in map(Path, todo)
            if f.suffix.lower() == ".png" and "_" in f.stem and Path(os.path.abspath(f)).parent in here}


def _predict_explained(predictor: Any, todo: list[str], folder: Path | None, reserved: set[str], **options: Any) -> list[Prediction]:
    """``predictor.predict(todo)``; with ``explain``, each batch's <stem>_why.png written into ``folder``
    as soon as the batch is done and its overlay let go (a long run never holds them all). The stems
    come from a set of their own in the order of the results, as :func:`_write_files`' do, both
    starting from ``reserved``, the stems the inputs hold (:func:`_input_stems`)."""
    why = set(reserved)
    written: list[Prediction] = []

    def write(batch: list[Prediction]) -> None:
        for p in batch:
            if p.explanation is not None:
                p.write_explanation(p.explanation, folder, why)
                p.explanation = None
                written.append(p)

    try:
        return predictor.predict(todo, on_batch=write if options.get("explain") else None, **options) if todo else []
    except KeyboardInterrupt:
        if not written:
            raise
        raise _stopped_writing(len(written), len(todo), folder) from None


def _write_files(preds: Sequence[Prediction], folder: Path, reserved: set[str]) -> None:
    """The kind's files of each prediction (masks...) beside the results; they pick their stems from a
    set of their own, so an image's files share one stem with its explanation."""
    todo = [p for p in preds if not (p.skipped or p.error)]
    taken = set(reserved)
    try:
        for p in todo:
            p.write_files(folder, taken)
    except KeyboardInterrupt:
        raise _stopped_writing(sum(1 for p in todo if p.files), len(todo), folder) from None


def predict(
    paths: Sequence[str | os.PathLike] | str,
    checkpoint: str | os.PathLike | None = None,
    task: str | None = None,
    top_k: int | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    console: Any = None,
    precision: str = "fp32",
    calibration: bool = True,
    explain: bool = False,
    unknown: str | float = "auto",
) -> list[Prediction]:
    """Predict files, folders or globs; print a table; write CSV/JSON (and masks for kinds that draw them).

    Returns one result per entry named (see :func:`visionlab.engine.predict.scan_inputs`), of the
    task kind's result type (``.to_dict()`` is its row): a prediction, an ``error`` (a file that
    could not be read) or ``skipped`` (why an entry was not predicted: not an image, a broken
    link, a directory...), in the order they were named. ``top_k`` (>= 1; default :data:`visionlab.kinds.base.DEFAULT_TOP_K`) is clipped
    to the number of classes; an explicit value above it is said so. The model's fitted calibration
    (a classifier's temperature) is applied unless ``calibration`` is False (the raw softmax), and its
    unknown detector unless ``unknown`` is 'off' (below the threshold: ``label`` 'unknown', the best
    class in ``guess``, the score in ``known_score``).
    ``explain``: also, per image, <stem>_why.png (:meth:`visionlab.kinds.Kind.explain`: what the model
    looked at) beside the CSV/JSON (else in the checkpoint's predictions/ folder), named in its ``explanation`` column."""
    from visionlab import present
    from visionlab.present.messages import show_note
    from visionlab.present.predictions import check_output_file, check_writable

    console = present.console(console)
    _check_batch_size(batch_size)
    if top_k is not None:
        check_top_k(top_k, "--top-k")
    unknown = unknown_mode(unknown)
    out_path = Path(out) if out else None
    if out_path is not None:  # before any work is done
        check_output_file(out_path)
    entries = _entries_to_predict(paths, out_path, console)
    path = _checkpoint(checkpoint, task, console)
    predictor = load(path, device=device, task=task, precision=precision, calibration=calibration, unknown=unknown)
    show_note(predictor.calibration_note, console)
    show_note(predictor.unknown_note, console)
    kind = predictor.kind
    mask_dir = (out_path.parent if out_path else path.parent / "predictions") if kind.writes_files or explain else None
    if mask_dir is not None and out_path is None:
        check_writable(mask_dir, "files of the predictions")
    asked, top_k = top_k, DEFAULT_TOP_K if top_k is None else top_k
    todo = [e.path for e in entries if e.skipped is None]
    reserved = _input_stems(todo, mask_dir)
    done = iter(_predict_explained(predictor, todo, mask_dir, reserved, top_k=top_k, batch_size=batch_size, explain=explain))
    preds = [Prediction(e.path, skipped=e.skipped) if e.skipped else next(done) for e in entries]
    if kind.writes_files:
        _write_files(preds, mask_dir, reserved)
    _show_table(preds, predictor, asked, top_k, console)
    _close_predictions(preds, out_path, mask_dir, console)
    return preds


def _show_table(preds: list[Prediction], predictor: Any, asked: int | None, top_k: int, console: Any) -> None:
    """The predictions' table, and a note when the top-k asked for was more than the classes."""
    from visionlab.present.predictions import show_predictions, show_top_k_clipped

    kind, k = predictor.kind, min(top_k, len(predictor.classes))
    title = f"{predictor.task} predictions" + (" (model trained on SYNTHETIC DATA)" if predictor.synthetic else "")
    show_predictions(preds, kind, title, k, console)
    if kind.ranks_classes and asked is not None and asked > k:
        show_top_k_clipped(top_k, k, console)


def demo(task: str = "cracks", device: str = "auto", out: str = "runs", console: Any = None) -> dict[str, Any]:
    """Synthetic data, a short training of the seed model, an evaluation and one prediction."""
    from visionlab import present
    from visionlab.models import no_weights_kwargs
    from visionlab.present.messages import show_demo_start
    from visionlab.registry import get_task

    console = present.console(console)
    spec = get_task(task)
    kind = get_kind(spec.kind)
    model = spec.seed_model or spec.model
    no_weights = no_weights_kwargs(model)
    show_demo_start(task, model, bool(no_weights), console)
    options: dict[str, Any] = dict(kind.demo_options)
    options.update(data="synthetic", device=device, out=out, name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    options["model"] = model  # the seed's architecture
    if no_weights:  # the demo never downloads weights
        options["model_args"] = no_weights
    result = train(task, console=console, **options)
    report = evaluate(result.best_checkpoint, console=console)
    sample = kind.demo_inputs(kind.synthetic_data(spec))
    preds = predict(sample, checkpoint=result.best_checkpoint, console=console)
    return {"train": result, "evaluate": report, "predict": preds}


def dataset_source(name: str) -> Source:
    """The download source (:class:`visionlab.data.download.Source`) of ``name``: a dataset's
    name, or a task's, whose seed dataset it is."""
    from visionlab.data.download import SOURCES, get_source

    if name in SOURCES:
        return get_source(name)
    from visionlab.registry import get_task

    spec = get_task(name)  # unknown names fail with the list of tasks
    if not spec.dataset or spec.dataset not in SOURCES:
        raise VisionlabError(f"task {name!r} has no downloadable dataset.", f"Datasets: {', '.join(SOURCES)}.")
    return get_source(spec.dataset)


def download_task(task: str, root: str | os.PathLike | None = None, force: bool = False, console: Any = None) -> tuple[Source, Path, int]:
    """Download the seed dataset of ``task`` (a task or dataset name); returns its source, the
    folder it is in and how many images that holds (masks not counted)."""
    from visionlab.data.download import download_source

    source = dataset_source(task)
    target, images = download_source(source, root, force, console=console)
    return source, target, images
def suspects(
    task: str,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    folds: int = 5,
    minutes: float = 10.0,
    epochs: int | None = None,
    move_to: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    console: Any = None,
    method: str = "auto",
    **options: Any,
) -> Any:
    """Photos of ``data`` whose label is probably wrong (``visionlab data suspects``): every labelled
    photo, whatever its split, is held out once in ``folds`` stratified folds; each fold's model
    predicts it (``method``: ``features``, a logistic head on the recipe backbone's frozen pretrained
    features, computed once; ``fine-tune``, the recipe's training, :func:`train`, on the other folds,
    ``minutes`` in all or ``epochs`` each; ``auto``, features where the backbone is pretrained),
    and confident learning (cleanlab) ranks the out-of-fold probabilities. Writes suspects.csv and
    suspects.html into ``out`` (default: ``<runs>/<task>/suspects-<time>``); moves nothing, unless
    ``move_to`` is given: then the flagged photos go to ``move_to/<given label>/`` with a manifest
    that :func:`undo_suspects` reads. ``options`` are config keys of the trainings (``epochs`` here is
    every fold's fixed count; the config key ``epochs``, in ``overrides``, caps the time-boxed first fold). Returns the
    :class:`visionlab.kinds.classification.suspects.SuspectsResult` (``.suspects``: the rows)."""
    from visionlab import present
    from visionlab.config import parse_overrides
    from visionlab.engine.runs import runs_root
    from visionlab.present.suspects import show_features, show_fold, show_moved, show_suspects, write_suspects
    from visionlab.registry import get_task

    console = present.console(console)
    layers = parse_overrides(overrides)
    layers.update(options, data=os.fspath(data))
    cfg = load_config(task, config, layers)
    spec = get_task(task)

    def fit(**fold: Any) -> Any:  # one fold's training: its decoded images in RAM only, no mid-epoch last.pt (unless set)
        return train(task, config=config, overrides={"cache": "memory", "checkpoint_every_minutes": 0, **layers}, progress=False,
                     console=console, **fold)

    try:
        result = get_kind(spec.kind).suspects(cfg, spec, fit, folds=folds, minutes=minutes, epochs=epochs, device=cfg.device,
                                              on_fold=lambda done: show_fold(done, console), method=method,
                                              on_features=lambda before, done, total: show_features(before, done, total, console),
                                              move_to=Path(move_to) if move_to is not None else None)
    except TrainingInterrupted:  # its message names a fold's checkpoint, which went with the temporary folder
        raise TrainingInterrupted("data suspects interrupted: its temporary trainings were removed; nothing was written or moved.") from None
    result.out_dir = Path(out) if out else runs_root(cfg.out) / spec.name / f"suspects-{time.strftime('%Y%m%d-%H%M%S')}"
    result.files = write_suspects(result, result.out_dir)
    show_suspects(result, console, moving=move_to is not None)
    if move_to is not None and result.suspects:
        from visionlab.data.quarantine import move_files

        show_moved(move_files([(s.path, s.label) for s in result.suspects], Path(move_to)), Path(move_to).expanduser().resolve(), console)
    return result


def undo_suspects(folder: str | os.PathLike, console: Any = None) -> list[tuple[str, str]]:
    """Move the photos a ``suspects(..., move_to=folder)`` quarantined back where they were, by the
    folder's manifest (moved.csv); returns the (quarantined, restored) path pairs."""
    from visionlab import present
    from visionlab.data.quarantine import undo_move
    from visionlab.present.suspects import show_undone

    pairs = undo_move(Path(folder))
    show_undone(pairs, Path(folder), present.console(console))
    return pairs


def calibrate(checkpoint: str | os.PathLike, data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              device: str = "auto", accept: float | None = None, score: str | None = None, console: Any = None) -> Path:
    """Fit what training fits after it, for a checkpoint that lacks it (one from before these existed):
    the kind's calibration (a classifier's temperature) and its unknown detector, on the run's own
    splits of its data (``data``: the same folder elsewhere), with ``accept`` (default: the run's
    ``unknown_accept``) of the validation photos accepted and the detector's ``score`` (default: the run's
    ``unknown_score``, mahalanobis for a run from before the key). Writes a new checkpoint, ``out`` (default
    ``<name>-calibrated.pt`` beside it), never over an existing file; returns its path."""
    from visionlab import present
    from visionlab.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
    from visionlab.engine.runner import prepared_runner
    from visionlab.present.messages import show_fitted
    from visionlab.registry import checkpoint_task

    console = present.console(console)
    path = Path(checkpoint).expanduser()
    if path.suffix.lower() == ".onnx":
        raise VisionlabError(f"{path} is an exported model: its weights cannot be calibrated here.",
                             "Pass the .pt checkpoint it was exported from, then export the new one.")
    dest = Path(out).expanduser() if out else path.with_name(f"{path.stem}-calibrated.pt")
    if dest.exists():
        raise VisionlabError(f"{dest} exists; calibrate never writes over a file.", "Pass --out with a new file name.")
    state = load_checkpoint(path)
    spec = checkpoint_task(state)
    kind = get_kind(spec.kind)
    if not (kind.calibrates or kind.detects_unknown):
        raise VisionlabError(f"nothing to fit for {path}: {spec.kind} models have no temperature or unknown detector to fit.",
                             "Calibrate a classifier's checkpoint.")
    given = {k: v for k, v in (("unknown_accept", accept), ("unknown_score", score)) if v is not None}
    if given:
        state = {**state, "config": {**state["config"], **given}}
    runner, _ = prepared_runner(spec, kind, state, path, data, device, console=console)
    model = load_model(state, device=runner.device, channels_last=runner.cfg.channels_last)
    fitted = {k: v for k, v in (("calibration", kind.calibrate(runner, model)), ("unknown", kind.fit_unknown(runner, model)))
              if v is not None}
    if not fitted:
        raise VisionlabError(f"nothing to fit for {path}: its data has no validation photos to fit the "
                             "temperature and the unknown threshold on.",
                             "Pass --data with a folder that has a val/ split, or enough photos per class for its val_fraction.")
    save_checkpoint({**state, **fitted}, dest)
    lines = ([kind.calibration_line(fitted["calibration"])] if "calibration" in fitted else []) + (
        [kind.unknown_line(fitted["unknown"])] if "unknown" in fitted else [])
    show_fitted(lines, dest, console)
    return dest
