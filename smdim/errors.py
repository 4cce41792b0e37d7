"""The exceptions users see, and the entry wrapper that prints them as one line each."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable


class SmdimError(Exception):
    """A problem the user can fix (bad input, bad parameter, missing file); printed in one line."""


class ConfigError(SmdimError):
    """A parameter in params.yaml (or an override) is missing, unknown or out of range.

    Several problems at once come as several lines, one per parameter.
    """


def run_stage(main: Callable[[], None]) -> None:
    """Run `main` (a pipeline stage or a CLI command); print a SmdimError as `error: ...` lines
    on stderr and exit 1, so users never see a traceback for a problem they can fix."""
    logging.basicConfig(level=os.environ.get("SMDIM_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except SmdimError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
