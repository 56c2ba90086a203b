"""The trainer's schedule, resume and accumulation: one-cycle on tiny runs and across resumes,
``accumulate`` against a doubled batch, checkpoint cadence in optimiser steps, synchronised batch
norm that keeps timm's fused activations, and the resume position on another number of processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import visionlab
from visionlab.engine.callbacks import Callback
from visionlab.engine.checkpoint import load_checkpoint
from visionlab.engine.trainer import map_step, sync_batchnorm
from visionlab.errors import TrainingInterrupted, VisionlabError

NO_AUG = {"augment": {"hflip": False, "vflip": False, "rot90": False, "rotate": 0.0, "scale": [1.0, 1.0], "translate": 0.0,
                      "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}}


def _quiet() -> Console:
    return Console(quiet=True)


def _cracks(fast, **extra):
    return fast("cracks", model="cracks_cnn", model_args={}, **extra)


# --------------------------------------------------------------------------- sync_batchnorm


@pytest.mark.parametrize("name", ["efficientnet_lite0", "cracks_cnn"])
def test_sync_batchnorm_computes_what_the_plain_model_does(name: str):
    """SyncBatchNorm in eval mode normalises with the running statistics and needs no process group."""
    from visionlab.models import build_model, no_weights_kwargs

    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **no_weights_kwargs(name)).eval()
    for m in model.modules():  # running statistics other than the initial 0 / 1, so normalising matters
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        synced = sync_batchnorm(model).eval()
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
        torch.testing.assert_close(synced(x), plain)


# --------------------------------------------------------------------------- one-cycle


def _lrs(run: Path) -> list[float]:
    import csv

    with (run / "metrics.csv").open() as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def test_a_one_epoch_one_cycle_run_on_tiny_data_finishes_annealed(fast):
    """2 optimiser steps with a warmup of one epoch: torch's phases need whole steps (ZeroDivisionError before)."""
    opts = _cracks(fast, epochs=1, schedule="onecycle", warmup_epochs=1.0, max_steps_per_epoch=2, lr=0.01)
    result = visionlab.train("cracks", data="synthetic", console=_quiet(), **opts)
    assert _lrs(result.run_dir) == [pytest.approx(0.01 / 25 / 1e4)]  # OneCycleLR's floor: max_lr / div / final_div


def test_one_cycle_needs_two_steps_and_says_so(fast):
    opts = _cracks(fast, epochs=1, schedule="onecycle", max_steps_per_epoch=1)
    with pytest.raises(VisionlabError, match="onecycle needs at least 2 optimiser steps; this run has 1") as err:
        visionlab.train("cracks", data="synthetic", console=_quiet(), **opts)
    assert "schedule=cosine" in err.value.hint


def test_resuming_one_cycle_with_more_epochs_follows_the_longer_schedule(fast):
    """The resumed run anneals to the floor at its new end, as a run of that length from the start does;
    its lr after each epoch is the one of that uninterrupted run (the old total was restored before:
    'Tried to step 7 times')."""
    opts = _cracks(fast, schedule="onecycle", warmup_epochs=1.0, max_steps_per_epoch=3, lr=0.01)
    first = visionlab.train("cracks", data="synthetic", console=_quiet(), **{**opts, "epochs": 1}, name="short")
    resumed = visionlab.train("cracks", resume=first.last_checkpoint, console=_quiet(), epochs=3)
    whole = visionlab.train("cracks", data="synthetic", console=_quiet(), **{**opts, "epochs": 3}, name="whole")
    lrs = _lrs(resumed.run_dir)
    assert len(lrs) == 3 and lrs[-1] == pytest.approx(0.01 / 25 / 1e4)
    assert lrs[1:] == pytest.approx(_lrs(whole.run_dir)[1:], rel=1e-9)
    assert load_checkpoint(resumed.last_checkpoint)["scheduler"]["total_steps"] == 3 * 3 + 1
    again = visionlab.train("cracks", resume=resumed.last_checkpoint, console=_quiet(), epochs=2)  # fewer: nothing to train
    assert again.epochs_run == 3


