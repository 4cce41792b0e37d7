"""The experiments table: `dvc exp show --json` (DVC's machine-readable output) as rows to compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smdim.report.tables import flatten

TIMEOUT_S = 120.0


@dataclass
class Experiments:
    """Rows (one per commit / experiment) with the params that vary and the headline metrics."""

    params: list[str]  # params.yaml keys whose values differ between rows
    metrics: list[str]  # headline metric keys present in at least one row
    rows: list[dict[str, Any]]  # {"name", "rev", "kind", "params": {k: v}, "metrics": {k: v}}
    note: str = ""  # why the table is empty, when it is


def exp_show(project: str | os.PathLike) -> list[dict] | str:
    """`dvc exp show --json` parsed, or one line saying why it is unavailable (no git, no dvc...)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        p = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`dvc exp show --json` did not run ({type(e).__name__})"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"`dvc exp show --json` exited {p.returncode}: {last}"
    try:
        doc = json.loads(p.stdout or "[]")
    except json.JSONDecodeError:
        return "`dvc exp show --json` printed something that is not JSON"
    return doc if isinstance(doc, list) else "`dvc exp show --json`: unexpected JSON (not a list)"


def _row(entry: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    data = entry.get("data") or {}
    if not isinstance(data, Mapping):
        return None
    params: dict[str, Any] = {}
    for file, p in (data.get("params") or {}).items():
        prefix = "" if file == "params.yaml" else f"{file}:"
        params.update({f"{prefix}{k}": v for k, v in flatten((p or {}).get("data") or {}).items()})
    metrics: dict[str, Any] = {}
    for file, m in (data.get("metrics") or {}).items():
        for k, v in flatten((m or {}).get("data") or {}).items():
            metrics.setdefault(k, v)  # same key in two files: the first file's (in dvc.yaml order)
            metrics[f"{file}:{k}"] = v
    rev = str(entry.get("rev") or "")
    name = entry.get("name") or (rev[:7] if rev != "workspace" else "workspace")
    return {"name": name, "rev": rev, "kind": kind, "params": params, "metrics": metrics}


def experiment_rows(doc: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten exp show's nesting: workspace, each commit, then the experiments based on it."""
    rows = []
    for entry in doc:
        if not isinstance(entry, Mapping):
            continue
        rev = entry.get("rev")
        row = _row(entry, "workspace" if rev == "workspace" else "commit")
        if row:
            rows.append(row)
        for exp in entry.get("experiments") or []:
            for r in (exp or {}).get("revs") or []:
                row = _row(r, "experiment")
                if row:
                    rows.append(row)
    return rows


def experiments_table(doc: Sequence[Mapping[str, Any]] | str, headline: Sequence[str]) -> Experiments:
    """The table of `doc` (exp show's JSON, or the reason it is missing): varying params, headline metrics."""
    if isinstance(doc, str):
        return Experiments([], [], [], note=doc)
    rows = experiment_rows(doc)
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    varying = [k for k in keys if len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]
    metrics = [m for m in headline if any(m in r["metrics"] for r in rows)]
    note = "" if len(rows) > 1 else "no experiments yet: `dvc exp run -S section.key=value` adds one"
    return Experiments(varying, metrics, rows, note)
