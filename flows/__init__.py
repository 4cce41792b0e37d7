"""Prefect orchestration: the `smdim` flow and its `full` deployment."""
