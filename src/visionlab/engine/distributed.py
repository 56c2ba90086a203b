"""Distributed data parallel training under ``torchrun`` (or ``visionlab train --devices N``).

One job, N processes: torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; visionlab joins
the process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP, gives every rank a
disjoint shard of each epoch's order, evaluates sharded and exactly (every image counted once,
the parts merged), and lets rank 0 alone write files and talk. ``batch_size`` is per process: the
global batch is ``batch_size x processes x accumulate``; the learning rate is not rescaled.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from visionlab.errors import VisionlabError

__all__ = ["Dist", "check_shared", "from_env", "launch", "merge_parts", "node_first", "rank_gpu", "shard_batch"]

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def from_env(device: str) -> Dist:
    """The job torchrun started this process in; joins its process group (once). The backend is
    NCCL on CUDA and gloo on the CPU, or ``$VISIONLAB_DIST_BACKEND`` (gloo also runs on CUDA, and
    lets several processes share one GPU: ``--device cuda:N`` puts every process on GPU N)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if not torch.distributed.is_available():
        raise VisionlabError("this torch build has no torch.distributed.", "Install a torch with distributed support.")
    backend = os.environ.get("VISIONLAB_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise VisionlabError(f"VISIONLAB_DIST_BACKEND={backend!r} is not a backend visionlab runs on.",
                             "Use nccl (one GPU per process) or gloo (CPU, or processes sharing a GPU).")
    if backend == "nccl" and ":" in str(device) and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise VisionlabError(f"--device {device} puts every process of this machine on one GPU, which NCCL refuses.",
                             "Use --device cuda (one GPU per process), or set VISIONLAB_DIST_BACKEND=gloo.")
    if not torch.distributed.is_initialized():
        gpu = rank_gpu(device, local) if cuda else None
        if gpu is not None and gpu >= torch.cuda.device_count():  # torch's own error: "invalid device ordinal"
            raise VisionlabError(f"process {local} of this machine has no GPU {gpu}: {torch.cuda.device_count()} present.",
                                 f"Start one process per GPU (--devices {torch.cuda.device_count()}; torchrun --nproc_per_node), or use --device cpu.")
        if gpu is not None:
            torch.cuda.set_device(gpu)
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local)


def rank_gpu(device: str, local_rank: int) -> int:
    """The GPU of the process of ``local_rank``: its own (``cuda``, ``auto``), or the one ``cuda:N`` names."""
    name = str(device).lower()
    index = torch.device(name).index if name.startswith("cuda") else None
    return local_rank if index is None else index


def node_first(dist: Dist, work: Callable[[], T]) -> T:
    """``work()`` on every process: on each machine by its first process (local rank 0) before the
    others, so that what it writes to the cache they read instead of decoding it again; then every
    process waits for all machines. The waits poll the job's rendezvous store (torchrun's
    ``MASTER_ADDR:MASTER_PORT``) and have no time limit: the process group's timeout is for
    collectives, and a decode, or one machine's against another's, can take longer. If a process
    dies, torchrun ends the job."""
    if not dist.enabled:
        return work()
    token = dist.broadcast(secrets.token_hex(8) if dist.is_main else None)
    if "MASTER_ADDR" not in os.environ:  # a process group joined another way: collectives, with their timeout
        return _rank_0_first(dist, work)
    store = _connect_store(datetime.timedelta(minutes=5))
    node, every = f"visionlab/{token}/node{dist.rank - dist.local_rank}", f"visionlab/{token}/ready"
    if dist.local_rank:
        _poll(lambda: store.check([node]))
    try:
        out = work()
    finally:  # also when it failed: the others then stop their own way, or torchrun ends them
        if not dist.local_rank:
            store.set(node, "done")
    store.add(every, 1)
    _poll(lambda: store.add(every, 0) >= dist.world)
    return out


FAILED_KEY = "visionlab/failed"


def _connect_store(timeout: datetime.timedelta) -> Any:
    """A client of the job's rendezvous store, torchrun's ``MASTER_ADDR:MASTER_PORT`` (torchrun keeps it
    in its agent, so it outlives a failed worker)."""
    return torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                      timeout=timeout)


def _job_store() -> Any:
    """The job's rendezvous store, or None when there is none to reach (no torchrun, or it ended)."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    try:
        return _connect_store(datetime.timedelta(seconds=10))
    except (RuntimeError, ValueError):  # the store is gone (torchrun ended)
        return None


INTERRUPTED = "was stopped by Ctrl-C or SIGTERM"


def record_failure(dist: Dist, exc: BaseException | None) -> None:
    """Leave in the job's store why this process fails (``None``: it was interrupted alone, its peers then
    meet a broken collective): torchrun then stops the others with SIGTERM, which alone reads like a
    user's stop (see :func:`peer_failure`). The first failure is kept."""
    store = _job_store() if dist.enabled else None
    why = INTERRUPTED if exc is None else f"failed: {type(exc).__name__}: {exc}"
    if store is not None:
        try:
            store.compare_set(FAILED_KEY, "", f"process {dist.rank} {why}"[:2000])
        except RuntimeError:
            pass


