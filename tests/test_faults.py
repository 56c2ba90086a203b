"""The fault suite: the real CLI in subprocesses, stopped the hard way, on tiny synthetic data.

kill -9 at random moments (also while a checkpoint is being written) and resume must end with
the same weights as a run that was never stopped (bit-exact: CPU, fp32, one thread); Ctrl-C and
SIGTERM in epoch 1 and later say only what is true; a full disk (a small tmpfs, when the tests
run as root) gives a one-line error, leaves no partial file, and the run resumes; a run that
blows up stops with an error and keeps its last good checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visionlab.engine.checkpoint import load_checkpoint

# One pytest-xdist worker runs the whole module, so its reference run and slow data are made once.
pytestmark = pytest.mark.xdist_group("faults")

# A run of a few seconds: cracks_cnn at 48 px, 3 epochs of 16 steps, EMA and augmentation on
# (their random state must survive a resume), a checkpoint after every step.
ARGS = [
    "--data", "synthetic", "--epochs", "3", "--batch-size", "4", "--device", "cpu",
    "--set", "model=cracks_cnn", "--set", "image_size=48", "--set", "max_steps_per_epoch=16",
    "--set", "precision=fp32", "--set", "num_workers=0", "--set", "early_stopping=0",
    "--set", "ema=0.9", "--set", "warmup_epochs=0", "--set", "augment.rotate=10", "--set", "checkpoint_every_steps=1",
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionlab", *args]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=timeout)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the moment to stop it: {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {**{f"ema.{k}": v for k, v in state["model"].items()}, **{f"raw.{k}": v for k, v in state["train_model"].items()}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run every interrupted one is compared with."""
    runs = tmp_path_factory.mktemp("fault-ref")
    t0 = time.monotonic()
    out = _run("train", "--task", "cracks", *ARGS, "--out", str(runs), "--name", "ref")
    assert out.returncode == 0, out.stderr
    run = runs / "cracks" / "ref"
    history = load_checkpoint(run / "last.pt")["history"]
    return {"run": run, "seconds": time.monotonic() - t0, "weights": _weights(run / "last.pt"), "history": history,
            "train_seconds": sum(h["epoch_seconds"] for h in history)}


