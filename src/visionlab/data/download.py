"""Download the seed datasets into the data root, checksummed and resumable.

``visionlab data download TASK`` calls :func:`visionlab.api.download_task`, which finds the task's
dataset and calls :func:`download_source`; the same work is available from
Python as :func:`download_dataset` (one :class:`Source`) and :func:`fetch` (one file). They say
what they do (progress bars, checksums) to the ``console`` they are given, and nothing without one.

How a file is fetched (:func:`fetch`)
    urllib; streamed to ``<file>.part`` with a progress bar; a ``.part`` left by an
    interrupted transfer is resumed with an HTTP ``Range`` request (a server that ignores it is
    detected and the transfer restarts); the size and the sha256 / md5 are checked before the
    atomic rename to ``<file>``; a mismatch deletes the file and raises. Where no checksum is
    published, the sha256 of the first complete download is written next to it as
    ``<file>.sha256`` (``sha256sum`` format, trust on first use) and every later use is checked
    against it. md5 checks and zip extraction are torchvision's (``torchvision.datasets.utils``);
    the transfer itself, tar and rar extraction are ours, for the reasons given at :func:`fetch`
    and :func:`extract`.

Where data goes
    :func:`data_root`: ``$VISIONLAB_DATA``, else ``$XDG_CACHE_HOME/visionlab/data``, else
    ``~/.cache/visionlab/data``. Archives are kept in ``<root>/.downloads``; each dataset is
    built in a temporary folder and renamed to ``<root>/<source name>`` only when complete, with
    a ``.visionlab-source.json`` marker, so a second call does nothing unless ``force=True``.

Overriding the registry
    ``$VISIONLAB_SOURCES`` may name a JSON file ``{"<source>": {field: value}}`` that replaces
    fields of the built-in sources (``urls``, ``filename``, ``sha256``, ``md5``, ``size``,
    ``archive``, ``kaggle_ref``, ``delay``): a mirror, a moved file, an offline copy
    (``file://`` URLs work). ``$VISIONLAB_MINERALS_MANIFEST`` gives the minerals manifest
    (URL or local CSV). From Python, pass any :class:`Source` to :func:`download_dataset`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from visionlab._version import __version__
from visionlab.data.io import IMAGE_EXTENSIONS
from visionlab.errors import VisionlabError

__all__ = [
    "Source",
    "DownloadError",
    "SOURCES",
    "USER_AGENT",
    "data_root",
    "get_source",
    "fetch",
    "extract",
    "fetch_manifest",
    "download_dataset",
    "is_present",
    "download_source",
    "LANDCOVER_CLASSES",
]

USER_AGENT = f"visionlab/{__version__} (dataset downloader; python-urllib)"
MARKER = ".visionlab-source.json"
_CHUNK = 1 << 20

Method = Literal["url", "kaggle", "manifest"]
ArchiveKind = Literal["zip", "tar.gz", "rar"]
Prepare = Callable[[Path, Path], None]


class DownloadError(VisionlabError):
    """A transfer that failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Source:
    """Where a seed dataset comes from and how to turn it into the layout visionlab reads.

    ``prepare(extracted, out)`` moves what the archive unpacked in ``extracted`` into the
    dataset folder being built at ``out``. ``expect`` lists paths inside the finished folder
    that must exist (a hand-extracted copy holding them counts as present).
    """

    name: str
    title: str
    task: str
    homepage: str
    license: str = ""
    method: Method = "url"
    urls: tuple[str, ...] = ()
    filename: str = ""
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    archive: ArchiveKind | None = "zip"
    prepare: Prepare | None = None
    expect: tuple[str, ...] = ()
    kaggle_ref: str = ""
    delay: float = 1.0  # seconds between requests (manifest sources)


# --------------------------------------------------------------------------- layout steps


def _find_dir(base: Path, pred: Callable[[Path], bool], max_depth: int = 4) -> Path | None:
    """First folder at or below ``base`` (breadth first) for which ``pred`` holds."""
    level = [base]
    for _ in range(max_depth + 1):
        for d in level:
            if pred(d):
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith("__MACOSX")]
    return None


