"""The server's batch loop (visionlab.serve.batching), without torch or a web framework.

This module imports nothing but the standard library and pytest, so it also runs in the
torch-free venvs of the oldest and newest supported Pythons; one test runs the loop under
Python 3.10 and 3.13 themselves (3.10: ``asyncio.TimeoutError`` is not the built-in ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from visionlab.serve.batching import Batcher, BatcherStopped

pytestmark = pytest.mark.torchfree  # also run on the other supported Pythons, without torch (.ci/torchfree)

SRC = Path(__file__).resolve().parents[1] / "src"
HANG = 20.0  # seconds: only a hang takes this long


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, HANG))


def test_a_request_that_waits_alone_for_company_is_answered_and_so_is_the_next():
    async def go() -> list[Any]:
        b = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=8, max_wait_ms=5)
        b.start()
        out = [await b.submit([21]), await b.submit([1, 2])]
        await b.close()
        return out

    assert _run(go()) == [[42], [2, 4]]


def _pyenv_python(version: str) -> str | None:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
    return found[-1] if found else None


@pytest.mark.parametrize("version", ["3.10", "3.13"])  # the oldest supported Python and the newest on this machine
def test_the_loop_answers_a_lone_request_on_the_oldest_and_newest_python(version: str):
    """On 3.10, wait_for raises asyncio.TimeoutError; the loop once caught only TimeoutError and died."""
    here = "{}.{}".format(*sys.version_info[:2])
    python = sys.executable if here == version else _pyenv_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (looked in pyenv's versions/{version}.*)")
    code = ("import asyncio\n"
            "from visionlab.serve.batching import Batcher\n"
            "async def go():\n"
            "    b = Batcher(lambda xs: [x + 1 for x in xs], max_batch_size=4, max_wait_ms=5)\n"
            "    b.start()\n"
            "    print(await b.submit([1]), await b.submit([2]), b.stopped)\n"
            "    await b.close()\n"
            f"asyncio.run(asyncio.wait_for(go(), {HANG}))\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=HANG + 20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[2]", "[3]", "None"]


class _Fatal(BaseException):
    """Not an Exception: the loop does not catch it, as it would not catch a bug of its own."""


def test_a_loop_that_dies_fails_every_waiting_and_later_request_at_once():
    async def go() -> tuple[list[Any], str | None, Any]:
        def fn(xs: list[Any]) -> list[Any]:
            if "fatal" in xs:
                raise _Fatal("the loop breaks")
            return xs

        b = Batcher(fn, max_batch_size=2, max_wait_ms=50)
        b.start()
        assert await b.submit(["ok"]) == ["ok"]
        # the first batch kills the loop; the second request waits in the queue behind it
        waiting = await asyncio.gather(b.submit(["fatal", "x"]), b.submit(["y"]), return_exceptions=True)
        try:
            later: Any = await b.submit(["z"])
        except BatcherStopped as exc:
            later = exc
        await b.close()  # does not raise the loop's error again
        return waiting, b.stopped, later

    waiting, stopped, later = _run(go())
    assert all(isinstance(e, BatcherStopped) for e in waiting), waiting
    assert isinstance(later, BatcherStopped)
    assert stopped == "the batch loop of model 'model' stopped (_Fatal: the loop breaks)"
    assert str(later) == str(waiting[0]) == stopped


def test_one_failing_item_fails_only_its_own_request():
    """A batch that raises runs again item by item: the others get their results."""
    calls: list[list[str]] = []

    def fn(xs: list[str]) -> list[str]:
        calls.append(list(xs))
        if "huge" in xs:
            raise MemoryError("cannot allocate 40 GB")
        return [x.upper() for x in xs]

    async def go() -> list[Any]:
        b = Batcher(fn, max_batch_size=8, max_wait_ms=200)
        b.start()
        out = await asyncio.gather(b.submit(["a"]), b.submit(["huge"]), b.submit(["b", "c"]), return_exceptions=True)
        await b.close()
        return out

    a, huge, bc = _run(go())
    assert calls[0] == ["a", "huge", "b", "c"]  # batched first
    assert a == ["A"] and bc == ["B", "C"]
    assert isinstance(huge, MemoryError) and str(huge) == "cannot allocate 40 GB"


def test_after_close_a_request_is_refused_not_left_waiting():
    async def go() -> Any:
        b = Batcher(lambda xs: xs, max_wait_ms=0)
        b.start()
        await b.close()
        with pytest.raises(BatcherStopped, match="shutting down"):
            await b.submit([1])
        return b.stopped

    assert _run(go()) == "the server is shutting down"


def test_close_does_not_wait_for_the_items_of_requests_given_up():
    """Requests cancelled while their batch waits for company (the drain's end) kept close() waiting out max_wait_ms."""
    async def go() -> list[Any]:
        b = Batcher(lambda xs: xs, max_batch_size=8, max_wait_ms=60_000)
        b.start()
        given_up = asyncio.ensure_future(b.submit([1, 2]))
        while b.depth < 2:
            await asyncio.sleep(0.01)
        given_up.cancel()
        await b.close()
        return [given_up.cancelled(), b.stopped]

    assert _run(go()) == [True, "the server is shutting down"]
