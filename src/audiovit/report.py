"""``RUN/report.html``: one self-contained page (images inlined) that opens offline and shows a
training run — data, settings, metrics, plots and the most confused pairs with example files."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import json
from collections import defaultdict
from pathlib import Path

from . import checkpoint
from .evaluate import most_confused
from .version import __version__

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:24px auto;
padding:0 20px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;padding-bottom:4px;
border-bottom:1px solid #dde1ea}table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;
border-bottom:1px solid #eef0f5;text-align:right}th:first-child,td:first-child{text-align:left}
.muted{color:#667085}img{max-width:100%;border:1px solid #eef0f5;border-radius:6px;margin:6px 0}
.kpi{display:inline-block;margin-right:28px}.kpi b{font-size:24px;display:block}code{font-size:12px}
"""


def kept_weights(m: dict) -> str:
    """Which epoch's weights a run's metrics are of, in words (runs from before ``keep``
    existed kept the best on validation)."""
    if m.get("keep", "best") == "best":
        return f"best epoch on validation ({m.get('best_epoch')})"
    if m.get("best_epoch") is None:  # the validation carve trained too (TrainConfig.keep)
        return f"last epoch ({m.get('epoch')}; no validation split)"
    return f"last epoch ({m.get('epoch')}; best on validation: {m.get('best_epoch')})"


def _table(header: list[str], rows: list[list]) -> str:
    esc = lambda v: html.escape(f"{v:.4f}" if isinstance(v, float) else str(v))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, alt: str) -> str:
    if not path.exists():
        return f'<p class="muted">({html.escape(path.name)} not written)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _settings(title: str, d: dict) -> str:
    return f"<h3>{title}</h3>" + _table(["setting", "value"], [[k, v] for k, v in d.items()])


def write_report(run: str | Path, model: str | Path | None = None) -> Path:
    """Write ``run/report.html`` from the files a training run (or ``audiovit evaluate --out``,
    whose model file is ``model``) leaves; returns its path."""
    run = Path(run)
    m = json.loads((run / "metrics.json").read_text())
    obj = checkpoint.safe_load(model or run / "model.pt")
    meta, labels = obj.get("meta", {}), obj["labels"]
    info = meta.get("data", {})
    examples: dict[tuple[str, str], list[str]] = defaultdict(list)
    if (run / "predictions.csv").exists():
        with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row["label"] != row["predicted"]:
                    examples[(row["label"], row["predicted"])].append(Path(row["path"]).name)
    parts = [
        f"<h1>audiovit {'run' if model is None else 'evaluation'}: "
        f"{html.escape(run.resolve().name)}</h1>",
        f'<p class="muted">{dt.datetime.now():%Y-%m-%d %H:%M} · audiovit {__version__} · '
        + (f"{kept_weights(m)} · " if "keep" in m else f"{html.escape(str(model))} · ")
        + f"scored on the {html.escape(m.get('split', '?'))} split</p>",
        "".join(
            f'<span class="kpi"><b>{m[k]:.3f}</b>{k.replace("_", " ")}</span>'
            for k in ("accuracy", "balanced_accuracy", "macro_f1")
        )
        + f'<span class="kpi"><b>{m["n"]}</b>clips</span>',
        _data_section(info, labels),
        _metrics_section(m, labels, examples),
        "<h2>Plots</h2>",
        _image(run / "curves.png", "training curves"),
        _image(run / "confusion.png", "confusion matrix"),
        _image(run / "per_class_f1.png", "per-class F1"),
        "<h2>Settings</h2>",
        _settings("training", meta.get("train_config", {})),
        _settings("model", obj.get("model_config", {})),
        _settings("features", obj.get("feature_config", {})),
        _start_section(meta.get("start")),
    ]
    head = f"<meta charset=utf-8><title>audiovit report</title><style>{STYLE}</style>"
    page = f"<!doctype html><html lang=en><head>{head}</head><body>{''.join(parts)}</body></html>"
    out = run / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _data_section(info: dict, labels: list[str]) -> str:
    counts = info.get("counts", {})
    rows = [
        [lb] + [counts.get(s, {}).get(lb, 0) for s in ("train", "valid", "test")] for lb in labels
    ]
    skipped = "".join(
        f"<li><code>{html.escape(s)}</code></li>" for s in info.get("skipped", [])[:50]
    )
    return (
        "<h2>Data</h2>"
        + _table(["class", "train", "valid", "test"], rows)
        + "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in info.get("notes", []))
        + f"<p>{info.get('n_skipped', 0)} files skipped</p><ul>{skipped}</ul>"
    )


def _metrics_section(m: dict, labels: list[str], examples: dict) -> str:
    per_class = [
        [lb, *(m["per_class"][lb][k] for k in ("precision", "recall", "f1")),
         m["per_class"][lb]["support"]]
        for lb in labels
    ]  # fmt: skip
    pairs = [[t, p, c, ", ".join(examples[(t, p)][:3])] for t, p, c in most_confused(m, 8)]
    confused = _table(["true", "predicted", "clips", "examples"], pairs) if pairs else ""
    return (
        "<h2>Metrics</h2>"
        + _table(["class", "precision", "recall", "f1", "support"], per_class)
        + "<h2>Most confused pairs</h2>"
        + (confused or "<p>No confusions.</p>")
    )


def _start_section(start: dict | None) -> str:
    """Where the weights began (``--init``), and that model's own start, back to the first."""
    if not start:
        return ""
    lines = []
    while start:
        classes = ", ".join(start.get("labels") or []) or "an image model"
        lines.append(
            f"<li><code>{html.escape(start['path'])}</code> ({start['kind']}; "
            f"{html.escape(classes)}): {start['n_loaded']} tensors loaded, "
            f"{len(start['resampled'])} resampled, {len(start['new'])} new</li>"
        )
        start = start.get("start")
    return "<h2>Start</h2><ul>" + "".join(lines) + "</ul>"
