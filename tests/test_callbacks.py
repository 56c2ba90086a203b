"""The trainer's hooks and default callbacks, the callbacks' own state across a resume, the step
contract, and what best.pt / last.pt hold."""

from __future__ import annotations

import ast
import inspect
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

import visionlab
from visionlab.engine import trainer as trainer_module
from visionlab.engine.callbacks import BestScore, Callback, CSVLogger, EarlyStopping, ModelCheckpoint, Notice, TrainingCurves
from visionlab.engine.checkpoint import RESUME_REQUIRED, TRAINING_STATE, load_checkpoint, save_checkpoint
from visionlab.engine.trainer import Trainer
from visionlab.errors import VisionlabError
from visionlab.kinds import get_kind
from visionlab.kinds.classification.runner import ClassificationRunner
from visionlab.present.training import ProgressBar

HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


def _task(name: str) -> tuple:
    """The task ``name`` and its kind, as a :class:`Trainer` is given them."""
    spec = visionlab.get_task(name)
    return spec, get_kind(spec.kind)


class Record(Callback):
    """Every hook call, in order, with what identifies it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        for hook in HOOKS:
            setattr(self, hook, self._recorder(hook))

    def _recorder(self, hook: str):
        def record(trainer, *args):
            arg = args[0] if args else None
            detail = arg.name if isinstance(arg, Path) else arg["epoch"] if isinstance(arg, dict) else \
                arg.label if isinstance(arg, Notice) else arg if isinstance(arg, int) else None
            self.calls.append((hook, detail) if detail is not None else (hook,))

        return record


def _quiet() -> Console:
    return Console(quiet=True)


def test_a_callback_sees_the_hooks_in_order(fast):
    rec = Record()
    steps = 3
    result = visionlab.train("cracks", data="synthetic", callbacks=[rec], console=_quiet(), **fast(
        "cracks", epochs=2, model="cracks_cnn", model_args={}, max_steps_per_epoch=steps, checkpoint_every_steps=2))
    best_epoch = load_checkpoint(result.best_checkpoint)["epoch"]  # best.pt is rewritten only when an epoch improves
    expected = [("on_notice", "SYNTHETIC DATA"), ("on_fit_start",)]
    for e in range(2):
        expected += [("on_train_epoch_start", e)]
        for s in range(steps):
            expected += [("on_train_batch_start",), ("on_train_batch_end",)]
            if s == 1:  # checkpoint_every_steps=2: a last.pt after step 2 (the epoch's end writes the one after step 3)
                expected += [("on_checkpoint", "last.pt")]
        expected += [("on_epoch_end", e + 1)]
        expected += [("on_checkpoint", "best.pt")] if e == 0 or best_epoch == 2 else []  # best.pt first, then last.pt
        expected += [("on_checkpoint", "last.pt")]
    # then the temperature fitted on the validation split (stored in best.pt), said as a notice
    assert rec.calls == expected + [("on_train_end",), ("on_notice", "calibration"), ("on_notice", "unknown"), ("on_fit_end",)]


def test_the_defaults_are_installed_around_the_users_callbacks(fast, monkeypatch):
    from visionlab.api import load_config

    mine = Callback()
    trainer = Trainer(load_config("cracks"), *_task("cracks"), callbacks=[mine])  # no progress display: a Trainer is silent
    assert [type(cb) for cb in trainer.callbacks] == [CSVLogger, TrainingCurves, Callback, EarlyStopping, ModelCheckpoint]
    assert trainer.callbacks[2] is mine
    assert (trainer.checkpoint_callback, trainer.early_stopping_callback) == (trainer.callbacks[4], trainer.callbacks[3])

    built = []  # visionlab.train puts the progress display first, unless told not to or given one
    monkeypatch.setattr(Trainer, "fit", lambda self, resume=None: built.append([type(cb) for cb in self.callbacks]))
    own = ProgressBar(_quiet())
    visionlab.train("cracks", data="synthetic", callbacks=[mine], **fast("cracks"))
    visionlab.train("cracks", data="synthetic", callbacks=[mine], progress=False, **fast("cracks"))
    visionlab.train("cracks", data="synthetic", callbacks=[mine, own], **fast("cracks"))
    defaults = [EarlyStopping, ModelCheckpoint]
    assert built == [[CSVLogger, TrainingCurves, ProgressBar, Callback, *defaults], [CSVLogger, TrainingCurves, Callback, *defaults],
                     [CSVLogger, TrainingCurves, Callback, ProgressBar, *defaults]]


def _judged(values: list[float], patience: int) -> tuple[int, list[bool]]:
    """Feed val_loss values through a best.pt verdict and EarlyStopping; (epoch it stopped, verdicts)."""
    notices: list[str] = []
    trainer = SimpleNamespace(monitor="val_loss", higher=False, should_stop=False,
                              notify=lambda label, text: notices.append(f"{label}: {text}"))
    stop, best, verdicts = EarlyStopping(patience), BestScore(), []
    stop.on_fit_start(trainer)
    best.begin(higher=False)
    for epoch, v in enumerate(values, 1):
        row = {"epoch": epoch, "val_loss": v}
        verdicts.append(best.update("val_loss", row, higher=False))
        stop.on_epoch_end(trainer, row)
        if trainer.should_stop:
            assert notices == [f"early stopping: val_loss did not improve for {patience} epochs"]
            return epoch, verdicts
    assert notices == []
    return 0, verdicts


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement():
    assert _judged([1.0, 0.9, 0.95, 0.8, 0.85, 0.86], patience=2) == (6, [True, True, False, True, False, False])
    assert _judged([1.0, 1.1, 1.2, 1.3], patience=0) == (0, [True, False, False, False])  # 0: never


def test_a_callback_that_sets_should_stop_ends_the_run_cleanly(fast):
    class StopAfterOne(Callback):
        def on_epoch_end(self, trainer, row):
            trainer.should_stop = True

    rec = Record()
    result = visionlab.train("cracks", data="synthetic", callbacks=[StopAfterOne(), rec], console=_quiet(),
                             **fast("cracks", epochs=3, model="cracks_cnn", model_args={}))
    assert result.epochs_run == 1 and len((result.run_dir / "metrics.csv").read_text().splitlines()) == 2
    hooks = [c for c in rec.calls if c[0] != "on_notice"]  # the calibration's and the unknown detector's notices come between the two
    assert hooks[-2:] == [("on_train_end",), ("on_fit_end",)]
    assert (result.run_dir / "curves.png").is_file()


def test_the_trainer_asks_the_kind_for_the_step_and_the_metric_direction(fast, monkeypatch):
    steps, asked = [], []
    step = ClassificationRunner.training_step

    def counted(self, *args):
        steps.append(1)
        return step(self, *args)

    def direction(self, metric):
        asked.append(metric)
        return True

    monkeypatch.setattr(ClassificationRunner, "training_step", counted)
    monkeypatch.setattr(ClassificationRunner, "higher_is_better", direction)
    result = visionlab.train("cracks", data="synthetic", console=_quiet(), **fast(
        "cracks", epochs=2, model="cracks_cnn", model_args={}, max_steps_per_epoch=3, monitor="val_loss"))
    assert len(steps) == 6 and asked == ["loss"]  # without its val_ prefix
    losses = [h["val_loss"] for h in result.history]
    assert load_checkpoint(result.best_checkpoint)["best_metric"] == max(losses)  # the kind said: higher is better


def test_best_pt_holds_what_inference_needs_and_last_pt_what_resume_needs(fast, tmp_path: Path, cls_folder: Path):
    result = visionlab.train("cracks", data="synthetic", console=_quiet(), **fast(
        "cracks", epochs=1, model="cracks_cnn", model_args={}, ema=0.9, name="split"))
    best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
    assert not TRAINING_STATE & best.keys()
    assert set(RESUME_REQUIRED) | {"rng", "loop", "train_model", "ema_updates"} <= last.keys()
    for key in ("classes", "preprocessing", "config", "task", "kind", "model_name", "model_args", "data", "history",
                "best_metric", "monitor", "epoch"):
        assert best[key] == last[key], key
    # with EMA on, best.pt's weights are the average, not the raw training weights
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])
    assert result.best_checkpoint.stat().st_size < result.last_checkpoint.stat().st_size / 2

    # inference loads it: evaluate and predict
    report = visionlab.evaluate(result.best_checkpoint, split="test", console=_quiet())
    assert report["images"] == best["data"]["split_sizes"]["test"]
    preds = visionlab.load(result.best_checkpoint, device="cpu", unknown="off").predict(sorted(cls_folder.rglob("*.png"))[:2])
    assert len(preds) == 2 and all(p.label in best["classes"] for p in preds)  # photos of other things: unknown, were it on

    # resume does not: a best.pt-like file alone gives a one-line error naming what to pass
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(result.best_checkpoint, alone)
    with pytest.raises(VisionlabError, match="cannot resume from .*model.pt: it holds only what inference needs") as err:
        visionlab.train("cracks", resume=alone, console=_quiet())
    assert "\n" not in str(err.value) and "last.pt" in err.value.hint
    with pytest.raises(VisionlabError, match="is the best epoch"):  # beside its last.pt: the run's own resume file named
        visionlab.train("cracks", resume=result.best_checkpoint, console=_quiet())


def test_an_interrupt_during_set_up_says_only_what_is_on_disk(fast, monkeypatch):
    """Ctrl-C or SIGTERM before the first step (while the data is decoded...) is a TrainingInterrupted
    naming what exists: the run folder without a checkpoint, or no run folder at all."""
    import visionlab.engine.trainer as trainer_module
    from visionlab.errors import TrainingInterrupted

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    opts = fast("cracks")
    monkeypatch.setattr(type(get_kind("classification")), "runner", stop)  # the run folder exists by then
    with pytest.raises(TrainingInterrupted, match=r"interrupted: no checkpoint was saved \(run folder ") as info:
        visionlab.train("cracks", data="synthetic", console=_quiet(), **opts)
    assert info.value.hint == "Nothing to resume; train again."
    runs = sorted((Path(opts["out"]) / "cracks").iterdir())
    assert len(runs) == 1 and not list(runs[0].glob("*.pt"))
    monkeypatch.setattr(trainer_module, "new_run_dir", stop)
    with pytest.raises(TrainingInterrupted, match="no run folder was made yet, nothing was saved"):
        visionlab.train("cracks", data="synthetic", console=_quiet(), **opts)
    assert sorted((Path(opts["out"]) / "cracks").iterdir()) == runs


# --------------------------------------------------------------------------- the callbacks' own state across a resume

STALLED = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]  # val_loss of epochs 1..6: the first is the best


class _Scripted(Callback):
    """Sets each epoch's val_loss to ``STALLED`` (before early stopping and best.pt judge it): a run that stalls."""

    def on_epoch_end(self, trainer, row):
        row["val_loss"] = STALLED[row["epoch"] - 1]


