"""Dataset downloads against a real HTTP server on 127.0.0.1 (no test touches the internet)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import stat
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from visionlab.cli import app
from visionlab.data import download as dl
from visionlab.data.download import (
    SOURCES,
    Source,
    data_root,
    download_dataset,
    fetch,
    fetch_manifest,
    get_source,
)
from visionlab.api import dataset_source, download_task
from visionlab.kinds.classification.layout import find_classification
from visionlab.errors import VisionlabError
from visionlab.kinds.segmentation.layout import find_segmentation

# --------------------------------------------------------------------------- a local server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless told not to; can cut a first transfer short."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = self.path.split("?")[0]
        with srv.lock:
            srv.requests.append({"path": path, "range": self.headers.get("Range"), "ua": self.headers.get("User-Agent")})
            seen = sum(r["path"] == path for r in srv.requests)
        body = srv.files.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        rng = self.headers.get("Range")
        start = 0
        if rng and not srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = srv.cut_first.get(path)
        if cut is not None and seen == 1:  # first request: send N bytes, then drop the connection
            self.wfile.write(body[start:start + cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


class LocalServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files = {}
        self.httpd.requests = []
        self.httpd.cut_first = {}
        self.httpd.ignore_range = False
        self.httpd.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes) -> str:
        self.httpd.files[path] = data
        return self.base + path

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def quiet(monkeypatch):
    """Keep rich from drawing live bars into pytest's captured output."""
    monkeypatch.setenv("TERM", "dumb")


# --------------------------------------------------------------------------- tiny archives


