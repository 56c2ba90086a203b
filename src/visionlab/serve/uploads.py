"""Request bodies -> decoded images, in memory only, with a clear error for every bad input.

The body is read here chunk by chunk with a running size check (a Content-Length over the
limit is refused before anything is read; one that lies cannot make us read more, because a
chunked body is counted as it comes) and a deadline (a client too slow to send it gets 408).
Parsing is synchronous, for a worker thread, never the event loop: multipart is parsed in
memory by python-multipart's streaming parser (never Starlette's form parser, which spools
large files to disk), and parts and images are counted as they come, so a body of 280,000
tiny parts stops at the 65th. Image headers are checked for their pixel count before any
pixel is decoded, and all the images of one request share one pixel budget.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator

__all__ = ["Problem", "Upload", "BodyBudget", "read_body", "parse_uploads", "check_image", "check_images", "decode_failure",
           "IMAGE_FIELDS"]

IMAGE_FIELDS = ("image", "images", "file", "files")  # multipart field names that carry images
MAX_IMAGES_PER_REQUEST = 64


class Problem(Exception):
    """An HTTP error answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Upload:
    name: str  # the file name (multipart) or images[i] (JSON)
    data: bytes


class BodyBudget:
    """The bytes of the request bodies held, all requests together (read, or being read), within
    ``limit``: a chunk that would pass it is a 503, so slow uploads cannot add up to any memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise Problem(503, f"the server holds {self.used / 2**20:.1f} MB of request bodies already, its limit "
                               f"(--max-bodies-mb {self.limit / 2**20:g}); retry shortly.", {"Retry-After": "1"})
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


async def read_body(headers: Any, stream: AsyncIterator[bytes], limit: int, timeout: float, budget: BodyBudget) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit`` bytes, with
    408 when it has not all arrived ``timeout`` seconds after reading began, and with 503 when it
    does not fit in ``budget``; the caller gives its bytes back to the budget once it is answered."""
    import anyio

    try:
        with anyio.fail_after(timeout):  # raises the built-in TimeoutError on every Python
            return await _read(headers, stream, limit, budget)
    except TimeoutError:
        raise Problem(408, f"the request body did not arrive within {timeout:g} s (--body-timeout); send it faster, "
                           "or ask whoever runs the server for a longer --body-timeout.", {"Connection": "close"}) from None


async def _read(headers: Any, stream: AsyncIterator[bytes], limit: int, budget: BodyBudget) -> bytes:
    mb = f"{limit / 2**20:g} MB"
    declared = headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise Problem(400, f"Content-Length {declared!r} is not a number.") from None
        if n > limit:
            raise Problem(413, f"the request body is {n} bytes, over the upload limit of {mb} (--max-upload-mb).")
    buf = bytearray()
    try:
        async for chunk in stream:
            budget.take(len(chunk))
            buf += chunk
            if len(buf) > limit:
                raise Problem(413, f"the request body is over the upload limit of {mb} (--max-upload-mb).")
    except BaseException:  # refused, timed out or hung up: its bytes are free again
        budget.give(len(buf))
        raise
    return bytes(buf)


def parse_uploads(content_type: str, body: bytes) -> tuple[list[Upload], dict[str, Any]]:
    """The images of a request body, and its other JSON fields (e.g. ``id``).

    multipart/form-data: files in fields named image/images/file/files. application/json:
    ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}`` (data: URLs accepted).
    image/*: the body is one image."""
    if not body:
        raise Problem(400, "the request body is empty; send an image (multipart/form-data, JSON with base64, or image/*).")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        uploads, extra = _multipart(content_type, body), {}
    elif mime == "application/json" or mime.endswith("+json"):
        uploads, extra = _json(body)
    elif mime.startswith("image/") or mime == "application/octet-stream":
        uploads, extra = [Upload("image", body)], {}
    else:
        raise Problem(415, f"unsupported Content-Type {mime or '(none)'!r}; send multipart/form-data, "
                           "application/json ({\"image\": \"<base64>\"}) or an image/* body.")
    if not uploads:
        raise Problem(422, "the request has no image.")
    return uploads, extra


