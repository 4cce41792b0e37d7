"""`python -m flows.ablations`: the paper's block ablation as one command, on DVC's experiment queue.

It queues one experiment per block type (`dvc exp run --queue -S model.block=X`), runs the queue
with N jobs (`dvc exp run --run-all -j N`), and writes one comparison table (Markdown + PNG) from
each experiment's own metrics files, read from its git commit. `dvc exp show` lists them too.

Why DVC's queue and not a Prefect flow: each run is a plain DVC experiment, so the run cache
shares the unchanged download/tokenize stages, `dvc exp show/diff/apply` work on the results, and
nothing else has to be running; the `smdim` Prefect flow can still launch a single experiment.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402

from flows.dvc_runs import experiment_rev, run_dvc, set_args  # noqa: E402
from smdim.errors import SmdimError, run_stage  # noqa: E402
from smdim.io import atomic_path, write_text  # noqa: E402
from smdim.model.config import BLOCK_TYPES  # noqa: E402

log = logging.getLogger("smdim.ablations")

METRICS = ("results/evaluate/metrics.json", "results/train/metrics.json", "results/samples/metrics.json")


def queue_and_run(project: Path, arms: dict[str, dict[str, Any]], prefix: str, overrides: dict[str, Any],
                  jobs: int, target: str) -> dict[str, str]:
    """Queue one experiment per arm (its params on top of `overrides`), run the queue; returns
    arm -> experiment name (<prefix>-<arm>)."""
    names = {}
    for arm, params in arms.items():
        names[arm] = f"{prefix}-{arm}"
        run_dvc(["exp", "run", "--queue", "--name", names[arm], *set_args({**overrides, **params}), target],
                project, log)
    run_dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], project, log)
    return names


def experiment_metrics(project: Path, name: str) -> dict[str, Any]:
    """The metrics files of experiment `name`, from its git commit (missing files -> {})."""
    rev = experiment_rev(project, name)
    out = {}
    for path in (*METRICS, "params.yaml"):
        p = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=project, capture_output=True, text=True)
        out[path] = (yaml.safe_load(p.stdout) if path.endswith(".yaml") else json.loads(p.stdout)) \
            if p.returncode == 0 else {}
    return out


def row(block: str, name: str, m: dict[str, Any]) -> dict[str, Any]:
    """One table row: the OA headline (average OA x usable rate) with its 95% CI, loss, speed."""
    ev, tr, sa = (m[p] for p in METRICS)
    train = m["params.yaml"].get("train", {})
    tok_s = tr.get("tokens_per_s")
    # Training time at the logged throughput (the last log interval's; eval and saves excluded).
    train_s = train["steps"] * train["batch_size"] * train["seq_len"] / tok_s if tok_s and train else None
    ci = ev.get("headline_ci") or {}  # {"lo", "hi"}: bootstrap 95% interval of the headline
    return {
        "block": block, "experiment": name,
        "headline": ev.get("headline"),
        "headline_ci": [ci["lo"], ci["hi"]] if ci else None,
        "usable_rate": ev.get("usable_rate"),
        "val_loss": tr.get("val_loss"), "tokens_per_s": tr.get("tokens_per_s"),
        "train_s": train_s,
        "token_error_rate": sa.get("token_error_rate"),
    }


def markdown(rows: list[dict[str, Any]], overrides: dict[str, Any]) -> str:
    """The comparison table, one line per block."""
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    lines = ["# Block ablation", "",
             "Overrides: " + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none"), "",
             "| block | experiment | OA headline | 95% CI | val loss | tokens/s | train s | token errors |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = "n/a" if not r["headline_ci"] else f"[{r['headline_ci'][0]:.3f}, {r['headline_ci'][1]:.3f}]"
        lines.append(f"| {r['block']} | {r['experiment']} | {fmt(r['headline'], '.3f')} | {ci} | "
                     f"{fmt(r['val_loss'], '.3f')} | {fmt(r['tokens_per_s'], '.0f')} | "
                     f"{fmt(r['train_s'], '.0f')} | {fmt(r['token_error_rate'], '.3f')} |")
    return "\n".join(lines) + "\n"


def ci_error_bars(values: list[float], cis: list[list[float] | None]) -> list[list[float]]:
    """matplotlib yerr ([below], [above]) of each value's [lo, hi] interval (None = no bar)."""
    cis = [c or [v, v] for v, c in zip(values, cis, strict=True)]
    return [[max(v - c[0], 0) for v, c in zip(values, cis, strict=True)],
            [max(c[1] - v, 0) for v, c in zip(values, cis, strict=True)]]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """OA average (with CI bars) and validation loss per block."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = range(len(rows))
    oa = [r["headline"] or 0.0 for r in rows]
    ax1.bar(xs, oa, yerr=ci_error_bars(oa, [r["headline_ci"] for r in rows]), capsize=4, color="tab:blue")
    ax1.set_ylabel("OA headline (95% CI)")
    ax2.bar(xs, [r["val_loss"] or 0.0 for r in rows], color="tab:orange")
    ax2.set_ylabel("validation loss")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs), [r["block"] for r in rows])
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.steps=100'] -> {'train.steps': 100} (values as YAML scalars: JSON numbers, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SmdimError(f"--set {item!r}: expected section.key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def sweep_arguments(ap: argparse.ArgumentParser, out: str, prefix: str) -> None:
    """The options every experiment sweep takes: jobs, overrides, target stage, paths, names."""
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="experiments at once (default: 1; more skews timings on a small machine)")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra params.yaml override for every experiment, e.g. -S train.steps=1000")
    ap.add_argument("--target", default="evaluate", help="last stage each experiment runs (default: evaluate)")
    ap.add_argument("--project-dir", type=Path, default=Path("."))
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--prefix", default=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
                    help="experiment names are <prefix>-<arm>")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.ablations", description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", nargs="+", default=list(BLOCK_TYPES), choices=BLOCK_TYPES)
    sweep_arguments(ap, "results/ablations", "abl")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.set)
    project = args.project_dir.resolve()
    t0 = time.perf_counter()
    arms = {block: {"model.block": block} for block in args.blocks}
    names = queue_and_run(project, arms, args.prefix, overrides, args.jobs, args.target)
    rows = [row(b, n, experiment_metrics(project, n)) for b, n in names.items()]
    out = args.out if args.out.is_absolute() else project / args.out
    write_text(out / "table.md", markdown(rows, overrides))
    write_text(out / "table.json", json.dumps({"overrides": overrides, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "table.png")
    log.info("%d experiments in %.0f s -> %s", len(rows), time.perf_counter() - t0, out / "table.md")
    print(markdown(rows, overrides), file=sys.stdout)


if __name__ == "__main__":
    run_stage(main)
