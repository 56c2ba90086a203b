"""What one explanation costs: ``predict`` of one photo against ``predict --explain`` of it (issue #22 §3).

    python benchmarks/explain.py CHECKPOINT PHOTO [--repeats 7] [--device cpu]

Both through :class:`visionlab.engine.predict.Predictor` (decoding included), one image at a time,
interleaved (plain, explained, plain, ...) after one warm-up each, so a busy machine slows both
alike; prints the medians (with min-max), the ratio and the machine. Torch threads: as the
environment says (set OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import visionlab


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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
    times: dict[str, list[float]] = {"predict": [], "predict --explain": []}
    for _ in range(args.repeats):
        times["predict"].append(_seconds(plain))
        times["predict --explain"].append(_seconds(explained))
    cpu = platform.processor() or platform.machine()
    print(f"{predictor.task} ({predictor.state['model_name']}, {predictor.input_size} px), {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}), "
          f"{os.cpu_count()} cores ({cpu}), {args.repeats} interleaved repeats")
    for name, t in times.items():
        print(f"  {name:<18} median {statistics.median(t) * 1000:7.0f} ms  (min {min(t) * 1000:.0f}, max {max(t) * 1000:.0f})")
    extra = statistics.median(times["predict --explain"]) - statistics.median(times["predict"])
    print(f"  the explanation adds {extra * 1000:.0f} ms: "
          f"{statistics.median(times['predict --explain']) / statistics.median(times['predict']):.2f}x the plain prediction")


if __name__ == "__main__":
    main()