def peer_failure(dist: Dist) -> str | None:
    """Why another process of the job failed, when one did (:func:`record_failure`); else None."""
    store = _job_store() if dist.enabled else None
    try:
        return store.get(FAILED_KEY).decode() if store is not None and store.check([FAILED_KEY]) else None
    except RuntimeError:
        return None


def _poll(ready: Callable[[], bool]) -> None:
    while not ready():
        time.sleep(0.5)


def _rank_0_first(dist: Dist, work: Callable[[], T]) -> T:
    if not dist.is_main:
        dist.barrier()
    out = work()
    if dist.is_main:
        dist.barrier()
    return out


def check_shared(dist: Dist, folder: Path, wait: float = 60.0) -> None:
    """Stop with a clear error on every process unless each sees the ``folder`` rank 0 made (the run
    folder: only rank 0 writes it, and every process reads its checkpoints on resume). On one
    machine it always does; on several, ``--out`` must be on storage they share. A process that
    does not see it at once looks again for ``wait`` seconds (network file systems cache lookups)."""
    if not dist.enabled:
        return
    token = dist.broadcast(secrets.token_hex(8) if dist.is_main else None)
    mark = folder / f".rank0-{token}"
    if dist.is_main:
        mark.write_text(token)
    end = time.monotonic() + wait
    while not mark.is_file() and time.monotonic() < end:
        time.sleep(1.0)
    every = dist.gather((mark.is_file(), socket.gethostname()))
    if dist.is_main:
        mark.unlink()
    blind = [f"rank {r} on {host}" for r, (sees, host) in enumerate(every) if not sees]
    if blind:
        raise VisionlabError(f"{', '.join(blind)} cannot see the run folder {folder} that rank 0 made.",
                             "On several machines, pass --out on storage that every machine shares (VISIONLAB_CACHE may stay local).")


def shard_batch(order: np.ndarray | list, step: int, batch_size: int, dist: Dist) -> Any:
    """This rank's part of global batch ``step`` of an epoch's ``order``: the global batch is
    ``batch_size x world`` consecutive items, rank r takes the r-th slice of it. Any number of
    processes therefore walks the same sequence of items, so a sample offset means the same
    thing after a resume on another number of processes."""
    start = (step * dist.world + dist.rank) * batch_size
    return order[start : start + batch_size]


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-rank evaluation parts key by key: objects with ``merge`` (metric meters) are
    merged, numbers summed, lists concatenated. The result is what one process would have."""
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if hasattr(first, "merge"):
            out[key] = first.merge(*values[1:])
        elif isinstance(first, list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = sum(values)
    return out


def launch(args: list[str], processes: int, grace: float = 60.0) -> int:
    """``python -m visionlab *args`` as one job of ``processes`` processes on this machine (torchrun
    --standalone), waited for. SIGINT and SIGTERM are passed on to torchrun, which stops its workers
    with the same signal (rank 0 then says what is on disk); whatever still runs ``grace`` seconds
    after the first signal is killed. Returns the job's exit status, or 128 + the number of the
    signal that stopped it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "visionlab", *args]
    got: list[int] = []
    stop_by: list[float] = []  # the first signal's time + grace
    procs: list[subprocess.Popen] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        stop_by.append(time.monotonic() + grace)
        for proc in procs:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not got:  # not in our process group: a terminal's Ctrl-C reaches it once, through us
            procs.append(subprocess.Popen(cmd, start_new_session=True))
        while procs and procs[0].poll() is None:
            if stop_by and time.monotonic() > stop_by[0]:
                _kill_job(procs[0], grace)
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + got[0] if got else procs[0].returncode


def _kill_job(proc: subprocess.Popen, grace: float) -> None:
    left = _descendants(proc.pid)
    for pid in [proc.pid, *left]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    sys.stderr.write(f"error: the job had not stopped {grace:.0f} s after the signal; killed its {len(left) + 1} processes "
                     "(checkpoints are written atomically: the last one written before is intact).\n")


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc; none known elsewhere). torchrun starts each worker
    in a session of its own, so a process group does not hold them."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    found, todo = [], [pid]
    while todo:
        below = [child for child, parent in parents.items() if parent == todo.pop()]
        found += below
        todo += below
    return found

