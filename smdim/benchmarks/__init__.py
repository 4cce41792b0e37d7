"""Efficiency benchmarks: step time, memory, FLOPs and sampling time vs length; scan speed."""
