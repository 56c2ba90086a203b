"""The FastAPI app of ``visionlab serve``: several models, one per task, batched.

Each request flows decode -> predict -> encode (LitServe's split): the body is read and decoded
in a thread pool, the forward pass runs in a batch with other requests' images in the model's
own thread (:class:`~visionlab.serve.batching.Batcher`), and each result serialises itself
(:meth:`visionlab.kinds.Prediction.to_json`). Nothing here knows what a task kind
is: classes, input size and what a result holds all come from the checkpoint and the result.

``/health`` says the process is up, ``/ready`` that every model is loaded and warmed up
(Triton's live/ready split); a full queue answers 503 with Retry-After. Only the bound host
names are answered (DNS rebinding), POSTs from other sites' pages only for ``--cors-origin``,
and off loopback only with an API key (:class:`_Gate`, :func:`_check_access`). The routes are in
:mod:`visionlab.serve.routes`; :func:`create_app` wires them to the state, the lifespan and the guards.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from visionlab._version import __version__
from visionlab.errors import VisionlabError
from visionlab.kinds.base import DEFAULT_TOP_K
from visionlab.serve.batching import Batcher, BatcherStopped
from visionlab.serve.metrics import Metrics
from visionlab.serve.routes import EXPLAINED_PLACES, ServerState, problem, router
from visionlab.serve.uploads import BodyBudget, Problem

__all__ = ["Settings", "ServedModel", "load_models", "create_app", "run"]

log = logging.getLogger("visionlab.serve")
KEY_ENV = "VISIONLAB_API_KEY"
COOKIE = "visionlab_api_key"
HOST_OK = "visionlab.host_ok"  # set in the scope of a request past the Host check


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure_no_key: bool = False  # listen off loopback without a key, on purpose
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides the bound ones ('*': any)
    cors_origins: list[str] = field(default_factory=list)  # other sites whose pages may call the API
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 128  # images admitted and not yet answered; more -> 503 + Retry-After
    max_upload_mb: float = 20.0
    max_bodies_mb: float = 256.0  # request bodies held at once, all requests together; more -> 503
    body_timeout: float = 30.0  # seconds a request body may take to arrive; slower -> 408
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers; slower -> closed
    max_megapixels: float = 24.0  # all the images of one request together (a LandCover.ai orthophoto is 85 MP)
    max_queue_megapixels: float = 96.0  # pixels admitted and not yet answered, all requests together; more -> 503
    top_k: int = DEFAULT_TOP_K
    device: str = "auto"
    precision: str = "fp32"  # as the exported .onnx answers; auto: bf16 where the CPU/GPU has it
    calibration: bool = True  # the model's fitted temperature applied; False (--no-calibration): the raw softmax
    unknown: str | float = "auto"  # its unknown detector: auto (its threshold), a threshold, or off
    drain_seconds: float = 30.0  # SIGTERM: how long requests in flight may take to finish
    decode_threads: int = max(1, min(4, os.cpu_count() or 1))


class ServedModel:
    """One checkpoint: its description (available at once) and, once loaded, its predictor."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path, self.state = path, state
        self.task: str = state["task"]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.sha256 = digest.hexdigest()
        self.predictor: Any = None
        self.batcher: Batcher | None = None
        self.cannot_explain: str | None = None  # why its answers cannot be explained (explain=1), once loaded

    def info(self) -> dict[str, Any]:
        pre = self.state["preprocessing"]
        return {"task": self.task, "kind": self.state["kind"], "classes": list(self.state["classes"]),
                "input_size": int(pre["image_size"]), "preprocessing": pre, "model": self.state["model_name"],
                "checkpoint": self.path.name, "checkpoint_sha256": self.sha256,
                "trained_with_visionlab": self.state.get("visionlab_version"), "visionlab_version": __version__,
                "synthetic_data": bool(self.state.get("data", {}).get("synthetic", False)),
                "calibration": self.state.get("calibration"),
                "temperature": self.predictor.temperature if self.predictor is not None else None,
                "explains": self.predictor is not None and self.cannot_explain is None,
                "unknown": {k: v for k, v in (self.state.get("unknown") or {}).items() if not hasattr(v, "shape")} or None,
                "unknown_threshold": self.predictor.threshold if self.predictor is not None else None,
                "loaded": self.predictor is not None}

    def calibration_note(self, use: bool = True) -> str:
        """The one notice for a model of a calibrating kind without a fitted calibration ("" otherwise)."""
        from visionlab.kinds import get_kind

        return get_kind(self.state["kind"]).calibration_note(self.path, self.state.get("calibration")) if use else ""

    def unknown_note(self, unknown: str | float = "auto") -> str:
        """The one notice for a model of a detecting kind without an unknown detector ("" otherwise or when off)."""
        from visionlab.kinds import get_kind

        return get_kind(self.state["kind"]).unknown_note(self.path, self.state.get("unknown")) if unknown != "off" else ""

    def load(self, device: str, precision: str = "fp32", calibration: bool = True, unknown: str | float = "auto") -> None:
        from visionlab.engine.predict import Predictor
        from visionlab.kinds import get_kind

        predictor = Predictor(self.state, get_kind(self.state["kind"]), device=device, source=str(self.path), precision=precision,
                              calibration=calibration, unknown=unknown)
        predictor.warmup()
        try:
            predictor.kind.explain(predictor.loaded(), [], [])  # whether explain=1 can be answered, said at once
        except VisionlabError as exc:
            self.cannot_explain = exc.message
        self.predictor = predictor

    def run(self, items: list[tuple[Any, str, Any, int, bool]]) -> list[Any]:
        """The batch step: items are (preprocessed array, name, decoded image, top_k, explain); those
        with explain set also get their :attr:`~visionlab.kinds.Prediction.explanation`. A batch that
        fails is run again item by item (see Batcher): an image that fails alone is a 413 when it ran out
        of memory, else a 500 that names it."""
        arrays, names, images, ks, explain = zip(*items)
        try:
            preds = self.predictor.predict_arrays(list(arrays), max(ks), list(names), list(images))
            asked = [i for i, e in enumerate(explain) if e]
            overlays = self.predictor.explain([arrays[i] for i in asked], [preds[i] for i in asked], [images[i] for i in asked])
            for i, overlay in zip(asked, overlays):
                preds[i].explanation = overlay
        except Exception as exc:
            if len(items) > 1:
                raise  # the batcher runs each item again alone
            if _out_of_memory(exc):
                raise Problem(413, f"{names[0]}: the model ran out of memory on this image; send a smaller image.") from None
            log.exception("the model failed on %r", names[0])  # once: a Problem is not logged again
            raise Problem(500, f"{names[0]}: the model failed on this image ({type(exc).__name__}); "
                               "see the server log.") from None
        return [pred.with_top_k(k) for pred, k in zip(preds, ks)]


