"""The SMDIM denoiser: selective scan, Mamba (CPU/GPU), attention, blocks, checkpoints."""
