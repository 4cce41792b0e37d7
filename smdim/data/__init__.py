"""Datasets: sources, HTTP fetch with resume and checksum, safe extraction, Parquet shards, training crops."""
