#!/usr/bin/env python
"""visionlab speed, measured side by side with the usual PyTorch and timm loops.

Prints one table; everything in it comes from the same run, on the same data (``../shared/data/cracks``
when present, else synthetic images made by :mod:`visionlab.data.synthetic`), with the same model
(``cracks_cnn``, 2 classes), batch size, image size and number of measured steps:

1. training throughput (images/s, steady state after warm-up) of

   a. visionlab's own trainer (``visionlab.train`` with the task's recipe, ``configs/cracks.yaml``:
      flips, rot90, zoom, shift and colour jitter; the figure is the trainer's own per-epoch
      images/s from ``metrics.csv``, its first epoch skipped as warm-up). It decodes each image
      once into a uint8 cache and augments whole batches; the cache build is timed on its own and
      also folded into the throughput over ``--amortize`` epochs;
   b. a plain PyTorch loop as the seed notebooks wrote it: ``torchvision.datasets.ImageFolder`` +
      ``Compose([Resize, RandomHorizontalFlip, ToTensor, Normalize])``, a ``DataLoader``, fp32;
   c. timm's own loader: ``timm.data.create_loader`` over ``timm.data.ImageDataset`` with its
      train transforms at the same size, and AMP (bf16 autocast on CPU);

2. prediction over a folder: ``visionlab.load(ckpt).predict(files)`` (batched) against a loop that
   opens, transforms and runs one image at a time (fp32, as a notebook would);
3. time to reach 97 % held-out (validation) accuracy on cracks from scratch with
   ``configs/cracks-scratch-fast.yaml`` (training seconds read from the run's ``metrics.csv``), and the
   test accuracy of that run;
4. CLI start-up: ``visionlab --help`` against ``python -c "import torch"``;
5. how close training is to its limit, for the seed-faithful ``cracks_cnn`` (``configs/cracks-scratch.yaml``)
   and the EfficientNet-Lite0 recipe (``configs/cracks.yaml``), each with its own image size and
   batch: visionlab's whole training (decode cache, augmentation, EMA, callbacks; the figure of 1a)
   against the same model, batch, precision, channels_last and image size doing only forward,
   backward and the optimiser step on one batch already in memory (no data pipeline at all),
   timed like the baselines of 1. The ratio is visionlab's throughput as a fraction of that limit.

Every contender runs in a fresh Python process of its own, so no setting of one (threads, the
allocator tuning visionlab applies, warm caches of the page allocator) leaks into another. Ratios
are visionlab / baseline for speeds and baseline / visionlab for times: above 1 means visionlab
is faster. On a shared machine timings are noisy; use ``--repeats`` (interleaved) and read the
ranges.

Usage::

    python benchmarks/speed.py                    # the full benchmark
    python benchmarks/speed.py --repeats 3        # medians of 3 interleaved repeats, with ranges
    python benchmarks/speed.py --quick            # seconds: tiny synthetic data, a smoke test only
    python benchmarks/speed.py --data PATH --device cuda --steps 200 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "accuracy", "predict", "cli", "limit")
TARGETS = {"plain": 2.0, "timm": 1.3, "predict": 3.0, "predict_tta": 3.0, "cli": 0.3, "to97": 90.0, "limit_cnn": 0.9, "limit_lite0": 0.9}
#: Section 5: row key -> (what, the recipe visionlab trains with its own model, image size and batch).
LIMIT_RECIPES = {
    "limit_cnn": ("cracks_cnn, seed-faithful", REPO / "configs" / "cracks-scratch.yaml"),
    "limit_lite0": ("EfficientNet-Lite0 recipe", REPO / "configs" / "cracks.yaml"),
}
_MARK = "@@speed-result@@ "


def shared_data() -> Path:
    """``../shared/data`` beside the repository, or ``$VISIONLAB_SHARED_DATA``."""
    env = os.environ.get("VISIONLAB_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


# ============================================================================ results
@dataclass
class Row:
    """One line of the table: visionlab's figures, the baseline's, and the ratio of their medians."""

    key: str
    what: str
    unit: str
    visionlab: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = ""
    higher_is_better: bool = True
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.visionlab or not self.baseline:
            return None
        v, b = statistics.median(self.visionlab), statistics.median(self.baseline)
        if v <= 0 or b <= 0:
            return None
        return v / b if self.higher_is_better else b / v

    def cell(self, values: list[float]) -> str:
        if not values:
            return "-"

        def fmt(x: float) -> str:
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"

        text = f"{fmt(statistics.median(values))} {self.unit}".strip()
        if len(values) > 1:
            text += f" ({fmt(min(values))}-{fmt(max(values))})"
        return text

    def met(self) -> str:
        """'yes' / 'NO' against the issue's target, '' where there is none."""
        if self.key in ("plain", "timm", "predict", "predict_tta", "limit_cnn", "limit_lite0"):
            return "" if self.ratio is None else ("yes" if self.ratio >= TARGETS[self.key] else "NO")
        if self.key in ("cli", "to97"):
            return "yes" if self.visionlab and statistics.median(self.visionlab) < TARGETS[self.key] else "NO"
        return ""


