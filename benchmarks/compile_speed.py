#!/usr/bin/env python
"""Training compute on CPU: eager against ``torch.compile`` (inductor), channels_last and bf16, with
the compile time counted against a whole recipe run.

For each recipe (the Lite0 classifier of ``configs/cracks.yaml`` and the U-Net of
``configs/landcover.yaml``: their model, image or tile size, batch size) and each variant
(memory format x precision x eager/compiled), one fresh Python process builds the model (no
pretrained weights: they do not change the speed), and times forward, loss, backward and an
AdamW step on one fixed batch in memory, the compute-only limit of ``benchmarks/speed.py``:

* ``first s``: the first step, which for a compiled variant is where dynamo and inductor compile
  (forward and backward graphs);
* ``img/s``: steady state over ``--steps`` steps after ``--warmup``;
* ``warm-cache first s`` (compiled variants): the first step again in a second fresh process
  sharing the first one's ``TORCHINDUCTOR_CACHE_DIR`` (inductor's FX graph and AOTAutograd caches),
  i.e. what a second run of the recipe pays;
* ``recipe s``: a whole recipe run's training steps (``--recipe-steps``, by default the recipe's
  epochs x its steps per epoch on the real data) at that throughput, plus the first step (cold
  cache), and the ratio of the recipe's own default variant to it.

Each measurement is bounded (``--child-timeout``); a variant that fails or runs past it gets a row
saying so. Timings on a shared machine are rough: read the ratios of one run.

Usage::

    python benchmarks/compile_speed.py                       # both recipes, every variant
    python benchmarks/compile_speed.py --recipes lite0 --steps 20 --child-timeout 600
    python benchmarks/compile_speed.py --quick               # seconds: tiny sizes, a smoke test only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
_MARK = "@@compile_speed "

# recipe -> (config, task, training images per epoch on /work/shared/data (cracks: 70 % of 3000 photos;
# landcover: 43 training images x crops_per_image 10), what it is)
RECIPES = {
    "lite0": (REPO / "configs" / "cracks.yaml", "cracks", 2100, "EfficientNet-Lite0, cracks recipe"),
    "unet": (REPO / "configs" / "landcover.yaml", "landcover", 430, "U-Net (Lite0 encoder), landcover recipe"),
}
# (name, channels_last, precision, compiled)
VARIANTS = [
    ("eager fp32 contiguous", False, "fp32", False),
    ("eager fp32 channels_last", True, "fp32", False),
    ("eager bf16 channels_last", True, "bf16", False),
    ("compiled fp32 channels_last", True, "fp32", True),
    ("compiled fp32 contiguous", False, "fp32", True),
    ("compiled bf16 channels_last", True, "bf16", True),
]


def _config(recipe: str) -> Any:
    from visionlab.api import load_config

    path, task, _, _ = RECIPES[recipe]
    return load_config(task, str(path), {})


def child(p: dict[str, Any]) -> dict[str, Any]:
    """One variant in this process: the first step's seconds and the steady images/s after it."""
    import torch
    import torch.nn.functional as F

    import visionlab
    from visionlab.engine.device import resolve_precision
    from visionlab.models import build_model, no_weights_kwargs

    visionlab.tune_process()
    cfg = _config(p["recipe"])
    size, batch = (p.get("size") or cfg.image_size), (p.get("batch") or cfg.batch_size)
    torch.manual_seed(0)
    dense = p["recipe"] == "unet"
    model = build_model(cfg.model, 6 if dense else 2, **{**cfg.model_args, **no_weights_kwargs(cfg.model)})
    fmt = torch.channels_last if p["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    precision = resolve_precision(p["precision"], torch.device("cpu"))
    forward = torch.compile(model) if p["compiled"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 6, (batch, size, size)) if dense else torch.randint(0, 2, (batch,))

    def step() -> None:
        with precision.autocast():
            out = forward(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(p["warmup"]):
        step()
    t0 = time.perf_counter()
    for _ in range(p["steps"]):
        step()
    ips = batch * p["steps"] / (time.perf_counter() - t0)
    return {"first_s": first, "ips": ips, "batch": batch, "size": size, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def run_child(params: dict[str, Any], cache: str, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(params)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past --child-timeout {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"error": f"exit code {proc.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1][len(_MARK):])


def recipe_steps(recipe: str, args: argparse.Namespace) -> int:
    if args.recipe_steps:
        return args.recipe_steps
    cfg = _config(recipe)
    return cfg.epochs * -(-RECIPES[recipe][2] // cfg.batch_size)


def measure(recipe: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for name, channels_last, precision, compiled in VARIANTS:
        if args.variants and name not in args.variants and name != DEFAULTS[recipe]:
            continue
        params = {"recipe": recipe, "channels_last": channels_last, "precision": precision, "compiled": compiled,
                  "warmup": args.warmup, "steps": args.steps, "size": args.size, "batch": args.batch}
        cache = tempfile.mkdtemp(prefix="inductor-", dir=work)  # cold for this variant's first process
        print(f"[{recipe}] {name} ...", file=sys.stderr, flush=True)
        row = dict(run_child(params, cache, args.child_timeout), variant=name, compiled=compiled)
        if compiled and "error" not in row:
            again = run_child(dict(params, steps=1, warmup=0), cache, args.child_timeout)
            row["warm_first_s"] = again.get("first_s")
        print(f"    {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(recipe: str, rows: list[dict[str, Any]], steps: int) -> str:
    _, task, _, what = RECIPES[recipe]
    default = next((r for r in rows if "error" not in r and r["variant"] == DEFAULTS[recipe]), None)
    lines = [f"\n{what}: {steps} training steps in a whole recipe run (default: {DEFAULTS[recipe]})\n",
             "| variant | first step s | warm-cache first step s | steady img/s | vs default | recipe s (cold cache) | recipe vs default |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            continue
        total = r["first_s"] + steps * r["batch"] / r["ips"]
        base = default and default["first_s"] + steps * default["batch"] / default["ips"]
        warm = f"{r['warm_first_s']:.1f}" if r.get("warm_first_s") is not None else ""
        lines.append(f"| {r['variant']} | {r['first_s']:.1f} | {warm} | {r['ips']:.1f} | "
                     + (f"{r['ips'] / default['ips']:.2f}x | {total:.0f} | {base / total:.2f}x |" if default else " | | |"))
    return "\n".join(lines)


DEFAULTS = {"lite0": "eager fp32 channels_last", "unet": "eager bf16 channels_last"}  # what the recipes train with


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--recipes", default="lite0,unet")
    p.add_argument("--variants", default="", help="comma-separated variant names to measure (default: all; the "
                   "recipe's own default is always measured)")
    p.add_argument("--steps", type=int, default=30, help="measured steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps after the first")
    p.add_argument("--recipe-steps", type=int, default=0, help="training steps of a whole recipe run (default: from the recipe)")
    p.add_argument("--child-timeout", type=float, default=900.0, help="seconds per measurement before it is given up")
    p.add_argument("--size", type=int, default=0, help="image size (default: the recipe's)")
    p.add_argument("--batch", type=int, default=0, help="batch size (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps: a smoke test, meaningless numbers")
    args = p.parse_args(argv)
    if args.child:
        print(_MARK + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.quick:
        args.steps, args.warmup, args.size, args.batch = 2, 0, 64, 2
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [r for r in recipes if r not in RECIPES] + [v for v in args.variants if v not in [n for n, *_ in VARIANTS]]
    if unknown or not recipes or args.steps < 1:
        raise SystemExit(f"--recipes takes {','.join(RECIPES)}, --variants {','.join(n for n, *_ in VARIANTS)}, and --steps "
                         f"must be >= 1 (unknown: {', '.join(unknown) or 'none'}; --steps {args.steps})")
    with tempfile.TemporaryDirectory(prefix="compile-speed-") as tmp:
        for recipe in recipes:
            rows = measure(recipe, args, Path(tmp))
            print(table(recipe, rows, recipe_steps(recipe, args)), flush=True)
    print(f"\n{os.uname().nodename}: {os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
          + (" | --quick: the numbers mean nothing" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
