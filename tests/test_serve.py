"""visionlab serve: a real uvicorn on 127.0.0.1 (a free port), real photos and synthetic ones.

Most tests share one server (in a thread of this process) that serves a tiny cracks classifier
and a tiny landcover U-Net; the SIGTERM test runs ``visionlab serve`` as a real subprocess.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from conftest import REPO, answered, make_class_image, offline_page, save_shot, served_url  # noqa: E402

from visionlab.api import load  # noqa: E402
from visionlab.engine.predict import Predictor  # noqa: E402

MAX_UPLOAD_MB = 2  # small, so the oversized bodies of the tests are quick to send


class Server:
    """uvicorn serving ``create_app(...)`` in a daemon thread, on a socket bound to a free port."""

    def __init__(self, checkpoints: list[Path], **settings: Any) -> None:
        import uvicorn

        from visionlab.serve.app import Settings, _bind, create_app, load_models

        self.settings = Settings(port=0, **settings)
        self.sock = _bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(load_models(checkpoints), self.settings)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float = 60.0, **kw: Any) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2, **kw).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url} was not ready after {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path]) -> Iterator[Server]:
    s = Server([tiny_models["cracks"], tiny_models["landcover"]], max_upload_mb=MAX_UPLOAD_MB, max_wait_ms=25.0,
               max_megapixels=20.0, device="cpu")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def offline(tiny_models: dict[str, Path]) -> dict[str, Predictor]:
    return {task: load(path, device="cpu") for task, path in tiny_models.items()}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _cracks_photos(shared_data: Path, n: int) -> list[Path]:
    pos = sorted((shared_data / "cracks" / "Positive").iterdir())[: (n + 1) // 2]
    neg = sorted((shared_data / "cracks" / "Negative").iterdir())[: n // 2]
    return [p for pair in zip(pos, neg) for p in pair][:n] or (pos + neg)[:n]


def _raw_http(url: str, head: bytes, body_chunks: Iterator[bytes] = iter(()), read_timeout: float = 20.0) -> tuple[int, dict, bytes]:
    """Send a hand-made request over a socket (bodies that lie), then read the answer.

    The body is sent from another thread while this one reads, so an early answer (413 before
    the body is all read) is seen even when the server closes the connection afterwards."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=read_timeout)

    def send_all() -> None:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed: expected for refused bodies
            pass

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _expected_len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        sock.close()
        sender.join(timeout=10)
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _expected_len(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return 1 << 62
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line.lower().startswith("content-length:"):
            return len(head) + 4 + int(line.split(":", 1)[1])
    return len(data)


# --------------------------------------------------------------------------- health, ready, models


def test_health_ready_and_models_describe_every_model(server: Server, tiny_models: dict[str, Path]):
    import hashlib

    from visionlab import __version__

    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"cracks": True, "landcover": True}
    models = {m["task"]: m for m in httpx.get(server.url + "/models").json()["models"]}
    assert set(models) == {"cracks", "landcover"}
    cracks = models["cracks"]
    assert cracks["kind"] == "classification" and cracks["classes"] == ["Negative", "Positive"]
    assert cracks["input_size"] == 32 and cracks["preprocessing"]["image_size"] == 32
    assert cracks["checkpoint_sha256"] == hashlib.sha256(tiny_models["cracks"].read_bytes()).hexdigest()
    assert cracks["visionlab_version"] == __version__ and cracks["trained_with_visionlab"] == __version__
    assert models["landcover"]["kind"] == "segmentation" and models["landcover"]["input_size"] == 64
    assert cracks["checkpoint"] == "best.pt"  # file names, not this machine's paths
    listing = httpx.get(server.url + "/models").text
    assert str(tiny_models["cracks"].parent) not in listing and '"/' not in listing


