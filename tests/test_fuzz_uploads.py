"""Fuzzing the upload parser of visionlab serve (torch-free: python-multipart, Pillow, Hypothesis).

Whatever the body and its Content-Type, parsing it and checking its images' headers end in one
of two ways: a :class:`Problem` with a 4xx status and a message, or 1 to 64 uploads whose files
are ready to decode. Never another exception (the server would answer 500), never 0 or 65 images.
"""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("python_multipart")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from visionlab.serve.uploads import MAX_IMAGES_PER_REQUEST, Problem, Upload, check_images, parse_uploads  # noqa: E402

pytestmark = pytest.mark.torchfree  # also run on the other supported Pythons, without torch (.ci/torchfree)

BUDGET = 1_000_000  # pixels per request


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [_png(8, 8), _png(1000, 999), _png(1001, 1000), b"GIF89a\x01\x00\x01\x00", b"\x89PNG\r\n\x1a\n", b"BM"]
payloads = st.one_of(st.sampled_from(IMAGES), st.binary(max_size=64))
names = st.sampled_from(["image", "images", "file", "files"] * 3 + ["photo", "", "imäge", 'a"b'])
boundaries = st.one_of(st.sampled_from([b"xyz", b"----WebKitFormBoundary7MA4YWxkTrZu0gW", b"a'()+_,-./:=?"]),
                       st.text("abcXYZ019'()+_,-./:=? ", min_size=1, max_size=70).map(str.encode),
                       st.binary(min_size=1, max_size=70))


@st.composite
def multipart(draw) -> tuple[str, bytes]:
    boundary = draw(boundaries)
    body = b""
    for _ in range(draw(st.one_of(st.integers(0, 3), st.integers(MAX_IMAGES_PER_REQUEST - 2, MAX_IMAGES_PER_REQUEST + 3)))):
        disposition = b'Content-Disposition: form-data; name="%s"; filename="p.png"' % draw(names).encode()
        headers = [draw(st.sampled_from([disposition] * 4 + [b"Content-Disposition: form-data", b""]))]
        headers += draw(st.lists(st.sampled_from([b"Content-Type: image/png"] * 20 + [b"X: " + draw(st.binary(max_size=8)),
                                                  draw(st.binary(max_size=20))]), max_size=2))
        body += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + draw(payloads) + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    if draw(st.integers(0, 3)) == 0:  # a body cut anywhere, and something else after
        body = body[:draw(st.integers(0, len(body)))] + draw(st.binary(max_size=16))
    ctype = draw(st.sampled_from(["multipart/form-data; boundary={}", "multipart/form-data; boundary=\"{}\""] * 3
                                 + ["multipart/form-data", "Multipart/Form-Data;boundary={};charset=utf-8"]))
    return ctype.format(boundary.decode("latin-1")), body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
images_b64 = st.one_of(payloads.map(_b64), payloads.map(lambda d: "data:image/png;base64," + _b64(d)),
                       st.text(max_size=12), json_values)


@st.composite
def json_body(draw) -> tuple[str, bytes]:
    doc = draw(st.dictionaries(st.sampled_from(["image", "images", "id", "x"]),
                               st.one_of(images_b64, st.lists(images_b64, max_size=MAX_IMAGES_PER_REQUEST + 2),
                                         json_values), max_size=3))
    text = json.dumps(draw(st.one_of(st.just(doc), json_values))).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.binary(max_size=8))
    return draw(st.sampled_from(["application/json", "application/problem+json", "APPLICATION/JSON; charset=utf-8"])), text


raw = st.tuples(st.one_of(st.sampled_from(["image/png", "application/octet-stream", "text/plain", ""]), st.text(max_size=30)),
                st.one_of(payloads, st.binary(max_size=256)))


def _holds(content_type: str, body: bytes) -> None:
    try:
        uploads, extra = parse_uploads(content_type, body)
        files, pixels = check_images(uploads, BUDGET)
    except Problem as exc:
        assert 400 <= exc.status < 500 and exc.message, (exc.status, exc.message)
        return
    assert 1 <= len(uploads) <= MAX_IMAGES_PER_REQUEST and isinstance(extra, dict)
    assert all(isinstance(u, Upload) and isinstance(u.name, str) and u.data for u in uploads)
    assert len(files) == len(uploads) and 0 < pixels <= BUDGET
    for upload, f in zip(uploads, files):
        assert f.read() == upload.data


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(multipart())
def test_any_multipart_body_gives_uploads_or_a_4xx_problem(case: tuple[str, bytes]):
    _holds(*case)


@FUZZ
@given(json_body())
def test_any_json_body_gives_uploads_or_a_4xx_problem(case: tuple[str, bytes]):
    _holds(*case)


@FUZZ
@given(raw)
def test_any_other_body_gives_uploads_or_a_4xx_problem(case: tuple[str, bytes]):
    _holds(*case)


def test_the_fuzzed_images_reach_both_answers():
    """The strategies do reach the interesting outcomes: accepted images, and the budget's 413."""
    ok = _png(8, 8)
    uploads, _ = parse_uploads("application/json", json.dumps({"images": [_b64(ok)] * 3}).encode())
    assert check_images(uploads, BUDGET)[1] == 3 * 64
    uploads, _ = parse_uploads("image/png", _png(1001, 1000))
    with pytest.raises(Problem) as exc:
        check_images(uploads, BUDGET)
    assert exc.value.status == 413 and "1 MP per request (--max-megapixels)" in exc.value.message
