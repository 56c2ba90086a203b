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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionlab.errors import VisionlabError

__all__ = ["Dist", "from_env", "launch", "merge_parts", "shard_batch"]


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
    """The job torchrun started this process in; joins its process group (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if not torch.distributed.is_available():
        raise VisionlabError("this torch build has no torch.distributed.", "Install a torch with distributed support.")
    if not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local)


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