def _missing_in_archive(what: str, extracted: Path) -> VisionlabError:
    return VisionlabError(
        f"the downloaded archive does not contain {what} (unpacked in {extracted}).",
        "The upstream file may have changed: report it, or arrange the files by hand (see 'visionlab data check').",
    )


def _move_folders(extracted: Path, out: Path, names: tuple[str, ...]) -> None:
    """Find the folder of the unpacked archive that holds every one of ``names`` and move them into ``out``."""
    found = _find_dir(extracted, lambda d: all((d / n).is_dir() for n in names))
    if found is None:
        raise _missing_in_archive(" and ".join(f"{n}/" for n in names) + " folders", extracted)
    for n in names:
        shutil.move(str(found / n), str(out / n))


def _prepare_cracks(extracted: Path, out: Path) -> None:
    """METU archive -> ``cracks/Positive``, ``cracks/Negative``."""
    _move_folders(extracted, out, ("Positive", "Negative"))


def _prepare_caltech(extracted: Path, out: Path) -> None:
    """CaltechDATA zip holds ``101_ObjectCategories.tar.gz``: unpack it into the dataset folder."""
    inner = next(iter(sorted(extracted.rglob("101_ObjectCategories.tar.gz"))), None)
    if inner is not None:
        extract(inner, out, "tar.gz")
        return
    found = _find_dir(extracted, lambda d: (d / "101_ObjectCategories").is_dir())
    if found is None:
        raise _missing_in_archive("101_ObjectCategories.tar.gz", extracted)
    shutil.move(str(found / "101_ObjectCategories"), str(out / "101_ObjectCategories"))


# LandCover.ai v1 mask values (Boguszewski et al., arXiv:2005.02264); colours as in torchgeo.
# The last entry is not a LandCover.ai class: no mask pixel has value 5. It is listed because
# the landcover recipe (configs/landcover.yaml) ignores a class named 'unlabeled' (the sixth
# class of the aerial dataset it was measured on), and refuses data that has no such class; with
# it, the command 'visionlab data download landcover' prints trains as it is, and drops nothing.
LANDCOVER_CLASSES = (
    (0, "background", "#000000"),
    (1, "building", "#614A4A"),
    (2, "woodland", "#267300"),
    (3, "water", "#00C5FF"),
    (4, "road", "#CFCFCF"),
    (5, "unlabeled", "#9B9B9B"),
)


def _prepare_landcover(extracted: Path, out: Path) -> None:
    """LandCover.ai zip -> ``landcover/images``, ``landcover/masks`` and ``classes.json``."""
    _move_folders(extracted, out, ("images", "masks"))
    spec = {
        "ignore_index": 255,
        "classes": [{"value": v, "name": n, "color": c} for v, n, c in LANDCOVER_CLASSES],
    }
    (out / "classes.json").write_text(json.dumps(spec, indent=2) + "\n")


def _prepare_waste(extracted: Path, out: Path) -> None:
    """Kaggle zip -> ``waste/DATASET/TRAIN|TEST/O|R`` (the zip's duplicate copy is dropped)."""
    found = _find_dir(extracted, lambda d: (d / "TRAIN").is_dir() and (d / "TEST").is_dir())
    if found is None:
        raise _missing_in_archive("TRAIN/ and TEST/ folders", extracted)
    (out / "DATASET").mkdir()
    for split in ("TRAIN", "TEST"):
        shutil.move(str(found / split), str(out / "DATASET" / split))


# --------------------------------------------------------------------------- the registry

#: The layout steps a dataset YAML names as its ``prepare``.
PREPARE: dict[str, Prepare] = {"cracks": _prepare_cracks, "caltech": _prepare_caltech, "landcover": _prepare_landcover,
                               "waste": _prepare_waste}
#: The seed datasets, in the order they are listed: ``configs/datasets/<name>.yaml`` each.
DATASETS = ("cracks", "caltech101", "landcover", "minerals", "waste")


