#!/usr/bin/env python
"""Exported models (onnxruntime) against PyTorch eager, side by side, with parity.

For each recipe model (EfficientNet-Lite0 at the four classifier recipes' sizes, ``cracks_cnn`` as
``configs/cracks-scratch.yaml`` builds it, and the landcover U-Net on one 256 px tile), the model is
exported exactly as ``visionlab export`` does it (:func:`visionlab.export._export_graph`), and then,
on the same photos (``../shared/data/cracks`` for classifiers and ``landcover/images`` cut into
tiles for the U-Net, else random uint8 images), normalised once:

* predictions per second of onnxruntime (fp32), PyTorch eager fp32 and PyTorch eager under bf16
  autocast, at batch 1 and batch 32, measured interleaved (round-robin over the contenders,
  ``--repeats`` rounds of ``--iters`` timed calls each after warm-up; the table shows medians);
* the ratio onnxruntime / PyTorch for both PyTorch modes, and whether onnxruntime reaches the
  issue's target (1.3x the faster PyTorch mode at batch 1);
* parity of the exported file on those photos: the largest absolute logit difference and the share
  of equal top-1 labels (of equal mask pixels for the U-Net), as ``visionlab export`` checks it.

onnxruntime gets ``--threads`` intra-op threads and one inter-op thread; PyTorch gets
``torch.set_num_threads(--threads)``. Timings on a machine others are using mean nothing: run it
alone.

Usage::

    python benchmarks/export_speed.py                           # all models, the real measurement
    python benchmarks/export_speed.py --quick                   # seconds: a smoke test, not a measurement
    python benchmarks/export_speed.py --models lite0-224,unet --repeats 5 --markdown out.md --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _load_average, machine, shared_data  # noqa: E402  (the sibling benchmark's helpers)

TARGET = 1.3  # onnxruntime / the faster PyTorch mode, at batch 1
BATCHES = (1, 32)
CONTENDERS = ("onnxruntime", "torch fp32", "torch bf16")


@dataclass(frozen=True)
class ModelSpec:
    key: str
    what: str
    model: str
    model_args: dict[str, Any]
    size: int
    classes: int
    photos: str  # dataset folder under shared data


MODELS = {
    "lite0-160": ModelSpec("lite0-160", "EfficientNet-Lite0, cracks recipe", "efficientnet_lite0", {"weights": "imagenet"}, 160, 2, "cracks"),
    "lite0-192": ModelSpec("lite0-192", "EfficientNet-Lite0, waste recipe", "efficientnet_lite0", {"weights": "imagenet"}, 192, 2, "cracks"),
    "lite0-224": ModelSpec("lite0-224", "EfficientNet-Lite0, caltech recipe", "efficientnet_lite0", {"weights": "imagenet"}, 224, 6, "cracks"),
    "lite0-288": ModelSpec("lite0-288", "EfficientNet-Lite0, minerals recipe", "efficientnet_lite0", {"weights": "imagenet"}, 288, 7, "cracks"),
    "cracks_cnn": ModelSpec("cracks_cnn", "cracks_cnn, cracks-scratch recipe", "cracks_cnn", {"dropout": 0.25, "pool": "maxflatten"}, 192, 2, "cracks"),
    "unet": ModelSpec("unet", "U-Net (smp), Lite0 encoder, per 256 px tile", "unet", {"encoder": "efficientnet_lite0", "weights": "imagenet"},
                      256, 6, "landcover/images"),
}


@dataclass
class Result:
    model: str
    what: str
    size: int
    batch: int
    ips: dict[str, list[float]] = field(default_factory=dict)  # contender -> predictions/s per repeat
    parity: str = ""

    def median(self, who: str) -> float:
        return statistics.median(self.ips[who]) if self.ips.get(who) else float("nan")

    def ratio(self, who: str) -> float:
        return self.median("onnxruntime") / self.median(who)

    def met(self) -> str:
        if self.batch != 1:
            return ""
        return "yes" if min(self.ratio("torch fp32"), self.ratio("torch bf16")) >= TARGET else "NO"


def build(spec: ModelSpec) -> tuple[Any, str]:
    """The model with its recipe's weights (offline packages); random weights if they are missing."""
    from visionlab.models import build_model, model_weights, no_weights_kwargs

    pretrained = model_weights(spec.model, **spec.model_args).name is not None
    try:
        return build_model(spec.model, spec.classes, **spec.model_args).eval(), "ImageNet weights" if pretrained else "random init"
    except Exception as exc:  # noqa: BLE001 (weights package not installed)
        _say(f"  {spec.key}: pretrained weights unavailable ({type(exc).__name__}); random weights (same speed)")
        return build_model(spec.model, spec.classes, **{**spec.model_args, **no_weights_kwargs(spec.model)}).eval(), "random weights"


def photos(spec: ModelSpec, count: int, seed: int = 0) -> tuple[Any, str]:
    """``count`` uint8 (size, size, 3) inputs as ``visionlab export`` takes them (real photos when present)."""
    from visionlab.export import _sample_images

    folder = shared_data() / spec.photos
    dense = spec.model == "unet"
    pre = {"kind": "segmentation" if dense else "classification", "resize": "scale" if dense else "squash", "image_size": spec.size}
    state = {"data": {"root": str(folder)}, "preprocessing": pre}
    return _sample_images(state, count, spec.size, seed)


