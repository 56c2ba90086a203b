#!/usr/bin/env python
"""visionlab serve under load, side by side with a naive FastAPI handler and offline batching.

One run, the same checkpoint and the same real photos for all three:

1. ``visionlab serve`` (dynamic batching: ``--max-batch-size``, ``--max-wait-ms``), started as
   a subprocess on 127.0.0.1 (a free port);
2. a naive FastAPI app, started the same way, whose handler runs one forward pass per request
   (``Predictor.predict`` on the one uploaded image): the seed projects' way;
3. offline batched prediction: ``visionlab.load(ckpt).predict(paths, batch_size=...)`` in this
   process, the throughput ceiling.

``--formats`` (default ``pytorch``: the checkpoint itself) adds the same two measurements, serve
and offline batched, for exported files: ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``
(``visionlab benchmark``'s names), each made by ``visionlab export`` (a subprocess, with its
parity and int8 accuracy checks) into a temporary folder and served with ``visionlab serve
--checkpoint FILE``; the naive handler runs the checkpoint only. Each format's own line says how
close its serve is to its own offline batched throughput.

Each server gets a bounded load: ``--clients`` concurrent clients (16 and 64 by default) send
``--requests`` multipart uploads in total (each a photo from ``--photos``, round robin) and then
stop; a request that fails or takes longer than ``--timeout`` counts as an error. The table has
requests/s, p50/p95/p99 latency and errors, and whether the targets are met at 16 clients:
visionlab serve >= 3x the naive handler and >= 0.7x the offline batched throughput, no errors.

Timings only mean something on an otherwise idle machine.

Usage::

    python benchmarks/serve.py --checkpoint runs/cracks/<run>/best.pt            # the measurement
    python benchmarks/serve.py --checkpoint CKPT --quick                          # seconds: a smoke test
    python benchmarks/serve.py --checkpoint CKPT --formats pytorch,openvino-int8 --clients 16
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


EXPORTS = {"onnx": ("model.onnx", []), "onnx-int8": ("model.int8.onnx", ["--int8"]),
           "openvino": ("model.xml", ["--format", "openvino"]), "openvino-int8": ("model.int8.xml", ["--format", "openvino", "--int8"])}


def export(ckpt: str, fmt: str, folder: Path) -> str:
    """The file ``fmt`` of ``ckpt``, written by ``visionlab export`` into ``folder`` (the checkpoint for pytorch)."""
    if fmt == "pytorch":
        return ckpt
    name, flags = EXPORTS[fmt]
    out = folder / name
    proc = subprocess.run([sys.executable, "-m", "visionlab", "export", ckpt, "--out", str(out), *flags], env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"visionlab export {ckpt} as {fmt} failed:\n{proc.stdout[-2000:]}")
    return str(out)


def serve(model: str, photos: list[tuple[str, bytes]], clients: list[int], args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """``visionlab serve --checkpoint model`` measured at each client count."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "visionlab", "serve", "--checkpoint", model, "--port", str(port),
                  "--device", args.device, "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                  "--max-queue", str(max(128, 2 * max(clients)))], url, "/ready")
    try:
        out = {}
        for c in clients:
            out[c] = measure(url + "/predict", photos, c, args)
            print(f"[serve {model}] {row(str(c), out[c])}", file=sys.stderr, flush=True)  # progress, in case the run is cut
        return out
    finally:
        stop(proc)


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
    p.add_argument("--formats", default="pytorch", help="comma-separated: pytorch (the checkpoint), " + ",".join(EXPORTS))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few requests, meaningless numbers")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.distinct, args.clients = 24, 8, "4,8"
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1 or args.requests < 1:
        raise SystemExit("--clients and --requests must be positive")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f != "pytorch" and f not in EXPORTS for f in formats):
        raise SystemExit(f"--formats takes pytorch,{','.join(EXPORTS)}; got {args.formats!r}")
    if args.checkpoint is None:
        from visionlab.engine.runs import latest_checkpoint

        args.checkpoint = str(latest_checkpoint(args.task))
    paths = _photos(args)
    photos = [(f.name, f.read_bytes()) for f in paths]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    batched: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:  # the exported files
        for fmt in formats:
            model = export(args.checkpoint, fmt, Path(work))
            results[_served(fmt)] = serve(model, photos, clients, args)
            batched[fmt] = offline(model, [str(f) for f in paths], args)
    results["naive FastAPI"] = {}
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
    print(f"\ncheckpoint {args.checkpoint} | {len(paths)} photos from {args.photos} | {args.requests} requests per row"
          f" | max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms | device {args.device}"
          + (" | --quick: the numbers mean nothing" if args.quick else ""))
    print("\n| server | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for name, by_clients in results.items():
        for c, r in by_clients.items():
            print(row(f"{name} | {c}", r))
    for fmt, ips in batched.items():
        print(f"| offline batched predict{_suffix(fmt)} | - | {ips:.1f} images/s | | | | |")
    c0 = clients[0]
    naive = results["naive FastAPI"][c0]
    for fmt in formats:
        ours = results[_served(fmt)][c0]
        vs_naive, vs_offline = ours["rps"] / max(naive["rps"], 1e-9), ours["rps"] / max(batched[fmt], 1e-9)
        print(f"\n{_served(fmt)} at {c0} clients: {vs_naive:.2f}x the naive handler (target >= 3x: "
              f"{'met' if vs_naive >= 3 else 'not met'}), {vs_offline:.2f}x its own offline batched throughput (target >= 0.7x: "
              f"{'met' if vs_offline >= 0.7 else 'not met'}), {ours['errors']} errors (target 0: "
              f"{'met' if ours['errors'] == 0 else 'not met'})")
    return 0


def _suffix(fmt: str) -> str:
    return "" if fmt == "pytorch" else f" ({fmt})"


def _served(fmt: str) -> str:
    return "visionlab serve" + _suffix(fmt)


if __name__ == "__main__":
    sys.exit(main())