def read_source(path: Path) -> Source:
    """A dataset YAML (``configs/datasets/<name>.yaml``): its keys are :class:`Source`'s fields,
    ``prepare`` the name of a layout step (:data:`PREPARE`)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {f.name for f in dataclasses.fields(Source)}
    unknown = sorted(set(data) - known)
    if unknown or data.get("prepare") not in (None, *PREPARE):
        bad = f"unknown key {unknown[0]!r}" if unknown else f"unknown prepare step {data['prepare']!r}"
        raise VisionlabError(f"{path}: {bad}.", f"Keys: {', '.join(sorted(known))}; prepare steps: {', '.join(PREPARE)}.")
    data["prepare"] = PREPARE[data["prepare"]] if data.get("prepare") else None
    return Source(**{k: tuple(v) if k in ("urls", "expect") else v for k, v in data.items()})


def _builtin_sources() -> dict[str, Source]:
    from visionlab.paths import packaged_configs

    folder = (packaged_configs() or Path("configs")) / "datasets"
    return {name: read_source(folder / f"{name}.yaml") for name in DATASETS}


SOURCES: dict[str, Source] = _builtin_sources()

_OVERRIDABLE = {"urls", "filename", "sha256", "md5", "size", "archive", "kaggle_ref", "delay"}


def _overrides() -> dict[str, dict]:
    path = os.environ.get("VISIONLAB_SOURCES")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).expanduser().read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("expected an object of objects")
    except (OSError, ValueError) as exc:
        raise VisionlabError(
            f"$VISIONLAB_SOURCES={path}: cannot read it ({exc}).",
            'It must be a JSON file like {"cracks": {"urls": ["https://mirror/x.zip"], "sha256": null}}.',
        ) from None
    return data


def get_source(name: str) -> Source:
    """The source called ``name``, with any ``$VISIONLAB_SOURCES`` overrides applied."""
    if name not in SOURCES:
        raise VisionlabError(f"unknown dataset {name!r}.", f"Known datasets: {', '.join(SOURCES)}.")
    src = SOURCES[name]
    fields = _overrides().get(name)
    if fields:
        bad = sorted(set(fields) - _OVERRIDABLE)
        if bad:
            raise VisionlabError(
                f"$VISIONLAB_SOURCES: cannot override {', '.join(bad)} of {name!r}.",
                f"Overridable fields: {', '.join(sorted(_OVERRIDABLE))}.",
            )
        fields = dict(fields)
        if fields.get("archive", "zip") not in ("zip", "tar.gz", "rar"):
            raise VisionlabError(f"$VISIONLAB_SOURCES: archive of {name!r} must be zip, tar.gz or rar.")
        if "urls" in fields:
            urls = fields["urls"]
            fields["urls"] = (urls,) if isinstance(urls, str) else tuple(urls)
        src = dataclasses.replace(src, **fields)
    return src


def data_root() -> Path:
    """Where datasets go: ``$VISIONLAB_DATA``, else the user cache (XDG)."""
    env = os.environ.get("VISIONLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "visionlab" / "data"


# --------------------------------------------------------------------------- fetching


def _say(console: Any, text: str) -> None:
    """A line to ``console``; none without one: a library call says nothing unless given a console (the CLI's)."""
    if console is not None:
        console.print(text)


def _progress(console, transient: bool = False):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=transient, disable=console is None,
    )


def _sha256(path: Path) -> str:
    # hashlib.file_digest would do, but it needs Python 3.11 and we support 3.10.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _read_record(dest: Path) -> str | None:
    rec = _record_path(dest)
    if not rec.exists():
        return None
    text = rec.read_text().split()
    return text[0].lower() if text else None


def _verify(path: Path, dest: Path, sha256: str | None, md5: str | None, size: int | None) -> str:
    """Check size and checksums of ``path`` (destined for ``dest``); delete it and raise on mismatch.

    Returns the sha256. With no sha256 given, the trust-on-first-use record beside ``dest`` is
    the expected value when it exists.
    """
    recorded = None if sha256 else _read_record(dest)
    expected_sha = (sha256 or recorded or "").lower() or None
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise VisionlabError(
            f"{dest.name}: size {actual_size:,} bytes, expected {size:,}; the file was deleted.",
            "Run the same command again to download it afresh.",
        )
    from torchvision.datasets.utils import calculate_md5  # imports torch: only when a file is checked

    digests = {"sha256": _sha256(path)}
    if md5:  # a second pass over the file (md5 is only published where sha256 is not)
        digests["md5"] = calculate_md5(path)
    for algo, expected in (("sha256", expected_sha), ("md5", md5)):
        if expected and digests[algo] != expected.lower():
            path.unlink()
            hint = "Run the same command again to download it afresh."
            if algo == "sha256" and recorded:
                hint += (f" It was checked against the sha256 recorded at its first download ({_record_path(dest)});"
                         " if the file was updated upstream on purpose, delete that record.")
            raise VisionlabError(f"{dest.name}: {algo} {digests[algo]} does not match the expected {expected}; the file was deleted.", hint)
    return digests["sha256"]


