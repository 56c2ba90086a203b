"""Distributed data parallel on the CPU: gloo, 2 processes (torch.multiprocessing and torchrun).

The processes train one job: the weights are identical on every rank after every step; 2
processes with batch b make the same update as 1 process with batch 2b; sharded evaluation
counts every image once and equals a single-process evaluation; only rank 0 writes files; a
rank killed mid-run ends the job with an error, and the run resumes (also on another number of
processes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from visionlab.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")


def _register_plain_net() -> None:
    """A classifier without batch norm: with BN each process normalises by its own half batch, so
    the 2 x b = 2b equality below would not hold (on CUDA, ``sync_batchnorm`` makes it hold)."""
    from torch import nn

    from visionlab.models import list_models, register_model

    if "plain_net" in list_models():
        return

    @register_model(name="plain_net")
    def plain_net(num_classes: int, in_chans: int = 3) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(128, num_classes))


def _options(out: str, **extra) -> dict:
    return {"epochs": 2, "batch_size": 4, "device": "cpu", "precision": "fp32", "num_workers": 0, "early_stopping": 0,
            "image_size": 32, "warmup_epochs": 0.0, "out": out, "model_args": {}, **extra}


class _Quiet:
    def print(self, *a, **k) -> None: ...


def _train_worker(rank: int, world: int, port: int, out: str, options: dict, check_every_step: bool, result: dict) -> None:
    """One process of a job: trains with the real Trainer, optionally checking after every
    optimiser step that all ranks hold the same weights."""
    _join(rank, world, port)
    _register_plain_net()
    from visionlab.api import load_config
    from visionlab.engine.trainer import Trainer
    from visionlab.kinds import get_kind
    from visionlab.registry import get_task

    class Checked(Trainer):
        steps_checked = 0

        def _step(self, *args, **kwargs):
            out = super()._step(*args, **kwargs)
            if check_every_step and args[4]:  # an optimiser step was taken
                flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
                every = self.dist.gather(flat)
                assert all(torch.equal(every[0], f) for f in every[1:]), "ranks hold different weights"
                Checked.steps_checked += 1
            return out

    cfg = load_config("cracks", None, {"data": "synthetic", **options})
    spec = get_task("cracks")
    trainer = Checked(cfg, spec, get_kind(spec.kind))  # no progress display: silent on every rank
    res = trainer.fit()
    cache = trainer.runner.cache
    result[f"cache_{rank}"] = (str(cache.file), cache.location) if cache is not None else None
    if rank == 0:
        result.update(run_dir=str(res.run_dir), steps_checked=Checked.steps_checked,
                      history=res.history, test=res.test_metrics)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _spawn(world: int, out: Path, options: dict, check_every_step: bool = False) -> dict:
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_train_worker, args=(world, _free_port(), str(out), options, check_every_step, result), nprocs=world, join=True)
        return dict(result)


def test_two_processes_keep_identical_weights_and_write_one_run(tmp_path: Path):
    res = _spawn(2, tmp_path, _options(str(tmp_path), model="cracks_cnn", name="ddp", ema=0.9), check_every_step=True)
    assert res["steps_checked"] >= 2
    runs = [p for p in (tmp_path / "cracks").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["ddp"]  # one job, one run folder: not two copies
    files = sorted(p.name for p in runs[0].iterdir())
    assert files == ["best.pt", "config.yaml", "curves.png", "last.pt", "metrics.csv", "summary.json"]
    state = load_checkpoint(runs[0] / "last.pt")
    assert state["world"] == 2 and len(state["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the plain model, loadable without DDP
    assert len((runs[0] / "metrics.csv").read_text().strip().splitlines()) == 3


def test_two_processes_with_batch_b_make_the_update_of_one_with_batch_2b(tmp_path: Path):
    """No augmentation, no dropout, no batch norm: the gradient of 2 x b averaged by DDP is the gradient
    of the 2b batch; the weights after 2 epochs agree to float rounding (atol 1e-6)."""
    no_aug = {"augment": {"hflip": False, "vflip": False, "rot90": False, "rotate": 0.0, "scale": [1.0, 1.0], "translate": 0.0, "brightness": 0.0, "contrast": 0.0,
                          "saturation": 0.0}, "model": "plain_net", "val_fraction": 0.0, "test_fraction": 0.0}
    two = _spawn(2, tmp_path / "two", _options(str(tmp_path / "two"), batch_size=4, name="two", **no_aug))
    one = _spawn(1, tmp_path / "one", _options(str(tmp_path / "one"), batch_size=8, name="one", **no_aug))
    a = load_checkpoint(Path(two["run_dir"]) / "last.pt")["model"]
    b = load_checkpoint(Path(one["run_dir"]) / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert [h["train_loss"] for h in two["history"]] == pytest.approx([h["train_loss"] for h in one["history"]], abs=1e-6)


def test_cache_memory_is_decoded_once_per_machine_and_read_by_the_other_processes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_CACHE", str(tmp_path / "cache"))
    res = _spawn(2, tmp_path, _options(str(tmp_path), epochs=1, model="cracks_cnn", name="mem", cache="memory"))
    decoded = list((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(decoded) == 1  # one decode, by the first process; the other read its file
    assert res["cache_0"] == res["cache_1"] == (str(decoded[0]), "memory")  # both hold it in RAM


def _wait_worker(rank: int, world: int, port: int, folder: str, machines: int, result: dict) -> None:
    import datetime

    from visionlab.engine.distributed import from_env, node_first

    _join(rank, world, port)
    if machines == 2:  # each process the first (and only) one of its machine
        os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=2))
    dist = from_env("cpu")
    done, slow = Path(folder) / "decoded", 0 if machines == 1 else 1

    def work() -> bool:
        seen = done.exists()
        if rank == slow:
            time.sleep(6)  # a decode longer than the collective timeout
            done.write_text("decoded")
        return seen

    result[rank] = node_first(dist, work)
    dist.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("machines", [1, 2])
def test_processes_wait_for_a_decode_longer_than_the_collective_timeout(tmp_path: Path, machines: int):
    """One machine: its second process starts after the first has decoded (and reads what it wrote).
    Two machines: the one done first waits for the other outside any collective."""
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_wait_worker, args=(2, _free_port(), str(tmp_path), machines, result), nprocs=2, join=True)
        assert dict(result) == ({0: False, 1: True} if machines == 1 else {0: False, 1: False})


def _shared_worker(rank: int, world: int, port: int, folders: list[str], result: dict) -> None:
    from visionlab.engine.distributed import check_shared, from_env
    from visionlab.errors import VisionlabError

    _join(rank, world, port)
    dist = from_env("cpu")
    check_shared(dist, Path(folders[0]))  # one machine: every process sees rank 0's folder
    try:  # --out on storage of each machine's own: the same name, another folder
        check_shared(dist, Path(folders[rank]), wait=0.5)
    except VisionlabError as exc:
        result[rank] = str(exc)
    torch.distributed.destroy_process_group()


def test_every_process_must_see_the_run_folder_rank_0_made(tmp_path: Path):
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for f in folders:
        f.mkdir()
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_shared_worker, args=(2, _free_port(), [str(f) for f in folders], result), nprocs=2, join=True)
        errors = dict(result)
    host = socket.gethostname()
    for rank, folder in enumerate(folders):  # every process stops, saying the same
        assert errors[rank] == (f"rank 1 on {host} cannot see the run folder {folder} that rank 0 made. On several machines, "
                                "pass --out on storage that every machine shares (VISIONLAB_CACHE may stay local).")
    assert [list(f.iterdir()) for f in folders] == [[], []]  # rank 0's mark is removed


def _eval_worker(rank: int, world: int, port: int, ckpt: str, result: dict) -> None:
    _join(rank, world, port)
    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_model
    from visionlab.engine.distributed import from_env
    from visionlab.registry import get_task
    from visionlab.kinds import get_kind, runner_for

    state = load_checkpoint(ckpt)
    cfg = config_from_dict(state["config"], get_kind(state["kind"]).options)
    runner = runner_for(cfg, get_task(state["task"]), torch.device("cpu"))
    runner.dist = from_env("cpu")
    runner.fixed_preprocessing = dict(state["preprocessing"])
    runner.prepare()
    runner.splits["test"] = runner.splits["train"]  # a larger split: 31 images do not divide by 2
    ev = runner.evaluate(load_model(state, channels_last=False), "test", None)
    if rank == 0:
        result.update(metrics=ev.metrics, cm=ev.report["confusion_matrix"], n=len(ev.files), paths=sorted(r["path"] for r in ev.files))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_sharded_evaluation_counts_every_image_once_and_equals_one_process(cracks_model: Path):
    with mp.Manager() as manager:
        results = []
        for world in (1, 2):
            r = manager.dict()
            mp.spawn(_eval_worker, args=(world, _free_port(), str(cracks_model), r), nprocs=world, join=True)
            results.append(dict(r))
    one, two = results
    assert two["n"] == one["n"] and two["paths"] == one["paths"] and len(set(two["paths"])) == two["n"]  # no padding duplicates
    assert two["cm"] == one["cm"]
    for k, v in one["metrics"].items():  # the mean loss is a float32 sum in another order over two shards
        assert two["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


# --------------------------------------------------------------------------- torchrun, the real launcher


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "visionlab", *args]


ARGS = ["train", "--task", "cracks", "--data", "synthetic", "--epochs", "3", "--batch-size", "2", "--device", "cpu",
        "--set", "model=cracks_cnn", "--set", "image_size=64", "--set", "precision=fp32", "--set", "num_workers=0",
        "--set", "early_stopping=0", "--set", "checkpoint_every_steps=1"]


def test_torchrun_trains_one_job_whose_checkpoint_evaluates_in_one_process(tmp_path: Path):
    out = subprocess.run(_torchrun(*ARGS, "--out", str(tmp_path), "--name", "tr"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done (SYNTHETIC DATA)") == 1  # rank 0 alone talks
    assert "2 processes x batch 2" in " ".join(out.stdout.split())  # (rich wraps long lines)
    assert [p.name for p in (tmp_path / "cracks").iterdir() if p.is_dir()] == ["tr"]
    ev = subprocess.run([sys.executable, "-m", "visionlab", "evaluate", "--checkpoint", str(tmp_path / "cracks" / "tr" / "best.pt"),
                         "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_validation_under_torchrun_scores_the_model_best_pt_holds(tmp_path: Path, ema: float):
    """cracks_cnn has batch norm: each process's running statistics are of its own shards, so
    validation and the checkpoint must use one set (their mean), for the model and its EMA alike."""
    out = subprocess.run(_torchrun(*ARGS, "--epochs", "2", "--set", f"ema={ema}", "--set", "checkpoint_every_steps=0",
                                   "--out", str(tmp_path), "--name", "bn"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "cracks" / "bn"
    best = load_checkpoint(run / "best.pt")
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    header, row = rows[0].split(","), rows[int(best["epoch"])].split(",")
    val_loss = float(row[header.index("val_loss")])
    ev = subprocess.run([sys.executable, "-m", "visionlab", "evaluate", "--checkpoint", str(run / "best.pt"), "--split", "val",
                         "--device", "cpu", "--out", str(tmp_path / "ev"), "--no-calibration"],  # training validates the raw softmax
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["split"] == "val" and evaluated["loss"] == pytest.approx(val_loss, rel=1e-6, abs=1e-9)


def test_a_rank_killed_mid_run_ends_the_job_and_the_run_resumes_on_another_number_of_processes(tmp_path: Path):
    run = tmp_path / "cracks" / "killed"
    proc = subprocess.Popen(_torchrun(*ARGS, "--out", str(tmp_path), "--name", "killed"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 120
    while not ((run / "last.pt").exists() and load_checkpoint(run / "last.pt")["step"] >= 2):
        assert proc.poll() is None and time.monotonic() < end, "the job ended before a rank could be killed"
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "visionlab"], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(sorted(workers, key=int)[-1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # the job ends: no rank trains on alone
    assert "FAILED" in err or "failed" in err
    assert "no checkpoint was saved" not in err  # rank 0 had saved one; rank 1 never claims otherwise
    saved = load_checkpoint(run / "last.pt")
    assert saved["world"] == 2
    # resume in one process: the position in the epoch maps onto the new global batch
    again = subprocess.run([sys.executable, "-m", "visionlab", "train", "--task", "cracks", "--resume", str(run / "last.pt"),
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    final = load_checkpoint(run / "last.pt")
    assert final["epoch"] == 3 and final["world"] == 1
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]


def test_sigterm_to_one_rank_makes_rank_0_say_so_and_what_is_saved(tmp_path: Path):
    """Rank 1 interrupted alone: rank 0 meets a broken collective, and said only gloo's 'Connection closed
    by peer ... GLHF!', not why nor that last.pt is intact."""
    run = tmp_path / "cracks" / "one"
    proc = subprocess.Popen(_torchrun(*ARGS, "--epochs", "50", "--out", str(tmp_path), "--name", "one"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 180
    while not (run / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < end, "the job ended before a rank could be stopped"
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "visionlab"], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(sorted(workers, key=int)[-1]), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    rank0 = [ln for ln in err.splitlines() if ln.startswith("error: stopped because process 1 was stopped by Ctrl-C or SIGTERM; ")]
    assert len(rank0) == 1 and " is intact in " in rank0[0] and f"--resume {run / 'last.pt'}" in rank0[0], err[-3000:]
    assert "Connection closed by peer" not in err


def test_devices_starts_the_processes_itself(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "visionlab", *ARGS, "--epochs", "1", "--devices", "2", "--out", str(tmp_path),
                          "--name", "dev"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes x batch 2" in " ".join(out.stdout.split())
    assert load_checkpoint(tmp_path / "cracks" / "dev" / "last.pt")["world"] == 2


def test_devices_under_an_existing_job_is_a_one_line_error(tmp_path: Path):
    """WORLD_SIZE set (torchrun, or left over): --devices 2 used to train silently in one process."""
    out = subprocess.run([sys.executable, "-m", "visionlab", *ARGS, "--epochs", "1", "--devices", "2", "--out", str(tmp_path),
                          "--name", "dev"], capture_output=True, text=True, timeout=300, env={**os.environ, "WORLD_SIZE": "1"})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--devices 2 starts processes of its own, but WORLD_SIZE=1" in " ".join(out.stderr.split())
    assert not (tmp_path / "cracks" / "dev").exists()


def test_under_torchrun_each_rank_says_only_what_it_knows(tmp_path: Path):
    """A run that blows up stops on every rank at the same step; rank 0 reports what is saved, the
    other ranks (which write nothing) say so instead of claiming that nothing was saved."""
    out = subprocess.run(_torchrun(*ARGS, "--set", "lr=1e6", "--out", str(tmp_path), "--name", "boom"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: training diverged at epoch 1")]
    assert len(errors) == 2, out.stderr[-3000:]
    assert sum("no checkpoint was saved" in ln for ln in errors) == 1  # rank 0
    assert sum("rank 1 of 2 writes nothing; rank 0 says what is saved" in ln for ln in errors) == 1
    assert not (tmp_path / "cracks" / "boom" / "last.pt").exists()


def _job_processes(tag: str) -> list[int]:
    """Every live process started with VISIONLAB_TEST_JOB=tag in its environment (children inherit it)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"VISIONLAB_TEST_JOB={tag}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc to find the job's processes")
def test_sigterm_to_devices_stops_torchrun_and_every_worker_and_says_what_is_saved(tmp_path: Path):
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    run = tmp_path / "cracks" / "sig"
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "visionlab", *ARGS, "--epochs", "50", "--devices", "2", "--out", str(tmp_path),
                                 "--name", "sig"], stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "VISIONLAB_TEST_JOB": tag})
    try:
        end = time.monotonic() + 180
        while not (run / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.1)
        assert len(_job_processes(tag)) >= 4  # visionlab, torchrun, 2 workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        end = time.monotonic() + 30  # only catches a hang: what the parent waited for is gone already
        while _job_processes(tag) and time.monotonic() < end:
            time.sleep(0.1)
        assert _job_processes(tag) == []
        text = log.read_text()
        assert "error: interrupted: last.pt" in text and f"--resume {run / 'last.pt'}" in text, text[-3000:]
    finally:
        for pid in _job_processes(tag):
            os.kill(pid, signal.SIGKILL)


def test_processes_sharing_a_gpu_need_gloo_and_name_it(monkeypatch):
    """gpu_check's two processes on one GPU: --device cuda:N puts every process on GPU N (gloo);
    NCCL refuses that, and an unknown backend is named, before any process group is joined."""
    from visionlab.engine.distributed import from_env, rank_gpu
    from visionlab.errors import VisionlabError

    assert [rank_gpu("cuda", 1), rank_gpu("auto", 1), rank_gpu("cuda:0", 1)] == [1, 1, 0]
    for k, v in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VISIONLAB_DIST_BACKEND", "nccl")
    with pytest.raises(VisionlabError, match="--device cuda:0 puts every process of this machine on one GPU, which NCCL refuses"):
        from_env("cuda:0")
    monkeypatch.setenv("VISIONLAB_DIST_BACKEND", "mpi")
    with pytest.raises(VisionlabError, match="VISIONLAB_DIST_BACKEND='mpi' is not a backend visionlab runs on"):
        from_env("cpu")
    assert not torch.distributed.is_initialized()


FAILING_RANK_PLUGIN = '''
import os
from torch import nn
from visionlab.models import register_model

class _FailsOnRank1(nn.Module):
    """A tiny classifier whose process 1 raises in its 3rd training forward pass."""
    def __init__(self, num_classes, in_chans=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        self.calls = 0
    def forward(self, x):
        self.calls += self.training
        if self.training and self.calls == 3 and os.environ.get("RANK") == "1":
            raise RuntimeError("injected failure on rank 1")
        return self.net(x)

register_model(name="fails_on_rank_1")(_FailsOnRank1)
'''


def test_an_mlflow_run_whose_other_process_failed_ends_failed_with_the_cause(tmp_path: Path):
    mlflow = pytest.importorskip("mlflow")
    (tmp_path / "failing_rank_plugin.py").write_text(FAILING_RANK_PLUGIN)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, VISIONLAB_PLUGINS="failing_rank_plugin", MLFLOW_TRACKING_URI=store, MLFLOW_EXPERIMENT_NAME="peer",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    args = [a if a != "model=cracks_cnn" else "model=fails_on_rank_1" for a in ARGS]
    out = subprocess.run(_torchrun(*args, "--out", str(tmp_path), "--name", "peer", "--track", "mlflow"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stderr[-3000:]
    assert "error: injected failure on rank 1" in out.stderr, out.stderr[-3000:]  # process 1's own line
    # process 0 says why it stopped, unless torchrun's SIGTERM cuts its report short; its MLflow run knows either way
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("peer").experiment_id])  # no checkpoint holds its id
    assert run.info.status == "FAILED", run.info.status  # not KILLED: nobody stopped it, process 1 failed
    assert "process 1 failed: RuntimeError: injected failure on rank 1" in run.data.tags["visionlab.error"]