def _png(seed: int, size: int = 16, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def _tif(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cracks_zip() -> bytes:
    # METU's archive unpacks to Positive/ and Negative/ (here under a wrapper folder, as zips often are).
    return _zip({f"Concrete/{cls}/{i:05d}.png": _png(i + 10 * k) for k, cls in enumerate(("Positive", "Negative")) for i in range(3)})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _src(name: str, url: str, data: bytes | None = None, **kw) -> Source:
    """A built-in source pointed at the local server (checksums of the test archive, or none)."""
    base = SOURCES[name]
    fields = {"urls": (url,), "filename": url.rsplit("/", 1)[-1], "sha256": None, "md5": None, "size": None}
    if data is not None:
        fields.update(sha256=_sha(data), size=len(data))
    fields.update(kw)
    return dataclasses.replace(base, **fields)


# --------------------------------------------------------------------------- fetch


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data"
    monkeypatch.delenv("VISIONLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "visionlab" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "visionlab" / "data"


def test_fetch_downloads_verifies_and_renames(server, tmp_path, quiet):
    data = os.urandom(300_000)
    url = server.add("/f.bin", data)
    out = fetch(url, tmp_path / "f.bin", sha256=_sha(data), size=len(data), md5=hashlib.md5(data).hexdigest())
    assert out.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()
    assert server.requests[0]["ua"].startswith("visionlab/")
    fetch(url, out, sha256=_sha(data))  # present and valid: no second request
    assert len(server.requests) == 1


@pytest.mark.parametrize("bad", ["sha256", "md5", "size"])
def test_fetch_mismatch_deletes_file(server, tmp_path, quiet, bad):
    data = os.urandom(50_000)
    url = server.add("/f.bin", data)
    kwargs = {"sha256": _sha(data), "size": len(data), "md5": hashlib.md5(data).hexdigest()}
    kwargs[bad] = len(data) + 1 if bad == "size" else "0" * len(kwargs[bad])
    with pytest.raises(VisionlabError, match=rf"{bad}.*(does not match|expected).*deleted"):
        fetch(url, tmp_path / "f.bin", **kwargs)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_fetch_resumes_an_interrupted_transfer(server, tmp_path, quiet):
    data = os.urandom(200_000)
    url = server.add("/big.bin", data)
    server.httpd.cut_first["/big.bin"] = 70_000
    dest = tmp_path / "big.bin"
    with pytest.raises(VisionlabError, match="interrupted after 70,000 of 200,000 bytes"):
        fetch(url, dest, sha256=_sha(data), retries=0)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 70_000 and not dest.exists()
    fetch(url, dest, sha256=_sha(data), retries=0)
    assert [r["range"] for r in server.requests] == [None, "bytes=70000-"]
    assert dest.read_bytes() == data and not part.exists()


def test_fetch_resumes_automatically_within_one_call(server, tmp_path, quiet):
    data = os.urandom(120_000)
    url = server.add("/big.bin", data)
    server.httpd.cut_first["/big.bin"] = 1_000
    fetch(url, tmp_path / "big.bin", size=len(data), retries=1)
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-"]
    assert (tmp_path / "big.bin").read_bytes() == data


def test_fetch_restarts_when_server_ignores_range(server, tmp_path, quiet):
    data = os.urandom(100_000)
    url = server.add("/big.bin", data)
    server.httpd.cut_first["/big.bin"] = 40_000
    server.httpd.ignore_range = True
    dest = tmp_path / "big.bin"
    with pytest.raises(VisionlabError, match="interrupted"):
        fetch(url, dest, retries=0)
    fetch(url, dest, retries=0)
    assert server.requests[1]["range"] == "bytes=40000-"  # asked to resume, got 200 and restarted
    assert dest.read_bytes() == data  # not 40,000 bytes + the whole file again


def test_fetch_404_is_one_clear_line(server, tmp_path, quiet):
    with pytest.raises(VisionlabError) as err:
        fetch(server.base + "/missing.zip", tmp_path / "missing.zip")
    msg = str(err.value)
    assert "HTTP 404" in msg and server.base + "/missing.zip" in msg and "manually" in msg and str(tmp_path / "missing.zip") in msg
    assert "\n" not in msg and not (tmp_path / "missing.zip.part").exists()


def test_fetch_connection_refused(tmp_path, quiet):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VisionlabError, match=r"cannot reach http://127\.0\.0\.1:\d+/x\.zip .*manually"):
        fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", retries=0, timeout=5)


def test_fetch_trust_on_first_use(server, tmp_path, quiet, capsys):
    first = os.urandom(10_000)
    url = server.add("/v.bin", first)
    dest = tmp_path / "v.bin"
    fetch(url, dest)
    assert not capsys.readouterr().out, "a library call without a console says nothing"
    dest.unlink()
    fetch(url, dest, console=Console())
    record = tmp_path / "v.bin.sha256"
    assert record.read_text() == f"{_sha(first)}  v.bin\n"
    assert _sha(first) in capsys.readouterr().out
    # The file changes upstream: a later download is refused and removed.
    server.add("/v.bin", os.urandom(10_000))
    dest.unlink()
    with pytest.raises(VisionlabError, match=r"does not match.*recorded at its first download"):
        fetch(url, dest)
    assert not dest.exists()


# --------------------------------------------------------------------------- datasets


def test_download_cracks_layout_and_idempotence(server, tmp_path, quiet):
    data = _cracks_zip()
    src = _src("cracks", server.add("/cracks.zip", data), data, archive="zip")
    out = download_dataset(src, tmp_path)
    assert out == tmp_path / "cracks"
    idx = find_classification(out)
    assert idx.classes == ["Negative", "Positive"] and len(idx) == 6
    assert json.loads((out / ".visionlab-source.json").read_text())["source"] == "cracks"
    assert not (tmp_path / "cracks.zip").exists() and (tmp_path / ".downloads" / "cracks.zip").exists()
    assert not (tmp_path / ".downloads" / "cracks.staging").exists()
    n = len(server.requests)
    assert download_dataset(src, tmp_path) == out  # present: nothing fetched
    assert len(server.requests) == n
    download_dataset(src, tmp_path, force=True)  # force: fetched again
    assert len(server.requests) == n + 1 and len(find_classification(out)) == 6


def test_download_caltech_nested_targz(server, tmp_path, quiet):
    inner = _targz({f"101_ObjectCategories/{c}/image_{i:04d}.jpg": _png(i + 7 * k) for k, c in enumerate(("Faces", "ketch", "watch")) for i in range(1, 3)})
    data = _zip({"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/show_annotation.m": b"% matlab\n"})
    out = download_dataset(_src("caltech101", server.add("/caltech-101.zip", data), data), tmp_path)
    assert sorted(p.name for p in (out / "101_ObjectCategories").iterdir()) == ["Faces", "ketch", "watch"]
    idx = find_classification(out)
    assert idx.classes == ["Faces", "ketch", "watch"] and len(idx) == 6


def test_download_landcover_writes_classes_json(server, tmp_path, quiet):
    rng = np.random.default_rng(0)
    files = {}
    for name in ("M-33-7-A-d-2-3", "N-34-106-C-c-5-1"):
        files[f"images/{name}.tif"] = _tif(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
        files[f"masks/{name}.tif"] = _tif(rng.integers(0, 5, (24, 24), dtype=np.uint8))
    files["split.py"] = b"# upstream tiling script\n"
    data = _zip(files)
    out = download_dataset(_src("landcover", server.add("/landcover.ai.v1.zip", data), data), tmp_path)
    spec = json.loads((out / "classes.json").read_text())
    assert spec["ignore_index"] == 255
    assert [(c["value"], c["name"]) for c in spec["classes"]] == [
        (0, "background"), (1, "building"), (2, "woodland"), (3, "water"), (4, "road"), (5, "unlabeled")]
    assert all(len(c["color"]) == 7 and c["color"].startswith("#") for c in spec["classes"])
    idx = find_segmentation(out)
    assert len(idx) == 2 and all(m is not None for m in idx.masks)
    assert idx.class_names == ["background", "building", "woodland", "water", "road", "unlabeled"]
    _landcover_recipe_accepts(out)


def _landcover_recipe_accepts(folder: Path) -> None:
    """The landcover recipe (its ignore_classes included) prepares ``folder`` for training, as
    the command 'visionlab data download landcover' prints would."""
    import torch

    from visionlab.api import load_config
    from visionlab.registry import get_task
    from visionlab.kinds import runner_for

    cfg = load_config("landcover", overrides={"data": str(folder), "model_args": {"encoder_weights": None}, "tile_size": 32})
    assert cfg.options.ignore_classes == ["unlabeled"]  # the recipe as shipped
    runner = runner_for(cfg, get_task("landcover"), torch.device("cpu"))
    runner.prepare()
    assert runner.classes[-1] == "unlabeled" and runner.exclude == [5]
    assert runner.split_size("train") >= 1
    for k in runner.splits["train"]:  # every real class value is learned; nothing else is dropped
        _, mask = runner.train_pair(int(k))
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}


def test_download_archive_tofu_recorded_and_checked(server, tmp_path, quiet):
    data = _cracks_zip()
    src = _src("cracks", server.add("/cracks.zip", data), archive="zip")  # no published checksum
    download_dataset(src, tmp_path)
    rec = tmp_path / ".downloads" / "cracks.zip.sha256"
    assert rec.read_text().split()[0] == _sha(data)
    meta = json.loads((tmp_path / "cracks" / ".visionlab-source.json").read_text())
    assert meta["sha256"] == _sha(data)
    server.add("/cracks.zip", _zip({"Concrete/Positive/x.png": _png(99), "Concrete/Negative/y.png": _png(98)}))  # upstream changes
    with pytest.raises(VisionlabError, match="recorded at its first download"):
        download_dataset(src, tmp_path, force=True)


def test_download_rar_without_extractor_keeps_archive(server, tmp_path, quiet, monkeypatch):
    data = b"Rar!\x1a\x07\x01\x00" + os.urandom(1000)  # only the extractor lookup is exercised
    src = _src("cracks", server.add("/c.rar", data), data)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(VisionlabError, match="RAR archive and no extractor"):
        download_dataset(src, tmp_path)
    assert (tmp_path / ".downloads" / "c.rar").exists() and not (tmp_path / "cracks").exists()


def test_download_refuses_to_overwrite_foreign_folder(server, tmp_path, quiet):
    data = _cracks_zip()
    (tmp_path / "cracks" / "mine").mkdir(parents=True)
    (tmp_path / "cracks" / "mine" / "note.txt").write_text("keep me")
    with pytest.raises(VisionlabError, match="--force"):
        download_dataset(_src("cracks", server.add("/cracks.zip", data), data, archive="zip"), tmp_path)
    assert (tmp_path / "cracks" / "mine" / "note.txt").exists()


def test_download_404_names_url_and_dataset_page(server, tmp_path, quiet):
    src = _src("caltech101", server.base + "/gone.zip")
    with pytest.raises(VisionlabError, match=r"HTTP 404.*manually.*doi\.org/10\.22002/D1\.20086"):
        download_dataset(src, tmp_path)


# --------------------------------------------------------------------------- archives


def test_extract_zip_through_torchvision(tmp_path, quiet, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []
    real = tvu.extract_archive
    monkeypatch.setattr(tvu, "extract_archive", lambda *a, **k: calls.append(a) or real(*a, **k))
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/x.txt": b"x", "../up.txt": b"no"}))
    dl.extract(archive, tmp_path / "out", "zip")
    assert calls and (tmp_path / "out" / "d" / "x.txt").read_bytes() == b"x"
    assert not (tmp_path / "up.txt").exists()  # zipfile drops '..'
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(VisionlabError, match="not a valid zip archive"):
        dl.extract(archive, tmp_path / "out2", "zip")
    misnamed = tmp_path / "a.bin"
    misnamed.write_bytes(_zip({"x.txt": b"x"}))
    with pytest.raises(VisionlabError, match=r"must be named \*\.zip.*VISIONLAB_SOURCES"):
        dl.extract(misnamed, tmp_path / "out3", "zip")


def test_extract_targz_skips_links_and_escaping_paths(tmp_path, quiet):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"ok/a.txt": b"a", "../evil.txt": b"e", "/abs.txt": b"b"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ok/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buf.getvalue())
    out = dl.extract(archive, tmp_path / "out", "tar.gz")
    assert (out / "ok" / "a.txt").read_bytes() == b"a"
    assert not (tmp_path / "evil.txt").exists() and not (out / "ok" / "link").exists()
    assert sorted(p.name for p in out.rglob("*")) == ["a.txt", "ok"]  # "/abs.txt" leaves the folder too


# --------------------------------------------------------------------------- minerals manifest


def test_fetch_manifest_politely_and_resumes(server, tmp_path, quiet):
    images = {f"/img/{n}": _png(i) for i, n in enumerate(("q1.jpg", "q2.jpg", "p1.png"))}
    rows = [("url", "label")] + [(server.base + p, "quartz" if "q" in p else "pyrite") for p in images]
    rows.append((server.base + "/img/later.jpg", "pyrite"))  # not there yet
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(",".join(r) for r in rows) + "\n")
    for p, b in images.items():
        server.add(p, b)
    out = tmp_path / "minerals"
    fetched, skipped, failed = fetch_manifest(manifest, out, delay=0.0)
    assert (fetched, skipped) == (3, 0) and len(failed) == 1 and "404" in failed[0][1]
    assert (out / "quartz" / "q1.jpg").read_bytes() == images["/img/q1.jpg"]
    assert (out / "pyrite" / "p1.png").exists() and not list(out.rglob("*.sha256"))
    assert all(r["ua"].startswith("visionlab/") for r in server.requests)
    server.add("/img/later.jpg", _png(9))
    server.requests.clear()
    fetched, skipped, failed = fetch_manifest(manifest, out, delay=0.0)
    assert (fetched, skipped, failed) == (1, 3, [])
    assert [r["path"] for r in server.requests] == ["/img/later.jpg"]  # present files are not asked for again
    assert find_classification(out).counts() == {"pyrite": 2, "quartz": 2}


def test_minerals_dataset_needs_a_manifest(tmp_path, quiet, monkeypatch):
    monkeypatch.delenv("VISIONLAB_MINERALS_MANIFEST", raising=False)
    with pytest.raises(VisionlabError, match="VISIONLAB_MINERALS_MANIFEST"):
        download_dataset(get_source("minerals"), tmp_path)


# --------------------------------------------------------------------------- kaggle (waste)


def test_waste_without_kaggle_explains_token(tmp_path, quiet, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(VisionlabError, match=r"kaggle.*kaggle\.com/settings.*kaggle\.json"):
        download_dataset(get_source("waste"), tmp_path)


def _kaggle_stand_in(bin_dir: Path, archive: bytes) -> Path:
    """An executable named ``kaggle`` that writes the zip the real CLI would (it cannot run offline)."""
    bin_dir.mkdir()
    (bin_dir / "payload.zip").write_bytes(archive)
    script = bin_dir / "kaggle"
    script.write_text(
        f"#!{sys.executable}\nimport os, shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"open({str(bin_dir / 'args.txt')!r}, 'w').write(' '.join(args))\n"
        "dest = args[args.index('-p') + 1]\n"
        f"shutil.copy({str(bin_dir / 'payload.zip')!r}, os.path.join(dest, args[2].split('/')[1] + '.zip'))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.skipif(os.name == "nt", reason="POSIX shebang script")
def test_waste_via_kaggle_layout(tmp_path, quiet, monkeypatch):
    files = {f"DATASET/{s}/{c}/{c}_{i}.jpg": _png(i) for s in ("TRAIN", "TEST") for c in ("O", "R") for i in range(2)}
    files.update({f"dataset/DATASET/TRAIN/O/dup_{i}.jpg": _png(i) for i in range(2)})  # the zip's duplicate copy
    bin_dir = _kaggle_stand_in(tmp_path / "bin", _zip(files))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    with pytest.raises(VisionlabError, match="no Kaggle API token"):
        download_dataset(get_source("waste"), tmp_path / "data")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123")
    out = download_dataset(get_source("waste"), tmp_path / "data")
    assert (bin_dir / "args.txt").read_text().startswith("datasets download techsash/waste-classification-data -p ")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["DATASET"]
    idx = find_classification(out)
    assert idx.classes == ["O", "R"] and len(idx) == 8 and set(idx.splits) == {"train", "test"}


# --------------------------------------------------------------------------- CLI


def test_cli_data_download(server, tmp_path, monkeypatch):
    data = _cracks_zip()
    url = server.add("/mirror/cracks.zip", data)
    overrides = tmp_path / "sources.json"
    overrides.write_text(json.dumps({"cracks": {"urls": [url], "filename": "cracks.zip", "archive": "zip",
                                                "sha256": _sha(data), "size": len(data)}}))
    monkeypatch.setenv("VISIONLAB_SOURCES", str(overrides))
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path / "root"))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "download", "cracks"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "root" / "cracks"
    assert f"visionlab train --task cracks --data {out}" in " ".join(res.output.split())
    assert len(find_classification(out)) == 6
    res = runner.invoke(app, ["data", "download", "cracks"])
    assert res.exit_code == 0 and "already present" in res.output and len(server.requests) == 1


def test_cli_minerals_manifest_and_caltech_alias(server, tmp_path, monkeypatch):
    server.add("/a.png", _png(1))
    manifest_url = server.add("/list.csv", f"{server.base}/a.png,biotite\n".encode())
    monkeypatch.setenv("VISIONLAB_MINERALS_MANIFEST", manifest_url)
    overrides = tmp_path / "sources.json"
    overrides.write_text(json.dumps({"minerals": {"delay": 0}, "caltech101": {"urls": [server.base + "/none.zip"]}}))
    monkeypatch.setenv("VISIONLAB_SOURCES", str(overrides))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "download", "minerals", "--root", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "minerals" / "biotite" / "a.png").exists()
    assert "--task minerals" in res.output
    res = runner.invoke(app, ["data", "download", "caltech", "--root", str(tmp_path / "r")])  # task -> caltech101
    assert res.exit_code == 2 and "error:" in res.output and "none.zip" in res.output and "HTTP 404" in res.output


