"""Only the formats visionlab says it reads are decoded: PCX, TGA, ICO, SGI and EPS files (real files,
written by Pillow; the EPS as a small PostScript text) are refused by the server (415 naming the
formats it reads), by ``visionlab predict`` (one error per file, the others predicted) and by data
loading (the doctor and the training loader call them unreadable), whatever their extension."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from conftest import make_class_image, write_class_folder
from test_cli import invoke

from visionlab.data.io import DECODE_FORMATS, FORMAT_NAMES, UnreadableImage, expand_inputs, load_image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
       b"newpath 0 0 moveto 32 0 lineto 32 32 lineto closepath fill\nshowpage\n%%EOF\n")
REFUSED = ("PCX", "TGA", "ICO", "SGI", "EPS")  # formats Pillow reads and visionlab does not
ALLOWED = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif", "PPM": "ppm"}


def _encoded(fmt: str, i: int = 0) -> bytes:
    if fmt == "EPS":
        return EPS
    buf = io.BytesIO()
    make_class_image("apple", i, size=32).save(buf, format=fmt)
    return buf.getvalue()


def test_pillow_reads_the_refused_files_and_visionlab_does_not(tmp_path: Path) -> None:
    for fmt in REFUSED:
        data = _encoded(fmt)
        with Image.open(io.BytesIO(data)) as im:  # a real file of that format, as Pillow sees it
            assert im.format == fmt
        with pytest.raises(UnreadableImage, match=r"cannot decode image \(not a JPEG, PNG, GIF, BMP, TIFF, WebP or PPM file\)"):
            load_image(io.BytesIO(data))
    assert set(DECODE_FORMATS) == set(ALLOWED)
    for fmt in ALLOWED:
        assert load_image(io.BytesIO(_encoded(fmt))).size == (32, 32)


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path]) -> Iterator[object]:
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    from test_serve import Server

    s = Server([tiny_models["cracks"]], max_upload_mb=2, max_wait_ms=25.0, max_megapixels=20.0, device="cpu")
    s.wait_ready()
    yield s
    s.stop()


def test_server_refuses_other_formats_with_415_and_answers_the_allowed(server) -> None:
    httpx = pytest.importorskip("httpx")
    url = server.url + "/predict/cracks"
    for fmt in REFUSED:
        for name in (f"x.{fmt.lower()}", "disguised.jpg"):
            r = httpx.post(url, files={"image": (name, _encoded(fmt), "image/jpeg")}, timeout=30)
            assert r.status_code == 415, (fmt, r.status_code, r.text)
            assert r.json()["error"] == f"{name}: not an image of a format this server reads; send {FORMAT_NAMES}."
    for fmt, ext in ALLOWED.items():
        r = httpx.post(url, files={"image": (f"x.{ext}", _encoded(fmt), "application/octet-stream")}, timeout=30)
        assert r.status_code == 200, (fmt, r.text)


def test_predict_reports_each_refused_file_and_predicts_the_others(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for fmt in REFUSED:  # named by their own extension, and disguised as a .png
        (folder / f"x.{fmt.lower()}").write_bytes(_encoded(fmt))
        (folder / f"{fmt.lower()}-inside.png").write_bytes(_encoded(fmt))
    for fmt, ext in ALLOWED.items():
        (folder / f"ok.{ext}").write_bytes(_encoded(fmt))
    named = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "preds.json"
    result = invoke("predict", *named, "--checkpoint", tiny_models["cracks"], "--out", out, "--unknown", "off")  # decoding is the point
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    for name, r in rows.items():
        if name.startswith("ok."):
            assert r["error"] is None and r["label"] in ("Negative", "Positive"), r
        else:
            assert r["label"] is None and r["error"].startswith(f"{folder / name}: cannot decode image (not a {FORMAT_NAMES} file)."), r
    assert len(rows) == len(named)
    # in a folder walk, a file of another format with a non-image extension is not even an input
    assert sorted(Path(p).name for p in expand_inputs([folder])) == sorted(
        n for n in rows if n.startswith("ok.") or n.endswith("-inside.png"))


def test_doctor_and_training_call_refused_files_unreadable(tmp_path: Path, runs_dir: Path) -> None:
    from rich.console import Console

    import visionlab
    from conftest import fast_options
    from visionlab.kinds import check_dataset

    root = write_class_folder(tmp_path / "data", per_class=8, size=32)
    planted = [root / "apple" / f"{fmt.lower()}.png" for fmt in REFUSED]
    for fmt, p in zip(REFUSED, planted):
        p.write_bytes(_encoded(fmt))
    report = check_dataset(root)
    bad = [f for f in report.findings if f.code == "not_an_image"]
    assert len(bad) == 1 and sorted(bad[0].files) == sorted(map(str, planted)), report.findings
    assert bad[0].message.startswith("5 files are not images visionlab reads")
    quiet = Console(file=io.StringIO())
    result = visionlab.train("cracks", data=str(root), console=quiet,
                             **fast_options("cracks", runs_dir, model="cracks_cnn", model_args={}, classes=["apple", "zebra"]))
    import torch

    unreadable = torch.load(result.best_checkpoint, weights_only=False)["data"]["unreadable"]
    assert sorted(unreadable) == sorted(map(str, planted))
