"""What one explanation costs: ``predict`` of one photo against ``predict --explain`` of it (issue #22 §3).

    python benchmarks/explain.py CHECKPOINT PHOTO [--repeats 7] [--device cpu]

Both through :class:`visionlab.engine.predict.Predictor` (decoding included), one image at a time,
interleaved (plain, explained, plain, ...) after one warm-up each, so a busy machine slows both
alike; prints the medians (with min-max) of the wall time and of the CPU time the process used (all
its threads: on a machine shared with other work it moves far less than the wall time), the ratio
and the machine. Torch threads: as the environment says (set OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import visionlab


def _seconds(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("photo")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    predictor = visionlab.load(args.checkpoint, device=args.device)
    plain = lambda: predictor.predict(args.photo)  # noqa: E731
    explained = lambda: predictor.predict(args.photo, explain=True)  # noqa: E731
    plain(), explained()  # warm-up: first-call allocations, captum's import
    times: dict[str, list[tuple[float, float]]] = {"predict": [], "predict --explain": []}
    for _ in range(args.repeats):
        times["predict"].append(_seconds(plain))
        times["predict --explain"].append(_seconds(explained))
    cpu = platform.processor() or platform.machine()
    print(f"{predictor.task} ({predictor.state['model_name']}, {predictor.input_size} px), {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}), "
          f"{os.cpu_count()} cores ({cpu}), {args.repeats} interleaved repeats")
    med = {}
    for name, t in times.items():
        for i, what in enumerate(("wall", "CPU")):
            v = [x[i] for x in t]
            med[name, what] = statistics.median(v)
            print(f"  {name:<18} {what:<4} median {med[name, what] * 1000:7.0f} ms  (min {min(v) * 1000:.0f}, max {max(v) * 1000:.0f})")
    for what in ("wall", "CPU"):
        extra = med["predict --explain", what] - med["predict", what]
        print(f"  the explanation adds {extra * 1000:.0f} ms of {what} time: "
              f"{med['predict --explain', what] / med['predict', what]:.2f}x the plain prediction")


if __name__ == "__main__":
    main()