def _out_of_memory(exc: Exception) -> bool:
    import torch

    # torch's CPU allocator raises a plain RuntimeError: "DefaultCPUAllocator: can't allocate memory: ..."
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "DefaultCPUAllocator" in str(exc)


def load_models(paths: Sequence[str | os.PathLike]) -> list[ServedModel]:
    """Read and check the checkpoints (before the server starts): one model per task."""
    from visionlab.engine.checkpoint import load_checkpoint

    models: dict[str, ServedModel] = {}
    for p in paths:
        path = Path(p).expanduser()
        model = ServedModel(path, load_checkpoint(path))
        if model.task in models:
            raise VisionlabError(f"two checkpoints of task {model.task!r}: {models[model.task].path} and {path}.",
                                 "Serve one model per task.")
        models[model.task] = model
    if not models:
        raise VisionlabError("no model to serve.", "Pass --checkpoint CKPT or --task T (its latest run).")
    return list(models.values())


def _route(path: str) -> str:
    """The metrics label of a path (unknown paths share one label)."""
    if path in ("/", "/health", "/ready", "/models", "/metrics", "/predict"):
        return path
    if path.startswith("/predict/"):
        return "/predict/{task}"
    return "/static" if path.startswith("/static/") else "other"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(settings: Settings) -> list[str]:
    """The Host header values answered (no DNS rebinding): a loopback bind's names, or the bound
    address; a wildcard bind (0.0.0.0, ::) answers any host unless --allowed-host names some;
    plus --allowed-host ('*' for any)."""
    wildcard = settings.host in ("0.0.0.0", "::")
    if wildcard and not settings.allowed_hosts:
        return ["*"]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    local = wildcard or _is_loopback(settings.host)
    return list(dict.fromkeys([*(LOOPBACK_HOSTS if local else ()), host, *settings.allowed_hosts]))