# ============================================================================ children
def run_child(kind: str, **params: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its progress goes to stderr, its result comes back."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-params", json.dumps(params, default=str)]
    env = dict(os.environ)
    if params.get("threads"):
        env["OMP_NUM_THREADS"] = str(params["threads"])  # read by torch at start-up; visionlab respects it
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"speed.py: the {kind!r} measurement failed (exit code {proc.returncode}); its output is above.")
    if params.get("verbose"):
        sys.stderr.write("".join(ln + "\n" for ln in proc.stdout.splitlines() if not ln.startswith(_MARK)))
    return json.loads(lines[-1][len(_MARK):])


def _epochs(loader: Any) -> Iterator[Any]:
    """Batches forever, one full pass over ``loader`` after another (a new epoch each time)."""
    while True:
        yield from loader


def _timed_steps(batches: Iterator[Any], step: Callable[[Any], int], warmup: int, steps: int) -> float:
    """Images/s over ``steps`` steps after ``warmup`` steps; the clock includes waiting for data."""
    for _ in range(warmup):
        step(next(batches))
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        n += step(next(batches))
    return n / (time.perf_counter() - t0)


def _model(device: Any, seed: int = 0) -> Any:
    import torch

    from visionlab.models import build_model

    torch.manual_seed(seed)
    return build_model("cracks_cnn", 2).to(device)


