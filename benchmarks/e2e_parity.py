#!/usr/bin/env python
"""End-to-end parity on real photos: the torch-free runtime on an exported file against the PyTorch
predictor on its checkpoint, files in, answers out (:func:`visionlab.export.check_end_to_end`).

For each task a tiny model (its recipe's architecture or a small one, random init, two steps on
synthetic data, ``precision: auto``) is trained and exported,
then a handful of photos of ``../shared/data/<task>`` go both ways. Printed per task: the largest
absolute probability difference (class share for masks) between the runtime and the fp32
predictor, the share of equal labels (mask pixels) and the same difference against the
checkpoint under its own inference precision (bf16 autocast on CPUs that have it).

Usage::

    python benchmarks/e2e_parity.py                      # every task
    python benchmarks/e2e_parity.py waste minerals       # some
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4, "early_stopping": 0, "num_workers": 0,
        "warmup_epochs": 0.0, "device": "cpu", "precision": "auto"}
CASES = {  # task: (config keys, photo folder, photos)
    "waste": ({"model": "efficientnet_lite0", "image_size": 192, "tta": "hflip"}, "waste", 24),
    "minerals": ({"background_removal": True, "image_size": 96}, "minerals", 16),
    "caltech": ({"model": "resnet18", "model_args": {"weights": None}, "image_size": 96}, "caltech101", 16),
    "cracks": ({"model": "cracks_cnn", "model_args": {}, "image_size": 96}, "cracks", 24),
    "landcover": ({"tta": "d4", "seg_scale": 0.75, "tile_size": 256, "crops_per_image": 2}, "landcover", 1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*", default=list(CASES), help=f"some of {', '.join(CASES)} (default: all)")
    args = ap.parse_args()
    if set(args.tasks) - set(CASES):
        ap.error(f"unknown task(s) {', '.join(sorted(set(args.tasks) - set(CASES)))}; choose from {', '.join(CASES)}")
    from rich.console import Console

    import visionlab
    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.export import check_end_to_end
    from visionlab.kinds import get_kind
    from visionlab.models import no_weights_kwargs
    from visionlab.api import load_config

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as out:
        for task in args.tasks:
            options, folder, count = CASES[task]
            cfg = load_config(task)
            model = options.get("model", cfg.model)
            options = {"model_args": {**(cfg.model_args if model == cfg.model else {}), **no_weights_kwargs(model)}, **options}
            run = visionlab.train(task, data="synthetic", console=quiet, out=out, name=task, **TINY, **options)
            exported = visionlab.export_onnx(run.best_checkpoint, console=quiet)
            state = load_checkpoint(run.best_checkpoint)
            files = [str(f) for f in get_kind(state["kind"]).sample_inputs(DATA / folder, count)]
            t0 = time.perf_counter()
            e2e = check_end_to_end(state, exported.path, files, str(DATA / folder))
            print(f"{task} ({time.perf_counter() - t0:.1f} s): {e2e.line()}; {e2e.own_line()}", flush=True)


if __name__ == "__main__":
    main()
