"""Absorbing (mask) diffusion: schedule, forward masking, ELBO loss."""
