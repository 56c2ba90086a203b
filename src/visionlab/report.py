"""``visionlab report``: one self-contained HTML page of a run, readable offline.

It shows the training and validation curves (inline SVG), the test metrics, per-class scores,
the confusion matrix (counts and row shares, axes labelled true and predicted) and the images
worth a look that ``evaluate`` saved: the most confident mistakes of a classifier, the images
with the lowest IoU of a segmenter (photo, truth and prediction side by side). Images are
embedded as base64; every label and file name is escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from visionlab.errors import VisionlabError
from visionlab.kinds import get_kind

__all__ = ["write_report", "render_report", "find_evaluation", "run_checkpoint"]

_PALETTE = ("#3b5bfd", "#f08c00", "#0f9d58", "#d6336c", "#7048e8", "#1098ad", "#5c940d", "#e8590c")
esc = html.escape


def find_evaluation(run_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """The run folder and its latest evaluation (an ``eval-*`` folder with metrics.json), or None;
    ``run_dir`` may be the run folder or one of its evaluation folders."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise VisionlabError(f"{run} is not a folder.", "Pass a run folder, e.g. runs/cracks/<name>.")
    if (run / "metrics.json").exists() and not (run / "metrics.csv").exists():
        return run.parent, run  # an eval-* folder was given
    evals = sorted((d for d in run.glob("eval-*") if (d / "metrics.json").exists()), key=lambda d: d.stat().st_mtime)
    return run, (evals[-1] if evals else None)


def run_checkpoint(run: Path) -> Path:
    """The run's best.pt (else its last.pt)."""
    ckpt = run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"
    if not ckpt.exists():
        raise VisionlabError(f"{run} has neither an evaluation nor a checkpoint.", "Pass a run folder written by visionlab train.")
    return ckpt


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, eval_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of ``run_dir`` (or of one of its ``eval-*`` folders) and return its path.

    ``eval_dir`` defaults to the run's latest evaluation; :func:`visionlab.api.run_report` evaluates
    a run that has none first."""
    if eval_dir is None:
        run, eval_dir = find_evaluation(run_dir)
        if eval_dir is None:
            raise VisionlabError(f"{run} has no evaluation yet.", f"Run 'visionlab report {run}' (it evaluates first) or 'visionlab evaluate'.")
    else:
        run = Path(run_dir).expanduser()
    eval_dir = Path(eval_dir)
    page = render_report(run, eval_dir)
    path = Path(out) if out else eval_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def render_report(run: Path, eval_dir: Path) -> str:
    """The HTML text of the report of ``run`` with the evaluation in ``eval_dir``."""
    rep = _read_json(eval_dir / "metrics.json", dict)
    summary = _read_json(run / "summary.json", dict) if (run / "summary.json").exists() else {}
    history = _read_history(run / "metrics.csv")
    examples_file = eval_dir / "examples" / "examples.json"
    examples = _read_json(examples_file, list) if examples_file.exists() else []
    if not all(isinstance(ex, dict) and "title" in ex and isinstance(ex.get("images", {}), dict)
               and isinstance(ex.get("fields", {}), dict) for ex in examples):
        raise _damaged(examples_file, "a list of examples, each with a title, images and fields")
    classes = [str(c) for c in rep.get("class_names", [])]
    kind = rep.get("kind", "")
    task_kind = get_kind(kind)
    task = rep.get("task", summary.get("task", run.parent.name))
    title = f"{task} · {run.name}"
    facts = [("task", task), ("kind", kind), ("model", summary.get("model", "")), ("data", rep.get("data", "")),
             ("split", f"{rep.get('split', '')} ({rep.get('images', '?')} images)"), ("test-time augmentation", rep.get("tta", "")),
             ("epochs", summary.get("epochs", len(history) or "")), ("checkpoint", rep.get("checkpoint", ""))]
    parts = [f"<header><p class='eyebrow'>visionlab report</p><h1>{esc(title)}</h1>"
             + ("<p class='warn'>This model was trained and evaluated on SYNTHETIC data.</p>" if rep.get("synthetic") else "")
             + "<dl class='facts'>" + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(str(v))}</dd></div>" for k, v in facts if v != "")
             + "</dl></header>"]
    parts.append(_section("Test metrics", _metric_cards(rep.get("metrics", {}), rep.get("primary"))))
    if history:
        parts.append(_section("Training curves", _curves(history)))
    if rep.get("per_class"):
        parts.append(_section("Per class", _per_class(rep["per_class"], task_kind.per_class_columns)))
    if rep.get("confusion_matrix"):
        parts.append(_section("Confusion matrix", _confusion(rep["confusion_matrix"], classes, task_kind.confusion_unit)))
    if rep.get("reliability"):
        parts.append(_section("Calibration", _calibration(rep, eval_dir)))
    if rep.get("unknown"):
        parts.append(_section("Unknown photos", _unknown(rep["unknown"])))
    if examples:
        parts.append(_section(task_kind.examples_heading, f"<p class='note'>{esc(task_kind.examples_note)}</p>"
                              + _examples(examples, eval_dir / "examples")))
    made = time.strftime("%Y-%m-%d %H:%M")
    from visionlab._version import __version__

    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><main>{''.join(parts)}"
            f"<footer>made by visionlab {esc(__version__)} on {esc(made)} from {esc(str(eval_dir))}</footer></main></body></html>")


def _damaged(path: Path, what: str) -> VisionlabError:
    return VisionlabError(f"{path} is damaged (not {what}).", "Run visionlab evaluate again to write it anew.")


def _read_json(path: Path, expected: type) -> Any:
    """The JSON value in ``path``, which must be a ``expected`` (dict or list); else one line that says the file is damaged."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, expected):
        raise _damaged(path, "a JSON object" if expected is dict else "a JSON list")
    return value


