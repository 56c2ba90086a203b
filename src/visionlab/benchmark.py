"""``visionlab benchmark CKPT``: every format a checkpoint can run in, measured side by side in one run.

Each format is exported into a temporary folder (with export's own checks: parity for ONNX, the
validation-split check for int8), then measured the same way on the same CPU threads:

* **size**: the file a user would ship (the checkpoint for PyTorch);
* **metric**: the kind's primary metric on the test split (at most ``images`` of it, evenly
  spaced), through the kind's runner, the evaluation ``visionlab evaluate`` runs;
* **batch-1 latency**: median and 95th percentile of single calls on one input of the model's size;
* **batch-16 throughput**: images per second over batches of 16.

Loops are bounded: a fixed number of calls, cut short by a time cap. The formats are timed
interleaved, in ``ROUNDS`` rounds that each give every format a share of its calls, so a machine
whose load changes during the run (other jobs, thermal limits) slows every format alike, not the
ones measured last. Every figure is also given as a ratio to PyTorch fp32 measured in the same run. A format that fails to export or to run gets
a row saying why. The pick is the fastest format at batch 1 whose test metric is within the
kind's tolerance (:attr:`~visionlab.kinds.Kind.max_quantization_drop`) of PyTorch fp32.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from visionlab.errors import VisionlabError
from visionlab.kinds import get_kind

__all__ = ["FORMATS", "FormatRow", "BenchmarkResult", "benchmark", "check_formats"]

FORMATS = ("pytorch", "pytorch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8")
LATENCY_CALLS, THROUGHPUT_CALLS, WARMUP_CALLS = 100, 8, 3
SLICE_WARMUP_CALLS = 2  # untimed, at the start of each format's loop in each round
ROUNDS = 4  # interleaved rounds over the formats; each round times a quarter of the calls
TIME_CAP_S = 10.0  # per loop and format, over all rounds
THROUGHPUT_BATCH = 16


@dataclass
class FormatRow:
    """One format's figures, or why it has none (``error``)."""

    format: str
    size_bytes: int | None = None
    metric: float | None = None
    latency_ms: tuple[float, float] | None = None  # batch 1: median, p95
    throughput: float | None = None  # images/s at batch 16
    calls: tuple[int, int] = (0, 0)  # batch-1 calls, batch-16 calls measured
    error: str | None = None


@dataclass
class BenchmarkResult:
    checkpoint: Path
    metric: str
    split: str
    images: int
    tolerance: float
    higher_is_better: bool
    threads: int
    rows: list[FormatRow] = field(default_factory=list)

    @property
    def baseline(self) -> FormatRow | None:
        return next((r for r in self.rows if r.format == "pytorch" and r.error is None), None)

    def within_tolerance(self, row: FormatRow) -> bool:
        base = self.baseline
        if base is None or row.metric is None or base.metric is None:
            return False
        drop = base.metric - row.metric if self.higher_is_better else row.metric - base.metric
        return drop <= self.tolerance + 1e-12

    def choice(self) -> tuple[FormatRow | None, str]:
        """The fastest format at batch 1 within the tolerance of PyTorch fp32's test metric, and why."""
        fine = [r for r in self.rows if r.error is None and r.latency_ms and self.within_tolerance(r)]
        if not fine:
            return None, "no format ran within the accuracy tolerance of PyTorch fp32"
        best = min(fine, key=lambda r: r.latency_ms[0])
        rejected = [r.format for r in self.rows if r.error is None and r.latency_ms and not self.within_tolerance(r)]
        why = (f"fastest at batch 1 ({best.latency_ms[0]:.2f} ms median) with {self.metric} {best.metric:.4f} within "
               f"{self.tolerance:g} of PyTorch fp32's")
        return best, why + (f"; {', '.join(rejected)} faster or not, but outside the tolerance" if rejected else "")


def check_formats(formats: str | list[str] | tuple[str, ...]) -> list[str]:
    """``--formats`` as a list of known format names, in the order given; else one line saying which exist."""
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise VisionlabError(f"unknown benchmark format(s): {', '.join(unknown) or '(none given)'}.",
                             f"Pick from {','.join(FORMATS)}.")
    return list(dict.fromkeys(names if "pytorch" in names else ["pytorch", *names]))  # the baseline is always measured


