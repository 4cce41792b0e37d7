"""Autoregressive objective: next-token cross-entropy with a causal network (model.objective)."""