def test_unknown_task_lists_known(tmp_path):
    with pytest.raises(VisionlabError, match="Known tasks"):
        download_task("nope", root=tmp_path)


def test_bad_override_is_refused(tmp_path, monkeypatch):
    overrides = tmp_path / "s.json"
    overrides.write_text(json.dumps({"cracks": {"prepare": "rm -rf"}}))
    monkeypatch.setenv("VISIONLAB_SOURCES", str(overrides))
    with pytest.raises(VisionlabError, match="cannot override prepare"):
        get_source("cracks")


def test_registry_covers_every_task():
    from visionlab.registry import list_tasks

    for spec in list_tasks():
        src = dataset_source(spec.name)
        assert src.task == spec.name
        assert src.method == "manifest" or src.expect


def test_the_seed_datasets_are_yaml_files_and_a_broken_one_is_one_line(tmp_path):
    from visionlab.data.download import DATASETS, read_source
    from visionlab.paths import packaged_configs

    folder = packaged_configs() / "datasets"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(DATASETS) == sorted(SOURCES)
    assert SOURCES["cracks"].prepare is not None and SOURCES["cracks"].urls[0].startswith("https://")
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\ntitle: t\ntask: x\nhomepage: h\nprepare: nowhere\n")
    with pytest.raises(VisionlabError, match=r"x\.yaml: unknown prepare step 'nowhere'"):
        read_source(bad)
    bad.write_text("name: x\ntitle: t\ntask: x\nhomepage: h\nurl: https://a\n")
    with pytest.raises(VisionlabError, match=r"unknown key 'url'"):
        read_source(bad)