def _check_key(key: str) -> None:
    """Refuse a key that HTTP cannot carry the same way everywhere (headers drop spaces at the ends)."""
    if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise VisionlabError("the API key has control characters or spaces at its ends, which HTTP headers cannot carry.",
                             "Use printable characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.")


def _presented_key(scope: dict[str, Any], headers: Headers) -> tuple[bytes | None, bool]:
    """The key a request presents, newest first: ?key= (the page only), then the X-API-Key or
    Authorization: Bearer header, then the cookie; and whether it is the ?key= one. Keys are
    compared as UTF-8 bytes; the address and the cookie carry them percent-encoded."""
    if scope["path"] == "/":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="utf-8", errors="surrogateescape")
        if "key" in query:
            return query["key"][0].encode("utf-8", "surrogateescape"), True
    if "x-api-key" in headers:
        return headers["x-api-key"].encode("latin-1"), False
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip().encode("latin-1"), False
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return unquote_to_bytes(value.strip()), False
    return None, False


def _key_cookie(key: bytes) -> str:
    """The Set-Cookie value that keeps a key, percent-encoded: the codec :func:`_presented_key` reads."""
    return f"{COOKIE}={quote(key, safe='')}; HttpOnly; Path=/; SameSite=Strict"


class _Gate:
    """ASGI middleware: request metrics around the guards, outermost first: the Host header
    (Starlette's TrustedHostMiddleware, against DNS rebinding), CORS for the --cors-origin sites
    (CORSMiddleware), POSTs from other origins refused, the API key (all but /health)."""

    def __init__(self, app: Any, server: ServerState) -> None:
        self.app, self.server, self.metrics, settings = app, server, server.metrics, server.settings
        self.key = settings.api_key.encode("utf-8") if settings.api_key else None
        self.origins = [o.rstrip("/").lower() for o in settings.cors_origins]
        bad = [o for o in self.origins if not re.fullmatch(r"https?://[^/?#\s]+", o)]
        if bad:
            raise VisionlabError(f"--cors-origin {bad[0]!r} is not an origin.", "Pass scheme://host[:port], e.g. https://app.example.")
        inner: Any = self._checked
        if self.origins:
            inner = CORSMiddleware(inner, allow_origins=self.origins, allow_methods=["GET", "POST"],
                                   allow_headers=["x-api-key", "authorization", "x-request-id"],
                                   expose_headers=["x-request-id", "retry-after"])
        self.inner = inner
        try:
            self.guarded = TrustedHostMiddleware(self._past_host, allowed_hosts=_allowed_hosts(settings), www_redirect=False)
        except AssertionError as exc:
            raise VisionlabError(f"--allowed-host: {exc}", "Pass a host name, '*.example.com' or '*'.") from None

    def _cross_origin(self, scope: dict[str, Any], headers: Headers) -> str | None:
        """The Origin of a state-changing request from another site's page (None: from this server's
        own page, whichever scheme a proxy in front speaks, or from a --cors-origin)."""
        origin = headers.get("origin")
        if scope["method"] in SAFE_METHODS or origin is None:
            return None
        own = origin.partition("://")[2].lower() == headers.get("host", "").lower()
        return None if own or origin.lower() in self.origins else origin

    async def _past_host(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[HOST_OK] = True
        await self.inner(scope, receive, send)

    async def _checked(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = Headers(scope=scope)
        origin = self._cross_origin(scope, headers)
        if origin is not None:
            msg = f"a page of {origin[:200]!r} may not call this server; start it with --cors-origin ORIGIN to allow one"
            return await problem(403, msg)(scope, receive, send)
        if self.key and scope["path"] != "/health":
            given, from_query = _presented_key(scope, headers)
            if given is None or not hmac.compare_digest(given, self.key):
                msg = ("this server needs an API key: send it as the X-API-Key header (or Authorization: Bearer KEY); "
                       "in a browser, open /?key=KEY once (KEY percent-encoded, e.g. + as %2B)") if given is None else "wrong API key"
                return await problem(401 if given is None else 403, msg)(scope, receive, send)
            if from_query:  # only a key that matched is kept
                send = self._keeping_key(send, given)
        await self.app(scope, receive, send)

    @staticmethod
    def _keeping_key(send: Any, key: bytes) -> Any:
        async def send_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", _key_cookie(key))
            await send(message)

        return send_cookie

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def unless_bad_host(message: dict[str, Any]) -> None:
            if HOST_OK in scope:  # else Starlette's plain "Invalid host header": answered below instead
                await send_status(message)

        try:
            await self.guarded(scope, receive, unless_bad_host)
            if HOST_OK not in scope:
                host = Headers(scope=scope).get("host")
                msg = (f"this server does not answer to the Host {host[:200]!r} (a guard against DNS rebinding); "
                       "start it with --allowed-host NAME to answer that name") if host else "send a Host header"
                await problem(400, msg)(scope, receive, send_status)
        except asyncio.CancelledError:  # --drain-seconds ran out: uvicorn cancels the requests still running
            if status[0]:
                raise
            self.server.cut_off += 1
            await problem(503, "the server stopped before this request was answered (--drain-seconds ran out); "
                                "retry.", {"Retry-After": "1"})(scope, receive, send_status)
        finally:
            self.metrics.request(_route(scope["path"]), status[0] or 500, time.perf_counter() - t0)


def _load_all(server: ServerState) -> None:
    t0 = time.perf_counter()
    for m in server.models:
        m.load(server.settings.device, server.settings.precision, server.settings.calibration, server.settings.unknown)
    server.loaded_in = round(time.perf_counter() - t0, 2)


async def _loading(server: ServerState) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(server.model_thread, _load_all, server)
        server.ready = True
        log.warning("ready: %d model(s) loaded and warmed up in %.1f s", len(server.models), server.loaded_in)
    except Exception as exc:  # /ready stays 503 and says why
        server.error = f"{type(exc).__name__}: {exc}"
        log.error("loading the models failed: %s", server.error)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """Start each model's batcher and load the models in the background; stop them at the end."""
    server: ServerState = app.state.server
    for m in server.models:
        m.batcher = Batcher(m.run, server.settings.max_batch_size, server.settings.max_wait_ms, name=m.task,
                            on_batch=lambda n, s, task=m.task: server.metrics.batch(task, n, s),
                            executor=server.model_thread)
        m.batcher.start()
    loader = asyncio.get_running_loop().create_task(_loading(server))
    yield
    # uvicorn has already waited for the requests in flight (SIGTERM drains them)
    loader.cancel()
    for m in server.models:
        await m.batcher.close()
    server.model_thread.shutdown(wait=True)
    server.decode_pool.shutdown(wait=False, cancel_futures=True)


def _gauges(server: ServerState) -> None:
    metrics, models = server.metrics, server.models
    metrics.gauge("visionlab_queue_depth", "Images waiting for a forward pass, per model.",
                  lambda: {f'model="{m.task}"': m.batcher.depth if m.batcher else 0 for m in models})
    metrics.gauge("visionlab_pending_images", "Queue places held by images admitted and not yet answered, "
                  f"{EXPLAINED_PLACES} per explained one (bounded by --max-queue).",
                  lambda: {"": server.pending})
    metrics.gauge("visionlab_pending_megapixels", "Pixels of the images admitted and not yet answered "
                  "(bounded by --max-queue-megapixels).", lambda: {"": server.pending_pixels / 1e6})
    metrics.gauge("visionlab_requests_in_flight", "Predict requests being answered.", lambda: {"": server.in_flight})
    metrics.gauge("visionlab_ready", "1 when every model is loaded and warmed up.",
                  lambda: {"": float(server.ready and not server.broken())})


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return problem(exc.status, exc.message, exc.headers)


async def _on_stopped(request: Request, exc: BatcherStopped) -> JSONResponse:
    return problem(503, f"the model cannot answer: {exc}. Restart the server (its log says more).")


async def _on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
    log.warning("%s %s: the client disconnected before its answer (499)", request.method, request.url.path)
    return Response(status_code=499)  # as nginx counts it; nobody reads it


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("error answering %s", request.url.path)
    return problem(500, f"internal error ({type(exc).__name__}); see the server log.")


EXCEPTION_HANDLERS = {Problem: _on_problem, BatcherStopped: _on_stopped, ClientDisconnect: _on_disconnect,
                      Exception: _on_error}


def create_app(models: Sequence[ServedModel], settings: Settings | None = None) -> FastAPI:
    """The app; models load and warm up in the background once it starts (see ``/ready``)."""
    settings = settings or Settings()
    server = ServerState(
        models, settings, Metrics(settings.max_batch_size), BodyBudget(int(settings.max_bodies_mb * 2**20)),
        ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="visionlab-decode"),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionlab-model"))
    app = FastAPI(title="visionlab", version=__version__, lifespan=_lifespan, docs_url="/docs", redoc_url=None,
                  exception_handlers=EXCEPTION_HANDLERS)
    app.state.server = server
    _gauges(server)
    app.include_router(router)
    return _Gate(app, server)  # type: ignore[return-value]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise VisionlabError(f"cannot listen on {host}:{port} ({exc.strerror}).",
                             "Pass another --port (0 picks a free one) or --host.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _http_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with the deadline for a request's headers that h11 lacks: a connection
    that has not sent a whole request head ``header_timeout`` seconds after it opened, or after its
    last answer, is closed. Else a socket that sends nothing, or dribbles its headers, is held for
    ever (a file descriptor each; enough of them and accept() fails for everyone)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.deadline.cancel()

        def arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(header_timeout, self.expire)

        def expire(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete  # no request head since the last answer
            if idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def _check_access(settings: Settings) -> None:
    """Before anything is bound: the key (default $VISIONLAB_API_KEY) can be sent, and off loopback
    there is one unless --insecure-no-key says that is meant."""
    if not settings.api_key:
        settings.api_key = os.environ.get(KEY_ENV) or None
    if settings.api_key:
        _check_key(settings.api_key)
    elif not _is_loopback(settings.host):
        if not settings.insecure_no_key:
            raise VisionlabError(f"listening on {settings.host} needs an API key: anyone who can reach this machine could use "
                                 f"the models.", f"Pass --api-key KEY or set ${KEY_ENV}; or --insecure-no-key if that is what you mean.")
        from visionlab.present.messages import show_unkeyed

        show_unkeyed(settings.host)


def run(checkpoints: Sequence[str | os.PathLike], settings: Settings) -> None:
    """Check the checkpoints, bind, and serve until SIGINT/SIGTERM (requests in flight finish first)."""
    import uvicorn

    from visionlab.present.messages import show_serving, show_stopped

    _check_access(settings)
    models = load_models(checkpoints)
    app = create_app(models, settings)  # bad --allowed-host / --cors-origin values fail before binding
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    show_serving(models, url, bool(settings.api_key), settings.calibration, settings.unknown)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = uvicorn.Config(app, http=_http_protocol(settings.header_timeout), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=settings.drain_seconds, lifespan="on")
    server = uvicorn.Server(config)
    stopped: list[int] = []
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal after its graceful shutdown; then this handler ends the run quietly
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: stopped.append(s))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    left = app.server.cut_off
    why = "by a second Ctrl-C" if server.force_exit else f"after --drain-seconds {settings.drain_seconds:g}"
    show_stopped(left, why)
    if not server.started:
        raise VisionlabError("the server did not start (see the messages above).")
