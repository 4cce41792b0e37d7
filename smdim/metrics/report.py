"""Human-readable outputs of the evaluation: the Markdown table and the two PNG plots."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402

from smdim.io import atomic_path  # noqa: E402


def markdown_report(result: dict, seconds: float | None = None) -> str:
    """The report.md text: OA table (generated vs test, train-vs-test ceiling), counts, OA vs length."""
    oa, ceil = result["oa"], result["oa_ceiling"]
    crop = result.get("crop_tokens")
    lines = [
        "# Evaluation: Overlapping Area (OA)",
        "",
        "OA in [0, 1] between the intra-set distances of the test pieces and the distances from the "
        "evaluated pieces to them (mgeval, Yang & Lerch 2020); higher = closer to the test set. "
        "The ceiling is what real music scores: train pieces evaluated the same way.",
        "",
        f"Generated pieces: {result['n_generated']}; test pieces: {result['n_reference']}; "
        f"train pieces (ceiling): {result['n_ceiling']}; ground truth cropped to "
        f"{f'{crop} tokens' if crop else 'whole pieces'}.",
        "",
        "| attribute | generated vs test | train vs test (ceiling) |",
        "|---|---:|---:|",
    ]
    for name in oa:
        label = f"**{name}**" if name == "average" else name
        lines.append(f"| {label} | {oa[name]:.3f} | {ceil.get(name, float('nan')):.3f} |")
    means = result.get("feature_means")
    if means:
        lines += ["", "Feature means (scalar attributes):", "",
                  "| attribute | generated | test | train |", "|---|---:|---:|---:|"]
        for name in means["test"]:
            row = [means[k].get(name, float("nan")) for k in ("generated", "test", "train")]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if result["oa_vs_length"]:
        lines += ["", "Average OA vs generated length:", "",
                  "| length (tokens) | generated vs test | train vs test (ceiling) |", "|---:|---:|---:|"]
        for length, v in result["oa_vs_length"].items():
            c = result["oa_ceiling_vs_length"].get(length, float("nan"))
            lines.append(f"| {length} | {v:.3f} | {c:.3f} |")
    memo = result.get("memorisation")
    if memo:
        lines += ["", "Melody memorisation vs the train split (top-line interval 4-grams; memorised = the "
                  "closest train song is over 3x closer than the next):", "",
                  "| set | memorised share | mean best containment |", "|---|---:|---:|",
                  f"| generated | {memo['generated']:.3f} | {memo['generated_max_similarity']:.3f} |",
                  f"| test (baseline) | {memo['test']:.3f} | {memo['test_max_similarity']:.3f} |"]
    lines += ["", "Skipped pieces (empty = no notes, single_onset = IOI undefined, unreadable = bad MIDI): "
              + "; ".join(f"{k}: " + ", ".join(f"{r} {n}" for r, n in v.items())
                          for k, v in result["skipped_by_reason"].items()) + "."]
    if seconds is not None:
        lines.append(f"Evaluation time: {seconds:.1f} s.")
    return "\n".join(lines) + "\n"


def length_records(result: dict) -> list[dict]:
    """OA vs length as records for `dvc plots show` (x = length, y = oa / oa_ceiling)."""
    return [
        {"length": int(k), "oa": v, "oa_ceiling": result["oa_ceiling_vs_length"].get(k)}
        for k, v in result["oa_vs_length"].items()
    ]


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_bars(result: dict, path: str | os.PathLike) -> None:
    """Grouped bars per attribute: generated vs test, and the train-vs-test ceiling."""
    names = list(result["oa"])
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4))
    ax.bar([i - 0.2 for i in x], [result["oa"][n] for n in names], 0.4, label="generated vs test")
    ax.bar([i + 0.2 for i in x], [result["oa_ceiling"].get(n, 0.0) for n in names], 0.4,
           label="train vs test (ceiling)", color="lightgray", edgecolor="gray")
    ax.set_xticks(list(x), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("overlapping area")
    ax.set_title(f"OA per attribute ({result['n_generated']} generated, {result['n_reference']} test)")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_vs_length(result: dict, path: str | os.PathLike) -> None:
    """Average OA against generated length (log2 axis), with the ceiling at each length."""
    recs = length_records(result)
    fig, ax = plt.subplots(figsize=(6, 4))
    if recs:
        xs = [r["length"] for r in recs]
        ax.plot(xs, [r["oa"] for r in recs], "o-", label="generated vs test")
        ax.plot(xs, [r["oa_ceiling"] for r in recs], "s--", color="gray", label="train vs test (ceiling)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results/samples/by_length/<L>/ pieces", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("generated length (tokens)")
    ax.set_ylabel("average OA")
    ax.set_title("OA vs length")
    _save(fig, path)
