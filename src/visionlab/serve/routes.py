"""The routes of ``visionlab serve``: an :class:`~fastapi.APIRouter` whose handlers read the app's
:class:`ServerState` from ``request.app.state.server`` (see :func:`visionlab.serve.app.create_app`)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from visionlab._version import __version__
from visionlab.data.io import UnreadableImage
from visionlab.serve.metrics import Metrics
from visionlab.serve.uploads import BodyBudget, Problem, check_images, decode_failure, parse_uploads, read_body

if TYPE_CHECKING:
    from visionlab.serve.app import ServedModel, Settings

STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
# The page may load nothing that is not served by this process.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
       "style-src 'self'; script-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

router = APIRouter()


def _static(name: str) -> bytes:
    return resources.files("visionlab.serve").joinpath("static", name).read_bytes()


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


@dataclass
class ServerState:
    """One app's models, settings, metrics, threads and body budget, and the counters of its work."""

    models: Sequence[ServedModel]
    settings: Settings
    metrics: Metrics
    bodies: BodyBudget
    decode_pool: ThreadPoolExecutor
    # every torch call (loading, warm-up, each model's batches) runs in this one thread: see Batcher
    model_thread: ThreadPoolExecutor
    page: bytes = field(default_factory=lambda: _static("index.html"))
    assets: dict[str, bytes] = field(default_factory=lambda: {name: _static(name) for name in STATIC})
    pending: int = 0  # queue places held by images admitted and not yet answered (EXPLAINED_PLACES for an explained one)
    pending_pixels: int = 0  # their pixels
    in_flight: int = 0  # predict requests being answered
    cut_off: int = 0  # requests answered 503 when --drain-seconds ran out
    ready: bool = False
    error: str | None = None  # why loading the models failed
    loaded_in: float | None = None

    @property
    def by_task(self) -> dict[str, ServedModel]:
        return {m.task: m for m in self.models}

    def broken(self) -> list[str]:
        """What keeps the models from answering for good: a failed load, a batch loop that stopped."""
        return [e for e in (self.error, *(m.batcher.stopped for m in self.models if m.batcher)) if e]

    def busy(self) -> Problem:
        s = self.settings
        return Problem(503, f"the server is busy ({self.pending} images of {self.pending_pixels / 1e6:.1f} MP "
                            f"queued (an explained image counts {EXPLAINED_PLACES}), --max-queue {s.max_queue}, --max-queue-megapixels "
                            f"{s.max_queue_megapixels:g}); retry shortly.", {"Retry-After": "1"})


def _server(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "visionlab_version": __version__}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    server = _server(request)
    errors = server.broken()
    ok = server.ready and not errors
    body = {"ready": ok, "models": {m.task: m.predictor is not None for m in server.models}}
    if errors:
        body["error"] = "; ".join(errors)
    elif ok:
        body["loaded_in_seconds"] = server.loaded_in
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    server = _server(request)
    return {"models": [m.info() for m in server.models], "visionlab_version": __version__,
            "max_upload_mb": server.settings.max_upload_mb, "max_batch_size": server.settings.max_batch_size}


