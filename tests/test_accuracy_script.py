"""benchmarks/accuracy.py: runs end to end on synthetic data with tiny settings, prints and writes its table.

No timing or accuracy assertions: --quick trains two steps from random weights, so the numbers
mean nothing; what is checked is that every (task, variant) trains through the library's API, is
evaluated on its test split and lands in the table, the markdown and the JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accuracy.py"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_quick_run_prints_and_writes_the_table(tmp_path: Path) -> None:
    md, js = tmp_path / "acc.md", tmp_path / "acc.json"
    proc = _run(["--quick", "--data", "synthetic", "--tasks", "cracks,landcover", "--variants", "recipe,scratch",
                 "--seeds", "1,2", "--runs", str(tmp_path / "runs"), "--out", str(md), "--out", str(js)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "visionlab accuracy on held-out real photos" in out
    assert "not a measurement" in out
    for word in ("cracks", "landcover", "recipe", "scratch", "efficientnet_lite0", "cracks_cnn", "unet", "accuracy", "miou"):
        assert word in out, word

    text = md.read_text()
    assert text.startswith("- command: `python benchmarks/accuracy.py --quick")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| task | variant | model | metric |")
    firsts = [[c.strip() for c in line.split("|")[1:3]] for line in table[1:] if line.split("|")[1].strip()]
    assert firsts == [["cracks", "recipe"], ["cracks", "scratch"], ["landcover", "recipe"], ["landcover", "scratch"]]
    # accuracy carries its Wilson interval; the target column says pass or MISS for the primary metric
    acc = next(line for line in table if "| accuracy |" in line)
    assert "[" in acc and ("pass" in acc or "MISS" in acc)

    data = json.loads(js.read_text())
    assert data["seeds"] == [1, 2] and data["quick"] is True
    rows = {(r["task"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {("cracks", "recipe"), ("cracks", "scratch"), ("landcover", "recipe"), ("landcover", "scratch")}
    cracks, land = rows["cracks", "recipe"], rows["landcover", "recipe"]
    assert not cracks["skipped"] and [s["seed"] for s in cracks["per_seed"]] == [1, 2]
    assert rows["cracks", "scratch"]["model"].startswith("cracks_cnn")
    # pooled over both seeds: the test images add up, accuracy is a fraction with its interval around it
    assert cracks["test_images"] == sum(s["images"] for s in cracks["per_seed"]) > 0
    lo, hi = cracks["ci"]
    assert 0 <= lo <= cracks["metrics"]["accuracy"] <= hi <= 1
    assert 0 <= land["metrics"]["miou"] <= 1 and land["target"] == ["miou", 0.75]
    for s in cracks["per_seed"] + land["per_seed"]:
        assert (Path(s["run_dir"]) / "eval-test" / "metrics.json").is_file()


def test_missing_data_folder_is_skipped_clearly(tmp_path: Path) -> None:
    proc = _run(["--data", str(tmp_path / "nowhere"), "--tasks", "cracks"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and "absent" in proc.stdout


def test_missing_task_folder_gives_a_skipped_row(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    out = tmp_path / "t.json"
    proc = _run(["--data", str(tmp_path / "data"), "--tasks", "waste", "--variants", "recipe", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["task"] == "waste" and "absent" in row["skipped"] and row["passed"] is None


@pytest.mark.parametrize("args, message", [
    (["--tasks", "crackz"], "unknown task"),
    (["--variants", "best"], "--variants"),
    (["--out", "table.txt"], "unknown format"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run(["--data", "synthetic", *args], tmp_path)
    assert proc.returncode == 2
    assert message in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_wilson_interval_brackets_the_proportion() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from accuracy import wilson_interval
    finally:
        sys.path.remove(str(SCRIPT.parent))
    lo, hi = wilson_interval(104, 104)
    assert hi == pytest.approx(1.0) and 0.96 < lo < 0.97  # 104/104 correct still allows ~3.6 % error
    lo, hi = wilson_interval(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.13


def test_new_head_on_pretrained_lite0_starts_small() -> None:
    """The recipes fine-tune Lite0 with a new head: its first logits must be near 0 (loss ~ ln C), not +-5."""
    import torch

    from visionlab.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2).eval()
    with torch.no_grad():
        logits = model(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert logits.abs().max() < 0.5
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1] * 4))
    assert abs(float(loss) - math.log(2)) < 0.2
    assert float(model.classifier.weight.detach().std()) < 0.02 and not model.classifier.bias.detach().any()


def test_reuse_keeps_unchanged_rows_and_reruns_changed_recipes(tmp_path: Path) -> None:
    js = tmp_path / "acc.json"
    base = ["--quick", "--data", "synthetic", "--tasks", "cracks", "--variants", "recipe,scratch", "--runs", str(tmp_path / "runs")]
    first = _run(base + ["--reuse", str(js), "--out", str(js)], tmp_path)  # a missing --reuse file is fine
    assert first.returncode == 0, first.stdout + first.stderr
    rows1 = {r["variant"]: r for r in json.loads(js.read_text())["rows"]}
    assert all(len(r["digest"]) == 16 and not r["reused"] and r["measured"] for r in rows1.values())

    again = _run(base + ["--reuse", str(js), "--out", str(js)], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("reused") >= 2
    rows2 = {r["variant"]: r for r in json.loads(js.read_text())["rows"]}
    for v in ("recipe", "scratch"):
        assert rows2[v]["reused"] and rows2[v]["per_seed"] == rows1[v]["per_seed"]  # the same runs, not new ones

    # another setting changes the digest: the row trains again (written elsewhere, acc.json stays as it is)
    changed_js = tmp_path / "changed.json"
    only_scratch = [a if a != "recipe,scratch" else "scratch" for a in base]
    changed = _run(only_scratch + ["--set", "lr=0.002", "--reuse", str(js), "--out", str(changed_js)], tmp_path)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    (row,) = json.loads(changed_js.read_text())["rows"]
    assert not row["reused"] and row["digest"] != rows1["scratch"]["digest"]
    assert row["per_seed"][0]["run_dir"] != rows1["scratch"]["per_seed"][0]["run_dir"]

    # one more seed: the seed measured before is reused, only the new one trains
    more = _run([a if a != "recipe,scratch" else "recipe" for a in base] + ["--seeds", "42,43", "--reuse", str(js), "--out", str(js)],
                tmp_path)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "reused cracks/recipe, seed 42" in " ".join(more.stdout.split()) and "seed 43" in more.stdout
    row = json.loads(js.read_text())["rows"][0]
    assert [s["seed"] for s in row["per_seed"]] == [42, 43] and row["per_seed"][0] == rows1["recipe"]["per_seed"][0]
    assert not row["reused"] and row["test_images"] == sum(s["images"] for s in row["per_seed"])


def test_reuse_of_a_file_that_is_not_an_output_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    proc = _run(["--quick", "--data", "synthetic", "--tasks", "cracks", "--reuse", str(bad)], tmp_path)
    assert proc.returncode == 2
    assert "--reuse" in proc.stdout and "not a JSON output of this script" in proc.stdout