def test_a_cosine_resume_mid_epoch_continues_the_schedule_exactly(fast):
    """The schedule rebuilt at the step reached gives the weights of the uninterrupted run."""
    opts = _cracks(fast, epochs=2, max_steps_per_epoch=3, warmup_epochs=0.5, **NO_AUG)
    whole = visionlab.train("cracks", data="synthetic", console=_quiet(), **opts, name="whole")

    class StopAfterStep2(Callback):
        def on_checkpoint(self, trainer, path):
            if trainer.loop.epoch == 1 and trainer.loop.step == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        visionlab.train("cracks", data="synthetic", console=_quiet(), callbacks=[StopAfterStep2()], **opts,
                        name="cut", checkpoint_every_steps=2)
    resumed = visionlab.train("cracks", resume=Path(opts["out"]) / "cracks" / "cut" / "last.pt", console=_quiet())
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert _lrs(resumed.run_dir) == _lrs(whole.run_dir)


# --------------------------------------------------------------------------- another number of processes


def test_the_resume_position_on_another_number_of_processes_stays_inside_the_epoch():
    assert map_step(3, saved_world=2, world=4, accumulate=1, steps_per_epoch=10) == 1  # items 0..23 -> 1 batch of 16
    assert map_step(3, saved_world=2, world=1, accumulate=2, steps_per_epoch=10) == 6
    assert map_step(2, saved_world=2, world=1, accumulate=1, steps_per_epoch=3) == 3  # max_steps_per_epoch 3: its end
    assert map_step(3, saved_world=1, world=2, accumulate=2, steps_per_epoch=10) == 0


# --------------------------------------------------------------------------- accumulate


class Saves(Callback):
    """Where each last.pt was written: (epochs done, batches of the epoch done)."""

    def __init__(self) -> None:
        self.at: list[tuple[int, int]] = []

    def on_checkpoint(self, trainer, path: Path) -> None:
        if path.name == "last.pt":
            self.at.append((trainer.loop.epoch, trainer.loop.step))


def test_accumulate_steps_the_optimiser_every_k_batches_and_checkpoints_count_its_steps(fast):
    """8 batches an epoch, accumulate 2: 4 optimiser steps; checkpoint_every_steps=2 is after the 2nd
    (batch 4), not after every step (it counted batches before: batches 2, 4 and 6)."""
    saves = Saves()
    result = visionlab.train("cracks", data="synthetic", console=_quiet(), callbacks=[saves],
                             **_cracks(fast, epochs=2, max_steps_per_epoch=8, accumulate=2, checkpoint_every_steps=2))
    assert saves.at == [(0, 4), (1, 0), (1, 4), (2, 0)]
    assert load_checkpoint(result.last_checkpoint)["scheduler"]["last_epoch"] == 2 * 4  # optimiser steps taken


def test_accumulate_2_of_batch_b_makes_the_update_of_batch_2b(fast):
    """No augmentation, dropout or batch norm: two half batches, each loss scaled by 1/2, give the
    gradient of the whole batch; the weights and losses after 2 epochs agree to float rounding."""
    from test_distributed import _register_plain_net

    _register_plain_net()

    def run(**extra):
        return visionlab.train("cracks", data="synthetic", console=_quiet(), **fast(
            "cracks", model="plain_net", model_args={}, epochs=2, val_fraction=0.0, test_fraction=0.0, **NO_AUG, **extra))

    acc = run(name="acc", batch_size=4, accumulate=2, max_steps_per_epoch=6)
    big = run(name="big", batch_size=8, max_steps_per_epoch=3)
    a, b = load_checkpoint(acc.last_checkpoint), load_checkpoint(big.last_checkpoint)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * 3
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-6, rtol=1e-5)
    assert [h["train_loss"] for h in acc.history] == pytest.approx([h["train_loss"] for h in big.history], abs=1e-6)


# --------------------------------------------------------------------------- two processes (gloo on the CPU)


def _spawn(worker, *args) -> dict:
    import torch.multiprocessing as mp
    from test_distributed import _free_port

    with mp.Manager() as manager:
        result = manager.dict()
        try:
            mp.spawn(worker, args=(2, _free_port(), *args, result), nprocs=2, join=True)
        except mp.ProcessRaisedException as exc:
            result["raised"] = str(exc)
        return dict(result)


class _StopAtStep2(Callback):
    all_ranks = True  # every process stops

    def on_train_batch_end(self, trainer, loss: float) -> None:
        if trainer.loop.step == 2:  # before this batch's checkpoint: last.pt holds step 1
            raise KeyboardInterrupt


def _interrupted_worker(rank: int, world: int, port: int, options: dict, result: dict) -> None:
    from test_distributed import _join

    _join(rank, world, port)
    visionlab.train("cracks", data="synthetic", console=_quiet(), callbacks=[_StopAtStep2()], **options)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's SQLite store on SQLAlchemy 2.1
