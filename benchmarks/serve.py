#!/usr/bin/env python
"""visionlab serve under load, side by side with a naive FastAPI handler and offline batching.

One run, the same checkpoint and the same real photos for all three:

1. ``visionlab serve`` (dynamic batching: ``--max-batch-size``, ``--max-wait-ms``), started as
   a subprocess on 127.0.0.1 (a free port);
2. a naive FastAPI app, started the same way, whose handler runs one forward pass per request
   (``Predictor.predict`` on the one uploaded image): the seed projects' way;
3. offline batched prediction: ``visionlab.load(ckpt).predict(paths, batch_size=...)`` in this
   process, the throughput ceiling.

Each server gets a bounded load: ``--clients`` concurrent clients (16 and 64 by default) send
``--requests`` multipart uploads in total (each a photo from ``--photos``, round robin) and then
stop; a request that fails or takes longer than ``--timeout`` counts as an error. The table has
requests/s, p50/p95/p99 latency and errors, and whether the targets are met at 16 clients:
visionlab serve >= 3x the naive handler and >= 0.7x the offline batched throughput, no errors.

Timings only mean something on an otherwise idle machine.

Usage::

    python benchmarks/serve.py --checkpoint runs/cracks/<run>/best.pt            # the measurement
    python benchmarks/serve.py --checkpoint CKPT --quick                          # seconds: a smoke test
    python benchmarks/serve.py --task cracks --photos ../shared/data/cracks --requests 2000 --clients 16,64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]

NAIVE_APP = '''
import io, sys
from fastapi import FastAPI, File, UploadFile
from PIL import Image
import visionlab

visionlab.tune_process()  # the process tuning visionlab serve has, so only the serving differs
predictor = visionlab.load(sys.argv[1], device=sys.argv[2])
app = FastAPI()

@app.get("/ready")
def ready():
    return {"ready": True}

@app.post("/predict")
def predict(image: UploadFile = File(...)):  # one forward pass per request
    p = predictor.predict(Image.open(io.BytesIO(image.file.read())).convert("RGB"))[0]
    return {"label": p.label, "confidence": p.confidence, "top_k": p.top_k}

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(cmd: list[str], url: str, ready_path: str, timeout: float = 180.0) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:4]} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{url} was not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _load(url: str, photos: list[tuple[str, bytes]], clients: int, requests: int, timeout: float) -> dict[str, Any]:
    """``requests`` uploads from ``clients`` concurrent clients; latencies of the good ones, errors."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                name, data = photos[i % len(photos)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, files={"image": (name, data, "image/jpeg")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"rps": len(latencies) / wall, "latencies": sorted(latencies), "errors": errors, "requests": requests}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def measure(url: str, photos: list[tuple[str, bytes]], clients: int, args: argparse.Namespace) -> dict[str, Any]:
    warm = max(clients, 8)  # unmeasured: connections, first batches
    asyncio.run(_load(url, photos, clients, warm, args.timeout))
    return asyncio.run(_load(url, photos, clients, args.requests, args.timeout))


def offline(ckpt: str, paths: list[str], args: argparse.Namespace) -> float:
    import visionlab

    visionlab.tune_process()  # as visionlab's commands run
    model = visionlab.load(ckpt, device=args.device)
    model.predict(paths[: args.max_batch_size], batch_size=args.max_batch_size)  # warm-up
    n = args.requests
    todo = (paths * (n // len(paths) + 1))[:n]
    t0 = time.perf_counter()
    model.predict(todo, batch_size=args.max_batch_size)
    return n / (time.perf_counter() - t0)


def _photos(args: argparse.Namespace) -> list[Path]:
    from visionlab.data.io import is_image_file

    root = Path(args.photos).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--photos {root} is not a folder of photos")
    files = sorted(f for f in root.rglob("*") if f.is_file() and is_image_file(f))
    if not files:
        raise SystemExit(f"no photos under {root}")
    step = max(1, len(files) // args.distinct)
    return files[::step][: args.distinct]


def row(name: str, r: dict[str, Any]) -> str:
    lat = r["latencies"]
    return (f"| {name} | {r['rps']:.1f} | {_pct(lat, 50) * 1e3:.0f} | {_pct(lat, 95) * 1e3:.0f} | {_pct(lat, 99) * 1e3:.0f} "
            f"| {r['errors']} of {r['requests']} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint to serve (default: the latest run of --task)")
    p.add_argument("--task", default="cracks")
    p.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "cracks"), help="folder of real photos")
    p.add_argument("--distinct", type=int, default=64, help="how many different photos are sent, round robin")
    p.add_argument("--requests", type=int, default=1024, help="measured requests per server and client count")
    p.add_argument("--clients", default="16,64", help="concurrent clients, comma-separated")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few requests, meaningless numbers")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.distinct, args.clients = 24, 8, "4,8"
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1 or args.requests < 1:
        raise SystemExit("--clients and --requests must be positive")
    if args.checkpoint is None:
        from visionlab.engine.runs import latest_checkpoint

        args.checkpoint = str(latest_checkpoint(args.task))
    paths = _photos(args)
    photos = [(f.name, f.read_bytes()) for f in paths]
    results: dict[str, dict[int, dict[str, Any]]] = {"visionlab serve": {}, "naive FastAPI": {}}

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "visionlab", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
                  "--device", args.device, "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                  "--max-queue", str(max(128, 2 * max(clients)))], url, "/ready")
    try:
        for c in clients:
            results["visionlab serve"][c] = measure(url + "/predict", photos, c, args)
    finally:
        stop(proc)

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "naive_app.py"
        script.write_text(NAIVE_APP)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start([sys.executable, str(script), args.checkpoint, args.device, str(port)], url, "/ready")
        try:
            for c in clients:
                results["naive FastAPI"][c] = measure(url + "/predict", photos, c, args)
        finally:
            stop(proc)

    batched = offline(args.checkpoint, [str(f) for f in paths], args)
    print(f"\ncheckpoint {args.checkpoint} | {len(paths)} photos from {args.photos} | {args.requests} requests per row"
          f" | max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms | device {args.device}"
          + (" | --quick: the numbers mean nothing" if args.quick else ""))
    print("\n| server | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for name, by_clients in results.items():
        for c, r in by_clients.items():
            print(row(f"{name} | {c}", r))
    print(f"| offline batched predict | - | {batched:.1f} images/s | | | | |")
    c0 = clients[0]
    ours, naive = results["visionlab serve"][c0], results["naive FastAPI"][c0]
    vs_naive, vs_offline = ours["rps"] / max(naive["rps"], 1e-9), ours["rps"] / max(batched, 1e-9)
    print(f"\nat {c0} clients: {vs_naive:.2f}x the naive handler (target >= 3x: {'met' if vs_naive >= 3 else 'not met'}), "
          f"{vs_offline:.2f}x offline batched (target >= 0.7x: {'met' if vs_offline >= 0.7 else 'not met'}), "
          f"{ours['errors']} errors (target 0: {'met' if ours['errors'] == 0 else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
