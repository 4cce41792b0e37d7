"""The page itself: index.html from plain data (tables, plots, pieces); no script, no network."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from smdim.report.experiments import Experiments
from smdim.report.pieces import PageItem
from smdim.report.tables import Cell, Table, fmt

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;
  padding:0 24px 48px;color:#1d2430;background:#fbfbfd}
h1{margin:24px 0 4px}h2{margin:36px 0 8px;border-bottom:2px solid #dde3ee;padding-bottom:4px}
h3{margin:20px 0 6px}.lead{color:#556;margin:0 0 8px}.note{background:#fff6db;border:1px solid #f0d78c;
  padding:6px 10px;border-radius:6px;margin:6px 0}
table{border-collapse:collapse;margin:8px 0 16px;background:#fff}th,td{border:1px solid #dde3ee;
  padding:3px 9px;text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef2f8}.ci{color:#667;font-size:12px;white-space:nowrap}
.tables{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
.scroll{overflow-x:auto;max-width:100%}
.plots img{max-width:min(100%,640px);border:1px solid #dde3ee;background:#fff;margin:4px 8px 8px 0}
.compare{display:grid;grid-template-columns:2fr 1fr;gap:24px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
.compare .test .cards{grid-template-columns:1fr}
.card{background:#fff;border:1px solid #dde3ee;border-radius:8px;padding:10px}
.card.test{border-color:#9cc59a}.card h4{margin:0 0 6px;font-size:14px}
.card img{width:100%;height:auto;display:block}.card audio{width:100%;margin:6px 0 2px}
.meta{color:#556;font-size:13px}
@media (max-width:900px){.compare{grid-template-columns:1fr}}
"""


def _href(rel: str) -> str:
    return escape(quote(rel))


def _cell(c: Cell | None) -> str:
    if c is None:
        return "<td></td>"
    num = isinstance(c.value, (int, float)) and not isinstance(c.value, bool)
    ci = ""
    if c.low is not None or c.high is not None:
        ci = f' <span class="ci">[{escape(fmt(c.low))}, {escape(fmt(c.high))}]</span>'
    return f'<td class="{"n" if num else ""}">{escape(fmt(c.value))}{ci}</td>'


def metric_table(t: Table) -> str:
    """One metrics table, CIs in brackets after their values."""
    head = "".join(f"<th>{escape(c)}</th>" for c in ["", *t.columns])
    body = "".join(f"<tr><th>{escape(r)}</th>{''.join(_cell(c) for c in cells)}</tr>" for r, cells in t.rows)
    return f"<div><h3>{escape(t.title)}</h3><table><tr>{head}</tr>{body}</table></div>"


def param_text(v: Any) -> str:
    """A parameter value as params.yaml would spell it (lists and null in JSON/YAML style)."""
    return v if isinstance(v, str) else json.dumps(v)


def simple_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain table of values (numbers right-aligned)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(Cell(v)) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def card(item: PageItem, test: bool = False) -> str:
    """A piece: title, piano roll, audio player, MIDI link, token and bar counts."""
    meta = [f"{item.n_tokens} tokens" if item.n_tokens is not None else "",
            f"{item.n_bars} bars" if item.n_bars is not None else "",
            f"{item.seconds:.1f} s"]
    meta += [f"{k.replace('_', ' ')} {fmt(v)}" for k, v in item.extra.items() if k != "source"]
    return (
        f'<div class="card{" test" if test else ""}"><h4>{escape(item.title)}</h4>'
        f'<img src="{_href(item.png)}" alt="piano roll of {escape(item.title)}" width="1200" height="400">'
        f'<audio controls preload="metadata" src="{_href(item.audio)}"></audio>'
        f'<div class="meta">{escape(" · ".join(m for m in meta if m))} · '
        f'<a href="{_href(item.midi)}" download>MIDI</a></div></div>'
    )