def test_a_resume_on_another_number_of_processes_is_recorded_and_counts_every_image(fast, tmp_path: Path, monkeypatch):
    """2 processes of batch 4 stop after step 1 (8 images); 1 process goes on from item 8: steps 2 and 3 of
    its epoch (4 images each). images_seen is 8 + 8, not rank 0's 4 + 8; the change of processes is in
    last.pt's resumes and in the MLflow run, whose parameters hold the first session's world_size and global_batch."""
    mlflow = pytest.importorskip("mlflow")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key, value in {"MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, value)
    opts = _cracks(fast, epochs=1, max_steps_per_epoch=4, checkpoint_every_steps=1, checkpoint_every_minutes=0.0,
                   device="cpu", name="moved", track=["mlflow"])
    res = _spawn(_interrupted_worker, opts)
    assert "interrupted" in res["raised"]
    last = Path(opts["out"]) / "cracks" / "moved" / "last.pt"
    assert load_checkpoint(last)["step"] == 1 and load_checkpoint(last)["world"] == 2
    resumed = visionlab.train("cracks", resume=last, console=_quiet())
    loop = load_checkpoint(resumed.last_checkpoint)["loop"]
    assert loop["images_seen"] == 8 + 2 * 4
    assert loop["resumes"][-1]["changed"] == {"world_size": [2, 1]} and loop["resumes"][-1]["step"] == 2
    run = mlflow.tracking.MlflowClient(store).get_run(load_checkpoint(resumed.last_checkpoint)["callbacks"]["MLflowTracker"]["run_id"])
    assert (run.data.params["world_size"], run.data.params["global_batch"]) == ("2", "8")
    assert run.data.tags["visionlab.resume.epoch_0"] == "world_size: 2 -> 1; global_batch: 8 -> 4"


def _streaming_worker(rank: int, world: int, port: int, options: dict, result: dict) -> None:
    import io

    from test_distributed import _join, _register_plain_net

    from visionlab.kinds.classification.runner import ClassificationRunner

    _join(rank, world, port)
    _register_plain_net()
    checks = []
    doctor = ClassificationRunner.data_warnings
    ClassificationRunner.data_warnings = lambda self: checks.append(rank) or doctor(self)  # who reads every file
    out = io.StringIO()
    res = visionlab.train("cracks", console=Console(file=out, width=400), **options)
    result[rank] = {"checks": len(checks), "left_group": not torch.distributed.is_initialized(),
                    "output": out.getvalue(), "history": res.history}


def test_a_streamed_batch_without_a_readable_file_is_skipped_by_every_process(fast, cls_folder: Path):
    """Batch size 1 on 2 processes, 6 of 16 files truncated after their header (the header check lets them
    through): whenever a process's file fails, both skip that step and say so (a NaN loss stopped every
    rank as 'diverged' before). Only rank 0 runs the data doctor's checks; the fit leaves the process group."""
    for path in sorted(cls_folder.rglob("*.png"))[::3][:6]:
        path.write_bytes(path.read_bytes()[:80])
    opts = fast("cracks", data=str(cls_folder), model="plain_net", model_args={}, cache="none", batch_size=1, epochs=1,
                max_steps_per_epoch=0, val_fraction=0.0, test_fraction=0.0, device="cpu", name="stream")
    res = _spawn(_streaming_worker, opts)
    assert "raised" not in res, res.get("raised")
    assert [res[r]["checks"] for r in (0, 1)] == [1, 0]
    assert res[0]["left_group"] and res[1]["left_group"]
    assert "whose files were all unreadable" in res[0]["output"]
    assert 0 < res[0]["history"][0]["train_loss"] < 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_devices_beyond_the_gpus_is_a_one_line_error(tmp_path: Path):
    """torch's own error was a traceback ending in 'invalid device ordinal'."""
    n = torch.cuda.device_count()
    out = subprocess.run([sys.executable, "-m", "visionlab", "train", "--task", "cracks", "--data", "synthetic", "--epochs", "1",
                          "--device", "cuda", "--devices", str(n + 1), "--set", "model=cracks_cnn", "--set", "model_args={}",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"error: process {n} of this machine has no GPU: {n} present." in out.stderr, out.stderr[-3000:]
    assert "invalid device ordinal" not in out.stderr