def _too_many(count: str) -> Problem:
    return Problem(413, f"{count} images in one request; at most {MAX_IMAGES_PER_REQUEST} are accepted, "
                        "send the others in another request.")


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (1e999) would come back as infinity,
    which no JSON answer can carry (an echoed "id")."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _json(body: bytes) -> tuple[list[Upload], dict[str, Any]]:
    try:
        doc = json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON ({exc}).") from None
    except RecursionError:
        raise Problem(400, "the JSON body is nested too deeply; send {\"image\": \"<base64>\"}.") from None
    if not isinstance(doc, dict) or not ("image" in doc or "images" in doc):
        keys = ", ".join(map(repr, doc)) if isinstance(doc, dict) else type(doc).__name__
        raise Problem(422, f"JSON needs \"image\": \"<base64>\" or \"images\": [\"<base64>\", ...] (got {keys}).")
    if "image" in doc:
        items, names = [doc["image"]], ["image"]
    else:
        if not isinstance(doc["images"], list):
            raise Problem(422, "\"images\" must be a list of base64 strings.")
        if len(doc["images"]) > MAX_IMAGES_PER_REQUEST:  # before any of them is decoded
            raise _too_many(str(len(doc["images"])))
        items, names = doc["images"], [f"images[{i}]" for i in range(len(doc["images"]))]
    uploads = []
    for name, item in zip(names, items):
        if not isinstance(item, str):
            raise Problem(422, f"{name} must be a base64 string, not {type(item).__name__}.")
        if item.startswith("data:") and "," in item:  # a data: URL, as a browser's FileReader gives
            item = item.split(",", 1)[1]
        try:
            uploads.append(Upload(name, base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise Problem(422, f"{name} is not valid base64.") from None
    return uploads, {k: v for k, v in doc.items() if k not in ("image", "images")}


def _multipart(content_type: str, body: bytes) -> list[Upload]:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary.")
    parts: list[dict[str, Any]] = []
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:  # the parser stops at the first part past the cap
        if len(parts) == MAX_IMAGES_PER_REQUEST:
            raise _too_many(f"more than {MAX_IMAGES_PER_REQUEST}")
        parts.append({"headers": {}, "data": bytearray(), "done": False})

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": lambda d, s, e: field.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": on_header_end,
        "on_part_data": lambda d, s, e: parts[-1]["data"].extend(d[s:e]),
        "on_part_end": lambda: parts[-1].update(done=True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise Problem(400, f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).") from None
    uploads = []
    for part in parts:
        if not part["done"]:
            raise Problem(400, "malformed multipart body (a part is not terminated by the boundary).")
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename", b"").decode("utf-8", "replace")
        if name not in IMAGE_FIELDS:
            raise Problem(422, f"unknown form field {name!r}; send images in a field named 'image' (or 'images').")
        uploads.append(Upload(filename or name, bytes(part["data"])))
    return uploads


def check_image(upload: Upload, max_pixels: int) -> tuple[io.BytesIO, int]:
    """The upload as a file object and its pixel count, once its header says it is an image of
    at most ``max_pixels`` (415 for a non-image, 413 for a bomb); nothing is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    from visionlab.data.io import DECODE_ERRORS, FORMAT_NAMES, open_image

    name = upload.name
    if not upload.data:
        raise Problem(422, f"{name}: the file is empty.")
    try:
        with open_image(io.BytesIO(upload.data)) as img:  # reads the header only; only the formats visionlab decodes
            w, h = img.size
    except UnidentifiedImageError:
        raise Problem(415, f"{name}: not an image of a format this server reads; send {FORMAT_NAMES}.") from None
    except Image.DecompressionBombError as exc:
        raise Problem(413, f"{name}: refused as a decompression bomb ({exc}).") from None
    except DECODE_ERRORS as exc:
        raise Problem(422, f"{name}: corrupt image header ({type(exc).__name__}: {exc}).") from None
    if w * h > max_pixels:
        raise Problem(413, f"{name}: {w} x {h} pixels ({w * h / 1e6:.0f} MP) is over the budget of "
                           f"{_mp(max_pixels)} per request (--max-megapixels); it is refused before decoding.")
    return io.BytesIO(upload.data), w * h


def check_images(uploads: list[Upload], max_pixels: int) -> tuple[list[io.BytesIO], int]:
    """:func:`check_image` for each upload, and all of them together within the request's
    pixel budget (413 at the first image past it, before any is decoded); and their pixels."""
    files, total = [], 0
    for i, upload in enumerate(uploads):
        file, pixels = check_image(upload, max_pixels)
        total += pixels
        if total > max_pixels:
            raise Problem(413, f"the first {i + 1} images of the request have {total / 1e6:.1f} MP together, over the "
                               f"budget of {_mp(max_pixels)} per request (--max-megapixels); send fewer or smaller "
                               "images per request.")
        files.append(file)
    return files, total


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:g} MP"


def decode_failure(upload: Upload, exc: Exception) -> Problem:
    """422 for an image whose header was fine but whose pixels do not decode (truncated, corrupt)."""
    from visionlab.data.io import IN_MEMORY

    text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
    return Problem(422, f"{upload.name}: {text.removeprefix(IN_MEMORY + ': ')}")