@router.get("/metrics")
async def prometheus(request: Request) -> PlainTextResponse:
    return PlainTextResponse(_server(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/")
async def index(request: Request) -> Response:
    return Response(_server(request).page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})


@router.get("/static/{name}")
async def asset(name: str, request: Request) -> Response:
    assets = _server(request).assets
    if name not in assets:
        return problem(404, f"no static file {name!r}")
    return Response(assets[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@router.post("/predict")
async def predict(request: Request) -> JSONResponse:
    return await answer(request, None)


@router.post("/predict/{task}")
async def predict_task(task: str, request: Request) -> JSONResponse:
    return await answer(request, task)


def _unpack(content_type: str, body: bytes, max_pixels: int) -> tuple[list[Any], dict[str, Any], list[Any], int]:
    """In a decode thread: the body's uploads, its other fields, their checked files and pixels."""
    uploads, extra = parse_uploads(content_type, body)
    return uploads, extra, *check_images(uploads, max_pixels)


def _prepare(model: ServedModel, upload: Any, image: Any) -> tuple[Any, Any]:
    """decode: the very decoding `visionlab predict` gives a file (its header is checked)."""
    try:
        return model.predictor.preprocess(image), image
    except UnreadableImage as exc:
        raise decode_failure(upload, exc) from None


async def _unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """The work's result, or ClientDisconnect if the client hangs up first (the body read): then the
    work is cancelled, and a batch drops the request's images."""
    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(hung_up())
    try:
        done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # a no-op when it is done
    if task not in done:
        raise ClientDisconnect()
    return task.result()


def _model_for(server: ServerState, task: str | None) -> tuple[str, ServedModel]:
    """The task asked for (the only one when none is) and its model, once the models are ready."""
    by_task = server.by_task
    if task is None:
        if len(by_task) > 1:
            raise Problem(422, f"{len(by_task)} models are served ({', '.join(by_task)}); POST to /predict/{{task}}.")
        task = next(iter(by_task))
    if task not in by_task:
        raise Problem(404, f"no model for task {task!r}; served: {', '.join(by_task)}.")
    if not server.ready:
        raise Problem(503, "the models are still loading; retry when /ready answers 200.", {"Retry-After": "2"})
    return task, by_task[task]


#: Queue places (--max-queue) an image asked with explain=1 holds: its Grad-CAM (a forward and a backward
#: pass) costs 0.6-0.9 of the prediction again (benchmarks/README.md, explain.py), so that many explained
#: images cannot make the queue's wait twice what --max-queue bounds for other clients.
EXPLAINED_PLACES = 2


def _explain(request: Request, model: ServedModel) -> bool:
    """Whether the query asks for explanations (``explain=1``/``true``); one the model cannot give is a 422."""
    value = request.query_params.get("explain", "0").strip().lower()
    if value not in ("0", "1", "true", "false", ""):
        raise Problem(422, f"explain={request.query_params['explain']!r} is not 1 or 0.")
    if value in ("1", "true") and model.cannot_explain:
        raise Problem(422, f"{model.cannot_explain} Leave out explain=1.")
    return value in ("1", "true")


def _encode(pred: Any, image: Any) -> dict[str, Any]:
    """In a decode thread: the result's JSON, with its explanation (when asked) as a base64 PNG."""
    from PIL import Image

    from visionlab.kinds.base import image_base64

    out = pred.to_json(image)
    if pred.explanation is not None:
        out["explanation"] = image_base64(Image.fromarray(pred.explanation), "PNG")
    return out


def _top_k(request: Request, default: int) -> int:
    try:
        top_k = int(request.query_params.get("top_k", default))
    except ValueError:
        raise Problem(422, f"top_k={request.query_params['top_k']!r} is not an integer.") from None
    if not 1 <= top_k <= 1000:
        raise Problem(422, f"top_k={top_k} is out of range (1..1000).")
    return top_k


async def answer(request: Request, task: str | None) -> JSONResponse:
    """A predict request: admitted while the queue has room, decoded, batched, encoded."""
    server = _server(request)
    settings, loop = server.settings, asyncio.get_running_loop()
    task, model = _model_for(server, task)
    top_k = _top_k(request, settings.top_k)
    explain = _explain(request, model)
    if server.pending >= settings.max_queue or server.pending_pixels >= settings.max_queue_megapixels * 1e6:
        raise server.busy()  # refused before its body is read
    reserved = pixels = held = 0
    server.in_flight += 1
    t0 = time.perf_counter()
    try:
        body = await read_body(request.headers, request.stream(), int(settings.max_upload_mb * 2**20),
                               settings.body_timeout, server.bodies)
        held = len(body)
        uploads, extra, files, size = await loop.run_in_executor(server.decode_pool, _unpack, request.headers.get(
            "content-type", ""), body, int(settings.max_megapixels * 1e6))
        del body
        places = len(uploads) * (EXPLAINED_PLACES if explain else 1)
        if places > settings.max_queue:  # could never be admitted: a 503 would be retried for ever
            each = f" explained (each counts {EXPLAINED_PLACES})" if explain else ""
            raise Problem(413, f"{len(uploads)} images{each} in one request; this server admits at most {settings.max_queue} "
                               "at once (--max-queue); send fewer per request.")
        # only images read and parsed hold places, by count (an explained one more) and by pixels (what decoding them costs)
        if (server.pending + places > settings.max_queue
                or server.pending_pixels + size > settings.max_queue_megapixels * 1e6):
            raise server.busy()
        reserved, pixels = places, size
        server.pending += reserved
        server.pending_pixels += pixels
        prepared = await asyncio.gather(*(loop.run_in_executor(server.decode_pool, _prepare, model, u, f)
                                          for u, f in zip(uploads, files)))
        items = [(arr, u.name, img, top_k, explain) for u, (arr, img) in zip(uploads, prepared)]
        preds = await _unless_gone(request, model.batcher.submit(items))
        encoded = await asyncio.gather(*(loop.run_in_executor(server.decode_pool, _encode, p, img)
                                         for p, (_, img) in zip(preds, prepared)))
    finally:
        server.pending -= reserved
        server.pending_pixels -= pixels
        server.in_flight -= 1
        server.bodies.give(held)
    out: dict[str, Any] = {"task": task}
    if "id" in extra:
        out["id"] = extra["id"]
    out["results"] = [{"index": i, "name": u.name, **r} for i, (u, r) in enumerate(zip(uploads, encoded))]
    out["seconds"] = round(time.perf_counter() - t0, 4)
    headers = {"X-Request-ID": request.headers["x-request-id"]} if "x-request-id" in request.headers else None
    return JSONResponse(out, headers=headers)
