"""A few Prometheus metrics, written in the text exposition format (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}',
                f"{name}_sum{{{labels}}} {self.total:.6f}", f"{name}_count{{{labels}}} {self.n}"]
        return out


class Metrics:
    """Requests by path and status, request latency, batch sizes, forward time, queue depth."""

    def __init__(self, max_batch_size: int) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        sizes = tuple(float(b) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < max_batch_size) + (float(max_batch_size),)
        self._size_buckets = sizes
        self.batch_size: dict[str, _Histogram] = {}
        self.batch_seconds: dict[str, _Histogram] = {}
        self.gauges: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {}

    def request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, model: str, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.setdefault(model, _Histogram(self._size_buckets)).observe(size)
            self.batch_seconds.setdefault(model, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[str, float]]) -> None:
        """A gauge read when scraped: ``read()`` -> {label string: value}."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            out = ["# HELP visionlab_requests_total HTTP requests by path and status.",
                   "# TYPE visionlab_requests_total counter"]
            out += [f'visionlab_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
            out += ["# HELP visionlab_request_seconds Request latency, from the first byte read to the answer.",
                    "# TYPE visionlab_request_seconds histogram"]
            for p, h in sorted(self.latency.items()):
                out += h.lines("visionlab_request_seconds", f'path="{p}"')
            out += ["# HELP visionlab_batch_size Images per forward pass.", "# TYPE visionlab_batch_size histogram"]
            for m, h in sorted(self.batch_size.items()):
                out += h.lines("visionlab_batch_size", f'model="{m}"')
            out += ["# HELP visionlab_batch_seconds Time of one batched forward pass.", "# TYPE visionlab_batch_seconds histogram"]
            for m, h in sorted(self.batch_seconds.items()):
                out += h.lines("visionlab_batch_seconds", f'model="{m}"')
        for name, (help_text, read) in self.gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            out += [f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}" for labels, value in read().items()]
        return "\n".join(out) + "\n"
