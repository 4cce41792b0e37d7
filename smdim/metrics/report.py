"""Human-readable outputs of the evaluation: report.md and the two PNG plots."""

from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402

from smdim.io import atomic_path  # noqa: E402
from smdim.metrics.texture import CHORD_VOICES  # noqa: E402


def _ci(ci: dict | None) -> str:
    return f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else "-"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _oa_table(result: dict) -> list[str]:
    oa, ceil, cis = result["oa"], result["oa_ceiling"], result.get("oa_ci") or {}
    inside = result.get("in_average", {})
    lines = ["| attribute | generated vs test | 95% CI | train vs test (ceiling) | in average |",
             "|---|---:|---:|---:|---|"]
    for name in oa:
        label = f"**{name}**" if name == "average" else name
        flag = "" if name == "average" else ("yes" if inside.get(name, True) else "no (constant in the test set)")
        lines.append(f"| {label} | {oa[name]:.3f} | {_ci(cis.get(name))} | {ceil.get(name, float('nan')):.3f} | {flag} |")
    return lines


def _set_table(m: dict) -> list[str]:
    lines = ["| metric | generated | test | train | gap (generated - test) |", "|---|---:|---:|---:|---:|"]
    for name, gap in m["gap"].items():
        cells = [f"{_num(m[s][name]['mean'])} ± {_num(m[s][name]['sd'])}" for s in ("generated", "test", "train")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_num(gap, '+.3f')} |")
    return lines