def _same_run(run: Path, reference: dict) -> None:
    got = _weights(run / "last.pt")
    assert got.keys() == reference["weights"].keys()
    different = [k for k in got if not torch.equal(got[k], reference["weights"][k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    history = load_checkpoint(run / "last.pt")["history"]
    for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr"):
        assert [h[key] for h in history] == [h[key] for h in reference["history"]], key
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(reference["history"])  # a header and each epoch once


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(reference, tmp_path: Path):
    """Killed three times at random moments (seeded), resumed each time: bit-exact at the end."""
    rng = random.Random(11)
    run = tmp_path / "cracks" / "killed"
    kills = 0
    proc = _start("train", "--task", "cracks", *ARGS, "--out", str(tmp_path), "--name", "killed")
    def written() -> int:
        return (run / "last.pt").stat().st_mtime_ns if (run / "last.pt").exists() else 0

    for _ in range(3):
        before = written()
        _wait_for(lambda: written() != before, proc)  # this process is training: it wrote a checkpoint
        time.sleep(rng.uniform(0.0, 0.5 * reference["train_seconds"]))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at = load_checkpoint(run / "last.pt")
        kills += (at["epoch"], at["step"]) != (3, 0)  # else it was stopped after training, with nothing left to resume
        proc = _start("train", "--task", "cracks", "--resume", str(run / "last.pt"), "--out", str(tmp_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert kills >= 1, "no kill landed during training: make the run longer"
    _same_run(run, reference)
    assert not list(run.glob(".*.tmp")), "partial files left behind"
    resumes = load_checkpoint(run / "last.pt")["loop"]["resumes"]
    assert len(resumes) == kills
    assert any(r["step"] > 0 for r in resumes) or kills == 1  # resumed in the middle of an epoch


def test_a_partial_checkpoint_from_a_kill_during_its_write_is_cleaned_and_resume_is_exact(reference, tmp_path: Path):
    """A kill while torch.save writes leaves ``.last.pt.PID.tmp``; last.pt itself is the previous one
    (atomic rename). Resume removes the partial file, says so, and still ends bit-exact."""
    run = tmp_path / "cracks" / "torn"
    proc = _start("train", "--task", "cracks", *ARGS, "--out", str(tmp_path), "--name", "torn")
    _wait_for(lambda: (run / "last.pt").exists() and load_checkpoint(run / "last.pt")["step"] >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    good = (run / "last.pt").read_bytes()
    torn = run / f".last.pt.{proc.pid}.tmp"
    torn.write_bytes(good[: len(good) // 3])  # what a write cut off by the kill looks like
    out = _run("train", "--task", "cracks", "--resume", "last", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "removed 1 partial checkpoint file" in out.stdout
    assert not torn.exists()
    _same_run(run, reference)


def test_resume_refuses_options_that_change_the_run_and_records_safe_ones(reference, tmp_path: Path):
    run = tmp_path / "cracks" / "short"
    first = _run("train", "--task", "cracks", *ARGS, "--out", str(tmp_path), "--name", "short", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    # the README's form with a changed data source and image size: refused, with the differences named
    bad = _run("train", "--task", "cracks", "--resume", "last", "--out", str(tmp_path), "--data", str(tmp_path),
               "--set", "image_size=64", "--epochs", "3")
    assert bad.returncode == 2
    assert "cannot resume with a different data, image_size" in bad.stderr
    assert "image_size: run 48, asked 64" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # nothing was touched
    # the recipe's YAML is not re-read: resume continues with the run's own config, only epochs changes
    ok = _run("train", "--task", "cracks", "--resume", "last", "--out", str(tmp_path), "--epochs", "3")
    assert ok.returncode == 0, ok.stderr
    assert "epochs 1 -> 3" in ok.stdout
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 3 and state["config"]["image_size"] == 48 and state["config"]["name"] == "short"
    assert state["loop"]["resumes"] == [{"epoch": 1, "step": 0, "changed": {"epochs": [1, 3]}}]
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["name"] == "short" and saved["model"] == "cracks_cnn"


@pytest.fixture(scope="module")
def slow_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A run whose epochs last seconds (400 photos, batch 2, 160 px, no checkpoint inside an epoch),
    to be stopped in the middle of epoch 1."""
    from conftest import write_class_folder

    data = write_class_folder(tmp_path_factory.mktemp("fault-data"), ("Negative", "Positive"), per_class=200)
    args = list(ARGS)
    args[args.index("synthetic")] = str(data)
    args[args.index("4")] = "2"  # batch size
    args[args.index("max_steps_per_epoch=16")] = "max_steps_per_epoch=0"
    args[args.index("image_size=48")] = "image_size=160"
    args[args.index("checkpoint_every_steps=1")] = "checkpoint_every_steps=0"
    return args


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stopping_in_epoch_1_says_nothing_was_saved_and_does_not_hide_the_good_run(reference, slow_args, tmp_path: Path, sig):
    shutil.copytree(reference["run"], tmp_path / "cracks" / "good")  # a good run of this task
    run = tmp_path / "cracks" / "stopped"
    proc = _start("train", "--task", "cracks", *slow_args, "--out", str(tmp_path), "--name", "stopped")
    _wait_for(lambda: (run / "config.yaml").exists(), proc)  # set up, training under way
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("error: interrupted: no checkpoint was saved")
    assert "Nothing to resume" in err and "last.pt" not in err
    assert not (run / "last.pt").exists()
    # the good run beside it is still what 'last', evaluate and predict find
    env = {**os.environ, "VISIONLAB_RUNS": str(tmp_path)}
    ev = subprocess.run(_cli("evaluate", "--task", "cracks"), capture_output=True, text=True, timeout=120, env=env)
    assert ev.returncode == 0, ev.stderr
    assert str(tmp_path / "cracks" / "good" / "best.pt") in ev.stdout


# Imported first by the process (a sitecustomize): sends the process ``sig`` when it starts importing ``module``.
_SIGNAL_AT_IMPORT = """
import os, signal, sys
def _hook(event, args):
    if event == "import" and args[0] == {module!r} and not getattr(_hook, "sent", False):
        _hook.sent = True
        os.kill(os.getpid(), signal.{sig})
sys.addaudithook(_hook)
"""


@pytest.mark.parametrize("module", ["numpy", "torch._C"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_torch_imports_stops_the_run_in_one_line(tmp_path: Path, module: str, sig: str):
    """Inside torch's C init a KeyboardInterrupt was swallowed (numpy 'failed to load': the run went on to
    the end, rc 0, as if never stopped) or broke the import into a raw ImportError traceback."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SIGNAL_AT_IMPORT.format(module=module, sig=sig))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(hook)]))}
    out = subprocess.run(_cli("train", "--task", "cracks", *ARGS, "--out", str(tmp_path / "runs")), capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 130, out.stderr[-2000:]
    assert out.stderr == "error: interrupted.\n"
    assert not (tmp_path / "runs").exists()


# A sitecustomize: sends the process SIGTERM when it first opens a file named ``name`` in ``mode`` ('r' or 'w').
_SIGNAL_AT_OPEN = """
import os, signal, sys
def _hook(event, args):
    if event == "open" and str(args[0]).endswith({name!r}) and {mode!r} in str(args[1]) and not getattr(_hook, "sent", False):
        _hook.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
sys.addaudithook(_hook)
"""


def _with_hook(tmp_path: Path, code: str) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(code)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(hook)]))}


def test_stopping_during_the_test_evaluation_names_the_checkpoints_and_resume_finishes(tmp_path: Path):
    """The test score reads best.pt after the last epoch: a SIGTERM then said only 'interrupted.'."""
    run = tmp_path / "cracks" / "r"
    args = ["train", "--task", "cracks", *ARGS, "--epochs", "1", "--out", str(tmp_path), "--name", "r"]
    out = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=120,
                         env=_with_hook(tmp_path, _SIGNAL_AT_OPEN.format(name="best.pt", mode="r")))
    assert out.returncode == 130, out.stderr
    assert out.stderr == (f"error: interrupted: best.pt (epoch 1) and last.pt (epoch 1) are intact in {run}. "
                          f"Continue with --resume {run / 'last.pt'}.\n")
    assert not (run / "summary.json").exists()
    done = _run("train", "--task", "cracks", "--resume", str(run / "last.pt"))
    assert done.returncode == 0, done.stderr
    assert "test: accuracy" in done.stdout and (run / "summary.json").exists()


def test_stopping_a_resumed_run_while_its_callbacks_start_names_its_checkpoint(reference, tmp_path: Path):
    """on_fit_start (metrics.csv rewritten, a tracker connecting) ran outside the loop: 'interrupted.' alone."""
    run = tmp_path / "cracks" / "r"
    shutil.copytree(reference["run"], run)
    # the first metrics.csv a resumed run writes is CSVLogger.on_fit_start's
    out = subprocess.run(_cli("train", "--task", "cracks", "--resume", str(run / "last.pt"), "--epochs", "4", "--out", str(tmp_path)),
                         capture_output=True, text=True, timeout=120,
                         env=_with_hook(tmp_path, _SIGNAL_AT_OPEN.format(name=".metrics.csv.tmp", mode="w")))
    assert out.returncode == 130, out.stderr
    assert out.stderr.startswith("error: interrupted: ") and "last.pt (epoch 3)" in out.stderr, out.stderr


def test_stopping_after_a_checkpoint_names_it_and_the_run_resumes(slow_args, tmp_path: Path):
    run = tmp_path / "cracks" / "later"
    args = list(slow_args)
    args[args.index("checkpoint_every_steps=0")] = "checkpoint_every_steps=20"
    proc = _start("train", "--task", "cracks", *args, "--out", str(tmp_path), "--name", "later")
    _wait_for(lambda: (run / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("error: interrupted: last.pt (step ") and " of epoch 1) is intact in " in err, err
    assert f"Continue with --resume {run / 'last.pt'}" in err
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == 0 and saved["step"] % 20 == 0 and saved["step"] > 0
    out = _run("train", "--task", "cracks", "--resume", str(run / "last.pt"), "--out", str(tmp_path), "--epochs", "1")
    assert out.returncode == 0, out.stderr
    assert f"step {saved['step']}/" in out.stdout
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_run_that_blows_up_stops_with_an_error_and_keeps_its_last_good_checkpoint(tmp_path: Path):
    """lr=1e6 used to end with 'done' and a model that answers one class for every photo."""
    args = list(ARGS)
    good = _run("train", "--task", "cracks", *args, "--out", str(tmp_path), "--name", "boom", "--epochs", "1")
    assert good.returncode == 0, good.stderr
    run = tmp_path / "cracks" / "boom"
    before = (run / "best.pt").read_bytes()
    # the run resumed with a huge lr cannot be asked for (lr is not resume-safe); a new run with it diverges at once
    out = _run("train", "--task", "cracks", *args, "--out", str(tmp_path), "--name", "boom2", "--set", "lr=1e6")
    assert out.returncode == 2, out.stdout
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("error: training diverged at epoch 1, step ")
    assert "no checkpoint was saved" in line
    assert "lower lr (it is 1e+06; try 100000)" in line
    assert "precision=fp32" not in line  # the run already is fp32
    assert "done" not in out.stdout
    assert not (tmp_path / "cracks" / "boom2" / "best.pt").exists()
    assert (run / "best.pt").read_bytes() == before
    assert (tmp_path / "cracks" / "LATEST").read_text().strip() == str(run.resolve())


def test_divergence_after_good_epochs_keeps_them(tmp_path: Path):
    """A slow warm-up to a too-high lr: epoch 1 is fine, the loss explodes in epoch 2. best.pt and
    last.pt of epoch 1 stay as they were (deterministic: CPU, fp32, one thread, fixed seed)."""
    out = _run("train", "--task", "cracks", "--data", "synthetic", "--epochs", "3", "--batch-size", "4", "--device", "cpu",
               "--set", "model=cracks_cnn", "--set", "image_size=32", "--set", "max_steps_per_epoch=6",
               "--set", "precision=fp32", "--set", "num_workers=0", "--set", "early_stopping=0",
               "--set", "warmup_epochs=3", "--set", "schedule=constant", "--set", "lr=0.1",
               "--out", str(tmp_path), "--name", "late")
    run = tmp_path / "cracks" / "late"
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("error: training diverged at epoch 2, step "), out.stderr
    assert f"best.pt (epoch 1) and last.pt (epoch 1) are intact in {run}" in out.stderr
    kept = load_checkpoint(run / "last.pt")
    assert kept["epoch"] == 1 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs of a given size (tests run as root in CI); skipped where mounting is not allowed."""
    mounts: list[Path] = []

    def make(size_kb: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    def resize(where: Path, size_kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(where)], check=True)

    make.resize = resize  # type: ignore[attr-defined]
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs root to mount a small tmpfs")
    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_says_so_removes_the_partial_file_and_the_run_resumes(reference, small_disk, tmp_path: Path):
    size = (reference["run"] / "last.pt").stat().st_size
    best = (reference["run"] / "best.pt").stat().st_size  # smaller: no optimiser state
    disk = small_disk(int((1.5 * size + best) / 1024))  # epoch 1 fits (last.pt + best.pt), the next last.pt does not
    out = _run("train", "--task", "cracks", *ARGS, "--set", "checkpoint_every_steps=0", "--out", str(disk), "--name", "full")
    run = disk / "cracks" / "full"
    assert out.returncode == 2, out.stdout
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "enforce fail" not in line
    assert line.startswith(f"error: no space left on device writing {run}/")
    assert "MB needed" in line and "are intact" in line
    assert not list(run.glob(".*.tmp")), "the partial checkpoint was left behind, keeping the disk full"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # epoch 2's row came before its checkpoint
    small_disk.resize(disk, int(4 * size / 1024))
    again = _run("train", "--task", "cracks", "--resume", "last", "--out", str(disk))
    assert again.returncode == 0, again.stderr
    _same_run(run, reference)