def child_plain(p: SimpleNamespace) -> dict[str, Any]:
    """The seed notebooks' loop: ImageFolder + torchvision transforms + DataLoader, fp32."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    device = torch.device(p.device)
    tf = transforms.Compose([
        transforms.Resize((p.image_size, p.image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])
    ds = datasets.ImageFolder(p.root, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=p.batch_size, shuffle=True, drop_last=True,
                                         num_workers=p.workers, pin_memory=device.type == "cuda")
    model = _model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step(batch: Any) -> int:
        x, y = batch[0].to(device), batch[1].to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(y)

    return {"ips": _timed_steps(_epochs(loader), step, p.warmup, p.steps), "threads": torch.get_num_threads()}


def child_timm(p: SimpleNamespace) -> dict[str, Any]:
    """timm's own loader and train transforms (create_loader over ImageDataset), AMP autocast."""
    import torch
    import torch.nn.functional as F
    from timm.data import ImageDataset, create_loader

    device = torch.device(p.device)
    amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    loader = create_loader(ImageDataset(p.root), input_size=(3, p.image_size, p.image_size), batch_size=p.batch_size,
                           is_training=True, num_workers=p.workers, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           device=device, pin_memory=device.type == "cuda")
    model = _model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model.train()

    def step(batch: Any) -> int:
        x, y = batch[0].to(device), batch[1].to(device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return len(y)

    return {"ips": _timed_steps(_epochs(loader), step, p.warmup, p.steps)}


def _console(verbose: bool) -> Any:
    from rich.console import Console

    return Console() if verbose else Console(file=io.StringIO(), width=160)


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _train_options(p: SimpleNamespace) -> dict[str, Any]:
    """The options visionlab trains with in a measurement (and its limit is built from): all the
    data in the training split, ``p.epochs`` epochs of ``p.steps_per_epoch`` steps, and
    ``p.model_options`` (model, image size, batch size) over the recipe ``p.config``."""
    return {"data": p.root, "device": p.device, "out": str(Path(p.work) / "runs"), **p.model_options,
            "epochs": p.epochs, "max_steps_per_epoch": p.steps_per_epoch, "val_fraction": 0.0, "test_fraction": 0.0,
            "early_stopping": 0}


def child_visionlab(p: SimpleNamespace) -> dict[str, Any]:
    """visionlab's trainer on all the data: steady-state images/s, the cache build time, a checkpoint.

    The cache is built first with the library's own ``build_cache`` in a fresh cache folder and
    timed; the training run then finds it there. Throughput is the trainer's own per-epoch figure
    (``metrics.csv``) over every epoch but the first.
    """
    os.environ["VISIONLAB_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=p.work)
    import visionlab
    from visionlab.api import load_config
    from visionlab.data.cache import build_cache

    visionlab.tune_process()  # as the visionlab command runs
    from visionlab.kinds.classification.layout import find_classification
    from visionlab.kinds.classification.runner import classification_preprocessing

    options = _train_options(p)
    cfg = load_config("cracks", p.config, options)
    index = find_classification(p.root)
    t0 = time.perf_counter()
    build_cache(index.paths, classification_preprocessing(cfg), mode=cfg.cache, budget_mb=cfg.cache_budget_mb)
    cache_s = time.perf_counter() - t0
    result = visionlab.train("cracks", config=p.config, console=_console(p.verbose), **options)
    rows = _read_metrics(result.run_dir / "metrics.csv")[1:]
    images = sum(float(r["images_per_second"]) * float(r["epoch_seconds"]) for r in rows)
    seconds = sum(float(r["epoch_seconds"]) for r in rows)
    return {"ips": images / seconds, "cache_s": cache_s, "checkpoint": str(result.last_checkpoint)}


def child_limit(p: SimpleNamespace) -> dict[str, Any]:
    """The limit of visionlab's training of ``p.config``: its model, batch size, precision, channels_last
    and image size, the trainer's thread and device settings, and only forward, loss, backward and
    an AdamW step on one fixed batch already on the device (random, as if normalised): no decoding,
    caching, augmentation, EMA or callbacks. Like the trainer, it reads every step's loss."""
    import visionlab
    from visionlab.api import load_config
    from visionlab.engine.device import speed_settings

    visionlab.tune_process()  # the process settings of the visionlab side (allocator)
    cfg = load_config("cracks", p.config, _train_options(p))
    with speed_settings():  # the trainer's threads and cuDNN/TF32 flags
        return _limit_steps(p, cfg)


def _limit_steps(p: SimpleNamespace, cfg: Any) -> dict[str, Any]:
    import itertools

    import torch
    import torch.nn.functional as F

    from visionlab.kinds.classification.layout import find_classification
    from visionlab.engine.device import resolve_device, resolve_precision
    from visionlab.models import build_model, no_weights_kwargs

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    classes = len(find_classification(p.root).classes)
    model = build_model(cfg.model, classes, **{**cfg.model_args, **no_weights_kwargs(cfg.model)}).to(device)  # weights do not change speed
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    precision = resolve_precision(cfg.precision, device, training_model=model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.use_scaler)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (cfg.batch_size,), device=device)
    model.train()

    def step(batch: tuple[Any, Any]) -> int:
        x, y = batch
        with precision.autocast():
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.options.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()
        return len(y)

    return {"ips": _timed_steps(itertools.repeat((x, y)), step, p.warmup, p.steps), "model": cfg.model,
            "image_size": cfg.image_size, "batch_size": cfg.batch_size, "precision": precision.name, "channels_last": cfg.channels_last}


def child_predict_visionlab(p: SimpleNamespace) -> dict[str, Any]:
    """``visionlab.load(ckpt).predict(files)``: batched, the checkpoint's own preprocessing, TTA ``p.tta``."""
    import visionlab

    visionlab.tune_process()  # as the visionlab command runs
    predictor = visionlab.load(p.checkpoint, device=p.device, precision="auto")  # bf16 where the CPU has it, as measured
    predictor.tta = p.tta
    predictor.predict(p.files[:8])  # warm-up
    t0 = time.perf_counter()
    preds = predictor.predict(p.files)
    return {"ips": len(p.files) / (time.perf_counter() - t0), "labels": [x.label for x in preds]}


def child_predict_loop(p: SimpleNamespace) -> dict[str, Any]:
    """Open, transform and run one image at a time (fp32), as a notebook would; with ``p.tta``, the same
    flipped views averaged, one forward pass per view."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.tta import tta_views
    from visionlab.models import build_model

    state = load_checkpoint(p.checkpoint)
    pre, classes = state["preprocessing"], state["classes"]
    device = torch.device(p.device)
    model = build_model(state["model_name"], num_classes=len(classes), **state["model_args"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    tf = transforms.Compose([transforms.Resize((pre["image_size"], pre["image_size"])), transforms.ToTensor(),
                             transforms.Normalize(pre["mean"], pre["std"])])

    def one(path: str) -> str:
        x = tf(Image.open(path).convert("RGB")).to(device)[None]
        with torch.no_grad():
            probs = sum(model(v).softmax(1) for v in tta_views(x, p.tta))
            return classes[int(probs.argmax(1).item())]

    for f in p.files[:8]:  # warm-up
        one(f)
    t0 = time.perf_counter()
    labels = [one(f) for f in p.files]
    return {"ips": len(p.files) / (time.perf_counter() - t0), "labels": labels}


def child_accuracy(p: SimpleNamespace) -> dict[str, Any]:
    """cracks_cnn from scratch with the library's recipe; training seconds until val acc >= 0.97."""
    os.environ["VISIONLAB_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=p.work)
    import visionlab

    visionlab.tune_process()  # as the visionlab command runs
    extra: dict[str, Any] = {"epochs": 1, "batch_size": p.batch_size, "image_size": p.image_size} if p.quick else {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = visionlab.train("cracks", config=p.scratch_config, console=_console(p.verbose), data=p.root, device=p.device,
                             out=str(Path(p.work) / "runs"), name="to97", **extra)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    elapsed, cpu_elapsed, reached, reached_cpu, epoch = 0.0, 0.0, None, None, None
    for r in _read_metrics(result.run_dir / "metrics.csv"):
        elapsed += float(r["epoch_seconds"])
        cpu_elapsed += float(r.get("epoch_cpu_seconds") or "nan")
        if reached is None and float(r.get("val_accuracy") or 0) >= 0.97:
            reached, reached_cpu, epoch = elapsed, cpu_elapsed, int(r["epoch"])
    return {"seconds": reached, "cpu_seconds": reached_cpu, "epoch": epoch, "epochs": result.epochs_run, "train_s": elapsed, "wall_s": wall, "cpu_s": cpu,
            "test_accuracy": result.test_metrics.get("accuracy"), "best_val": result.best_metric,
            "checkpoint": str(result.best_checkpoint)}


CHILDREN: dict[str, Callable[[SimpleNamespace], dict[str, Any]]] = {
    "plain": child_plain, "timm": child_timm, "visionlab": child_visionlab, "predict_visionlab": child_predict_visionlab,
    "predict_loop": child_predict_loop, "accuracy": child_accuracy, "limit": child_limit,
}


# ============================================================================ sections
def make_synthetic_cracks(root: Path, per_class: int, size: int) -> Path:
    """A cracks-shaped folder of synthetic images (Negative/, Positive/) made by visionlab."""
    from visionlab.kinds.classification.synthetic import make_classification

    return make_classification(root / "cracks-synthetic", ["Negative", "Positive"], per_class=per_class, size=size, seed=0)


def resolve_data(args: argparse.Namespace, work: Path) -> tuple[Path, bool]:
    if args.data:
        path = Path(args.data).expanduser()
        if not path.is_dir():
            raise SystemExit(f"speed.py: --data {path} is not a folder; pass a folder of class folders, e.g. ../shared/data/cracks.")
        return path, False
    real = shared_data() / "cracks"
    if real.is_dir() and not args.quick:
        return real, False
    per_class, size = (16, 48) if args.quick else (600, 160)
    return make_synthetic_cracks(work, per_class, size), True


def _common(args: argparse.Namespace, root: Path, work: Path) -> dict[str, Any]:
    return {"root": str(root), "work": str(work), "device": args.device, "image_size": args.image_size, "threads": args.threads,
            "batch_size": args.batch_size, "verbose": args.verbose, "quick": args.quick}


def _section1_model(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of sections 1 and 2: cracks_cnn at the table's batch size and image size."""
    return {"model": "cracks_cnn", "model_args": {}, "image_size": args.image_size, "batch_size": args.batch_size}


def _visionlab_steps(n_images: int, batch_size: int, args: argparse.Namespace) -> tuple[int, int, int]:
    """(steps per epoch, epochs, measured steps) of a visionlab run: its first epoch is the warm-up,
    and the contenders it is compared with measure exactly as many steps as the epochs after it."""
    per_epoch = max(1, n_images // batch_size)
    vl_epoch_steps = min(per_epoch, args.steps)
    vl_epochs = 1 + math.ceil(args.steps / vl_epoch_steps)
    return vl_epoch_steps, vl_epochs, (vl_epochs - 1) * vl_epoch_steps


def bench_training(root: Path, n_images: int, args: argparse.Namespace, work: Path, rows: dict[str, Row]) -> str:
    """Section 1; returns a checkpoint trained on the data (used by section 2 when 3 is skipped)."""
    per_epoch = max(1, n_images // args.batch_size)
    vl_epoch_steps, vl_epochs, steps = _visionlab_steps(n_images, args.batch_size, args)
    args.measured_steps = steps
    r_plain = rows.setdefault("plain", Row("plain", "1. training, vs plain PyTorch loop (ImageFolder, fp32)", "img/s",
                                           baseline_name="plain loop", target=f">= {TARGETS['plain']:g}x"))
    r_timm = rows.setdefault("timm", Row("timm", "1. training, vs timm create_loader + bf16/AMP", "img/s",
                                         baseline_name="timm loader", target=f">= {TARGETS['timm']:g}x"))
    r_cache = rows.setdefault("cache", Row("cache", "1. one-off decode-once cache build (not in the two rows above)", "s",
                                           higher_is_better=False, note=f"{n_images} images"))
    r_am_plain = rows.setdefault("am_plain", Row("am_plain", f"1. training over {args.amortize} epochs incl. the cache build, vs plain",
                                                 "img/s", baseline_name="plain loop"))
    r_am_timm = rows.setdefault("am_timm", Row("am_timm", f"1. training over {args.amortize} epochs incl. the cache build, vs timm",
                                               "img/s", baseline_name="timm loader"))
    common = _common(args, root, work)
    ckpt = ""
    best_workers: dict[str, list[int]] = {"plain loop": [], "timm loader": []}
    for rep in range(args.repeats):
        _say(f"[train] repeat {rep + 1}/{args.repeats}: {steps} measured steps x {args.batch_size} images at {args.image_size} px "
             f"({n_images} images, {per_epoch} steps per epoch)")
        vl = run_child("visionlab", **common, config=str(args.config) if args.config else None, steps_per_epoch=vl_epoch_steps,
                       epochs=vl_epochs, model_options=_section1_model(args))
        ckpt = vl["checkpoint"]
        _say(f"        visionlab {vl['ips']:.1f} img/s; cache built in {vl['cache_s']:.2f} s")
        plain = _best_over_workers("plain", args, common, steps)
        timm = _best_over_workers("timm", args, common, steps)
        best_workers["plain loop"].append(plain["workers"])
        best_workers["timm loader"].append(timm["workers"])
        total = args.amortize * n_images
        amortized = total / (total / vl["ips"] + vl["cache_s"])
        for row, v, b in ((r_plain, vl["ips"], plain["ips"]), (r_timm, vl["ips"], timm["ips"]),
                          (r_am_plain, amortized, plain["ips"]), (r_am_timm, amortized, timm["ips"])):
            row.visionlab.append(v)
            row.baseline.append(b)
        r_cache.visionlab.append(vl["cache_s"])
    if len(args.workers) > 1:
        for row, name in ((r_plain, "plain loop"), (r_timm, "timm loader")):
            row.note = f"{name} at its fastest of {args.workers} DataLoader workers: {best_workers[name]}"
    return ckpt


def _best_over_workers(kind: str, args: argparse.Namespace, common: dict[str, Any], steps: int) -> dict[str, Any]:
    """A baseline at each ``--workers`` count; the fastest is kept, so no baseline is slowed by our choice."""
    best: dict[str, Any] = {}
    for w in args.workers:
        r = run_child(kind, **common, workers=w, warmup=args.warmup, steps=steps)
        _say(f"        {kind} loop, {w} worker(s): {r['ips']:.1f} img/s")
        if not best or r["ips"] > best["ips"]:
            best = {**r, "workers": w}
    return best


def bench_limit(root: Path, n_images: int, args: argparse.Namespace, work: Path, rows: dict[str, Row]) -> None:
    """Section 5: visionlab's whole training of each recipe in :data:`LIMIT_RECIPES` against its limit
    (:func:`child_limit`). Each recipe keeps its own model, image size and batch size (under
    ``--quick`` the table's small ones, on both sides)."""
    from visionlab.api import load_config

    common = _common(args, root, work)
    small = {"image_size": args.image_size, "batch_size": args.batch_size} if args.quick else {}
    for key, (what, recipe) in LIMIT_RECIPES.items():
        cfg = load_config("cracks", recipe, small)
        epoch_steps, epochs, steps = _visionlab_steps(n_images, cfg.batch_size, args)
        row = rows.setdefault(key, Row(key, f"5. training vs its limit: {what} ({recipe.relative_to(REPO)}), whole pipeline "
                                            "vs forward+backward+step on a batch in memory", "img/s",
                                       baseline_name="limit", target=f">= {TARGETS[key]:g}x"))
        for rep in range(args.repeats):
            _say(f"[limit] {what}, repeat {rep + 1}/{args.repeats}: {steps} measured steps x {cfg.batch_size} images at "
                 f"{cfg.image_size} px")
            shared = {**common, "config": str(recipe), "model_options": small, "steps_per_epoch": epoch_steps, "epochs": epochs}
            vl = run_child("visionlab", **shared)
            limit = run_child("limit", **shared, warmup=args.warmup, steps=steps)
            _say(f"        visionlab {vl['ips']:.1f} img/s, limit {limit['ips']:.1f} img/s: {vl['ips'] / limit['ips']:.2f} of it")
            row.visionlab.append(vl["ips"])
            row.baseline.append(limit["ips"])
            row.note = (f"{limit['model']}, {limit['image_size']} px, batch {limit['batch_size']}, {limit['precision']}, "
                        f"channels_last {str(limit['channels_last']).lower()}, {steps} measured steps; ratio = visionlab / limit")


def _predict_files(root: Path, count: int) -> list[str]:
    from visionlab.engine.predict import expand_inputs

    files = expand_inputs([root])
    if len(files) > count:  # spread evenly over the folder, so every class is in
        stride = len(files) / count
        files = [files[int(i * stride)] for i in range(count)]
    return files


def bench_predict(ckpt: str, root: Path, args: argparse.Namespace, work: Path, rows: dict[str, Row]) -> None:
    """Like for like: both sides without test-time augmentation, then both with the checkpoint's own."""
    files = _predict_files(root, args.predict_images)
    from visionlab.engine.checkpoint import load_checkpoint

    pre = load_checkpoint(ckpt)["preprocessing"]
    modes = ["none"] + ([pre["tta"]] if pre.get("tta", "none") != "none" else [])
    for mode in modes:
        key = "predict" if mode == "none" else "predict_tta"
        what = "no TTA on either side" if mode == "none" else f"TTA {mode} on both sides"
        row = rows.setdefault(key, Row(key, f"2. prediction over a folder ({len(files)} files), batched vs per-image loop, {what}",
                                       "img/s", baseline_name="per-image loop", target=f">= {TARGETS['predict']:g}x"))
        for rep in range(args.repeats):
            _say(f"[predict] {what}, repeat {rep + 1}/{args.repeats}: {len(files)} files")
            vl = run_child("predict_visionlab", checkpoint=ckpt, files=files, device=args.device, threads=args.threads, tta=mode)
            loop = run_child("predict_loop", checkpoint=ckpt, files=files, device=args.device, threads=args.threads, tta=mode)
            agree = sum(a == b for a, b in zip(vl["labels"], loop["labels"])) / max(1, len(files))
            _say(f"        batched {vl['ips']:.1f} img/s, per-image {loop['ips']:.1f} img/s; same label for {agree:.1%}")
            row.visionlab.append(vl["ips"])
            row.baseline.append(loop["ips"])
            row.note = f"{pre['image_size']} px model; same label for {agree:.1%} of the files"


def bench_accuracy(root: Path, synthetic: bool, args: argparse.Namespace, work: Path, rows: dict[str, Row]) -> str:
    _say(f"[accuracy] cracks_cnn from scratch until 97 % validation accuracy ({args.scratch_config})")
    r = run_child("accuracy", **_common(args, root, work), scratch_config=str(args.scratch_config))
    data = "SYNTHETIC data: says nothing about cracks" if synthetic else "held-out split"
    note = (f"reached in epoch {r['epoch']} ({r['cpu_seconds']:.0f} s of CPU time to there)" if r["seconds"] is not None
            else f"97 % NOT reached in {r['epochs']} epochs")
    note += (f"; best val {r['best_val']:.4f}; {r['train_s']:.1f} s training in all, {r['wall_s']:.1f} s wall incl. cache, "
             f"evaluation, checkpoints ({r['cpu_s']:.0f} s of CPU)")
    if r["test_accuracy"] is not None:
        note += f"; test accuracy {r['test_accuracy']:.4f}"
    note += f" ({data})"
    row = Row("to97", "3. cracks_cnn from scratch to 97 % val accuracy (training seconds)", "s", higher_is_better=False,
              target=f"< {TARGETS['to97']:g} s", note=note)
    if r["seconds"] is not None:
        row.visionlab.append(r["seconds"])
    rows["to97"] = row
    _say(f"        {note}")
    return r["checkpoint"]


def _median_run(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cli(args: argparse.Namespace, rows: dict[str, Row]) -> None:
    exe = Path(sys.executable).with_name("visionlab")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "visionlab", "--help"]
    row = rows.setdefault("cli", Row("cli", f"4. `visionlab --help` wall time (median of {args.cli_runs} runs)", "s",
                                     higher_is_better=False, baseline_name='python -c "import torch"',
                                     target=f"< {TARGETS['cli']:g} s"))
    for rep in range(args.repeats):
        _say(f"[cli] repeat {rep + 1}/{args.repeats}")
        row.visionlab.append(_median_run(cmd, args.cli_runs))
        row.baseline.append(_median_run([sys.executable, "-c", "import torch"], args.cli_runs))


# ============================================================================ table
def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name:")), name)
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{name}, {os.cpu_count()} CPU(s)"


_ORDER = ["plain", "timm", "cache", "am_plain", "am_timm", "predict", "predict_tta", "to97", "cli", "limit_cnn", "limit_lite0"]
_COLS = ["measurement", "visionlab", "baseline", "ratio", "target", "note"]


def table_lines(rows: dict[str, Row]) -> list[list[str]]:
    lines = []
    for key in [k for k in _ORDER if k in rows]:
        r = rows[key]
        baseline = r.cell(r.baseline) + (f" [{r.baseline_name}]" if r.baseline else "")
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        target = f"{r.target} {r.met()}".strip() if r.target else ""
        lines.append([r.what, r.cell(r.visionlab), baseline, ratio, target, r.note])
    return lines


def print_table(rows: dict[str, Row], header: str) -> None:
    lines = table_lines(rows)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(_COLS))
        for line in lines:
            print(" | ".join(line))
        print(header)
        return
    table = Table(title="visionlab speed (ratio > 1: visionlab is faster)", caption=header, caption_justify="left")
    for c in _COLS:
        table.add_column(c, overflow="fold", justify="right" if c in ("visionlab", "ratio") else "left")
    for line in lines:
        table.add_row(*line)
    Console(width=max(170, shutil.get_terminal_size().columns)).print(table)


def markdown(rows: dict[str, Row], header: str) -> str:
    out = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in table_lines(rows)]
    return "\n".join(out) + f"\n\n{header}\n"


def _load_average() -> str:
    """The 1-minute load average: other work on the same cores makes every figure slower and noisier."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "n/a"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder of class folders (default: ../shared/data/cracks, else synthetic images)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--steps", type=int, default=None, help="measured training steps per contender (default: 2 epochs' worth)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured warm-up steps of the baseline loops (default 5)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", default=None,
                   help="DataLoader worker counts tried for each baseline, comma-separated; the fastest counts (default: 1,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for every contender (default: the environment's, else all cores)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the table shows medians and (min-max)")
    p.add_argument("--amortize", type=int, default=5, help="epochs over which the one-off cache build is folded in")
    p.add_argument("--predict-images", type=int, default=None, help="files predicted (default 600)")
    p.add_argument("--cli-runs", type=int, default=None, help="subprocess runs per CLI timing (default 7)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--config", type=Path, default=None,
                   help="recipe of section 1 (default: configs/cracks.yaml, the task's own, with model cracks_cnn)")
    p.add_argument("--scratch-config", type=Path, default=REPO / "configs" / "cracks-scratch-fast.yaml",
                   help="recipe of section 3 (default: configs/cracks-scratch-fast.yaml)")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data, few steps: a smoke test, not a measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    p.add_argument("--verbose", action="store_true", help="show the trainer's own output")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if args.quick:
        args.batch_size = min(args.batch_size, 8)
        args.image_size = min(args.image_size, 32)
        args.steps = args.steps or 3
        args.warmup = 1 if args.warmup is None else args.warmup
        args.workers = args.workers or "0"
        args.predict_images = args.predict_images or 12
        args.cli_runs = args.cli_runs or 1
    args.warmup = 5 if args.warmup is None else args.warmup
    try:
        args.workers = sorted({int(w) for w in (args.workers or "1,2").split(",") if w.strip()})
    except ValueError:
        p.error(f"--workers takes comma-separated counts, e.g. 1,2; got {args.workers!r}")
    if not args.workers or min(args.workers) < 0:
        p.error("--workers needs at least one count, none negative")
    args.predict_images = args.predict_images or 600
    args.cli_runs = args.cli_runs or 7
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in ("steps", "batch_size", "image_size", "repeats", "amortize", "predict_images", "cli_runs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](SimpleNamespace(**json.loads(args.child_params)))
        print(_MARK + json.dumps(result), flush=True)
        return 0
    import torch

    from visionlab.kinds.classification.layout import find_classification
    from visionlab.engine.device import resolve_device

    args.device = str(resolve_device(args.device))
    rows: dict[str, Row] = {}
    work = Path(tempfile.mkdtemp(prefix="visionlab-speed-"))
    args.measured_steps = 0
    load_before = _load_average()
    try:
        root, synthetic = resolve_data(args, work)
        n_images = len(find_classification(root))
        if args.steps is None:
            args.steps = 2 * max(1, n_images // args.batch_size)
        ckpt = ""
        if "train" in args.sections:
            ckpt = bench_training(root, n_images, args, work, rows)
        if "accuracy" in args.sections:
            trained = bench_accuracy(root, synthetic, args, work, rows)
            ckpt = ckpt or trained  # prediction prefers section 1's model: same image size as the training rows
        if "predict" in args.sections:
            if not ckpt:  # a few steps of training, only to have weights to predict with
                ckpt = run_child("visionlab", **_common(args, root, work), config=str(args.config) if args.config else None,
                                 steps_per_epoch=1, epochs=2, model_options=_section1_model(args))["checkpoint"]
            bench_predict(ckpt, root, args, work, rows)
        if "cli" in args.sections:
            bench_cli(args, rows)
        if "limit" in args.sections:
            bench_limit(root, n_images, args, work, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = f"SYNTHETIC images ({n_images})" if synthetic else f"{root} ({n_images} images)"
    threads = str(args.threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    header = ("QUICK SMOKE RUN, not a measurement: " if args.quick else "") + (f"data: {data}; model cracks_cnn (2 classes); batch {args.batch_size}, {args.image_size} px; "
              f"{args.measured_steps} measured training steps per contender after warm-up; baselines' DataLoader workers tried: "
              f"{','.join(map(str, args.workers))} (fastest kept); device {args.device}; torch {torch.__version__}, {threads} threads; {machine()}; "
              f"{args.repeats} repeat(s): median (min-max); load average (1 min) {load_before} before, {_load_average()} after")
    print_table(rows, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [asdict(r) | {"ratio": r.ratio} for r in rows.values()]}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