def markdown_report(result: dict, seconds: float | None = None) -> str:
    """The report.md text: headline, OA table with intervals and ceiling, muspy, SRS, OA vs length."""
    crop = result.get("crop_tokens")
    lines = [
        "# Evaluation",
        "",
        f"**Headline {result['headline']:.3f}** {_ci(result.get('headline_ci'))} = average OA "
        f"{result['oa']['average']:.3f} x usable rate {result['usable_rate']:.3f} "
        f"({result['n_generated']} of {result['n_files']} generated files readable with >= 2 onsets): "
        "an unusable piece costs as much as a usable one that overlaps nothing.",
        "",
        "## Overlapping Area (OA)",
        "",
        "OA in [0, 1] between the intra-set distances of the test pieces and the distances from the "
        "usable generated pieces to them (mgeval, Yang & Lerch 2020); higher = closer to the test set. "
        "The ceiling is what real music scores: train pieces evaluated the same way. 95% intervals: "
        "bootstrap over the generated pieces (unusable ones included). An attribute constant over the "
        "test pieces is shown but left out of the average (of both rows).",
        "",
        f"Generated files: {result['n_files']}; test pieces: {result['n_reference']}; "
        f"train pieces (ceiling): {result['n_ceiling']}; ground truth cropped to "
        f"{f'{crop} tokens' if crop else 'whole pieces'}.",
        "",
        *_oa_table(result),
    ]
    means = result.get("feature_means")
    if means:
        lines += ["", "Feature means (scalar attributes):", "",
                  "| attribute | generated | test | train |", "|---|---:|---:|---:|"]
        for name in means["test"]:
            row = [means[k].get(name, float("nan")) for k in ("generated", "test", "train")]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if result.get("muspy"):
        lines += ["", "## muspy metrics", "", "Per piece (mean ± sd over the usable pieces; the test and "
                  "train pieces are the OA crops):", "", *_set_table(result["muspy"])]
    if result.get("line"):
        lines += ["", "## Melodic line", "", "The top line (highest pitch per onset): share of notes on the most "
                  "frequent pitch (drones score high), stepwise moves (1-2 semitones) and repeated pitches "
                  "between successive onsets, and second-half notes whose pitch class the first half never "
                  "used (a tune leaving its mode; smdim/metrics/line.py):", "", *_set_table(result["line"])]
    texture = result.get("texture")
    if texture:
        counts = ", ".join(f"{s} {texture[s]['voice_steadiness']['n']}" for s in ("generated", "test", "train"))
        lines += ["", "## Chord textures", "", f"Pieces with on average >= {CHORD_VOICES} notes sounding ({counts}): share "
                  "of eighth-note grid points with the piece's usual number of sounding notes (1.0 = voices that "
                  "hold, as in a chorale) and with at most one (gaps) (smdim/metrics/texture.py):", "",
                  *_set_table(texture)]
    by_collection = result.get("oa_by_collection")
    if by_collection:
        lines += ["", "## Per collection", "",
                  "Sets asked for one collection (sample.per_collection) vs that collection's test pieces; voice "
                  "steadiness and thin share over their chord textures (n = pieces that are chord textures):", "",
                  "| collection | headline | pieces (generated / test) | voice steadiness: generated, test (n) "
                  "| thin share: generated, test |", "|---|---|---:|---|---|"]
        for name, c in by_collection.items():
            steady = [c["texture"][s]["voice_steadiness"] for s in ("generated", "test")]
            thin = [c["texture"][s]["thin_share"] for s in ("generated", "test")]
            lines.append(f"| {name} | {c['headline']:.3f} {_ci(c.get('headline_ci'))} | {c['n_generated']} / "
                         f"{c['n_reference']} | {_num(steady[0]['mean'])}, {_num(steady[1]['mean'])} "
                         f"({steady[0]['n']}, {steady[1]['n']}) | {_num(thin[0]['mean'])}, {_num(thin[1]['mean'])} |")
    srs = result.get("srs")
    if srs:
        lines += ["", "## Structure: Section Recurrence Score", "",
                  "Summed length of recurring lines of >= 4 bars in the bar self-similarity matrix, per bar "
                  "(PhraseVAE); pieces with fewer bars than evaluate.srs_min_bars are left out. Generated: "
                  "the main and by-length sets; test: whole pieces.", "",
                  "| set | SRS | pieces |", "|---|---:|---:|",
                  f"| generated | {_num(srs['generated'])} | {srs['n_generated']} |",
                  f"| test | {_num(srs['test'])} | {srs['n_test']} |"]
    if result["oa_vs_length"]:
        lines += ["", "## Average OA vs generated length", "",
                  "L-token samples vs L-token windows of the test pieces that have at least L tokens.", "",
                  "| length (tokens) | generated vs test | train vs test (ceiling) | test pieces | shorter, left out |",
                  "|---:|---:|---:|---:|---:|"]
        for length, v in result["oa_vs_length"].items():
            c = result["oa_ceiling_vs_length"].get(length)
            lines.append(f"| {length} | {v:.3f} | {_num(c)} | {result['n_reference_vs_length'][length]} "
                         f"| {result['short_left_out_vs_length'][length]} |")
    memo = result.get("memorisation")
    if memo:
        lines += ["", "## Memorisation", "",
                  "Melody memorisation vs the train split (top-line interval 4-grams; memorised = the "
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
        {"length": int(k), "oa": v, "oa_ceiling": result["oa_ceiling_vs_length"].get(k),
         "n_reference": result["n_reference_vs_length"].get(k)}
        for k, v in result["oa_vs_length"].items()
    ]


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_bars(result: dict, path: str | os.PathLike) -> None:
    """Grouped bars per attribute: generated vs test with its 95% interval, and the ceiling;
    attributes left out of the average are hatched."""
    names = list(result["oa"])
    x = np.arange(len(names))
    gen = np.array([result["oa"][n] for n in names])
    cis = result.get("oa_ci") or {}
    err = np.array([[gen[i] - cis[n]["lo"], cis[n]["hi"] - gen[i]] if n in cis else [0.0, 0.0]
                    for i, n in enumerate(names)]).T.clip(0)  # (2, A)
    inside = result.get("in_average", {})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4))
    bars = ax.bar(x - 0.2, gen, 0.4, yerr=err, capsize=3, label="generated vs test (95% CI)")
    for bar, n in zip(bars, names, strict=True):
        if not inside.get(n, True):
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax.bar(x + 0.2, [result["oa_ceiling"].get(n, 0.0) for n in names], 0.4,
           label="train vs test (ceiling)", color="lightgray", edgecolor="gray")
    ax.set_xticks(list(x), [n.replace("_", "\n") + ("\n(not in avg)" if not inside.get(n, True) else "")
                            for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("overlapping area")
    ax.set_title(f"OA per attribute ({result['n_generated']} generated, {result['n_reference']} test); "
                 f"headline {result['headline']:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_vs_length(result: dict, path: str | os.PathLike) -> None:
    """Average OA against generated length (log2 axis), with the ceiling at each length."""
    recs = length_records(result)
    fig, ax = plt.subplots(figsize=(6, 4))
    if recs:
        xs = [r["length"] for r in recs]
        ax.plot(xs, [r["oa"] for r in recs], "o-", label="generated vs test")
        ax.plot(xs, [np.nan if r["oa_ceiling"] is None else r["oa_ceiling"] for r in recs], "s--", color="gray", label="train vs test (ceiling)")
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
