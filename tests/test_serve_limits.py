"""visionlab serve against hostile bodies: slow uploads, bodies of countless parts, big images.

Each test starts its own real uvicorn on 127.0.0.1 (test_serve's ``Server``) with the limit it
probes set low, and talks to it over real sockets.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from conftest import make_class_image  # noqa: E402
from test_serve import Server, _cli, _env, _jpeg, _metric, _raw_http, _ready_url  # noqa: E402

STALL_HEAD = (b"POST /predict/cracks HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
              b"Content-Length: 100000\r\n\r\n\xff\xd8\xff\xe0")  # 4 bytes of the 100000 promised, then nothing


@pytest.fixture
def serve(tiny_models: dict[str, Path]) -> Iterator:
    started: list[Server] = []

    def start(**settings) -> Server:
        s = Server([tiny_models["cracks"]], device="cpu", **settings)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_stalled_uploads_hold_no_queue_place_and_get_408_after_the_body_timeout(serve):
    s = serve(max_queue=3, body_timeout=3.0)
    host, port = s.url.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=60) for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(STALL_HEAD)
        deadline = time.monotonic() + 20
        while _metric(s, "visionlab_requests_in_flight") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(s, "visionlab_requests_in_flight") == 3  # all three are inside the handler, reading
        assert _metric(s, "visionlab_pending_images") == 0  # ... and none holds a place in the queue
        r = httpx.post(s.url + "/predict", content=_jpeg(make_class_image("apple", 1, 32)),
                       headers={"content-type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        for sock in stalled:
            status, body = _read_answer(sock)
            assert status == 408 and "did not arrive within 3 s (--body-timeout)" in body["error"], body
    finally:
        for sock in stalled:
            sock.close()
    assert _metric(s, "visionlab_requests_in_flight") == 0


def test_the_bodies_held_all_requests_together_are_bounded_so_slow_uploads_cannot_add_up(serve):
    """Each slow upload held its bytes and nothing bounded their sum: 30 of 19 MB each cost 600 MB."""
    s = serve(max_bodies_mb=1.0, body_timeout=60.0)
    host, port = s.url.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=60) for _ in range(2)]
    photo = _jpeg(make_class_image("apple", 1, 32))
    try:
        for sock in stalled:  # 450 KB each of the 500 KB promised, then nothing
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 500000\r\n\r\n" + b"\0" * 450_000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the server holds the 900 KB
            r = httpx.post(s.url + "/predict", content=b"\0" * 200_000, headers={"content-type": "image/jpeg"}, timeout=30)
            if r.status_code == 503:
                break
            time.sleep(0.1)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "MB of request bodies already" in r.json()["error"] and "--max-bodies-mb 1" in r.json()["error"], r.text
        r = httpx.post(s.url + "/predict", content=photo, headers={"content-type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text  # a small one still fits
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 30  # hung up: their bytes are free again
    while _metric(s, "visionlab_requests_in_flight") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(s.url + "/predict", content=photo + b"\0" * 600_000, headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200, r.text


def _multipart(parts: list[bytes], boundary: bytes = b"xyz") -> bytes:
    return b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"images\"; filename=\"p\"\r\n\r\n"
                    + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"


def test_parts_and_images_are_counted_as_they_come_and_parsing_stops_at_the_cap(serve):
    s = serve(max_upload_mb=20)
    url = s.url + "/predict"
    # 65 one-byte parts, then 19 MB of what is no multipart at all: a parser that read to the end
    # would answer 400 (malformed); one that stops at the 65th part answers 413 without reading on
    body = _multipart([b"x"] * 65)[: -len(b"--xyz--\r\n")] + b"\0" * (19 * 2**20)
    r = httpx.post(url, content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=60)
    assert r.status_code == 413 and "more than 64 images in one request" in r.json()["error"], r.text
    # 280,000 one-byte parts: refused at the 65th, and the server goes on answering
    body = _multipart([b"x"] * 280_000)
    r = httpx.post(url, content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=60)
    assert r.status_code == 413 and "more than 64 images" in r.json()["error"], r.text
    # JSON: the count is checked before any image is decoded (the first is not even base64)
    r = httpx.post(url, json={"images": ["%%% not base64 %%%"] * 65}, timeout=60)
    assert r.status_code == 413 and "65 images in one request; at most 64" in r.json()["error"], r.text
    r = httpx.post(url, content=b'{"images": [' + b'"",' * 3_000_000 + b'""]}',
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "3000001 images" in r.json()["error"], r.text
    # a part with a flood of headers is refused (python-multipart counts them), not stored
    flood = b"--xyz\r\n" + b"X-A: b\r\n" * 100_000 + b"\r\nx\r\n--xyz--\r\n"
    r = httpx.post(url, content=flood, headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=60)
    assert r.status_code == 400 and "malformed multipart body (Maximum header count" in r.json()["error"], r.text
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    assert _metric(s, "visionlab_requests_in_flight") == 0


def _sized_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 60, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_all_images_of_a_request_share_one_pixel_budget_checked_before_decoding(serve):
    s = serve(max_megapixels=1.0)
    url = s.url + "/predict"
    quarter = _sized_jpeg(500, 500)  # 0.25 MP
    r = httpx.post(url, files=[("images", (f"{i}.jpg", quarter, "image/jpeg")) for i in range(4)], timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 4, r.text  # 1 MP: the budget exactly
    r = httpx.post(url, files=[("images", (f"{i}.jpg", quarter, "image/jpeg")) for i in range(5)], timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == ("the first 5 images of the request have 1.2 MP together, over the budget of 1 MP per "
                                 "request (--max-megapixels); send fewer or smaller images per request.")
    r = httpx.post(url, content=_sized_jpeg(2000, 1000), headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 413 and "image: 2000 x 1000 pixels (2 MP) is over the budget of 1 MP per request" in r.json()["error"]
    # the budget is read from the header: a 10000 x 10000 PNG of 97 KB is refused without decoding it
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, format="PNG")
    status, _, body = _raw_http(s.url, b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                                       b"Content-Length: %d\r\n\r\n" % len(buf.getvalue()), iter([buf.getvalue()]))
    assert status == 413 and b"10000 x 10000 pixels (100 MP)" in body
    assert _metric(s, "visionlab_pending_images") == 0


def test_the_queue_counts_pixels_too_so_the_memory_of_images_in_flight_is_bounded(serve):
    """1 MP may wait at once: a request of four 0.25 MP images fills it (its batch waits 1.5 s for
    company), and a fifth image gets 503 although the queue has places for 128 images."""
    s = serve(max_megapixels=1.0, max_queue_megapixels=1.0, max_wait_ms=1500.0)
    quarter = _sized_jpeg(500, 500)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, s.url + "/predict", timeout=30,
                            files=[("images", (f"{i}.jpg", quarter, "image/jpeg")) for i in range(4)])
        deadline = time.monotonic() + 10
        while _metric(s, "visionlab_pending_megapixels") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = httpx.post(s.url + "/predict", content=quarter, headers={"content-type": "image/jpeg"}, timeout=30)
        assert second.status_code == 503 and second.headers["retry-after"] == "1", second.text
        assert "4 images of 1.0 MP queued" in second.json()["error"] and "--max-queue-megapixels 1" in second.json()["error"]
        assert first.result().status_code == 200
    assert _metric(s, "visionlab_pending_megapixels") == 0
    assert httpx.post(s.url + "/predict", content=quarter, headers={"content-type": "image/jpeg"}).status_code == 200


def test_a_request_of_more_images_than_the_queue_admits_is_a_413_not_a_503_to_retry(serve):
    s = serve(max_queue=3)
    image = _jpeg(make_class_image("apple", 1, 32))
    files = [("images", (f"{i}.jpg", image, "image/jpeg")) for i in range(4)]
    r = httpx.post(s.url + "/predict", files=files, timeout=30)
    assert r.status_code == 413 and "retry-after" not in r.headers, r.text
    assert "4 images in one request" in r.json()["error"] and "--max-queue" in r.json()["error"], r.text
    r = httpx.post(s.url + "/predict", files=files[:3], timeout=30)
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text


def test_serving_defaults_keep_a_request_far_below_100_megapixels():
    from visionlab.serve.app import Settings

    assert Settings().max_megapixels <= 32 and Settings().body_timeout == 30.0
    assert Settings().max_queue_megapixels >= Settings().max_megapixels


def test_cli_refuses_limits_that_could_never_admit_a_request(tiny_models: dict[str, Path]):
    ck = str(tiny_models["cracks"])
    r = subprocess.run(_cli("serve", "-k", ck, "--max-megapixels", "100", "--max-queue-megapixels", "50"),
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode != 0 and "--max-queue-megapixels 50 is below --max-megapixels 100" in r.stderr, r.stderr
    r = subprocess.run(_cli("serve", "-k", ck, "--body-timeout", "0"), capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode != 0 and "--body-timeout must be positive" in r.stderr, r.stderr
    r = subprocess.run(_cli("serve", "-k", ck, "--max-bodies-mb", "10"), capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode != 0 and "--max-bodies-mb 10 is below --max-upload-mb 20" in r.stderr, r.stderr


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (an answer it sent first is read and dropped)."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            pass
        return not data
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_connections_that_never_finish_their_headers_are_closed_after_the_header_timeout(tiny_models: dict[str, Path]):
    """h11 has no deadline for a request's headers: silent and dribbling sockets were held for ever."""
    proc = subprocess.Popen(_cli("serve", "--checkpoint", str(tiny_models["cracks"]), "--port", "0", "--device", "cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    socks: list[socket.socket] = []
    try:
        url = _ready_url(proc)
        host, port = url.removeprefix("http://").split(":")
        socks = [socket.create_connection((host, int(port))) for _ in range(3)]
        silent, dribbling, again = socks
        again.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\nGET /health HTTP/1.1\r\n")  # then stalls
        head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
        deadline = time.monotonic() + 60  # the default --header-timeout is 10 s
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            try:
                dribbling.sendall(head[:1])  # a byte every 0.2 s: never the whole head
                head = head[1:]
            except OSError:
                pass
            open_ = [s for s in open_ if not _closed(s)]
            time.sleep(0.2)
        assert not open_, f"{len(open_)} of the 3 connections are still held after 60 s"
        assert httpx.get(url + "/health").status_code == 200  # a normal client is answered meanwhile
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.communicate(timeout=60)


def test_an_explained_image_holds_two_queue_places_so_explain_cannot_double_the_wait_the_queue_bounds(serve):
    """Grad-CAM costs about the prediction again (benchmarks/README.md): 50 explained images made a
    one-image request of another client wait 59 s, 50 plain ones 29 s (the caltech model, a loaded
    2-core machine). With --max-queue 4, two explained images fill it as four plain ones do; three
    explained are a 413 that says why, three plain are answered."""
    s = serve(max_queue=4)
    image = _jpeg(make_class_image("apple", 1, 32))
    files = [("images", (f"{i}.jpg", image, "image/jpeg")) for i in range(3)]
    r = httpx.post(s.url + "/predict?explain=1", files=files, timeout=60)
    assert r.status_code == 413 and "retry-after" not in r.headers, r.text
    assert r.json()["error"].startswith("3 images explained (each counts 2) in one request; this server admits at most 4"), r.text
    r = httpx.post(s.url + "/predict", files=files, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
    r = httpx.post(s.url + "/predict?explain=1", files=files[:2], timeout=60)
    assert r.status_code == 200 and all("explanation" in x for x in r.json()["results"]), r.text
    assert _metric(s, "visionlab_pending_images") == 0
