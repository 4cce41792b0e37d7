"""`python -m flows.objectives`: diffusion vs autoregressive, plain REMI vs BPE, at equal training time.

Arms: diffusion `mfa` (the SMDIM default), autoregressive `mamba` (the related work's model) and
autoregressive `transformer`, each on plain REMI and, with --bpe N, on BPE tokens. Every arm gets
the same wall-clock training budget: its seconds per step are measured first on this machine
(smdim.training.speed, random tokens), and `train.steps` = budget / step time. The steps then go
into the experiment's params, so each run stays reproducible by DVC; the table reports the time
training really took. Runs go on DVC's experiment queue (flows.ablations) and the table (Markdown,
JSON, PNG) compares validation bits per note, OA, token errors and the cost of generating 16
and 64 bars.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402

from flows.ablations import (  # noqa: E402
    ci_error_bars,
    experiment_metrics,
    parse_overrides,
    queue_and_run,
    sweep_arguments,
)
from flows.budget import steps_for_budget  # noqa: E402
from smdim.config import build, load_params  # noqa: E402
from smdim.errors import SmdimError, run_stage  # noqa: E402
from smdim.io import atomic_path, write_text  # noqa: E402
from smdim.tokenization.config import TokenizeConfig  # noqa: E402
from smdim.tokenization.tokenizer import build_tokenizer  # noqa: E402

log = logging.getLogger("smdim.objectives")

ARMS: dict[str, dict[str, Any]] = {
    "diffusion-mfa": {"model.objective": "diffusion", "model.block": "mfa"},
    # Stride 1: a causal strided conv would hide the tokens since the last coarse step from the blocks.
    "ar-mamba": {"model.objective": "autoregressive", "model.block": "mamba", "model.stride": 1},
    "ar-transformer": {"model.objective": "autoregressive", "model.block": "transformer", "model.stride": 1},
}


def plan(params: dict, arms: dict[str, dict[str, Any]], bpe: int | None, budget_s: float,
         vocab_size: int) -> dict[str, dict[str, Any]]:
    """Each arm (and its BPE twin) with train.steps for `budget_s` seconds of training here."""
    out = {}
    for name, arm in arms.items():
        for bpe_vocab in [None] + ([bpe] if bpe else []):
            label = name + (f"-bpe{bpe_vocab}" if bpe_vocab else "")
            steps = steps_for_budget(params, arm, budget_s, bpe_vocab or vocab_size, log, label)
            out[label] = {**arm, **({"tokenize.bpe_vocab": bpe_vocab} if bpe_vocab else {}), "train.steps": steps}
    return out


def row(arm: str, name: str, m: dict[str, Any]) -> dict[str, Any]:
    """One table row from an experiment's metrics files."""
    ev = m["results/evaluate/metrics.json"]
    tr = m["results/train/metrics.json"]
    sa = m["results/samples/metrics.json"]
    train = m["params.yaml"].get("train", {})
    tok_s = tr.get("tokens_per_s")
    ci = (ev.get("oa_ci") or {}).get("average") or {}
    cost = {k: sa[k] for k in sa if k.startswith("generate_")}
    return {
        "arm": arm, "experiment": name, "steps": train.get("steps"),
        "train_s": train["steps"] * train["batch_size"] * train["seq_len"] / tok_s if tok_s and train else None,
        "val_bits_per_note": tr.get("val_bits_per_note"),
        "oa_average": (ev.get("oa") or {}).get("average"), "oa_ci": [ci["lo"], ci["hi"]] if ci else None,
        "headline": ev.get("headline"), "usable_rate": ev.get("usable_rate"),
        "token_error_rate": sa.get("token_error_rate"),
        "generate": {k.removeprefix("generate_"): {"seconds": v.get("seconds"), "peak_mb": v.get("peak_mb"),
                                                   "tokens": v.get("tokens")} for k, v in cost.items()},
    }


def _spans(rows: list[dict[str, Any]]) -> list[str]:
    """The generation-cost columns ("16_bars", "64_bars", ...) in order of length."""
    return sorted({k for r in rows for k in r["generate"]}, key=lambda k: int(k.split("_")[0]))


