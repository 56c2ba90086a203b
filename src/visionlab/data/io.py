"""Robust image decoding shared by training, evaluation, prediction, the server and the data doctor.

Only the formats of :data:`DECODE_FORMATS` are decoded (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM),
whatever the file's extension (PNG or GIF named ``.jpg``); no other Pillow plugin (PCX, TGA, ICO,
SGI, EPS through Ghostscript, ...) ever sees a file or an upload (:func:`open_image`). EXIF
orientation is applied, and greyscale, RGBA, palette, CMYK and 16-bit images become RGB.
The same function is used at train and predict time, so preprocessing never drifts. This module
imports no torch: the ONNX runtime (:mod:`visionlab.runtime`) decodes with it too.
"""

from __future__ import annotations

import glob
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visionlab.errors import VisionlabError
from visionlab.process import LARGE_IMAGE_PIXELS

__all__ = [
    "OUTPUT_TAG",
    "output_pnginfo",
    "is_visionlab_output",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "DECODE_FORMATS",
    "FORMAT_NAMES",
    "open_image",
    "is_image_file",
    "load_image",
    "load_mask",
    "resize_image",
    "resize_mask",
    "UnreadableImage",
    "DECODE_ERRORS",
    "load_for_model",
    "InputEntry",
    "scan_inputs",
    "expand_inputs",
    "printable_name",
]

#: The image extensions visionlab reads (the one list: layouts, prediction inputs, downloads,
#: the data doctor), each with the format PIL detects in content that matches it.
IMAGE_FORMATS: Mapping[str, str] = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM",
}
IMAGE_EXTENSIONS = frozenset(IMAGE_FORMATS)
#: The only formats decoded (Pillow's names; JPEG includes camera MPO files): Pillow's other readers
#: are not tried, so a PCX, TGA, ICO, SGI or EPS file is "not an image" everywhere.
DECODE_FORMATS: tuple[str, ...] = tuple(dict.fromkeys(IMAGE_FORMATS.values()))
#: :data:`DECODE_FORMATS` as a user reads them, for messages.
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP or PPM"

IN_MEMORY = "<in-memory image>"  # how a file object without a name is called in errors

#: What PIL raises on a broken, truncated or hostile file, and nothing else: an unreadable image.
#: Caught only around PIL's own calls (open, load, seek, EXIF), so that the same types raised by a
#: bug in visionlab's code propagate. OSError includes UnidentifiedImageError and "image file is
#: truncated"; DecompressionBombError is not an OSError; ValueError comes from PPM headers (and
#: others); SyntaxError, EOFError and struct.error from plugins' headers and frames; Pillow 13's
#: GIF and TIFF readers raise IndexError and TypeError ("Missing dimensions") on corrupt frames
#: (found by flipping bytes of small files of every format we read).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, Image.DecompressionBombError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError,
)


