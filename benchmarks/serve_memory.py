#!/usr/bin/env python
"""Peak memory of visionlab serve under a bounded load of the largest requests it accepts.

For each request shape and client count, a fresh ``visionlab serve --checkpoint CKPT`` is
started on 127.0.0.1 (a free port, default limits unless given) and its resident memory is read
from ``/proc`` (Linux): once ready (the baseline), then every 50 ms while ``--clients``
concurrent clients send ``--requests`` requests in all, each as large as ``--max-megapixels``
lets a request be: one image of the whole pixel budget, or 64 images that share it. The table
has the answers by status, the baseline and peak RSS, and the peak above the baseline.

Usage::

    python benchmarks/serve_memory.py --checkpoint runs/landcover/<run>/best.pt
    python benchmarks/serve_memory.py --checkpoint CKPT --clients 4,16 --requests 32 --max-megapixels 24
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import _free_port, start, stop  # noqa: E402  (benchmarks/serve.py)


def _png(width: int, height: int) -> bytes:
    """A smooth PNG: a small file that costs its full pixel count to decode (no JPEG draft mode)."""
    from PIL import Image

    grey = Image.linear_gradient("L").resize((width, height))
    img = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey.rotate(180)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def shapes(megapixels: float) -> dict[str, list[tuple[str, bytes]]]:
    """Request shapes that use the whole pixel budget: 1 image (3:2), 64 images (3:2 each)."""
    def side(pixels: float) -> tuple[int, int]:
        h = int((pixels / 1.5) ** 0.5)
        return int(h * 1.5), h

    w, h = side(megapixels * 1e6)
    w64, h64 = side(megapixels * 1e6 / 64)
    one, small = _png(w, h), _png(w64, h64)
    return {f"1 PNG of {w} x {h}": [("a.png", one)],
            f"64 PNGs of {w64} x {h64}": [(f"{i}.png", small) for i in range(64)]}


def _rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in MB (0 once it has exited)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


async def _load(url: str, files: list[tuple[str, bytes]], clients: int, requests: int, timeout: float) -> collections.Counter:
    import httpx

    statuses: collections.Counter = collections.Counter()
    counter = iter(range(requests))
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker() -> None:
            for _ in counter:
                try:
                    r = await client.post(url, files=[("images", (n, d, "image/png")) for n, d in files])
                    statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return statuses


def measure(args: argparse.Namespace, files: list[tuple[str, bytes]], clients: int) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "visionlab", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
                  "--device", args.device, "--max-megapixels", str(args.max_megapixels),
                  "--max-queue-megapixels", str(args.max_queue_megapixels)], url, "/ready")
    try:
        base = _rss(proc.pid)["VmRSS"]
        done = threading.Event()
        peak = [base]

        def sample() -> None:  # VmHWM has the peak too; the samples show it is reached under this load
            while not done.wait(0.05):
                peak[0] = max(peak[0], _rss(proc.pid)["VmRSS"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        statuses = asyncio.run(_load(url + "/predict", files, clients, args.requests, args.timeout))
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        hwm = _rss(proc.pid)["VmHWM"]
    finally:
        stop(proc)
    return {"statuses": statuses, "base": base, "peak": max(hwm, peak[0]), "wall": wall}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint to serve (landcover is the costly kind)")
    p.add_argument("--clients", default="4,16", help="concurrent clients, comma-separated")
    p.add_argument("--requests", type=int, default=32, help="requests per row")
    p.add_argument("--max-megapixels", type=float, default=24.0, help="the server's pixel budget per request")
    p.add_argument("--max-queue-megapixels", type=float, default=96.0, help="the server's pixel budget in flight")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a request counts as an error")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the server
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not Path("/proc/self/status").exists():
        raise SystemExit("this benchmark reads /proc (Linux)")
    if not clients or min(clients) < 1 or args.requests < 1:
        raise SystemExit("--clients and --requests must be positive")
    print(f"checkpoint {args.checkpoint} | --max-megapixels {args.max_megapixels:g} | --max-queue-megapixels "
          f"{args.max_queue_megapixels:g} | {args.requests} requests per row"
          f" | device {args.device}\n")
    print("| request | clients | answers | seconds | RSS ready MB | peak RSS MB | peak - ready MB |\n|---|---|---|---|---|---|---|")
    for name, files in shapes(args.max_megapixels).items():
        for c in clients:
            r = measure(args, files, c)
            answers = ", ".join(f"{n} x {s}" for s, n in sorted(r["statuses"].items(), key=str))
            print(f"| {name} | {c} | {answers} | {r['wall']:.0f} | {r['base']} | {r['peak']} | {r['peak'] - r['base']} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
