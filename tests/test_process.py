"""Process-wide settings: the visionlab command applies them, a library import does not, and
training's thread count and cuDNN/TF32 flags are restored when it returns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import visionlab
from visionlab import process
from visionlab.engine.device import speed_settings
from visionlab.engine.trainer import Callback


def _flags() -> tuple[bool, bool, bool]:
    return torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_importing_the_decoder_leaves_pil_alone():
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import visionlab.data.io, visionlab.data.doctor; "
            "print(Image.MAX_IMAGE_PIXELS == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_tune_process_sets_the_image_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("VISIONLAB_MALLOC_TUNING", "0")
    visionlab.tune_process()
    assert Image.MAX_IMAGE_PIXELS == process.LARGE_IMAGE_PIXELS


def test_every_command_tunes_its_process(monkeypatch):
    from visionlab.cli import app

    calls = []
    monkeypatch.setattr(process, "tune_process", lambda: calls.append(1))
    res = CliRunner().invoke(app, ["tasks"])
    assert res.exit_code == 0, res.output
    assert calls == [1]


def test_speed_settings_restore_threads_and_flags(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, flags = torch.get_num_threads(), _flags()
    try:
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with pytest.raises(KeyError), speed_settings():
            assert torch.get_num_threads() == (os.cpu_count() or 1)
            assert _flags() == (True, True, True)
            raise KeyError("an error inside still restores")
        assert torch.get_num_threads() == 1 and _flags() == (False, False, False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit count is respected
        with speed_settings():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


class _Seen(Callback):
    def on_fit_start(self, trainer) -> None:
        self.inside = (torch.get_num_threads(), _flags())


def test_train_leaves_the_callers_process_as_it_was(fast, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    flags = _flags()
    seen = _Seen()
    with open(os.devnull, "w") as devnull:
        from rich.console import Console

        visionlab.train("cracks", data="synthetic", console=Console(file=devnull), callbacks=[seen],
                        **fast("cracks", model="cracks_cnn", model_args={}))
    assert seen.inside == (os.cpu_count() or 1, (True, True, True))
    assert torch.get_num_threads() == 1 and _flags() == flags  # OMP_NUM_THREADS=1 from conftest at start-up