class UnreadableImage(VisionlabError):
    """An image file that cannot be decoded (missing, truncated, not an image)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension (content is checked on load)."""
    name = os.fspath(path)
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def open_image(src: str | os.PathLike | BinaryIO) -> Image.Image:
    """``PIL.Image.open`` restricted to :data:`DECODE_FORMATS` (header only, as Image.open is):
    anything else raises ``PIL.UnidentifiedImageError``. Every decoder of visionlab opens with it."""
    return Image.open(src, formats=DECODE_FORMATS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white, as a browser would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255.0).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike | BinaryIO | Image.Image | np.ndarray, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image into an RGB PIL image, EXIF-transposed.

    Accepts a path, a binary file object, an already-open PIL image or an HxW / HxWxC uint8 array. ``draft`` lets
    JPEG decoding scale down by a power of two while staying at least that size (much faster
    for large photos that are resized afterwards anyway).
    Raises :class:`UnreadableImage` with a one-line message for anything undecodable.
    """
    if isinstance(path, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(path) or path)
    if isinstance(path, np.ndarray):
        arr = path
        if arr.dtype != np.uint8:
            raise UnreadableImage(f"array image has dtype {arr.dtype}; pass uint8 HxWx3 RGB.")
        return _to_rgb(Image.fromarray(arr))
    if hasattr(path, "read"):  # a file object (an upload held in memory), read from its start
        path.seek(0)
        p, src = getattr(path, "name", IN_MEMORY), path
    else:
        p = src = Path(path)
        if not p.exists():
            raise UnreadableImage(f"{printable_name(p)}: file not found.", "Check the path.")
    try:
        with open_image(src) as img:
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, draft)
            img.load()  # force full decode: catches truncated files
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            out = (ImageOps.exif_transpose(img) or img).copy()  # a copy outlives the closed file
    except DECODE_ERRORS as exc:
        raise _unreadable(p, exc) from None
    try:
        return _to_rgb(out)
    except ValueError as exc:  # a colour mode PIL cannot convert to RGB (LAB, ...)
        raise _unreadable(p, exc) from None


def printable_name(path: Any) -> str:
    """A file name for a one-line message: a newline, tab or other control character in it is
    written as its escape (``\\n``), so that the message is one line and names the whole file."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _unreadable(p: Any, exc: BaseException) -> UnreadableImage:
    if isinstance(exc, Image.DecompressionBombError):
        return UnreadableImage(f"{printable_name(p)}: refused as a decompression bomb ({exc}).",
                               f"If you trust it, raise PIL.Image.MAX_IMAGE_PIXELS (here {Image.MAX_IMAGE_PIXELS or 0:,} pixels; "
                               f"the visionlab command sets {LARGE_IMAGE_PIXELS:,}).")
    if isinstance(exc, UnidentifiedImageError):
        return UnreadableImage(f"{printable_name(p)}: cannot decode image (not a {FORMAT_NAMES} file).",
                               "Convert it to one of those, or remove it.")
    return UnreadableImage(
        f"{printable_name(p)}: cannot decode image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unknown'}).",
        "Remove or replace the file.",
    )


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a single-channel class mask (pixel value = class value) as an HxW uint8 array."""
    p = Path(path)
    if not p.exists():
        raise UnreadableImage(f"{printable_name(p)}: mask not found.", "Every image needs a mask with the same stem in masks/.")
    try:
        with open_image(p) as m:
            m.load()
            colour = m.mode not in ("L", "P", "I", "I;16", "1")  # palette images keep their indices
            arr = np.asarray(m.convert("RGB") if colour else m)
    except DECODE_ERRORS as exc:
        raise UnreadableImage(f"{printable_name(p)}: cannot decode mask ({type(exc).__name__}).", "Remove or replace the file.") from None
    if colour:  # an RGB mask whose three channels are equal is treated as single-channel
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise UnreadableImage(
                f"{printable_name(p)}: mask is a colour image; visionlab expects pixel value = class value.",
                "Convert colour masks to class indices (see classes.json).",
            )
        arr = arr[..., 0]
    return np.ascontiguousarray(arr.astype(np.uint8))


def resize_image(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize to ``size`` (square int or (width, height)) with antialiased bilinear filtering."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    if img.size == wh:
        return img
    return img.resize(wh, Image.BILINEAR, reducing_gap=None)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a class mask to (width, height) with nearest neighbour: never smooth class values."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))


def load_for_model(src: Any, pre: Mapping[str, Any]) -> np.ndarray:
    """File / PIL image / array -> HxWx3 uint8 array as the model expects it (before normalising).

    The preprocessing record says how: ``resize: squash`` decodes, optionally removes the
    background and resizes (squashes) to ``image_size`` (whole-image models); otherwise the image
    is decoded and scaled by ``seg_scale`` (dense models: full images are tiled later, never
    squashed; records written before the ``resize`` key have none)."""
    if pre.get("resize") != "squash":
        img = load_image(src)
        scale = float(pre.get("seg_scale", 1.0))
        if scale != 1.0:
            img = resize_image(img, (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        return np.array(img)  # writable copy: torch.from_numpy needs one
    size = int(pre["image_size"])
    img = load_image(src, draft=(size, size))
    if pre.get("background_removal"):
        try:
            from visionlab.data.background import remove_background
        except ImportError:  # the torch-free runtime's venv: numpy, Pillow, onnxruntime only
            raise VisionlabError("this model removes the background before resizing, which needs OpenCV (cv2), not installed.",
                                 "pip install opencv-python-headless") from None
        img = remove_background(img)
    return np.array(resize_image(img, size))


# Files a folder walk passes over without a word (README, "Predict"): OS and editor junk.
_JUNK = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})


@dataclass(frozen=True)
class InputEntry:
    """One entry the user named (directly, in a folder or through a glob): a file to predict,
    or, with ``skipped`` set, why it is not predicted ("not an image", "broken symbolic link",
    "is a directory", ...)."""

    path: str
    skipped: str | None = None


def _looks_like_an_image(path: str) -> bool:
    """An image extension, or else content of a format visionlab reads (a JPEG named ``photo`` or ``x.dat``)."""
    if is_image_file(path):
        return True
    try:
        with open_image(path):
            return True
    except DECODE_ERRORS:
        return False


OUTPUT_TAG = "visionlab"  # the PNG text key of the files predict writes beside its predictions
OUTPUT_SUFFIXES = ("_why.png", "_mask.png", "_overlay.png", "_confidence.png")


def output_pnginfo(what: str) -> Any:
    """PNG text that marks a file predict wrote (``what``: explanation, mask...): such a file may be
    written over by a later run, and is not read back as a photo from a folder (:func:`is_visionlab_output`)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(OUTPUT_TAG, what)
    return info


