"""Evaluation: per-piece features, Overlapping Area (mgeval procedure), memorisation."""