def markdown(rows: list[dict[str, Any]], budget_s: float, overrides: dict[str, Any]) -> str:
    """The comparison table."""
    def f(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    spans = _spans(rows)
    head = "| arm | steps | train s | val bits/note | OA average | 95% CI | token errors | usable |"
    sep = "|---|---:|---:|---:|---:|---|---:|---:|"
    for k in spans:
        head += f" {k.replace('_', ' ')}: s | MB |"
        sep += "---:|---:|"
    lines = ["# Diffusion vs autoregressive at equal training time", "",
             f"Training budget per arm: {budget_s:.0f} s on this machine. Overrides: "
             + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none") + ".",
             "Bits per note: autoregressive = exact NLL, diffusion = ELBO (an upper bound). "
             "Generation: one piece, batch 1, CPU; MB = peak memory above the loaded model.", "",
             head, sep]
    for r in rows:
        ci = "n/a" if not r["oa_ci"] else f"[{r['oa_ci'][0]:.3f}, {r['oa_ci'][1]:.3f}]"
        line = (f"| {r['arm']} | {f(r['steps'], 'd')} | {f(r['train_s'], '.0f')} | "
                f"{f(r['val_bits_per_note'], '.2f')} | {f(r['oa_average'], '.3f')} | {ci} | "
                f"{f(r['token_error_rate'], '.2%')} | {f(r['usable_rate'], '.1%')} |")
        for k in spans:
            g = r["generate"].get(k, {})
            line += f" {f(g.get('seconds'), '.2f')} | {f(g.get('peak_mb'), '.0f')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """OA average with CI, bits per note, and seconds to generate per arm."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    xs = list(range(len(rows)))
    oa = [r["oa_average"] or 0.0 for r in rows]
    axes[0].bar(xs, oa, yerr=ci_error_bars(oa, [r["oa_ci"] for r in rows]), capsize=4, color="tab:blue")
    axes[0].set_ylabel("OA average (95% CI)")
    axes[1].bar(xs, [r["val_bits_per_note"] or 0.0 for r in rows], color="tab:orange")
    axes[1].set_ylabel("validation bits per note")
    spans = _spans(rows)
    width = 0.8 / max(len(spans), 1)
    for j, k in enumerate(spans):
        axes[2].bar([x + j * width for x in xs], [r["generate"].get(k, {}).get("seconds") or 0.0 for r in rows],
                    width, label=k.replace("_", " "))
    axes[2].set_ylabel("seconds to generate (batch 1)")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(xs, [r["arm"] for r in rows], rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.objectives", description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=120.0, help="training seconds per arm (default: %(default)s)")
    ap.add_argument("--bpe", type=int, default=None, metavar="N", help="also run every arm with tokenize.bpe_vocab=N")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    sweep_arguments(ap, "results/objectives", "obj")
    args = ap.parse_args(argv)
    if args.budget_s <= 0 or (args.bpe is not None and args.bpe < 1):
        raise SmdimError(f"--budget-s must be > 0 and --bpe >= 1 (got {args.budget_s}, {args.bpe})")
    overrides = parse_overrides(args.set)
    project = args.project_dir.resolve()
    params = load_params(project / "params.yaml")
    vocab = len(build_tokenizer(build(TokenizeConfig, params.get("tokenize"), "tokenize")))
    arms = plan(params, {a: ARMS[a] for a in args.arms}, args.bpe, args.budget_s, vocab)
    t0 = time.perf_counter()
    names = queue_and_run(project, arms, args.prefix, overrides, args.jobs, args.target)
    rows = [row(a, n, experiment_metrics(project, n)) for a, n in names.items()]
    out = args.out if args.out.is_absolute() else project / args.out
    write_text(out / "table.md", markdown(rows, args.budget_s, overrides))
    write_text(out / "table.json", json.dumps({"budget_s": args.budget_s, "overrides": overrides,
                                               "arms": arms, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "table.png")
    log.info("%d experiments in %.0f s -> %s", len(rows), time.perf_counter() - t0, out / "table.md")
    print(markdown(rows, args.budget_s, overrides), file=sys.stdout)


if __name__ == "__main__":
    run_stage(main)
