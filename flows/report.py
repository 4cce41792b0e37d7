"""Markdown for the flow's Prefect artifacts: stage outcomes, metrics tables, data stats, plot links."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (title, file, stage that writes it), in pipeline order; paths follow /tmp/contracts.md.
SUMMARIES = (
    ("Data (token manifest)", "data/tokens/manifest.json", "tokenize"),
    ("Tokenization", "results/tokenize/metrics.json", "tokenize"),
    ("Training", "results/train/metrics.json", "train"),
    ("Sampling", "results/samples/metrics.json", "sample"),
)
EVALUATION = "results/evaluate/metrics.json"
PAGE = "results/report/index.html"  # the report stage's listening page (summary.json beside it)
PLOT_GLOBS = ("results/*/plots/**/*.png", "results/*/plots/**/*.svg", "results/samples/contact_sheet.png")
MAX_PLOTS = 30
MAX_ROWS = 40  # a manifest may list every piece: keep the table readable


def _fmt(v: Any) -> str:
    """One table cell: floats to 4 significant digits (big ones whole), pipes escaped."""
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 1e4 and v == v and abs(v) != float("inf") else f"{v:.4g}"
    else:
        text = str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": scalar}; lists are summarised by their length."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, list):
            out[f"{key} (items)"] = len(v)
        else:
            out[key] = v
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(project: Path, rel: str) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, why it is unavailable)."""
    path = project / rel
    if not path.is_file():
        return None, "missing"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"


def evaluation_markdown(metrics: Mapping[str, Any]) -> str:
    """OA per attribute (with the train-vs-test ceiling beside it), OA vs length, then anything else."""
    parts = []
    oa, ceiling = metrics.get("oa"), metrics.get("oa_ceiling")
    if isinstance(oa, Mapping):
        ceil = ceiling if isinstance(ceiling, Mapping) else {}
        rows = [(k, v, ceil.get(k, "")) for k, v in oa.items() if k != "average"]
        if "average" in oa:
            rows.append(("**average**", oa["average"], ceil.get("average", "")))
        parts.append(table(["attribute", "OA (generated vs test)", "ceiling (train vs test)"], rows))
    by_len = metrics.get("oa_vs_length")
    if isinstance(by_len, Mapping) and by_len:
        rows = sorted(by_len.items(), key=lambda kv: float(kv[0]) if str(kv[0]).isdigit() else 0.0)
        parts.append("OA vs generated length (tokens):\n\n" + table(["length", "average OA"], rows))
    rest = {k: v for k, v in metrics.items() if k not in ("oa", "oa_ceiling", "oa_vs_length")}
    if rest:
        parts.append(table(["metric", "value"], list(flatten(rest).items())))
    return "\n\n".join(parts) if parts else "(empty metrics file)"


def find_plots(project: Path) -> list[Path]:
    """Plot files the stages wrote (evaluation charts, training curves, the samples' contact sheet)."""
    found: set[Path] = set()
    for pattern in PLOT_GLOBS:
        # results/report/ holds copies of these plots; its page is linked on its own.
        found.update(p for p in project.glob(pattern)
                     if p.is_file() and p.relative_to(project).parts[:2] != ("results", "report"))
    return sorted(found)[:MAX_PLOTS]


def workspace_report(project: Path, stage_results: Sequence[Mapping[str, Any]]) -> tuple[str, list[str], list[Path]]:
    """(Markdown report, missing-file notes, plot paths) for a run that reproduced the workspace."""
    md = ["# smdim pipeline run", "", f"Project: `{project}`", "", "## Stages", ""]
    md.append(table(["stage", "outcome", "waited for DVC lock"],
                    [(r["stage"], r["status"], r.get("lock_waits", 0)) for r in stage_results]))
    missing: list[str] = []
    md += ["", "## Evaluation", ""]
    metrics, why = _load(project, EVALUATION)
    if metrics is None:
        missing.append(f"{EVALUATION}: {why} (the evaluate stage has not produced it)")
        md.append(f"`{EVALUATION}` {why}: the evaluate stage has not produced it.")
    else:
        md.append(evaluation_markdown(metrics))
    for title, rel, stage in SUMMARIES:
        md += ["", f"## {title}", ""]
        data, why = _load(project, rel)
        if data is None:
            missing.append(f"{rel}: {why} (written by the {stage} stage)")
            md.append(f"`{rel}` {why} (written by the {stage} stage).")
            continue
        rows = list(flatten(data).items()) if isinstance(data, Mapping) else [("value", data)]
        md.append(table(["statistic", "value"], rows[:MAX_ROWS]))
        if len(rows) > MAX_ROWS:
            md.append(f"\n({len(rows) - MAX_ROWS} more in `{rel}`)")
    md += ["", "## Listening report", ""]
    page = project / PAGE
    if page.is_file():
        summary, _ = _load(project, str(Path(PAGE).with_name("summary.json")))
        md.append(f"[{PAGE}]({page.resolve().as_uri()}): metrics, plots and every piece with audio.")
        if isinstance(summary, Mapping):
            pieces = summary.get("pieces") or {}
            md.append(f"\n{pieces.get('generated', '?')} generated and {pieces.get('test', '?')} test pieces, "
                      f"audio by {summary.get('renderer', '?')}, {summary.get('bytes', 0) / 1e6:.1f} MB.")
    else:
        missing.append(f"{PAGE}: missing (written by the report stage)")
        md.append(f"`{PAGE}` missing (written by the report stage).")
    plots = find_plots(project)
    md += ["", "## Plots", ""]
    md += [f"- [{p.relative_to(project)}]({p.resolve().as_uri()})" for p in plots] or ["(none yet)"]
    return "\n".join(md) + "\n", missing, plots


def split_changed(metrics_diff: Mapping[str, Any]) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """`dvc metrics diff --all --json` entries as ("path: key", entry), split into changed and unchanged."""
    changed, unchanged = [], []
    for path, per_key in metrics_diff.items():
        for key, d in per_key.items():
            same = "old" in d and "new" in d and d["old"] == d["new"]
            (unchanged if same else changed).append((f"{path}: {key}", d))
    return changed, unchanged


def experiment_report(project: Path, name: str, overrides: Mapping[str, Any],
                      metrics_diff: Mapping[str, Any], stages: Mapping[str, str]) -> str:
    """Markdown for a `dvc exp run --temp` run: overrides, stage outcomes, metrics vs HEAD."""
    md = [f"# smdim experiment `{name}`", "", f"Project: `{project}` (workspace left untouched)", "",
          "## Parameter overrides", "", table(["parameter", "value"], list(overrides.items())), "",
          "## Stages", "", table(["stage", "outcome"], list(stages.items())), "",
          "## Metrics vs HEAD", ""]
    changed, unchanged = split_changed(metrics_diff)
    rows = [(metric, d.get("old", ""), d.get("new", ""), d.get("diff", "")) for metric, d in changed]
    if rows:
        md.append(table(["metric", "HEAD", name, "change"], rows))
    else:
        md.append("(no metric changed)" if unchanged else "(no metrics declared in dvc.yaml)")
    if unchanged:
        md += ["", f"{len(unchanged)} unchanged metrics not shown (`dvc metrics diff --all HEAD {name}`)."]
    md += ["", f"Bring its outputs (plots, samples) into the workspace with `dvc exp apply {name}`; "
           "compare with `dvc exp show` and `dvc metrics diff`."]
    return "\n".join(md) + "\n"
