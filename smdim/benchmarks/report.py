"""Turn benchmark results into metrics.json, Markdown tables and log-log plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from smdim.io import atomic_path, write_json, write_text

QUANTITIES = [  # (key in a cell, table title, format)
    ("step_s", "Training step time (s; fwd + bwd + AdamW)", "{:.3f}"),
    ("peak_mb", "Peak memory (MiB above the process baseline)", "{:.0f}"),
    ("gflops", "GFLOPs per training step (counted + analytical scan)", "{:.2f}"),
    ("sample_ms_per_token", "Sampling time (ms per generated token)", "{:.3f}"),
]


def ratios(rows: dict[str, Any], baselines: tuple[str, ...] = ("transformer_s1", "transformer")) -> dict[str, Any]:
    """mfa / baseline ratios of step time and memory at every length where both ran."""
    out: dict[str, Any] = {}
    mfa = rows.get("mfa", {}).get("cells", {})
    for base in baselines:
        cells = rows.get(base, {}).get("cells", {})
        per_len = {}
        for length, cell in mfa.items():
            other = cells.get(length, {})
            if cell.get("status") == "ok" and other.get("status") == "ok":
                per_len[length] = {
                    "time": cell["step_s"] / other["step_s"],
                    "memory": cell["peak_mb"] / max(other["peak_mb"], 1e-9),
                }
        out[f"mfa_vs_{base}"] = per_len
    return out


def growth(rows: dict[str, Any], name: str = "mfa") -> dict[str, float]:
    """Step-time factor per doubling of L between consecutive measured lengths."""
    cells = rows.get(name, {}).get("cells", {})
    ok = sorted((int(k), c["step_s"]) for k, c in cells.items() if c.get("status") == "ok")
    out = {}
    for (l1, t1), (l2, t2) in zip(ok, ok[1:], strict=False):
        out[f"{l1}->{l2}"] = (t2 / t1) ** (1 / math.log2(l2 / l1))
    return out


def efficiency_table(rows: dict[str, Any], lengths: list[int]) -> str:
    """Markdown: one table per quantity, rows = block types, columns = lengths."""
    parts = []
    reasons: dict[str, str] = {}
    for key, title, fmt in QUANTITIES:
        parts.append(f"### {title}\n")
        parts.append("| block | stride | " + " | ".join(str(n) for n in lengths) + " |")
        parts.append("|---|---|" + "---|" * len(lengths))
        for name, row in rows.items():
            vals = []
            for n in lengths:
                cell = row["cells"].get(str(n), {})
                if cell.get("status") == "ok" and cell.get(key) is not None:
                    vals.append(fmt.format(cell[key]))
                elif cell.get("status") == "ok":
                    vals.append("not run")
                else:
                    reasons.setdefault(f"{name} L={n}", cell.get("reason", "not run"))
                    vals.append("skip")
            parts.append(f"| {name} | {row['stride']} | " + " | ".join(vals) + " |")
        parts.append("")
    if reasons:
        parts.append("Skipped cells: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()) + ".\n")
    return "\n".join(parts)


def ratio_table(rat: dict[str, Any], grow: dict[str, float]) -> str:
    """Markdown: mfa / baseline ratios and mfa growth per doubling."""
    lines = ["### mfa / baseline ratios (lower is better)\n", "| baseline | L | time | memory |", "|---|---|---|---|"]
    for base, per_len in rat.items():
        for length, r in sorted(per_len.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {base.removeprefix('mfa_vs_')} | {length} | {r['time']:.2f} | {r['memory']:.2f} |")
    lines += ["", "### mfa step-time factor per doubling of L\n", "| lengths | factor |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in grow.items()]
    return "\n".join(lines) + "\n"


def plot_time_memory(rows: dict[str, Any], path: Path) -> None:
    """Log-log step time and peak memory vs length, one line per block type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, row in rows.items():
        ok = sorted((int(k), c) for k, c in row["cells"].items() if c.get("status") == "ok")
        if not ok:
            continue
        xs = [n for n, _ in ok]
        axes[0].plot(xs, [c["step_s"] for _, c in ok], marker="o", label=name)
        axes[1].plot(xs, [max(c["peak_mb"], 1e-3) for _, c in ok], marker="o", label=name)
    for ax, ylabel in zip(axes, ["training step time (s)", "peak memory (MiB)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


def plot_scan(scan: dict[str, Any], path: Path) -> None:
    """Log-log fwd+bwd time of the fused, the chunked and the reference scan vs length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((int(k), v) for k, v in scan["lengths"].items())
    xs = [n for n, _ in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    fused = [(n, v["fused_s"]) for n, v in rows if "fused_s" in v]
    if fused:
        ax.plot(*zip(*fused, strict=True), marker="^", label=f"fused C++ kernel ({scan.get('fused_kernel', '?')})")
    ax.plot(xs, [v["fast_s"] for _, v in rows], marker="o", label="chunked PyTorch scan (fallback)")
    meas = [(n, v["ref_s"]) for n, v in rows if v["ref_status"] == "measured"]
    extra = [(n, v["ref_s"]) for n, v in rows if v["ref_status"] != "measured"]
    if meas:
        ax.plot(*zip(*meas, strict=True), marker="s", label="sequential reference (measured)")
    if extra:
        ax.plot(*zip(*extra, strict=True), marker="x", linestyle="--", label="sequential reference (extrapolated)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


def scan_table(scan: dict[str, Any]) -> str:
    """Markdown table of the scan speed test."""
    lines = [
        f"Selective scan forward + backward, batch {scan['batch']}, d_inner {scan['d_inner']}, "
        f"d_state {scan['d_state']}, float32, CPU, torch threads {scan.get('threads', '?')}. "
        f"Fused: {scan.get('fused_kernel', '?')}; chunked: `selective_scan_fast`; reference: "
        "`selective_scan_ref`. Times are the minimum of 3 interleaved runs.\n",
        "| L | fused (s) | chunked (s) | fused vs chunked | reference (s) | fused vs reference "
        "| chunked vs reference | reference | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, v in sorted(scan["lengths"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {n} | {v['fused_s']:.4f} | {v['fast_s']:.3f} | {v['fused_vs_fast']:.1f}x | "
            f"{v['ref_s']:.2f} | {v['fused_speedup']:.0f}x | {v['speedup']:.0f}x | {v['ref_status']} "
            f"| {v['load_1m']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_reports(out_dir: Path, result: dict[str, Any], scan: dict[str, Any] | None) -> None:
    """Write metrics.json, table.md, time_memory.png (+ scan.json/md/png when scan is given)."""
    out_dir = Path(out_dir)
    rows, lengths = result["rows"], result["config"]["lengths"]
    rat, grow = ratios(rows), growth(rows)
    write_json(out_dir / "metrics.json", {**result, "ratios": rat, "mfa_growth_per_doubling": grow})
    header = (
        "# Efficiency benchmark\n\n"
        f"d_model {result['config']['d_model']}, {result['config']['n_blocks']} blocks, batch "
        f"{result['config']['batch_size']}, torch threads {result['config']['threads'] or 'default'}; "
        f"machine: {result['machine']}. Load average before/after: "
        f"{result['load_before']:.1f} / {result['load_after']:.1f} "
        "(above the core count means the numbers were taken under contention).\n\n"
    )
    write_text(out_dir / "table.md", header + efficiency_table(rows, lengths) + "\n" + ratio_table(rat, grow))
    plot_time_memory(rows, out_dir / "time_memory.png")
    if scan is not None:
        write_json(out_dir / "scan.json", scan)
        write_text(out_dir / "scan.md", "# Scan speed\n\n" + scan_table(scan))
        plot_scan(scan, out_dir / "scan.png")
