"""`python -m flows.ablations`: the paper's block ablation as one command, on DVC's experiment queue.

It queues one experiment per block type (`dvc exp run --queue -S model.block=X`), runs the queue
with N jobs (`dvc exp run --run-all -j N`), and writes one comparison table (Markdown + PNG) from
each experiment's own metrics files, read from its git commit. `dvc exp show` lists them too.

`--budget-s S` compares blocks at equal wall-clock instead of equal steps: each block's step time
is measured here first (flows.budget) and its `train.steps` set to S / step time. `--seeds K` runs
each block K times (base.seed, base.seed + 1, ...; the split stays that of base.seed through
tokenize.split_seed, so every run is scored on the same test pieces) and adds a per-block summary:
the mean OA headline over seeds with a 95% t-interval, so a difference between blocks can be told
from the spread between seeds.

Why DVC's queue and not a Prefect flow: each run is a plain DVC experiment, so the run cache
shares the unchanged download/tokenize stages, `dvc exp show/diff/apply` work on the results, and
nothing else has to be running; the `smdim` Prefect flow can still launch a single experiment.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from flows.budget import steps_for_budget  # noqa: E402
from flows.dvc_runs import experiment_rev, run_dvc, set_args  # noqa: E402
from smdim.config import build, load_params  # noqa: E402
from smdim.errors import SmdimError, run_stage  # noqa: E402
from smdim.io import atomic_path, write_text  # noqa: E402
from smdim.model.config import BLOCK_TYPES  # noqa: E402
from smdim.tokenization.config import TokenizeConfig  # noqa: E402
from smdim.tokenization.tokenizer import build_tokenizer  # noqa: E402

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
    seed = m["params.yaml"].get("base", {}).get("seed")
    tok_s = tr.get("tokens_per_s")
    # Training time at the logged throughput (the last log interval's; eval and saves excluded).
    train_s = train["steps"] * train["batch_size"] * train["seq_len"] / tok_s if tok_s and train else None
    ci = ev.get("headline_ci") or {}  # {"lo", "hi"}: bootstrap 95% interval of the headline
    return {
        "block": block, "experiment": name, "seed": seed, "steps": train.get("steps"),
        "headline": ev.get("headline"),
        "headline_ci": [ci["lo"], ci["hi"]] if ci else None,
        "usable_rate": ev.get("usable_rate"),
        "val_loss": tr.get("val_loss"), "tokens_per_s": tr.get("tokens_per_s"),
        "train_s": train_s,
        "token_error_rate": sa.get("token_error_rate"),
    }


def by_block(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per block over its seeds: mean OA headline with a 95% t-interval (n - 1 degrees
    of freedom; None for a single seed), the seeds' range, and mean loss, time and token errors."""
    out = []
    for block in dict.fromkeys(r["block"] for r in rows):
        mine = [r for r in rows if r["block"] == block and r["headline"] is not None]
        heads = [r["headline"] for r in mine]
        if not heads:
            continue
        mean = statistics.fmean(heads)
        half = (float(stats.t.ppf(0.975, len(heads) - 1)) * statistics.stdev(heads) / len(heads) ** 0.5
                if len(heads) > 1 else None)

        def avg(key: str, rs=mine) -> float | None:
            vals = [r[key] for r in rs if r[key] is not None]
            return statistics.fmean(vals) if vals else None

        out.append({
            "block": block, "seeds": len(heads), "headline_mean": mean,
            "headline_ci": [mean - half, mean + half] if half is not None else None,
            "headline_range": [min(heads), max(heads)],
            "steps_mean": avg("steps"), "val_loss_mean": avg("val_loss"), "train_s_mean": avg("train_s"),
            "token_error_rate_mean": avg("token_error_rate"),
        })
    return out