def is_visionlab_output(path: str | os.PathLike) -> bool:
    """``path`` is a regular PNG that predict wrote (named ``*_why.png``, ``*_mask.png``... and marked
    by :func:`output_pnginfo`); a link, a user's photo of the same name or an unreadable file is not."""
    p = Path(path)
    if not p.name.lower().endswith(OUTPUT_SUFFIXES) or p.is_symlink() or not p.is_file():
        return False
    try:
        with Image.open(p) as im:
            return im.format == "PNG" and OUTPUT_TAG in im.info
    except Exception:  # noqa: BLE001 (unreadable: a user's file, never ours to replace)
        return False


def _classify(path: str, named: bool) -> InputEntry:
    """What to do with one path found in a folder or a glob (``named=False``) or given as is."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        return InputEntry(path, "broken symbolic link")
    if p.is_dir():
        return InputEntry(path, "is a directory")
    if not p.exists():
        return InputEntry(path)  # reported as 'file not found' by the prediction itself
    if not p.is_file():
        return InputEntry(path, "not a regular file")
    if named:
        return InputEntry(path)  # asked for by name: decoding says what is wrong with it
    if is_visionlab_output(path):
        return InputEntry(path, "a file visionlab wrote beside earlier predictions")
    return InputEntry(path) if _looks_like_an_image(path) else InputEntry(path, "not an image")


def _walk(folder: Path) -> list[InputEntry]:
    """Every entry below ``folder`` (links to folders followed once); hidden names (``.*``) and
    OS junk are passed over silently."""
    out: list[InputEntry] = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(base / d)
            if real in seen:  # a link back up the tree, or to a folder listed already
                out.append(InputEntry(str(base / d), "link to a folder already listed"))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        names = sorted(f for f in filenames if not f.startswith(".") and f.lower() not in _JUNK)
        if base != folder and not names and not keep:
            out.append(InputEntry(str(base), "empty folder"))
        out += [_classify(str(base / n), named=False) for n in names]
    return out


def scan_inputs(items: Iterable[str | os.PathLike]) -> list[InputEntry]:
    """Files, folders (recursively) and glob patterns -> one entry for everything they name.

    Every file below a folder, and every glob match, is an entry: a file whose extension is
    an image's, or whose content is of a format visionlab reads (:data:`DECODE_FORMATS`), is to be predicted; anything else (a
    README, a broken link, a directory matched by a glob, an empty sub-folder) is listed with
    why it is skipped. In folders, hidden files and folders (names starting with ``.``) and OS
    junk (``Thumbs.db``, ``desktop.ini``) are passed over silently. A named path that does not
    exist, or a glob that matches nothing, stays an entry to predict, which reports it as an
    error."""
    out: list[InputEntry] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.is_dir():
            out += _walk(p)
        elif any(ch in s for ch in "*?[") and not os.path.lexists(p):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            out += [_classify(m, named=False) for m in matches] or [InputEntry(s)]
        else:
            out.append(_classify(str(p), named=True))
    return out


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[str]:
    """The paths of :func:`scan_inputs` that are to be predicted (skipped entries left out)."""
    return [e.path for e in scan_inputs(items) if e.skipped is None]
