"""Samplers, conditioning (prefix, infill) and sampling-time constraints."""