def _stalled_run(fast, name: str):
    """3 epochs, patience 5: early stopping has counted 2 epochs without improvement when it ends."""
    opts = fast("cracks", model="cracks_cnn", model_args={}, epochs=3, early_stopping=5, monitor="val_loss", name=name)
    return visionlab.train("cracks", data="synthetic", callbacks=[_Scripted()], progress=False, **opts)


def _resumed_with_patience_3(last: Path):
    """Resume to 6 epochs with patience 3; (result, what it printed)."""
    console = Console(record=True, width=300)
    result = visionlab.train("cracks", resume=last, epochs=6, early_stopping=3, callbacks=[_Scripted()], console=console)
    return result, console.export_text()


def test_a_resume_goes_on_counting_early_stopping_patience(fast):
    first = _stalled_run(fast, "patience")
    states = load_checkpoint(first.last_checkpoint)["callbacks"]
    assert states["EarlyStopping"] == {"best": 1.0, "best_loss": 1.0, "wait": 2}
    assert states["ModelCheckpoint"] == {"best": 1.0, "best_loss": 1.0}
    assert "callbacks" not in load_checkpoint(first.best_checkpoint)  # best.pt holds what inference needs
    # counting from 2, epoch 4 is the third without improvement; counting afresh it would train all 6
    again, text = _resumed_with_patience_3(first.last_checkpoint)
    assert again.epochs_run == 4 and again.best_metric == 1.0 and load_checkpoint(again.best_checkpoint)["epoch"] == 1
    assert "early stopping: val_loss did not improve for 3 epochs" in text
    assert f"resuming {first.run_dir} from epoch 3 (" in text and "early_stopping 5 -> 3" in text
    assert load_checkpoint(again.last_checkpoint)["callbacks"]["EarlyStopping"]["wait"] == 3


