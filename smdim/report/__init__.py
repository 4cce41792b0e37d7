"""The listening report: one self-contained HTML page per run (metrics, plots, pieces with audio)."""
