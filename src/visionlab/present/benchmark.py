"""``visionlab benchmark``'s table: one row per format, ratios to PyTorch fp32, and the pick."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionlab.benchmark import BenchmarkResult, FormatRow

__all__ = ["show_benchmark", "benchmark_rows"]

COLUMNS = ("format", "size", "metric", "batch-1 median ms", "batch-1 p95 ms", "batch-16 img/s")


def _ratio(value: float | None, base: float | None, inverse: bool = False) -> str:
    if value is None or not base:
        return ""
    return f" ({(base / value if inverse else value / base):.2f}x)"


def _cells(row: "FormatRow", base: "FormatRow | None", metric: str) -> list[str]:
    if row.error is not None:
        return [row.format, f"failed: {row.error}", "", "", "", ""]
    b = base or row
    median, p95 = row.latency_ms or (None, None)
    return [row.format, f"{row.size_bytes / 2**20:.1f} MB{_ratio(row.size_bytes, b.size_bytes)}",
            f"{metric} {row.metric:.4f}",
            f"{median:.2f}{_ratio(median, b.latency_ms[0] if b.latency_ms else None, inverse=True)}" if median else "",
            f"{p95:.2f}{_ratio(p95, b.latency_ms[1] if b.latency_ms else None, inverse=True)}" if p95 else "",
            f"{row.throughput:.1f}{_ratio(row.throughput, b.throughput)}" if row.throughput else ""]


def benchmark_rows(result: "BenchmarkResult") -> list[list[str]]:
    """The table's cells, one list per format (ratios: speed-up over PyTorch fp32, size as a share of it)."""
    return [_cells(r, result.baseline, result.metric) for r in result.rows]


def show_benchmark(result: "BenchmarkResult", out: Any) -> None:
    """The table, how it was measured, and which format it would pick and why."""
    from rich.table import Table

    table = Table(title=f"visionlab benchmark {result.checkpoint}")
    for name in COLUMNS:
        table.add_column(name, overflow="fold")
    for cells in benchmark_rows(result):
        table.add_row(*cells)
    out.print(table)
    out.print(f"{result.metric} on {result.images} images of the {result.split} split; CPU, {result.threads} threads; "
              "ratios to PyTorch fp32 in this run (latency and throughput: times faster; size: share)")
    best, why = result.choice()
    out.print(f"pick: {best.format}: {why}" if best else f"pick: none ({why})")