def test_a_last_pt_without_callback_states_still_resumes(fast):
    """A last.pt of visionlab before callbacks kept state: the loop held the best score and the count."""
    first = _stalled_run(fast, "old")
    state = load_checkpoint(first.last_checkpoint)
    stopping = state.pop("callbacks")["EarlyStopping"]
    state["loop"].update(best=stopping["best"], best_loss=stopping["best_loss"], bad_epochs=stopping["wait"])
    state["bad_epochs"] = stopping["wait"]
    save_checkpoint(state, first.last_checkpoint)
    again, text = _resumed_with_patience_3(first.last_checkpoint)
    assert again.epochs_run == 4 and again.best_metric == 1.0
    assert "early stopping: val_loss did not improve for 3 epochs" in text
    assert set(load_checkpoint(again.last_checkpoint)["callbacks"]) == {"EarlyStopping", "ModelCheckpoint"}


class _Counter(Callback):
    """Adds ``step`` per epoch seen, over every session of a run; two are told apart by ``name``."""

    def __init__(self, name: str, step: int) -> None:
        self.name, self.step, self.count, self.loaded = name, step, 0, None

    @property
    def state_key(self) -> str:
        return f"Counter[{self.name}]"

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.count = state["count"]

    def on_epoch_end(self, trainer, row):
        self.count += self.step