def experiments_html(exps: Experiments) -> str:
    """The experiments table: name, kind, the params that vary, the headline metrics."""
    if not exps.rows:
        return f'<p class="note">{escape(exps.note)}</p>'
    headers = ["experiment", "kind", *exps.params, *exps.metrics]
    rows = [[r["name"], r["kind"], *(param_text(r["params"].get(p, "")) for p in exps.params),
             *(r["metrics"].get(m, "") for m in exps.metrics)] for r in exps.rows]
    note = f'<p class="note">{escape(exps.note)}</p>' if exps.note else ""
    return (note + f'<div class="scroll">{simple_table(headers, rows)}</div>'
            + '<p class="lead">Params that vary between the rows and the headline metrics, from '
              "<code>dvc exp show --json</code> when this stage ran; <code>dvc repro -f report</code> "
              "refreshes it.</p>")


def page(*, run: Mapping[str, Any], tables: Sequence[Table], plots: Sequence[tuple[str, str]],
         generated: Sequence[PageItem], test: Sequence[PageItem],
         by_length: Mapping[str, Sequence[PageItem]], experiments: Experiments | None,
         notes: Sequence[str]) -> str:
    """The whole index.html. `run` holds step, changed params, counts, timings, renderer."""
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
        f"<title>smdim run report</title><style>{CSS}</style></head><body>",
        "<h1>smdim run report</h1>",
        f'<p class="lead">Checkpoint step {escape(str(run.get("step", "?")))} · '
        f'{len(generated)} generated pieces · {len(test)} test pieces · audio: '
        f'{escape(run["renderer_text"])}</p>',
    ]
    parts += [f'<p class="note">{escape(n)}</p>' for n in notes]

    parts.append("<h2>The run</h2><div class=\"tables\">")
    changed = run.get("changed_params") or []
    parts.append("<div><h3>Params that differ from the defaults</h3>"
                 + (simple_table(["param", "value", "default"],
                                  [(k, param_text(v), param_text(d)) for k, v, d in changed]) if changed
                    else "<p>none: every parameter has its default value</p>") + "</div>")
    if run.get("counts"):
        parts.append("<div><h3>Data</h3>" + simple_table(["", "count"], run["counts"]) + "</div>")
    if run.get("timings"):
        parts.append("<div><h3>Timings</h3>" + simple_table(["stage", "metric", "value"], run["timings"]) + "</div>")
    parts.append("</div>")

    parts.append("<h2>Metrics</h2>")
    parts.append("<div class=\"tables\">" + "".join(metric_table(t) for t in tables) + "</div>"
                 if tables else '<p class="note">no evaluation metrics (results/evaluate/metrics.json)</p>')

    if plots:
        parts.append("<h2>Plots</h2><div class=\"plots\">")
        parts += [f'<img src="{_href(rel)}" alt="{escape(alt)}" title="{escape(alt)}">' for rel, alt in plots]
        parts.append("</div>")

    parts.append("<h2>Pieces</h2><p class=\"lead\">Generated pieces on the left; test-set pieces "
                 "(real music, cut to the same length) on the right, rendered the same way.</p>")
    parts.append("<div class=\"compare\"><section><h3>Generated</h3><div class=\"cards\">"
                 + "".join(card(i) for i in generated) + "</div></section>"
                 + "<section class=\"test\"><h3>Test set</h3><div class=\"cards\">"
                 + ("".join(card(i, test=True) for i in test) or "<p>none (report.test_pieces: 0)</p>")
                 + "</div></section></div>")
    if by_length:
        parts.append("<h3>OA-vs-length sets</h3>")
        for length, items in by_length.items():
            parts.append(f"<details><summary>{escape(str(length))} tokens: {len(items)} pieces</summary>"
                         f"<div class=\"cards\">{''.join(card(i) for i in items)}</div></details>")

    if experiments is not None:
        parts.append("<h2>Experiments</h2>" + experiments_html(experiments))
    parts.append(f'<p class="lead">Written by <code>dvc repro report</code> in {run.get("seconds", 0):.1f} s.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
