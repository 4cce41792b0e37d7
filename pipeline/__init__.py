"""Thin DVC stage scripts: `python -m pipeline.<stage>` parses params and calls smdim."""