def test_a_callbacks_own_state_survives_a_resume(fast, capsys):
    opts = fast("cracks", model="cracks_cnn", model_args={}, epochs=2, name="counted")
    visionlab.train("cracks", data="synthetic", callbacks=[_Counter("a", 1), _Counter("b", 10)], progress=False, **opts)
    assert capsys.readouterr().out == ""  # no progress display: the library prints nothing
    last = Path(opts["out"]) / "cracks" / "counted" / "last.pt"
    a, b = _Counter("a", 1), _Counter("b", 10)
    visionlab.train("cracks", resume=last, epochs=3, callbacks=[a, b], progress=False)
    assert (a.loaded, b.loaded, a.count, b.count) == ({"count": 2}, {"count": 20}, 3, 30)
    # a session without one of them keeps its state for the next
    visionlab.train("cracks", resume=last, epochs=4, callbacks=[_Counter("a", 1)], progress=False)
    states = load_checkpoint(last)["callbacks"]
    assert (states["Counter[a]"], states["Counter[b]"]) == ({"count": 4}, {"count": 30})


def test_two_stateful_callbacks_need_two_state_keys():
    from visionlab.api import load_config

    with pytest.raises(VisionlabError, match="same state_key 'Counter\\[a\\]'"):
        Trainer(load_config("cracks"), *_task("cracks"), callbacks=[_Counter("a", 1), _Counter("a", 2)])
    Trainer(load_config("cracks"), *_task("cracks"), callbacks=[Callback(), Callback()])  # no state, no clash


def test_the_trainer_prints_nothing():
    """What a user reads of a fit are events a progress callback shows; the trainer module writes to no terminal."""
    tree = ast.parse(inspect.getsource(trainer_module))
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [c for c in calls if c == "print" or c.endswith((".print", ".log", ".rule", ".write"))] == []
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in modules if m.split(".")[0] in ("rich", "sys", "logging")] == []
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("stdout", "stderr", "Console")]
