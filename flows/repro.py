"""`python flows/repro.py STAGE RESULT_JSON`: `dvc repro STAGE` through DVC's Python API.

The flow runs this as a subprocess (so the stages' own output streams into Prefect's logs as it
arrives) and learns from DVC itself, not from its log lines, which stages ran: DVC's `reproduce`
returns them, and they are written to RESULT_JSON as {"ran": [...]} (a restore from DVC's run
cache counts as ran). While another dvc process holds the repository, it exits with LOCKED.
"""

from __future__ import annotations

import json
import logging
import sys

from dvc.lock import LockError
from dvc.repo import Repo

LOCKED = 75  # EX_TEMPFAIL: the repository is busy; nothing was changed, try again


def _locked(error: BaseException | None) -> bool:
    while error is not None:  # DVC wraps a stage's lock error in a ReproductionError
        if isinstance(error, LockError):
            return True
        error = error.__cause__
    return False


def main(stage: str, result: str) -> int:
    """Reproduce `stage` with its upstream; write which stages ran to `result`."""
    # DVC's usual lines ("Running stage ...", "didn't change, skipping") for the flow's log.
    log = logging.getLogger("dvc")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.INFO)
    try:
        with Repo(".") as repo:
            ran = repo.reproduce(stage)
    except Exception as e:  # noqa: BLE001 - reported in one line, like the dvc CLI does
        print(f"ERROR: {e}" + (f": {e.__cause__}" if e.__cause__ else ""), file=sys.stderr)
        return LOCKED if _locked(e) else 1
    with open(result, "w", encoding="utf-8") as f:
        json.dump({"ran": [s.addressing for s in ran]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