def _http_error(url: str, dest: Path, exc: Exception) -> DownloadError:
    manual = f"download it manually (e.g. in a browser) to {dest} and run the command again"
    if isinstance(exc, urllib.error.HTTPError):
        what = {404: "not found", 403: "access refused", 410: "gone", 429: "too many requests"}.get(exc.code, exc.reason)
        hint = "Wait a while and run again." if exc.code in (429, 500, 502, 503, 504) else f"The file may have moved: {manual}."
        return DownloadError(f"{url} answered HTTP {exc.code} ({what}).", hint, status=exc.code)
    reason = getattr(exc, "reason", exc)
    return DownloadError(
        f"cannot reach {url} ({reason}).",
        f"Check the network connection or proxy and run again (transfers resume), or {manual}.",
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.match(r"bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = None if m.group(1) == "*" else int(m.group(1))
    total = None if m.group(2) == "*" else int(m.group(2))
    return start, total


def _transfer(url: str, part: Path, size: int | None, timeout: float, console, progress: bool) -> None:
    """One attempt: append to (or restart) ``part``; raises DownloadError on any failure."""
    dest = part.with_name(part.name[: -len(".part")])
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    resp = _request(url, part, dest, offset, timeout)
    if resp is None:
        return
    with resp:
        mode, offset, expected = _resume_point(url, part, resp, offset, size, console)
        _receive(url, part, resp, mode, offset, expected, console, progress)


def _request(url: str, part: Path, dest: Path, offset: int, timeout: float) -> Any:
    """The server's answer to a request for ``url`` from byte ``offset`` on; None when nothing is left to send."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send, or a stale .part
            _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return None
            part.unlink()
            raise DownloadError(f"{url}: the partial download did not match the server's file; it was discarded.",
                                "Run again to start afresh.") from None
        raise _http_error(url, dest, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _http_error(url, dest, exc) from None


def _resume_point(url: str, part: Path, resp: Any, offset: int, size: int | None, console) -> tuple[str, int, int | None]:
    """How to write the answer: append (the server resumed at ``offset``) or from the start; returns
    the file mode, the byte it starts at and the expected final size (None when unknown)."""
    status = getattr(resp, "status", 200)
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    mode = "wb"
    if offset and status == 206:
        start, total = _parse_content_range(resp.headers.get("Content-Range"))
        if start == offset:
            mode = "ab"
        else:
            part.unlink()
            raise DownloadError(f"{url}: the server resumed at byte {start}, not {offset}; the partial file was discarded.",
                                "Run the same command again to start afresh.")
    else:
        if offset:
            _say(console, f"[yellow]{url} ignored the resume request; downloading from the start.[/]")
        offset = 0
        total = length
    expected = total if total is not None else (offset + length if length is not None else size)
    return mode, offset, expected


def _receive(url: str, part: Path, resp: Any, mode: str, offset: int, expected: int | None, console, progress: bool) -> None:
    """Write the answer's body to ``part`` (from ``offset``), with a progress bar; raises when it stops short."""
    received = offset
    with open(part, mode) as f, _progress(console) as bar:
        task = bar.add_task(part.stem[:40], total=expected, completed=offset, visible=progress)
        try:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(task, completed=received)
        except (OSError, ValueError) as exc:  # reset, timeout, IncompleteRead
            raise DownloadError(
                f"download of {url} interrupted after {received:,} bytes ({type(exc).__name__}).",
                "Run the same command again: it resumes where it stopped.",
            ) from None
    if expected is not None and received < expected:
        raise DownloadError(
            f"download of {url} interrupted after {received:,} of {expected:,} bytes (connection closed).",
            "Run the same command again: it resumes where it stopped.",
        )


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    *,
    md5: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
    progress: bool = True,
    console=None,
) -> Path:
    """Download ``url`` to ``dest`` once, resumably, and verify it; returns ``dest``.

    An existing ``dest`` is verified instead of downloaded again (a bad one is replaced). An
    interrupted transfer is resumed automatically up to ``retries`` times, and by the next call
    otherwise. With no ``sha256`` given, the first complete download's sha256 is recorded in
    ``<dest>.sha256`` and later calls are checked against it.

    Not ``torchvision.datasets.utils.download_url``, which (torchvision 0.29) writes straight to
    ``dest``, so an interrupted transfer leaves a truncated file that its next call accepts as
    present when no md5 is published (cracks publishes only a sha256, minerals nothing); cannot
    resume (the archives are 0.2-1.5 GB); retries a failed https URL over plain http; checks no
    size or sha256; and raises a bare ``RuntimeError("File not found or corrupted.")``. Both
    follow HTTP redirects (urllib does); its Google Drive path serves no source of ours.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        try:
            digest = _verify(dest, dest, sha256, md5, size)
        except VisionlabError as exc:
            _say(console, f"[yellow]{exc.message} Downloading it again.[/]")
        else:
            _remember(dest, digest, sha256, console, progress)
            return dest
    if size is not None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(dest.parent).free
        if free < size - have:
            raise VisionlabError(
                f"not enough disk space in {dest.parent} for {dest.name}: {size - have:,} bytes needed, {free:,} free.",
                "Free some space or choose another --root / $VISIONLAB_DATA.",
            )
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout, console, progress)
            break
        except DownloadError as exc:
            resumable = exc.status is None and part.exists() and part.stat().st_size > 0
            if attempt == retries or not resumable:
                raise
            _say(console, f"[yellow]{exc.message} Resuming ({attempt + 1}/{retries}).[/]")
            time.sleep(0.5 * (attempt + 1))
    digest = _verify(part, dest, sha256, md5, size)
    os.replace(part, dest)
    _remember(dest, digest, sha256, console, progress)
    return dest


def _remember(dest: Path, digest: str, sha256: str | None, console, verbose: bool) -> None:
    """Write the trust-on-first-use record when none exists, and say what was checked."""
    rec = _record_path(dest)
    if sha256:
        if verbose:
            _say(console, f"{dest.name}: sha256 {digest} (matches the published checksum)")
        return
    if rec.exists():
        if verbose:
            _say(console, f"{dest.name}: sha256 {digest} (matches {rec.name})")
        return
    rec.write_text(f"{digest}  {dest.name}\n")
    if verbose:
        _say(console, f"{dest.name}: sha256 {digest} (no published checksum; recorded in {rec}, later uses are checked against it)")


# --------------------------------------------------------------------------- archives


def _rar_commands(archive: Path, out: Path) -> list[list[str]]:
    return [
        ["unar", "-q", "-f", "-D", "-o", str(out), str(archive)],
        ["unrar", "x", "-o+", "-idq", str(archive), str(out) + os.sep],
        ["7z", "x", "-y", f"-o{out}", str(archive)],
        ["7zz", "x", "-y", f"-o{out}", str(archive)],
        ["bsdtar", "-xf", str(archive), "-C", str(out)],
    ]


def _extract_rar(archive: Path, out: Path, console) -> None:
    for cmd in _rar_commands(archive, out):
        if shutil.which(cmd[0]):
            _say(console, f"extracting {archive.name} with {cmd[0]} ...")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                return
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise VisionlabError(f"{cmd[0]} could not extract {archive} ({last[0][:200]}).",
                                 "The archive is kept; extract it by hand into the data root, or delete it and run again.")
    raise VisionlabError(
        f"{archive.name} is a RAR archive and no extractor (unar, unrar, 7z, bsdtar) is installed.",
        f"Install one (e.g. 'apt install unar', 'brew install unar', 7-Zip on Windows) and run again; "
        f"the archive is kept at {archive}.",
    )


def _tar_safe_members(tf: tarfile.TarFile, out: Path):
    root = out.resolve()
    for m in tf:
        target = (out / m.name).resolve()
        if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
            continue  # links and paths leaving the folder are skipped
        yield m


def extract(archive: str | os.PathLike, out: str | os.PathLike, kind: ArchiveKind, console=None) -> Path:
    """Unpack a zip, tar.gz or rar archive into ``out`` (created); path traversal is refused.

    A zip goes through ``torchvision.datasets.utils.extract_archive`` (``zipfile.extractall``,
    which drops absolute and '..' components). A tar.gz does not: torchvision calls
    ``tarfile.extractall`` with no filter, which lets a member or a link write outside ``out``;
    ours skips links and escaping paths. torchvision has no rar support.
    """
    archive, out = Path(archive), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            if archive.suffix.lower() != ".zip":  # torchvision picks the extractor by suffix
                raise VisionlabError(f"{archive.name}: a zip archive must be named *.zip to be extracted.",
                                     "Set its filename in $VISIONLAB_SOURCES to end in .zip.")
            from torchvision.datasets.utils import extract_archive

            _say(console, f"unzipping {archive.name} ...")
            extract_archive(archive, out)
        elif kind == "tar.gz":
            with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tf, _progress(console, transient=True) as bar:
                task = bar.add_task(f"untar {archive.name[:30]}", total=archive.stat().st_size)
                for member in _tar_safe_members(tf, out):
                    if hasattr(tarfile, "data_filter"):
                        tf.extract(member, out, filter="data")
                    else:
                        tf.extract(member, out)
                    bar.update(task, completed=raw.tell())
        elif kind == "rar":
            _extract_rar(archive, out, console)
        else:
            raise ValueError(f"unknown archive kind {kind!r}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise VisionlabError(f"{archive} is not a valid {kind} archive ({exc}).",
                             f"Delete it (and {archive.name}.sha256 if it should not be trusted) and run again.") from None
    return out


# --------------------------------------------------------------------------- manifests


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", text).strip(" .")
    return name[:120]


def _read_manifest(path: Path) -> list[tuple[str, str, str]]:
    """Rows ``(url, label, filename)`` of a ``url,label[,filename]`` CSV (header optional)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if not rows:
        raise VisionlabError(f"manifest {path} is empty.", "It needs one 'url,label' row per image.")
    cols = {"url": 0, "label": 1, "filename": 2}
    if not rows[0][0].strip().lower().startswith(("http:", "https:", "file:")):
        head = [c.strip().lower() for c in rows[0]]
        if "url" not in head or "label" not in head:
            raise VisionlabError(f"manifest {path}: first row {rows[0]} is neither a header with url,label nor a URL.",
                                 "Write 'url,label' as the first line.")
        cols = {k: head.index(k) for k in ("url", "label", "filename") if k in head}
        rows = rows[1:]
    out, used = [], {}
    for row in rows:
        get = lambda k: row[cols[k]].strip() if k in cols and cols[k] < len(row) else ""  # noqa: E731
        url, label = get("url"), _safe_name(get("label"))
        if not url or not label:
            continue
        name = _safe_name(get("filename") or urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name))
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            stem, ext = name or "image", ".jpg"
        name = f"{stem}{ext}"
        if used.get((label, name.lower()), url) != url:  # same name, different URL: disambiguate
            name = f"{stem}_{hashlib.sha1(url.encode()).hexdigest()[:8]}{ext}"
        used[(label, name.lower())] = url
        out.append((url, label, name))
    return out