def markdown(rows: list[dict[str, Any]], overrides: dict[str, Any], budget_s: float | None = None,
             summary: list[dict[str, Any]] | None = None) -> str:
    """The comparison table, one line per experiment, and the per-block summary over seeds."""
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    def span(c: list[float] | None) -> str:
        return "n/a" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"

    lines = ["# Block ablation", "",
             ("Equal wall-clock: " + f"{budget_s:.0f} s of training per experiment on this machine "
              "(train.steps from each block's measured step time). " if budget_s else "")
             + "Overrides: " + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none"), ""]
    if summary and any(s["seeds"] > 1 for s in summary):
        lines += ["| block | seeds | mean OA headline | 95% CI over seeds | seed range | mean steps | "
                  "mean val loss | mean train s | mean token errors |",
                  "|---|---:|---:|---|---|---:|---:|---:|---:|"]
        lines += [f"| {s['block']} | {s['seeds']} | {s['headline_mean']:.3f} | {span(s['headline_ci'])} | "
                  f"{span(s['headline_range'])} | {fmt(s['steps_mean'], '.0f')} | {fmt(s['val_loss_mean'], '.3f')} | "
                  f"{fmt(s['train_s_mean'], '.0f')} | {fmt(s['token_error_rate_mean'], '.4f')} |" for s in summary]
        lines += ["", "Each experiment (its CI is the bootstrap over its pieces):", ""]
    lines += ["| block | experiment | seed | steps | OA headline | 95% CI | val loss | tokens/s | train s | token errors |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['block']} | {r['experiment']} | {fmt(r.get('seed'), 'd')} | {fmt(r.get('steps'), 'd')} | "
                     f"{fmt(r['headline'], '.3f')} | {span(r['headline_ci'])} | "
                     f"{fmt(r['val_loss'], '.3f')} | {fmt(r['tokens_per_s'], '.0f')} | "
                     f"{fmt(r['train_s'], '.0f')} | {fmt(r['token_error_rate'], '.3f')} |")
    return "\n".join(lines) + "\n"


def ci_error_bars(values: list[float], cis: list[list[float] | None]) -> list[list[float]]:
    """matplotlib yerr ([below], [above]) of each value's [lo, hi] interval (None = no bar)."""
    cis = [c or [v, v] for v, c in zip(values, cis, strict=True)]
    return [[max(v - c[0], 0) for v, c in zip(values, cis, strict=True)],
            [max(c[1] - v, 0) for v, c in zip(values, cis, strict=True)]]


def plot(rows: list[dict[str, Any]], path: Path, summary: list[dict[str, Any]] | None = None) -> None:
    """OA headline and validation loss per block: one bar per experiment, or with several seeds one
    bar per block (the mean, 95% t-interval over seeds) with each seed as a dot."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if summary and any(s["seeds"] > 1 for s in summary):
        labels = [s["block"] for s in summary]
        xs = range(len(summary))
        oa = [s["headline_mean"] for s in summary]
        ax1.bar(xs, oa, yerr=ci_error_bars(oa, [s["headline_ci"] for s in summary]), capsize=4,
                color="tab:blue", alpha=0.7)
        for x, s in zip(xs, summary, strict=True):
            seeds = [r["headline"] for r in rows if r["block"] == s["block"] and r["headline"] is not None]
            ax1.plot([x] * len(seeds), seeds, "k.", ms=6)
        ax1.set_ylabel("OA headline (mean, 95% CI over seeds)")
        ax2.bar(xs, [s["val_loss_mean"] or 0.0 for s in summary], color="tab:orange")
        ax2.set_ylabel("validation loss (mean over seeds)")
    else:
        labels = [r["block"] for r in rows]
        xs = range(len(rows))
        oa = [r["headline"] or 0.0 for r in rows]
        ax1.bar(xs, oa, yerr=ci_error_bars(oa, [r["headline_ci"] for r in rows]), capsize=4, color="tab:blue")
        ax1.set_ylabel("OA headline (95% CI)")
        ax2.bar(xs, [r["val_loss"] or 0.0 for r in rows], color="tab:orange")
        ax2.set_ylabel("validation loss")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs), labels)
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


def plan(project: Path, blocks: list[str], seeds: int, budget_s: float | None,
         overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Arm name -> its params: model.block, base.seed (with several seeds) and train.steps (with a
    wall-clock budget, measured once per block)."""
    params = load_params(project / "params.yaml")
    base_seed = int((params.get("base") or {}).get("seed", 0))
    tokenize = build(TokenizeConfig, params.get("tokenize"), "tokenize")
    # The split follows base.seed unless pinned: pin it, so the seeds differ in training and
    # sampling only and every run is scored on the same test pieces.
    pin = {"tokenize.split_seed": tokenize.split_seed_for(base_seed)}
    vocab = len(build_tokenizer(tokenize)) if budget_s else 0
    arms = {}
    for block in blocks:
        arm: dict[str, Any] = {"model.block": block}
        if budget_s:
            arm["train.steps"] = steps_for_budget(params, {**overrides, **arm}, budget_s, vocab, log, block)
        if seeds == 1:
            arms[block] = arm
        else:
            arms.update({f"{block}-s{i}": {**arm, "base.seed": base_seed + i, **pin} for i in range(seeds)})
    return arms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.ablations", description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", nargs="+", default=list(BLOCK_TYPES), choices=BLOCK_TYPES)
    ap.add_argument("--budget-s", type=float, default=None,
                    help="equal wall-clock: train every block for about this many seconds (default: equal steps)")
    ap.add_argument("--seeds", type=int, default=1, help="runs per block, base.seed + 0..K-1 (default: %(default)s)")
    sweep_arguments(ap, "results/ablations", "abl")
    args = ap.parse_args(argv)
    if args.seeds < 1 or (args.budget_s is not None and args.budget_s <= 0):
        raise SmdimError(f"--seeds must be >= 1 and --budget-s > 0 (got {args.seeds}, {args.budget_s})")
    overrides = parse_overrides(args.set)
    project = args.project_dir.resolve()
    t0 = time.perf_counter()
    arms = plan(project, args.blocks, args.seeds, args.budget_s, overrides)
    names = queue_and_run(project, arms, args.prefix, overrides, args.jobs, args.target)
    rows = [row(arms[a]["model.block"], n, experiment_metrics(project, n)) for a, n in names.items()]
    summary = by_block(rows)
    out = args.out if args.out.is_absolute() else project / args.out
    table = markdown(rows, overrides, args.budget_s, summary)
    write_text(out / "table.md", table)
    write_text(out / "table.json", json.dumps({"overrides": overrides, "budget_s": args.budget_s, "seeds": args.seeds,
                                               "arms": arms, "by_block": summary, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "table.png", summary)
    log.info("%d experiments in %.0f s -> %s", len(rows), time.perf_counter() - t0, out / "table.md")
    print(table, file=sys.stdout)


if __name__ == "__main__":
    run_stage(main)