def test_ready_is_503_until_the_models_are_warm(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """/health answers at once; /ready and /predict say 503 while a model is still loading."""
    from visionlab.serve import app as serve_app

    gate = threading.Event()
    real_load = serve_app.ServedModel.load

    def slow_load(self, *args):
        gate.wait(30)
        real_load(self, *args)

    monkeypatch.setattr(serve_app.ServedModel, "load", slow_load)
    s = Server([tiny_models["cracks"]], device="cpu")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(s.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        r = httpx.get(s.url + "/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        p = httpx.post(s.url + "/predict", content=_jpeg(make_class_image("apple", 0, 32)), headers={"content-type": "image/jpeg"})
        assert p.status_code == 503 and "loading" in p.json()["error"] and p.headers["retry-after"]
        gate.set()
        s.wait_ready()
    finally:
        gate.set()
        s.stop()


# --------------------------------------------------------------------------- predictions


def test_real_photos_multipart_and_base64_json_match_offline_predict(server: Server, offline, shared_data: Path):
    photos = _cracks_photos(shared_data, 4)
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = httpx.post(server.url + "/predict/cracks?top_k=2", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "cracks" and [x["name"] for x in body["results"]] == [p.name for p in photos]
    expected = offline["cracks"].predict([str(p) for p in photos], top_k=2)
    for got, want in zip(body["results"], expected):
        assert got["label"] == want.label and got["confidence"] == pytest.approx(want.confidence, abs=1e-4)
        assert [t["label"] for t in got["top_k"]] == [lab for lab, _ in want.top_k]
        assert sum(t["probability"] for t in got["top_k"]) == pytest.approx(1.0, abs=1e-4)
    # the minerals API's way: JSON with base64, one image or several
    one = httpx.post(server.url + "/predict/cracks", json={"image": base64.b64encode(photos[0].read_bytes()).decode(), "id": "x1"})
    assert one.status_code == 200 and one.json()["id"] == "x1"
    assert one.json()["results"][0]["label"] == expected[0].label
    many = httpx.post(server.url + "/predict/cracks", json={"images": [
        "data:image/jpeg;base64," + base64.b64encode(p.read_bytes()).decode() for p in photos[:2]]})
    assert [x["label"] for x in many.json()["results"]] == [e.label for e in expected[:2]]


def test_raw_image_body_and_single_model_route(tiny_models: dict[str, Path]):
    """With one model, POST /predict needs no task; an image/* body is one image."""
    s = Server([tiny_models["cracks"]], device="cpu")
    try:
        s.wait_ready()
        r = httpx.post(s.url + "/predict", content=_jpeg(make_class_image("zebra", 1, 48)), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and answered(r.json()["results"][0]) in ("Negative", "Positive")
    finally:
        s.stop()


def test_landcover_answers_mask_png_overlay_legend_and_shares(server: Server, offline, shared_data: Path):
    photo = sorted((shared_data / "landcover" / "images").iterdir())[0]
    with Image.open(photo) as im:
        size = im.size
    r = httpx.post(server.url + "/predict/landcover", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=120)  # a tiled aerial photo: seconds on a busy CPU
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(res["mask_png"]))))
    assert mask.shape == (size[1], size[0])
    want = offline["landcover"].predict(str(photo))[0]
    assert np.mean(mask == want.mask) > 0.99  # same model, same tiles
    overlay = Image.open(io.BytesIO(base64.b64decode(res["overlay_jpeg"])))
    assert overlay.format == "JPEG" and overlay.size == size
    assert [c["name"] for c in res["legend"]] == offline["landcover"].classes
    assert all(c["color"].startswith("#") for c in res["legend"])
    assert sum(res["class_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert res["label"] == max(res["class_shares"], key=res["class_shares"].get)
    assert "top_k" not in res


def test_explain_1_adds_the_grad_cam_overlay_as_a_png_of_the_photos_proportions(server: Server):
    """?explain=1: each result also carries "explanation", a base64 PNG of the model's Grad-CAM over
    the photo, in the photo's proportions; the same answer as without it; /models says who explains."""
    models = {m["task"]: m for m in httpx.get(server.url + "/models").json()["models"]}
    assert models["cracks"]["explains"] is True
    photos = [make_class_image("zebra", 3, 48).resize((72, 48)), make_class_image("apple", 4, 40)]
    files = [("images", (f"p{i}.jpg", _jpeg(im), "image/jpeg")) for i, im in enumerate(photos)]
    plain = httpx.post(server.url + "/predict/cracks", files=files, timeout=60)
    why = httpx.post(server.url + "/predict/cracks?explain=1", files=files, timeout=60)
    assert plain.status_code == 200 and why.status_code == 200, why.text
    for a, b, photo in zip(plain.json()["results"], why.json()["results"], photos):
        assert "explanation" not in a and b["label"] == a["label"] and b["top_k"] == a["top_k"]
        overlay = Image.open(io.BytesIO(base64.b64decode(b["explanation"])))
        assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == photo.size
        assert np.asarray(overlay).std() > 0
    for value in ("0", "false"):
        r = httpx.post(server.url + f"/predict/cracks?explain={value}", files=files[:1], timeout=60)
        assert r.status_code == 200 and "explanation" not in r.json()["results"][0]
    r = httpx.post(server.url + "/predict/cracks?explain=yes", files=files[:1], timeout=60)
    assert r.status_code == 422 and r.json()["error"] == "explain='yes' is not 1 or 0.", r.text


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(server: Server, offline):
    """24 clients at once, each with its own image and id: every answer carries its id and the
    offline prediction of its image; the metrics show that images shared forward passes."""
    images = [make_class_image(("apple", "zebra", "kiwi")[i % 3], i, 40) for i in range(24)]
    expected = offline["cracks"].predict(images, top_k=1)

    def call(i: int) -> dict:
        payload = {"id": f"req-{i}", "image": base64.b64encode(_jpeg(images[i], 100)).decode()}
        return httpx.post(server.url + "/predict/cracks?top_k=1", json=payload, headers={"x-request-id": f"h{i}"}, timeout=60)

    before = _metric(server, "visionlab_batch_size_count", 'model="cracks"')
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(call, range(24)))
    assert [a.status_code for a in answers] == [200] * 24
    assert [a.json()["id"] for a in answers] == [f"req-{i}" for i in range(24)]
    assert [a.headers["x-request-id"] for a in answers] == [f"h{i}" for i in range(24)]
    for a, want in zip(answers, expected):
        res = a.json()["results"][0]
        assert res["label"] == want.label and len(res["top_k"]) == 1
        # JPEG at quality 100 vs the original pixels: a hair apart
        assert res["confidence"] == pytest.approx(want.confidence, abs=0.05)
    batches = _metric(server, "visionlab_batch_size_count", 'model="cracks"') - before
    assert 1 <= batches < 24, f"24 concurrent images ran in {batches} forward passes: nothing was batched"


def _metric(server: Server, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + ("{" + labels + "}" if labels else "")) or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_prometheus_text(server: Server):
    httpx.post(server.url + "/predict/cracks", content=b"not an image", headers={"content-type": "image/jpeg"})
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for needle in ("# TYPE visionlab_requests_total counter", 'visionlab_requests_total{path="/predict/{task}",status="415"}',
                   "# TYPE visionlab_request_seconds histogram", 'visionlab_request_seconds_bucket{path="/predict/{task}",le="+Inf"}',
                   "# TYPE visionlab_batch_size histogram", 'visionlab_queue_depth{model="cracks"} 0',
                   "visionlab_pending_images 0", "visionlab_ready 1"):
        assert needle in text, needle


# --------------------------------------------------------------------------- bad input


def test_every_bad_input_gets_a_json_error_and_the_server_lives_on(server: Server, shared_data: Path):
    url = server.url + "/predict/cracks"
    photo = _cracks_photos(shared_data, 1)[0].read_bytes()
    big = os.urandom(MAX_UPLOAD_MB * 2**20 + 10)

    def check(r: httpx.Response, status: int, words: str) -> None:
        assert r.status_code == status, (r.status_code, r.text)
        assert words in r.json()["error"], r.json()

    check(httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported Content-Type 'text/plain'")
    check(httpx.post(url, files={"image": ("notes.txt", b"just some text\n" * 20, "text/plain")}), 415, "notes.txt: not an image")
    check(httpx.post(url, files={"image": ("cut.jpg", photo[: len(photo) // 2], "image/jpeg")}), 422, "cut.jpg: cannot decode image (OSError: image file is truncated")
    check(httpx.post(url, files={"image": ("bomb.png", _png_header_only(100_000, 100_000), "image/png")}), 413, "decompression bomb")
    check(httpx.post(url, content=b"", headers={"content-type": "image/jpeg"}), 400, "the request body is empty")
    check(httpx.post(url, files={"photo": ("a.jpg", photo, "image/jpeg")}), 422, "unknown form field 'photo'")
    check(httpx.post(url, json={"picture": "abc"}), 422, 'JSON needs "image"')
    check(httpx.post(url, json={"image": "%%% not base64 %%%"}), 422, "image is not valid base64")
    check(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON")
    check(httpx.post(url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400, "malformed multipart")
    check(httpx.post(url, files={"image": ("big.jpg", big, "image/jpeg")}), 413, "over the upload limit of 2 MB")
    check(httpx.post(server.url + "/predict/minerals", content=photo, headers={"content-type": "image/jpeg"}), 404, "no model for task 'minerals'")
    check(httpx.post(server.url + "/predict", content=photo, headers={"content-type": "image/jpeg"}), 422, "POST to /predict/{task}")
    check(httpx.post(url + "?top_k=zero", content=photo, headers={"content-type": "image/jpeg"}), 422, "top_k='zero'")

    # an honest Content-Length over the limit: refused before a byte of the body is sent
    status, _, body = _raw_http(server.url, b"POST /predict/cracks HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                                           b"Content-Length: 999999999\r\n\r\n")
    assert status == 413 and b"999999999 bytes" in body
    # no Content-Length (chunked): counted as it streams, refused once past the limit
    chunks = (b"%x\r\n%s\r\n" % (2**18, b"\0" * 2**18) for _ in range(40))  # 10 MB offered
    status, _, body = _raw_http(server.url, b"POST /predict/cracks HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 413 and b"over the upload limit" in body
    # a Content-Length that lies low: only that much is read (a truncated image), the rest is not a request
    status, _, body = _raw_http(server.url, b"POST /predict/cracks HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                                           b"Content-Length: 300\r\n\r\n", iter([photo, big]))
    assert status == 422 and b"corrupt image header" in body

    # the server still answers, and nothing is left admitted or queued
    r = httpx.post(url, content=photo, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and answered(r.json()["results"][0]) in ("Negative", "Positive")
    assert _metric(server, "visionlab_pending_images") == 0
    assert _metric(server, "visionlab_requests_in_flight") == 0


def test_a_full_queue_answers_503_with_retry_after(tiny_models: dict[str, Path]):
    """max_queue=1 and a batch that waits 1.5 s for company: a second request finds the queue full."""
    s = Server([tiny_models["cracks"]], device="cpu", max_queue=1, max_wait_ms=1500.0)
    try:
        s.wait_ready()
        img = _jpeg(make_class_image("apple", 3, 32))
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, s.url + "/predict", content=img, headers={"content-type": "image/jpeg"}, timeout=30)
            deadline = time.monotonic() + 10
            while _metric(s, "visionlab_pending_images") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            second = httpx.post(s.url + "/predict", content=img, headers={"content-type": "image/jpeg"})
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert "busy" in second.json()["error"]
            assert first.result().status_code == 200
    finally:
        s.stop()


def test_api_key_guards_everything_but_health(tiny_models: dict[str, Path]):
    s = Server([tiny_models["cracks"]], device="cpu", api_key="s3cret")
    try:
        s.wait_ready(headers={"x-api-key": "s3cret"})
        assert httpx.get(s.url + "/health").status_code == 200
        for path in ("/ready", "/models", "/metrics", "/"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and "X-API-Key" in r.json()["error"], path
        img = _jpeg(make_class_image("apple", 4, 32))
        assert httpx.post(s.url + "/predict", content=img, headers={"content-type": "image/jpeg"}).status_code == 401
        wrong = httpx.get(s.url + "/models", headers={"x-api-key": "guess"})
        assert wrong.status_code == 403 and wrong.json()["error"] == "wrong API key"
        assert httpx.get(s.url + "/models", headers={"x-api-key": "s3cret"}).status_code == 200
        ok = httpx.post(s.url + "/predict", content=img, headers={"content-type": "image/jpeg", "authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        page = httpx.get(s.url + "/?key=s3cret")  # a browser: the key once in the address, then a cookie
        assert page.status_code == 200 and "visionlab_api_key=s3cret" in page.headers["set-cookie"]
        assert httpx.get(s.url + "/models", cookies={"visionlab_api_key": "s3cret"}).status_code == 200
        assert httpx.get(s.url + "/models?key=s3cret").status_code == 401  # the address works for the page only
    finally:
        s.stop()


def test_browser_login_works_for_base64_and_non_ascii_keys(tiny_models: dict[str, Path]):
    """A key with + / = , and a space inside, and non-ASCII letters: the address (percent-encoded),
    the cookie it leaves (one codec both ways), headers (UTF-8 bytes); the newest key wins and
    only a key that matched is kept."""
    from urllib.parse import quote

    key = "Zm9v+YmFy/cXV4=, ключ"
    s = Server([tiny_models["cracks"]], device="cpu", api_key=key)
    try:
        s.wait_ready(headers={"x-api-key": key.encode()})
        with httpx.Client(base_url=s.url) as browser:
            page = browser.get("/?key=" + quote(key, safe=""))
            assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
            assert browser.get("/models").status_code == 200  # the cookie as the server wrote it
        assert httpx.get(s.url + "/", params={"key": key}).status_code == 200
        raw_plus = httpx.get(s.url + "/?key=" + quote(key, safe="+"))  # '+' in an address is a space: wrong
        assert raw_plus.status_code == 403 and "set-cookie" not in raw_plus.headers
        stale = httpx.get(s.url + "/", params={"key": key}, cookies={"visionlab_api_key": "old-key"})
        assert stale.status_code == 200 and quote(key, safe="") in stale.headers["set-cookie"]
        by_header = httpx.get(s.url + "/?key=guess", headers={"x-api-key": key.encode()})
        assert by_header.status_code == 403 and "set-cookie" not in by_header.headers
        assert "set-cookie" not in httpx.get(s.url + "/", headers={"x-api-key": key.encode()}).headers
        bearer = httpx.get(s.url + "/models", headers={"authorization": b"Bearer " + key.encode()})
        assert bearer.status_code == 200
        assert httpx.get(s.url + "/models", headers={"x-api-key": key.encode()[:-1]}).status_code == 403
        assert "%2B" in httpx.get(s.url + "/models").json()["error"]  # the hint says how to write the address
    finally:
        s.stop()


def test_only_the_bound_host_names_and_same_origin_posts_are_answered(server: Server, tiny_models: dict[str, Path]):
    """DNS rebinding (another Host) gets 400; a POST from another site's page 403, the server's own
    page (Origin = its own origin) is answered; --allowed-host and --cors-origin widen both."""
    port = server.url.rsplit(":", 1)[1]
    img = _jpeg(make_class_image("apple", 1, 32))
    r = httpx.get(server.url + "/models", headers={"host": "attacker.example"})
    assert r.status_code == 400 and "Host 'attacker.example'" in r.json()["error"] and "--allowed-host" in r.json()["error"]
    assert httpx.get(server.url + "/health", headers={"host": f"attacker.example:{port}"}).status_code == 400
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"[::1]:{port}"):
        assert httpx.get(server.url + "/models", headers={"host": host}).status_code == 200, host
    post = {"content-type": "image/jpeg"}
    evil = httpx.post(server.url + "/predict/cracks", content=img, headers={**post, "origin": "http://evil.example"})
    assert evil.status_code == 403 and "--cors-origin" in evil.json()["error"]
    own = httpx.post(server.url + "/predict/cracks", content=img, headers={**post, "origin": server.url})
    assert own.status_code == 200
    for origin in (f"http://localhost:{port}", f"https://localhost:{port}"):  # https: behind a TLS proxy
        own = httpx.post(server.url + "/predict/cracks", content=img, headers={**post, "origin": origin, "host": f"localhost:{port}"})
        assert own.status_code == 200, origin
    for origin in ("null", f"http://localhost:{int(port) + 1}"):
        other = httpx.post(server.url + "/predict/cracks", content=img, headers={**post, "origin": origin, "host": f"localhost:{port}"})
        assert other.status_code == 403, origin
    s = Server([tiny_models["cracks"]], device="cpu", allowed_hosts=["box.lan"], cors_origins=["https://app.example"])
    try:
        s.wait_ready()
        assert httpx.get(s.url + "/models", headers={"host": "box.lan"}).status_code == 200
        assert httpx.get(s.url + "/models", headers={"host": "other.lan"}).status_code == 400
        pre = httpx.options(s.url + "/predict", headers={"origin": "https://app.example", "access-control-request-method": "POST",
                                                          "access-control-request-headers": "x-api-key, content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        ok = httpx.post(s.url + "/predict", content=img, headers={**post, "origin": "https://app.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        refused = httpx.post(s.url + "/predict", content=img, headers={**post, "origin": "http://evil.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    finally:
        s.stop()


# --------------------------------------------------------------------------- the command, SIGTERM


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionlab", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _ready_url(proc: subprocess.Popen) -> str:
    """The URL a `visionlab serve` process prints, once its /ready answers 200."""
    return served_url(proc, timeout=60)[0]


def test_sigterm_drains_requests_in_flight_then_exits(tiny_models: dict[str, Path]):
    proc = subprocess.Popen(_cli("serve", "--checkpoint", str(tiny_models["cracks"]), "--port", "0", "--device", "cpu",
                                 "--max-wait-ms", "1500"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        url = _ready_url(proc)
        answers = _signalled_while_waiting(proc, url, 3, signal.SIGTERM)  # the batch is still waiting out its 1.5 s
        assert [a.status_code for a in answers] == [200, 200, 200]
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "every request in flight answered" in out
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_requests_cut_off_by_the_drain_deadline_get_503_and_the_exit_line_counts_them(tiny_models: dict[str, Path]):
    """Requests still waiting when --drain-seconds runs out were answered 500 (two tracebacks each), and the
    server then said "every request in flight answered"."""
    proc = subprocess.Popen(_cli("serve", "--checkpoint", str(tiny_models["cracks"]), "--port", "0", "--device", "cpu",
                                 "--max-wait-ms", "6000", "--drain-seconds", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        url = _ready_url(proc)
        answers = _signalled_while_waiting(proc, url, 2, signal.SIGTERM)  # the batch waits 6 s for company; the drain lasts 1 s
        assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
        assert all("--drain-seconds" in a.json()["error"] and a.headers["retry-after"] == "1" for a in answers)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "stopped with 2 request(s) cut off (answered 503) after --drain-seconds 1." in out, out
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_ctrl_c_cuts_the_drain_short_and_the_exit_line_says_so(tiny_models: dict[str, Path]):
    """The exit line said "after --drain-seconds 30" when a second Ctrl-C had cut the drain short."""
    proc = subprocess.Popen(_cli("serve", "--checkpoint", str(tiny_models["cracks"]), "--port", "0", "--device", "cpu",
                                 "--max-wait-ms", "6000", "--drain-seconds", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        url = _ready_url(proc)
        # the second SIGINT is a force quit: the batch still waits for company
        [answer] = _signalled_while_waiting(proc, url, 1, signal.SIGINT, signal.SIGINT)
        assert answer.status_code == 503, answer.text
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "stopped with 1 request(s) cut off (answered 503) by a second Ctrl-C." in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _signalled_while_waiting(proc: subprocess.Popen, url: str, n: int, *signals: int) -> list[httpx.Response]:
    """Post ``n`` photos, wait until all are queued, send ``proc`` the ``signals`` (0.3 s apart) and
    return the answers."""
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(httpx.post, url + "/predict", content=_jpeg(make_class_image("kiwi", i, 32)),
                               headers={"content-type": "image/jpeg"}, timeout=30) for i in range(n)]
        while float(_metric_at(url, "visionlab_pending_images")) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        for i, signum in enumerate(signals):
            time.sleep(0.3 if i else 0)
            proc.send_signal(signum)
        return [f.result() for f in futures]


def _metric_at(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_cli_errors_are_one_line_and_help_does_not_import_fastapi(tiny_models: dict[str, Path], tmp_path: Path):
    r = subprocess.run(_cli("serve"), capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: nothing to serve.") and len(r.stderr.splitlines()) == 1
    r = subprocess.run(_cli("serve", "--task", "nope"), capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr
    ck = str(tiny_models["cracks"])
    r = subprocess.run(_cli("serve", "-k", ck, "-k", ck), capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2 and "two checkpoints of task 'cracks'" in r.stderr
    with socket.socket() as taken:  # a port in use: the bind fails with one line
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        r = subprocess.run(_cli("serve", "-k", ck, "--port", port), capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}"), r.stderr
        for bad in (" padded", "two\nlines"):
            r = subprocess.run(_cli("serve", "-k", ck, "--port", port, "--api-key", bad), capture_output=True, text=True,
                               env=_env(), timeout=60)
            assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
            assert r.stderr.startswith("error: the API key has control characters or spaces at its ends"), r.stderr
        for option, value, words in (("--allowed-host", "a*b", "error: --allowed-host: Domain wildcard"),
                                     ("--cors-origin", "evil.example", "error: --cors-origin 'evil.example' is not an origin")):
            r = subprocess.run(_cli("serve", "-k", ck, "--port", port, option, value), capture_output=True, text=True,
                               env=_env(), timeout=60)
            assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith(words), r.stderr
    code = ("import sys; from typer.testing import CliRunner; from visionlab.cli import app; "
            "r = CliRunner().invoke(app, ['serve', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--max-batch-size' in r.output; "
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr


def test_off_loopback_without_a_key_refuses_to_start(tiny_models: dict[str, Path]):
    """--host 0.0.0.0 and no key: one line naming the ways out, exit 2, before binding (the port is
    held on 127.0.0.1, so a bind of 0.0.0.0 would fail with another message); --insecure-no-key
    gets as far as binding."""
    ck = str(tiny_models["cracks"])
    env = {k: v for k, v in _env().items() if k != "VISIONLAB_API_KEY"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        r = subprocess.run(_cli("serve", "-k", ck, "--host", "0.0.0.0", "--port", port), capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stdout == "", r.stderr
        assert r.stderr.startswith("error: listening on 0.0.0.0 needs an API key"), r.stderr
        for way in ("--api-key", "$VISIONLAB_API_KEY", "--insecure-no-key"):
            assert way in r.stderr
        r = subprocess.run(_cli("serve", "-k", ck, "--host", "0.0.0.0", "--port", port, "--insecure-no-key"),
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2 and f"error: cannot listen on 0.0.0.0:{port}" in r.stderr, r.stderr
        assert "warning: listening on 0.0.0.0 without an API key (--insecure-no-key)" in r.stderr


def test_static_files_ship_in_the_wheel_config():
    """hatch packages src/visionlab whole (non-.py files too): the page is inside the package."""
    from importlib import resources

    for name in ("index.html", "app.css", "app.js"):
        assert resources.files("visionlab.serve").joinpath("static", name).is_file()


# --------------------------------------------------------------------------- the page, in Chromium


def test_page_upload_and_camera_in_a_browser_with_the_network_blocked(server: Server, chromium, shared_data: Path, tmp_path: Path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # busy shared cores: a tiny U-Net may take seconds
    page, leaked = offline_page(chromium, server.url, viewport={"width": 1280, "height": 860}, permissions=["camera"])
    page.goto(server.url + "/")
    page.wait_for_selector("#models button[data-task='cracks']")
    assert page.locator("#models").is_visible(), "two models are served: a selector"
    photo = _cracks_photos(shared_data, 1)[0]
    page.set_input_files("#file", str(photo))
    expect(page.locator("#bars .bar-row")).to_have_count(2)  # a bar per class (locators: the page's CSP forbids eval)
    label = page.inner_text("#label")
    assert label in ("Negative", "Positive", "Not something it knows")  # a tiny model's detector may reject it
    assert page.locator("#preview").is_visible()
    save_shot(page, tmp_path, "serve-upload.png")

    # "Show why": the same photo asked again with explain=1, its Grad-CAM laid exactly over the photo
    expect(page.locator("#why")).to_be_visible()
    assert page.get_attribute("#why", "aria-pressed") == "false" and page.locator("#why-image").is_hidden()
    with page.expect_response(lambda r: "explain=1" in r.url and r.request.method == "POST", timeout=30_000) as asked:
        page.click("#why")
    assert asked.value.ok and asked.value.json()["results"][0]["explanation"]
    expect(page.locator("#why-image")).to_be_visible()
    named = page.locator("#bars .bar-row.lead .bar-name").inner_text() if label == "Not something it knows" else label
    expect(page.locator("#why-note")).to_contain_text(f"made the model think of {named}")  # the guess, behind an unknown
    assert page.get_attribute("#why", "aria-pressed") == "true" and page.inner_text("#why-label") == "Hide why"
    assert page.get_attribute("#why-image", "src").startswith("data:image/png;base64,")
    photo_box, why_box = page.locator("#preview").bounding_box(), page.locator("#why-image").bounding_box()
    assert all(abs(photo_box[k] - why_box[k]) < 1 for k in ("x", "y", "width", "height")), (photo_box, why_box)
    save_shot(page, tmp_path, "serve-why.png")
    page.click("#why")  # off: the photo alone again, nothing asked
    expect(page.locator("#why-image")).to_be_hidden()
    expect(page.locator("#why-note")).to_be_hidden()
    page.click("#why")  # on again: the explanation it has is shown at once

    # an answer of "unknown" (the fields unknown and guess): said in words, the closest class named,
    # the bars still shown. The photo the page sends, sent to the server at the page's URL (Playwright
    # does not hand over a multipart body's file), whose real answer gets the two fields set as an unknown photo gets them.
    odd = _cracks_photos(shared_data, 2)[1]

    def unknown(route: Any) -> None:
        answer = httpx.post(route.request.url, files={"image": (odd.name, odd.read_bytes(), "image/jpeg")}, timeout=60)
        body = answer.json()
        assert answer.status_code == 200, body
        for r in body["results"]:
            r.update(unknown=True, guess=r["top_k"][0]["label"], label="unknown")
        route.fulfill(status=200, json=body)

    page.route("**/predict/cracks*", unknown)
    page.set_input_files("#file", str(odd))
    expect(page.locator("#unknown")).to_be_visible()
    guess = page.locator("#bars .bar-row.lead .bar-name").inner_text()
    expect(page.locator("#unknown")).to_contain_text("does not look like any of the 2 kinds of things this model knows")
    expect(page.locator("#unknown")).to_contain_text(f"The closest is {guess}")
    assert page.inner_text("#label") == "Not something it knows" and page.inner_text("#result-kicker").lower() == "no match"
    expect(page.locator("#bars .bar-row")).to_have_count(2)
    expect(page.locator("#why-note")).to_contain_text(f"made the model think of {guess}")  # the guess is explained
    save_shot(page, tmp_path, "serve-unknown.png")
    page.unroute("**/predict/cracks*")
    page.click("#why")  # off, for the rest of the tour

    # the fake camera: a live preview, then a still sent to the model
    page.click("#camera")
    expect(page.locator("#shutter")).to_be_visible()  # shown with the camera's first frame
    # the still's own answer: its POST, then the page's timing line (two answers may take the same ms)
    with page.expect_response(lambda r: "/predict" in r.url and r.request.method == "POST", timeout=30_000) as answer:
        page.click("#shutter")
    assert answer.value.ok
    expect(page.locator("#timing")).to_contain_text("Answered in")
    expect(page.locator("#video")).to_be_hidden()  # the still replaces the live view
    assert page.inner_text("#label") in ("Negative", "Positive", "Not something it knows")  # a camera frame of no crack
    assert page.inner_text("#error") == ""

    # landcover: the overlay, its legend and the class shares
    crop = tmp_path / "aerial.jpg"
    with Image.open(sorted((shared_data / "landcover" / "images").iterdir())[0]) as im:
        im.crop((0, 0, 320, 240)).save(crop)
    page.click("#models button[data-task='landcover']")
    page.set_input_files("#file", str(crop))
    expect(page.locator("#legend .swatch")).to_have_count(6)
    expect(page.locator("#figure")).to_be_visible()
    expect(page.locator("#bars .bar-row")).to_have_count(6)
    save_shot(page, tmp_path, "serve-landcover.png")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    save_shot(page, tmp_path, "serve-phone.png")
    assert page.get_attribute("#capture", "capture") == "environment"
    assert leaked == [], f"the page tried to reach {leaked}"
    page.context.close()


# --------------------------------------------------------------------------- hostile clients, failing models


def test_deeply_nested_json_is_a_400_not_a_crash(server: Server):
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"image": ' + deep + b"}"):
        r = httpx.post(server.url + "/predict/cracks", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], r.text
    # an id nested about as deep as the parser allows: answered (or refused), and its answer is written
    image = base64.b64encode(_jpeg(make_class_image("apple", 5, 32))).decode()
    for depth in (900, 950, 1000):  # on this machine: answered up to 955, refused from 960 on
        body = '{"image": "%s", "id": %s1%s}' % (image, "[" * depth, "]" * depth)
        r = httpx.post(server.url + "/predict/cracks", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (200, 400), (depth, r.text)
    assert httpx.get(server.url + "/health").status_code == 200


def test_json_numbers_no_answer_can_carry_are_a_400_not_a_500(server: Server):
    """NaN, Infinity and 1e999 (a float's infinity) parse in Python but cannot be written back (the echoed id)."""
    image = base64.b64encode(_jpeg(make_class_image("apple", 5, 32))).decode()
    for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        body = '{"image": "%s", "id": %s}' % (image, number)
        r = httpx.post(server.url + "/predict/cracks", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"], (number, r.text)
    r = httpx.post(server.url + "/predict/cracks", json={"image": image, "id": 1.5e300})
    assert r.status_code == 200 and r.json()["id"] == 1.5e300, r.text


def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.02)


class _LoopKiller(BaseException):
    """Not an Exception: nothing in the batch loop catches it, as with a bug of the loop itself."""


def test_a_batch_loop_that_dies_makes_ready_503_and_every_request_a_503(tiny_models: dict[str, Path],
                                                                        monkeypatch: pytest.MonkeyPatch):
    """The first batch kills the loop while a second request waits behind it: both, and every later
    request, get a 503 that says why at once (no hang), and /ready turns 503 with the reason."""
    real, release = Predictor.predict_arrays, threading.Event()

    def predict_arrays(self, arrays, top_k, names, images):
        if "kill.jpg" in names:
            release.wait(20)
            raise _LoopKiller("the loop dies")
        return real(self, arrays, top_k, names, images)

    monkeypatch.setattr(Predictor, "predict_arrays", predict_arrays)
    s = Server([tiny_models["cracks"]], device="cpu", max_batch_size=1, max_wait_ms=0.0)
    img = _jpeg(make_class_image("apple", 6, 32))

    def post(name: str) -> httpx.Response:
        return httpx.post(s.url + "/predict", files={"image": (name, img, "image/jpeg")}, timeout=30)

    try:
        s.wait_ready()
        with ThreadPoolExecutor(2) as pool:
            killer = pool.submit(post, "kill.jpg")
            _until(lambda: _metric(s, "visionlab_requests_in_flight") == 1, "in the model")
            waiting = pool.submit(post, "waits.jpg")
            _until(lambda: _metric(s, "visionlab_queue_depth", 'model="cracks"') == 1, "queued")
            release.set()
            answers = [killer.result(), waiting.result(), post("later.jpg")]
        why = "the batch loop of model 'cracks' stopped (_LoopKiller: the loop dies)"
        for a in answers:
            assert a.status_code == 503 and a.json()["error"] == f"the model cannot answer: {why}. Restart the server (its log says more)."
        ready = httpx.get(s.url + "/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["error"] == why
        assert _metric(s, "visionlab_ready") == 0
    finally:
        release.set()
        s.stop()


def test_one_failing_image_fails_only_its_own_request(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture):
    """Five requests share a batch; two images run out of memory (real allocations: torch's and numpy's),
    one raises: the batch runs again image by image, those get 413s and a 500, the other two their answers."""
    import torch

    real, calls = Predictor.predict_arrays, []

    def predict_arrays(self, arrays, top_k, names, images):
        calls.append(sorted(names))
        if "huge.jpg" in names:
            torch.empty(1 << 62, dtype=torch.uint8)  # more than any address space: torch's RuntimeError
        if "huger.jpg" in names:
            np.empty(1 << 62, dtype=np.uint8)  # and numpy's MemoryError
        if "bad.jpg" in names:
            raise ValueError("this image breaks the model")
        return real(self, arrays, top_k, names, images)

    monkeypatch.setattr(Predictor, "predict_arrays", predict_arrays)
    s = Server([tiny_models["cracks"]], device="cpu", max_wait_ms=1500.0)
    img = _jpeg(make_class_image("kiwi", 7, 32))
    try:
        s.wait_ready()
        calls.clear()  # the warm-up's
        names = ("a.jpg", "huge.jpg", "huger.jpg", "bad.jpg", "b.jpg")
        with ThreadPoolExecutor(len(names)) as pool:
            a, huge, huger, bad, b = pool.map(lambda name: httpx.post(s.url + "/predict", timeout=30,
                                                                      files={"image": (name, img, "image/jpeg")}), names)
        assert calls[0] == sorted(names), calls  # they did share a batch
        assert a.status_code == b.status_code == 200 and a.json()["results"][0]["name"] == "a.jpg"
        for r, name in ((huge, "huge.jpg"), (huger, "huger.jpg")):
            assert r.status_code == 413
            assert r.json()["error"] == f"{name}: the model ran out of memory on this image; send a smaller image."
        assert bad.status_code == 500
        assert bad.json()["error"] == "bad.jpg: the model failed on this image (ValueError); see the server log."
        errors = [r.getMessage() for r in caplog.records if r.name == "visionlab.serve" and r.levelname == "ERROR"]
        assert errors == ["the model failed on 'bad.jpg'"]  # once, with its traceback
    finally:
        s.stop()


def test_a_client_that_hangs_up_is_counted_499_and_logged_in_one_line(tiny_models: dict[str, Path]):
    """One client hangs up in the middle of its body, one while its image waits for a batch."""
    proc = subprocess.Popen(_cli("serve", "--checkpoint", str(tiny_models["cracks"]), "--port", "0", "--device", "cpu",
                                 "--max-wait-ms", "3000"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        url = _ready_url(proc)
        port = int(url.rsplit(":", 1)[1])
        img = _jpeg(make_class_image("apple", 8, 32))
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head % (port, 100_000) + img[:4])
            _until(lambda: _metric_at(url, "visionlab_requests_in_flight") == 1, "reading the body")
        _until(lambda: _metric_at(url, "visionlab_requests_in_flight") == 0, "done with the first")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head % (port, len(img)) + img)
            _until(lambda: 'visionlab_queue_depth{model="cracks"} 1' in httpx.get(url + "/metrics").text, "queued")
        _until(lambda: _metric_at(url, "visionlab_requests_in_flight") == 0, "done with the second")  # before its batch ran
        text = httpx.get(url + "/metrics").text
        assert 'visionlab_requests_total{path="/predict",status="499"} 2' in text
        assert 'path="/predict",status="500"' not in text and 'path="/predict",status="200"' not in text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        said = [line for line in out.splitlines() if "disconnect" in line.lower()]
        assert said == ["POST /predict: the client disconnected before its answer (499)"] * 2, out
        assert "Traceback" not in out and "Exception" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
