"""smdim: symbolic music diffusion with Mamba (SMDIM), from MIDI corpora to measured results."""

__version__ = "0.1.0"