def _section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else esc(str(v))


def _metric_cards(metrics: Mapping[str, Any], primary: str | None) -> str:
    cards = []
    for k, v in metrics.items():
        lead = " lead" if k == primary else ""
        cards.append(f"<div class='metric{lead}'><span>{esc(k.replace('_', ' '))}</span><strong>{_fmt(v)}</strong></div>")
    return f"<div class='metrics'>{''.join(cards)}</div>"


def _per_class(per_class: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The per-class table: the kind's declared columns that the rows hold (else every key they hold),
    shares as bars and counts as numbers."""
    keys = list(dict.fromkeys(k for row in per_class.values() for k in row))
    cols = [c for c in columns if c in keys] or keys
    head = "".join(f"<th scope='col'>{esc(c.replace('_', ' '))}</th>" for c in cols)
    body = ""
    for name, row in per_class.items():
        cells = "".join(f"<td>{_fmt(row.get(c)) if isinstance(row.get(c), int) else _bar_cell(row.get(c))}</td>" for c in cols)
        body += f"<tr><th scope='row'>{esc(str(name))}</th>{cells}</tr>"
    return f"<div class='scroll'><table class='grid'><thead><tr><th scope='col'>class</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _bar_cell(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
        return "–"
    return f"<span class='cellbar' style='--v:{max(0.0, min(1.0, float(v))) * 100:.1f}%'>{v:.3f}</span>"


def _confusion(cm: Sequence[Sequence[int]], classes: list[str], what: str) -> str:
    n = len(classes)
    head = "".join(f"<th scope='col' class='pred'>{esc(c)}</th>" for c in classes)
    rows = ""
    for i, name in enumerate(classes):
        total = sum(cm[i]) or 1
        cells = ""
        for j in range(n):
            share = cm[i][j] / total
            tone = "diag" if i == j else "off"
            dark = " dark" if share > 0.55 else ""
            cells += (f"<td class='{tone}{dark}' style='--s:{share:.3f}' title='true {esc(name)}, predicted {esc(classes[j])}'>"
                      f"<b>{cm[i][j]:,}</b><small>{share:.0%}</small></td>")
        rows += f"<tr><th scope='row'>{esc(name)}</th>{cells}<td class='total'>{sum(cm[i]):,}</td></tr>"
    return (f"<p class='note'>counts of {esc(what)}; the percentage is the share of the true class (each row adds up to 100%)</p>"
            f"<div class='scroll'><table class='cm'><thead><tr><th></th><th colspan='{n}' class='axis'>predicted →</th><th></th></tr>"
            f"<tr><th class='axis'>true ↓</th>{head}<th class='pred'>total</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _calibration(rep: Mapping[str, Any], eval_dir: Path) -> str:
    """The temperature, ECE/NLL/Brier before and after it, and the reliability diagram evaluate drew."""
    cal, m = rep.get("calibration") or {}, rep.get("metrics", {})
    t = cal.get("temperature")
    if cal.get("applied") and isinstance(t, (int, float)):
        fit = cal.get("fitted") or {}
        note = f"temperature {t:.3f}, fitted on the {esc(str(fit.get('fitted_on', 'validation')))} split ({esc(str(fit.get('images', '?')))} images)"
    else:
        note = "no temperature applied: the probabilities are the raw softmax"
    unit = esc(str(cal.get("unit", "image")))  # what is scored: images, or a segmentation's pixels
    if isinstance(cal.get("pixels"), Mapping):
        note += f"; scored on {_fmt(cal['pixels'].get('sampled'))} of the {_fmt(cal['pixels'].get('labelled'))} labelled pixels (a seeded sample)"
    rows = "".join(f"<tr><th scope='row'>{k}</th><td>{_fmt(m.get(k + '_before'))}</td><td>{_fmt(m.get(k))}</td></tr>"
                   for k in ("ece", "nll", "brier"))
    table = (f"<table class='grid'><thead><tr><th></th><th scope='col'>raw softmax</th><th scope='col'>calibrated</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")
    png = _inside(eval_dir, "reliability.png")
    figure = ""
    if png is not None and png.is_file() and png.stat().st_size <= MAX_EXAMPLE_BYTES and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        figure = f"<figure><img src='data:image/png;base64,{data}' alt='reliability diagram' style='max-width:100%'></figure>"
    return (f"<p class='note'>{note}; ECE: expected calibration error over 15 confidence bins, NLL in nats per {unit}, "
            f"Brier: mean squared distance of the probabilities from the true class</p>{table}{figure}")


def _unknown(u: Mapping[str, Any]) -> str:
    """What the unknown detector did on the evaluated (known) photos: its threshold and the share it accepted."""
    on = f"; accuracy on those {_fmt(u.get('accuracy_accepted'))}, on all {_fmt(u.get('accuracy_all'))}" if u.get("accepted") else ""
    return (f"<p class='note'>{esc(str(u.get('score')))} score, threshold {_fmt(u.get('threshold'))}: "
            f"{esc(str(u.get('accepted')))} of {esc(str(u.get('images')))} known photos accepted ({_fmt(u.get('known_accepted'))}){on}; "
            "the others would be answered 'unknown' (the photo looks like none of the classes). The accuracy above is of "
            "every photo, as with --unknown off.</p>")


def _inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` with links resolved, when it is still inside ``folder``; else None."""
    try:
        path = (folder / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links (RuntimeError before Python 3.13), a NUL byte
        return None
    return path if path.is_relative_to(folder.resolve()) else None


#: The largest example image embedded (evaluate writes JPEGs of a few hundred KB).
MAX_EXAMPLE_BYTES = 8 << 20


def _not_embedded(path: Path) -> str:
    """Why the file inside the examples folder is not embedded ("" when it is: a JPEG, as evaluate
    writes them, of at most MAX_EXAMPLE_BYTES); a missing file is left out without a word."""
    if not path.is_file():
        return ""
    try:
        if path.stat().st_size > MAX_EXAMPLE_BYTES:
            return f"larger than {MAX_EXAMPLE_BYTES >> 20} MB"
        with path.open("rb") as f:
            return "" if f.read(3) == b"\xff\xd8\xff" else "not a JPEG image"
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"


def _examples(examples: list[dict[str, Any]], folder: Path) -> str:
    """The example cards; only images inside ``folder`` are embedded (examples.json may come from
    someone else's run folder: a name like ../../etc/hostname or a link out is skipped, and said so)."""
    cards = []
    for ex in examples:
        figs = ""
        for caption, name in ex.get("images", {}).items():
            f = _inside(folder, str(name))
            why = "not inside the examples folder" if f is None else _not_embedded(f)
            if why:
                figs += f"<p class='missing'>skipped {esc(str(name))}: {why}</p>"
            elif f is not None and f.is_file():
                data = base64.b64encode(f.read_bytes()).decode("ascii")
                figs += (f"<figure><img src='data:image/jpeg;base64,{data}' alt='{esc(caption)} of {esc(ex['title'])}'>"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        if not figs:
            figs = "<p class='missing'>image not found</p>"
        fields = "".join(f"<div><dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd></div>" for k, v in ex.get("fields", {}).items())
        n = len(ex.get("images", {}))
        wide = " wide" if n > 2 else " pair" if n == 2 else ""  # a photo and its explanation: two columns
        cards.append(f"<article class='example{wide}'><div class='figs'>{figs}</div>"
                     f"<p class='file' title='{esc(ex['title'])}'>{esc(Path(ex['title']).name)}</p><dl>{fields}</dl></article>")
    return f"<div class='examples'>{''.join(cards)}</div>"


def _curves(history: list[dict[str, float]]) -> str:
    keys = [k for k in history[0] if k != "epoch"]
    for row in history[1:]:
        keys += [k for k in row if k not in keys and k != "epoch"]
    losses = [k for k in keys if k.endswith("loss")]
    vals = [k for k in keys if k.startswith("val_") and not k.endswith("loss")]
    charts = []
    if losses:
        charts.append(_svg_chart("loss", history, losses))
    if vals:
        charts.append(_svg_chart("validation metrics", history, vals))
    if "lr" in keys:
        charts.append(_svg_chart("learning rate", history, ["lr"]))
    return f"<div class='charts'>{''.join(charts)}</div>"


def _svg_chart(title: str, history: list[dict[str, float]], keys: list[str], w: int = 420, h: int = 240) -> str:
    """A line chart of ``keys`` per epoch, as inline SVG (axes, ticks, legend)."""
    xs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    ys = [row[k] for row in history for k in keys if k in row and math.isfinite(row[k])]
    if not ys:
        return ""
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    pad = (hi - lo) * 0.08
    lo, hi = (lo - pad if lo < 0 else max(0.0, lo - pad)), hi + pad  # a quantity never below 0 gets no negative tick
    x0, x1, y0, y1 = 66, w - 12, 14, h - 34
    xmin, xmax = min(xs), max(xs)
    sx = (lambda x: (x0 + x1) / 2) if xmax == xmin else (lambda x: x0 + (x - xmin) / (xmax - xmin) * (x1 - x0))
    sy = lambda y: y1 - (y - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    out = [f"<figure class='chart'><figcaption>{esc(title)}</figcaption>"
           f"<svg viewBox='0 0 {w} {h}' role='img' aria-label='{esc(title)} per epoch'>"]
    for t in range(5):
        v = lo + (hi - lo) * t / 4
        y = sy(v)
        out.append(f"<line x1='{x0}' x2='{x1}' y1='{y:.1f}' y2='{y:.1f}' class='gridline'/>"
                   f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end'>{v:.3g}</text>")
    ticks = sorted(set(xs)) if len(set(xs)) <= 10 else [xs[round(i * (len(xs) - 1) / 9)] for i in range(10)]
    for x in ticks:
        out.append(f"<text x='{sx(x):.1f}' y='{y1 + 16}' text-anchor='middle'>{x:g}</text>")
    out.append(f"<text x='{(x0 + x1) / 2}' y='{h - 4}' text-anchor='middle' class='axislabel'>epoch</text>")
    legend = []
    for n, k in enumerate(keys):
        color = _PALETTE[n % len(_PALETTE)]
        pts = [(sx(x), sy(row[k])) for x, row in zip(xs, history) if k in row and math.isfinite(row[k])]
        dash = " stroke-dasharray='5 4'" if k.startswith("train_") else ""
        if len(pts) > 1:
            out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2.2'{dash} points='"
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + "'/>")
        out += [f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{color}'/>" for a, b in pts]
        legend.append(f"<span><i style='background:{color}'></i>{esc(k)}</span>")
    out.append(f"</svg><div class='legend'>{''.join(legend)}</div></figure>")
    return "".join(out)


_CSS = """
:root{--bg:#f4f5f8;--card:#fff;--text:#161a23;--muted:#5d6577;--line:#e3e6ee;--accent:#3b5bfd;--bad:#c62828;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;color:var(--text);background:var(--bg)}
*{box-sizing:border-box}body{margin:0}main{max-width:1180px;margin:0 auto;padding:28px clamp(14px,4vw,36px) 40px}
header,section{background:var(--card);border:1px solid var(--line);border-radius:16px;padding:22px 26px;margin-bottom:20px;
box-shadow:0 1px 2px rgba(16,24,40,.05),0 8px 24px rgba(16,24,40,.05)}
h1{margin:2px 0 12px;font-size:1.7rem;letter-spacing:-.02em}h2{margin:0 0 14px;font-size:1.15rem}
.eyebrow{margin:0;text-transform:uppercase;letter-spacing:.08em;font-size:.72rem;font-weight:700;color:var(--muted)}
.warn{background:rgba(240,165,0,.14);color:#8a5a00;padding:8px 12px;border-radius:10px;font-weight:600;display:inline-block;margin:0 0 12px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px 20px;margin:0}
.facts dt,.example dt{font-size:.72rem;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.facts dd{margin:2px 0 0;font-weight:600;word-break:break-all}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.metric{border:1px solid var(--line);border-radius:12px;padding:12px 14px}.metric span{display:block;color:var(--muted);font-size:.82rem}
.metric strong{font-size:1.35rem;font-variant-numeric:tabular-nums}.metric.lead{border-color:var(--accent);box-shadow:inset 0 0 0 1px var(--accent)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:18px}
.chart{margin:0}.chart figcaption{font-weight:650;margin-bottom:6px}.chart svg{width:100%;height:auto}
.chart text{font-size:11px;fill:var(--muted)}.chart .axislabel{font-size:12px}.gridline{stroke:var(--line);stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;font-size:.8rem;color:var(--muted)}.legend i{display:inline-block;width:12px;height:3px;margin-right:6px;vertical-align:middle}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
.grid th,.grid td{padding:8px 14px;border-bottom:1px solid var(--line);text-align:left}.grid thead th{font-size:.8rem;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.cellbar{display:inline-block;min-width:90px;padding:2px 6px;border-radius:6px;background:linear-gradient(90deg,rgba(59,91,253,.22) var(--v),transparent var(--v))}
.cm th,.cm td{padding:6px 8px;text-align:center;border:1px solid var(--line);min-width:72px}.cm th[scope=row]{text-align:right;white-space:nowrap}
.cm .axis{font-size:.78rem;color:var(--muted);text-transform:uppercase;letter-spacing:.06em;border:0}.cm .pred{font-size:.85rem}
.cm td b{display:block;font-size:.95rem}.cm td small{color:var(--muted)}.cm td.diag{background:rgba(15,157,88,calc(var(--s)*.85))}
.cm td.off{background:rgba(198,40,40,calc(var(--s)*.85))}.cm td.dark,.cm td.dark small{color:#fff}.cm td.total{color:var(--muted);border:0}
.note{color:var(--muted);font-size:.88rem;margin:-6px 0 12px}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:16px}
.example{border:1px solid var(--line);border-radius:12px;padding:10px;overflow:hidden}.example.wide{grid-column:1/-1}.example.pair{grid-column:span 2}
.figs{display:flex;gap:8px}.figs figure{margin:0;flex:1;min-width:0}.figs img{display:block;width:100%;border-radius:8px;background:#000}
.figs figcaption{font-size:.75rem;color:var(--muted);margin-top:4px;text-align:center}
.file{margin:8px 0 4px;font-weight:650;font-size:.85rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.example dl{margin:0;display:grid;grid-template-columns:auto 1fr;gap:2px 10px;font-size:.85rem}.example dl div{display:contents}.example dd{margin:0}
.missing{color:var(--muted);font-size:.85rem}footer{color:var(--muted);font-size:.78rem;text-align:center;margin-top:10px;word-break:break-all}
@media (max-width:640px){.example.wide .figs{flex-direction:column}.example.pair{grid-column:1/-1}}
"""