def fetch_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    delay: float = 1.0,
    *,
    console=None,
    timeout: float = 60.0,
) -> tuple[int, int, list[tuple[str, str]]]:
    """Fetch every image of a ``url,label`` manifest into ``out/<label>/``, politely.

    One request at a time with ``delay`` seconds between requests and visionlab's User-Agent;
    files already present are skipped, so an interrupted run resumes. A ``429``/``503`` answer
    waits a little (at least 5 s) and tries once more. Returns
    ``(fetched, skipped, failed)`` where ``failed`` lists ``(url, reason)``.
    """
    out = Path(out)
    rows = _read_manifest(Path(manifest))
    fetched = skipped = 0
    failed: list[tuple[str, str]] = []
    last_request = 0.0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  disable=console is None) as bar:
        task = bar.add_task(f"{out.name} images", total=len(rows))
        for url, label, name in rows:
            dest = out / label / name
            if dest.exists() and dest.stat().st_size > 0:
                skipped += 1
                bar.advance(task)
                continue
            for attempt in (0, 1):
                wait = last_request + delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                last_request = time.monotonic()
                try:
                    fetch(url, dest, retries=1, timeout=timeout, progress=False, console=console)
                    _record_path(dest).unlink(missing_ok=True)  # per-image records only clutter class folders
                    fetched += 1
                    break
                except DownloadError as exc:
                    if exc.status in (429, 503) and attempt == 0:
                        time.sleep(min(60.0, max(delay, 5.0)))
                        continue
                    failed.append((url, exc.message))
                    break
                except VisionlabError as exc:
                    failed.append((url, exc.message))
                    break
            bar.advance(task)
    return fetched, skipped, failed


