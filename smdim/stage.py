"""Shared entry point for pipeline stages and the CLI: one-line errors, proper exit codes."""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable

from smdim.errors import SmdimError


def run_stage(main: Callable[[], None]) -> None:
    """Run `main`; print a SmdimError as one line on stderr and exit 1."""
    logging.basicConfig(level=os.environ.get("SMDIM_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except SmdimError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if installed)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmdimError(f"base.device={name} but no CUDA GPU is visible; set base.device: auto or cpu")
    return name