def _timed(fn: Callable[[], Any], calls: int, cap_s: float) -> list[float]:
    """Seconds of each of at most ``calls`` calls of ``fn``, stopping after ``cap_s`` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < calls and time.perf_counter() - start < cap_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class _Timer:
    """One format's timed calls: batch 1 and batch 16 on fixed inputs of the model's size, in slices."""

    def __init__(self, row: FormatRow, model: Any, context: Callable[[], Any], size: int) -> None:
        import torch

        rng = np.random.default_rng(0)
        self.row, self.single, self.batched = row, [], []
        self.calls = [self._call(torch, model, context, rng.standard_normal((n, 3, size, size), dtype=np.float32))
                      for n in (1, THROUGHPUT_BATCH)]

    @staticmethod
    def _call(torch: Any, model: Any, context: Callable[[], Any], x: np.ndarray) -> Callable[[], Any]:
        tensor = torch.from_numpy(x)

        def run() -> Any:
            with torch.inference_mode(), context():
                return model(tensor)
        return run

    def warm_up(self) -> None:
        for call in self.calls:
            for _ in range(WARMUP_CALLS):
                call()

    def slice(self) -> None:
        """This round's share of the calls (and of the time cap), each loop after untimed calls: the
        first calls after another format ran are slower (its threads still spinning, caches cold;
        3x at batch 1 for a Lite0 .onnx), and would be a share of the timed ones."""
        for call, n, into in ((self.calls[0], LATENCY_CALLS, self.single), (self.calls[1], THROUGHPUT_CALLS, self.batched)):
            for _ in range(SLICE_WARMUP_CALLS):
                call()
            into += _timed(call, -(-n // ROUNDS), TIME_CAP_S / ROUNDS)

    def finish(self) -> None:
        row, single, batched = self.row, self.single[:LATENCY_CALLS], self.batched[:THROUGHPUT_CALLS]
        row.latency_ms = (float(np.median(single)) * 1e3, float(np.percentile(single, 95)) * 1e3)
        row.throughput = THROUGHPUT_BATCH * len(batched) / sum(batched)
        row.calls = (len(single), len(batched))


def _interleaved(timers: list[_Timer]) -> None:
    """Time every format in ``ROUNDS`` interleaved rounds; a format that fails there gets a row saying why."""
    live = []
    for timer in timers:
        if _guarded(timer.row, timer.warm_up):
            live.append(timer)
    for _ in range(ROUNDS):
        live = [t for t in live if _guarded(t.row, t.slice)]
    for timer in live:
        timer.finish()


def _build(fmt: str, ckpt: Path, state: dict[str, Any], folder: Path, max_drop: float | None,
           console: Any) -> tuple[Any, Callable[[], Any], int]:
    """The model of ``fmt`` (a torch-callable module), the context it runs under, and its file size."""
    from visionlab.engine.checkpoint import load_model
    from visionlab.engine.device import resolve_precision

    import torch

    plain = contextlib.nullcontext
    if fmt in ("pytorch", "pytorch-bf16"):
        context = plain if fmt == "pytorch" else resolve_precision("bf16", torch.device("cpu")).autocast
        return load_model(state, channels_last=False).float(), context, ckpt.stat().st_size
    if fmt == "onnx":
        from visionlab.export import export_onnx

        result = export_onnx(ckpt, out=folder / "model.onnx", console=console)
    elif fmt == "onnx-int8":
        from visionlab.quantize import export_int8

        result = export_int8(ckpt, out=folder / "model.int8.onnx", max_drop=max_drop, console=console)
    else:
        from visionlab.openvino import export_openvino

        result = export_openvino(ckpt, out=folder / f"{fmt}.xml", int8=fmt == "openvino-int8", max_drop=max_drop, console=console)
    return load_model(dict(state, onnx=str(result.path))), plain, result.size_bytes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _guarded(row: FormatRow, fn: Callable[[], Any]) -> bool:
    """Run ``fn``; any failure becomes ``row``'s one-line reason (and False)."""
    try:
        fn()
        return True
    except VisionlabError as exc:
        row.error = (exc.message.splitlines() or [type(exc).__name__])[0][:300]
    except Exception as exc:  # noqa: BLE001 (a format that cannot run here: its row says why)
        row.error = f"{type(exc).__name__}: {_first_line(exc)}"
    row.latency_ms = row.throughput = None
    return False


def _measure(fmt: str, ckpt: Path, state: dict[str, Any], runner: Any, folder: Path, max_drop: float | None,
             console: Any) -> tuple[FormatRow, _Timer | None]:
    """One row with its export and test metric, and the timer of its speed (None when it failed)."""
    row, built = FormatRow(fmt), []

    def build() -> None:
        model, context, row.size_bytes = _build(fmt, ckpt, state, folder, max_drop, console)
        row.metric = float(runner.evaluate(model, "test", context).metrics[runner.primary])
        built.append(_Timer(row, model, context, int(state["preprocessing"]["image_size"])))

    return row, (built[0] if _guarded(row, build) else None)


def benchmark(checkpoint: str | os.PathLike, formats: str | list[str] | tuple[str, ...] = FORMATS, images: int = 200,
              max_drop: float | None = None, console: Any = None) -> BenchmarkResult:
    """Export ``checkpoint`` to each of ``formats`` and measure them (see the module docstring).

    ``images``: at most this many test-split images are scored per format. ``max_drop`` (default:
    the kind's tolerance) goes to the int8 exports and judges the pick. ``console`` receives
    the exports' own lines. Returns a :class:`BenchmarkResult`; :func:`visionlab.present.benchmark.show_benchmark` shows it."""
    import torch

    from visionlab.engine.checkpoint import load_checkpoint
    from visionlab.engine.runner import prepared_runner
    from visionlab.registry import checkpoint_task

    from visionlab.quantize import check_max_drop

    names = check_formats(formats)
    check_max_drop(max_drop)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise VisionlabError(f"--images must be an integer >= 1, got {images!r}.", "Pass e.g. --images 200.")
    ckpt = Path(checkpoint).expanduser()
    state = load_checkpoint(ckpt)
    if state.get("onnx"):
        raise VisionlabError(f"{ckpt} is an exported model.", "Benchmark the .pt checkpoint it was exported from.")
    kind = get_kind(state["kind"])
    runner, _ = prepared_runner(checkpoint_task(state), kind, state, ckpt, device="cpu", console=console)
    test = runner.splits["test"]
    if len(test) == 0:
        raise VisionlabError(f"the test split of {runner.cfg.data} is empty.", "Benchmark a run whose data has a test split.")
    runner.splits["test"] = test[np.linspace(0, len(test) - 1, num=min(len(test), images), dtype=int)]
    tolerance = kind.max_quantization_drop if max_drop is None else float(max_drop)
    result = BenchmarkResult(ckpt, kind.primary, "test", len(runner.splits["test"]), tolerance,
                             kind.higher_is_better(kind.primary), torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="visionlab-benchmark-") as tmp:
        measured = [_measure(fmt, ckpt, state, runner, Path(tmp), max_drop, console) for fmt in names]
        result.rows = [row for row, _ in measured]
        _interleaved([timer for _, timer in measured if timer is not None])
    return result