def time_calls(fn: Callable[[], Any], iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def bench_model(spec: ModelSpec, args: argparse.Namespace, work: Path) -> list[Result]:
    import torch

    from visionlab.data.transforms import Normalize
    from visionlab.export import _export_graph, _parity_batches, check_parity
    from visionlab.kinds import get_kind
    from visionlab.models import model_weights
    from visionlab.data.preprocessing import Preprocessing
    from visionlab.runtime import open_session

    model, weights = build(spec)
    w = model_weights(spec.model, **spec.model_args)
    pre = Preprocessing(kind="", image_size=w.input_size, mean=w.mean, std=w.std)
    images, source = photos(spec, max(BATCHES), seed=1)
    x = Normalize(pre.mean, pre.std)(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    outputs = get_kind("segmentation" if spec.model == "unet" else "classification").outputs
    dense = outputs[0].dense
    path = work / f"{spec.key}.onnx"
    t0 = time.perf_counter()
    exporter = _export_graph(model, x[:2], path, 17, outputs)
    export_s = time.perf_counter() - t0
    session = open_session(path, threads=args.threads)
    name = session.get_inputs()[0].name
    parity = check_parity(session, model, _parity_batches(images[:8], pre, dense), source, outputs[0])
    parity_text = (f"max |diff| {parity.max_abs_diff:.1e}, equal {parity.unit} {parity.agreement:.2%} "
                   f"({'passed' if parity.passed else 'FAILED'}); {exporter} export {export_s:.1f} s; {weights}")
    _say(f"  {spec.key}: {parity_text}")
    out = []
    for batch in BATCHES:
        xb = x[:batch].contiguous()
        xn = xb.numpy()
        runs: dict[str, Callable[[], Any]] = {
            "onnxruntime": lambda: session.run(None, {name: xn}),
            "torch fp32": lambda: model(xb),
        }

        def bf16() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(xb)

        runs["torch bf16"] = bf16
        res = Result(spec.key, spec.what, spec.size, batch, {k: [] for k in CONTENDERS}, parity_text)
        iters = max(1, args.iters if batch == 1 else max(1, args.iters // 8))
        with torch.inference_mode():
            for fn in runs.values():  # warm-up: allocator, oneDNN primitives, onnxruntime's arena
                for _ in range(args.warmup):
                    fn()
            for _ in range(args.repeats):
                for who, fn in runs.items():
                    res.ips[who].append(batch / time_calls(fn, iters))
        _say(f"  {spec.key} batch {batch}: " + ", ".join(f"{w} {res.median(w):.1f}/s" for w in CONTENDERS))
        out.append(res)
    return out


COLUMNS = ["model", "px", "batch", "onnxruntime /s", "torch fp32 /s", "torch bf16 /s", "ort / fp32", "ort / bf16",
           f"target >= {TARGET:g}x (batch 1)", "parity on the photos"]


def table_lines(results: list[Result]) -> list[list[str]]:
    return [[r.what, str(r.size), str(r.batch)] + [f"{r.median(w):.1f}" for w in CONTENDERS]
            + [f"{r.ratio('torch fp32'):.2f}x", f"{r.ratio('torch bf16'):.2f}x", r.met(), r.parity] for r in results]


def markdown(results: list[Result], header: str) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table_lines(results)]
    return "\n".join(lines) + f"\n\n{header}\n"


def print_table(results: list[Result], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="visionlab export: onnxruntime vs PyTorch eager (predictions per second; ratio > 1: onnxruntime faster)",
                  caption=header, caption_justify="left")
    for c in COLUMNS:
        table.add_column(c, overflow="fold")
    for row in table_lines(results):
        table.add_row(*row)
    Console(width=200).print(table)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: all CPUs)")
    p.add_argument("--iters", type=int, default=40, help="timed calls per repeat at batch 1 (batch 32: iters / 8)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table shows medians")
    p.add_argument("--quick", action="store_true", help="a handful of calls: a smoke test, not a measurement")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a parity check fails")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.quick:
        args.iters, args.warmup, args.repeats = 2, 1, 1
    for name in ("iters", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from visionlab.runtime import default_threads

    args.threads = args.threads or default_threads()
    torch.set_num_threads(args.threads)
    load_before = _load_average()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="visionlab-export-speed-") as work:
        for key in args.models:
            _say(f"[{key}]")
            results += bench_model(MODELS[key], args, Path(work))
    import onnxruntime

    header = (("QUICK SMOKE RUN, not a measurement: " if args.quick else "")
              + f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads each; {machine()}; "
              f"{args.repeats} interleaved repeat(s) of {args.iters} calls at batch 1 ({max(1, args.iters // 8)} at batch 32), "
              f"medians; load average (1 min) {load_before} before, {_load_average()} after")
    print_table(results, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [asdict(r) | {"ratio_fp32": r.ratio("torch fp32"),
                                         "ratio_bf16": r.ratio("torch bf16"), "target_met": r.met()} for r in results]}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(results, header))
    failed = [r.model for r in results if "FAILED" in r.parity]
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