def _manifest_location(source: Source, manifest: str | None, target: Path) -> str:
    loc = manifest or os.environ.get(f"VISIONLAB_{source.name.upper()}_MANIFEST") or (source.urls[0] if source.urls else "")
    if not loc:
        raise VisionlabError(
            f"no manifest is configured for the {source.name} dataset.",
            f"Set VISIONLAB_{source.name.upper()}_MANIFEST to the URL or path of a CSV with url,label rows "
            f"(the seed's image list), or put images in {target}/<label>/ yourself.",
        )
    return loc


def _acquire_manifest(source: Source, root: Path, target: Path, console, manifest: str | None = None) -> dict:
    loc = _manifest_location(source, manifest, target)
    if re.match(r"^[a-z][a-z0-9+.-]*://", loc):
        local = root / ".downloads" / f"{source.name}_manifest.csv"
        local.unlink(missing_ok=True)  # a list may grow: always take the current one
        _record_path(local).unlink(missing_ok=True)
        fetch(loc, local, progress=False, console=console)
    else:
        local = Path(loc).expanduser()
        if not local.is_file():
            raise VisionlabError(f"manifest {local} not found.", f"Check VISIONLAB_{source.name.upper()}_MANIFEST.")
    target.mkdir(parents=True, exist_ok=True)
    fetched, skipped, failed = fetch_manifest(local, target, source.delay, console=console)
    _say(console, f"{source.name}: {fetched} fetched, {skipped} already present, {len(failed)} failed.")
    failed_log = target / ".failed.csv"
    if failed:
        with open(failed_log, "w", newline="") as f:
            csv.writer(f).writerows([("url", "error"), *failed])
        raise VisionlabError(
            f"{len(failed)} of {fetched + skipped + len(failed)} {source.name} images could not be fetched (listed in {failed_log}).",
            "Run the same command again to retry only those; the others are kept.",
        )
    failed_log.unlink(missing_ok=True)
    return {"manifest": loc, "images": fetched + skipped}


