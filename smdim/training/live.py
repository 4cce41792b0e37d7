"""dvclive logging into results/train/ (metrics.json + plots/metrics/*.tsv), resumable."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dvclive import Live


def open_live(results_dir: str | Path, resume_step: int | None) -> Live:
    """A dvclive logger; when resuming at `resume_step`, drop rows logged after it (a killed run
    may have logged past its last checkpoint) so the curves continue exactly where training does."""
    results_dir = Path(results_dir)
    if resume_step is not None:
        latest = _truncate(results_dir / "plots" / "metrics", resume_step)
        # Rebuilt from the kept tsv rows below; a kill may have left it half-written.
        (results_dir / "metrics.json").unlink(missing_ok=True)
    # dvc.yaml declares the metrics and plots; dvclive must not write its own dvc.yaml or experiment.
    live = Live(str(results_dir), resume=resume_step is not None, report=None,
                save_dvc_exp=False, dvcyaml=None)
    if resume_step is not None:
        live.summary = {**latest, "step": resume_step}
        live.step = resume_step
    return live


def log_metrics(live: Live, step: int, values: dict[str, float]) -> None:
    """Log `values` at training step `step` and rewrite metrics.json."""
    live.step = step
    for name, v in values.items():
        live.log_metric(name, float(v))
    live.make_summary()


def _truncate(metrics_dir: Path, step: int) -> dict[str, float]:
    """Keep tsv rows with step <= `step`; return the last kept value of each metric."""
    latest: dict[str, float] = {}
    if not metrics_dir.is_dir():
        return latest
    for path in sorted(metrics_dir.rglob("*.tsv")):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            fields = reader.fieldnames or []
            rows: list[dict] = []
            for r in reader:
                # Stop at the first row past the checkpoint or cut short by the kill.
                try:
                    s, v = int(r["step"]), r[path.stem]
                    float(v)
                except (TypeError, ValueError, KeyError):
                    break
                if s > step or (rows and s <= int(rows[-1]["step"])):
                    break
                rows.append(r)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fields, delimiter="\t", lineterminator=os.linesep)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        if rows:
            latest[path.stem] = float(rows[-1][path.stem])
    return latest