# --------------------------------------------------------------------------- datasets


def _kaggle_token_present() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    cfg = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle").expanduser()
    return (cfg / "kaggle.json").is_file() or (cfg / "access_token").is_file()


def _archive_via_kaggle(source: Source, downloads: Path, console) -> Path:
    by_hand = (f"or download {source.homepage} by hand and unzip it so that "
               f"{downloads.parent / source.name / (source.expect[0] if source.expect else '')} exists")
    if not shutil.which("kaggle"):
        raise VisionlabError(
            f"the {source.name} dataset comes from Kaggle and the 'kaggle' command is not installed.",
            "Run 'pip install kaggle', create an API token at https://www.kaggle.com/settings "
            f"(API > Create New Token) and save it as ~/.kaggle/kaggle.json; {by_hand}.",
        )
    if not _kaggle_token_present():
        raise VisionlabError(
            "no Kaggle API token found (~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY).",
            "Create one at https://www.kaggle.com/settings (API > Create New Token), save it as "
            f"~/.kaggle/kaggle.json (chmod 600), and run again; {by_hand}.",
        )
    archive = downloads / source.filename
    if not archive.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        _say(console, f"kaggle datasets download {source.kaggle_ref} -p {downloads}")
        proc = subprocess.run(["kaggle", "datasets", "download", source.kaggle_ref, "-p", str(downloads)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not archive.exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"no {archive.name} written"]
            raise VisionlabError(
                f"kaggle could not download {source.kaggle_ref} ({last[0][:200]}).",
                "Check the token, accept the dataset's terms on its Kaggle page if asked, and run again; " + by_hand + ".",
            )
    digest = _verify(archive, archive, source.sha256, source.md5, source.size)
    _remember(archive, digest, source.sha256, console, True)
    return archive


def _archive_via_url(source: Source, downloads: Path, console) -> Path:
    if not source.urls:
        raise VisionlabError(f"no download URL is configured for {source.name}.", f"See {source.homepage}.")
    dest = downloads / source.filename
    last: DownloadError | None = None
    for url in source.urls:
        try:
            _say(console, f"{source.name}: {url}")
            return fetch(url, dest, source.sha256, source.size, md5=source.md5, console=console)
        except DownloadError as exc:
            last = exc
            if len(source.urls) > 1:
                _say(console, f"[yellow]{exc}[/] trying the next mirror.")
    assert last is not None
    raise VisionlabError(last.message, f"{last.hint} Dataset page: {source.homepage}.")


_ARCHIVE_GETTERS: dict[str, Callable[[Source, Path, object], Path]] = {
    "url": _archive_via_url,
    "kaggle": _archive_via_kaggle,
}


def is_present(source: Source, root: str | os.PathLike | None = None) -> bool:
    """True when the dataset folder is complete (downloaded here, or arranged by hand)."""
    target = Path(root or data_root()).expanduser() / source.name
    if (target / MARKER).exists():
        return True
    if not source.expect:
        return False

    def ok(p: Path) -> bool:
        return p.is_file() or (p.is_dir() and any(p.iterdir()))

    return all(ok(target / e) for e in source.expect)


def _write_marker(target: Path, source: Source, info: dict) -> None:
    meta = {"source": source.name, "title": source.title, "homepage": source.homepage, "license": source.license,
            "downloaded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "visionlab": __version__, **info}
    (target / MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def download_dataset(
    source: Source,
    root: str | os.PathLike | None = None,
    force: bool = False,
    *,
    manifest: str | None = None,
    console=None,
) -> Path:
    """Download, verify and unpack ``source`` into ``<root>/<source.name>``; returns that folder.

    Does nothing when the dataset is already there, unless ``force`` (which also downloads the
    archive again). ``manifest`` overrides the manifest location of manifest sources.
    """
    root = Path(root or data_root()).expanduser()
    target = root / source.name
    downloads = root / ".downloads"
    if force:
        shutil.rmtree(target, ignore_errors=True)
        if source.filename:
            (downloads / source.filename).unlink(missing_ok=True)
    if is_present(source, root):
        _say(console, f"{source.name}: already present in {target} (use --force to download again).")
        return target
    root.mkdir(parents=True, exist_ok=True)
    if source.method == "manifest":
        info = _acquire_manifest(source, root, target, console, manifest)
        _write_marker(target, source, info)
        return target
    if target.exists() and any(target.iterdir()):
        raise VisionlabError(f"{target} exists but does not hold the {source.name} layout ({', '.join(source.expect)}).",
                             "Move it away, or pass --force to replace it.")
    archive = _ARCHIVE_GETTERS[source.method](source, downloads, console)
    staging = downloads / f"{source.name}.staging"
    building = root / f".{source.name}.building"
    for d in (staging, building):
        shutil.rmtree(d, ignore_errors=True)
    try:
        extract(archive, staging, source.archive or "zip", console)
        building.mkdir()
        if source.prepare is not None:
            source.prepare(staging, building)
        else:
            for child in staging.iterdir():
                shutil.move(str(child), str(building / child.name))
        _write_marker(building, source, {"archive": archive.name, "sha256": _read_record(archive) or source.sha256})
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(building, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)
    return target


def download_source(source: Source, root: str | os.PathLike | None = None, force: bool = False,
                    console: Any = None) -> tuple[Path, int]:
    """Download ``source`` (:func:`download_dataset`); returns the folder it is in and how many
    images that holds (masks not counted). Which dataset a task has is the task registry's:
    :func:`visionlab.api.download_task` looks it up."""
    target = download_dataset(source, root, force, console=console)
    from visionlab.data.layout import list_images

    return target, sum(1 for p in list_images(target) if "masks" not in p.relative_to(target).parts)
