"""`python -m flows.serve`: serve the `smdim` flow as deployment `full` (run it from the repo root).

Needs a Prefect server (PREFECT_API_URL); `make prefect-up` starts both. Then
`prefect deployment run smdim/full --watch` runs the pipeline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prefect.deployments.runner import EntrypointType

from flows.flow import smdim


def main(argv: list[str] | None = None) -> None:
    """Register deployment `full` and execute its runs until interrupted."""
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--project-dir", default=os.environ.get("SMDIM_PROJECT_DIR", "."),
                    help="DVC project the runs reproduce (default: $SMDIM_PROJECT_DIR or the cwd)")
    ap.add_argument("--cron", default=os.environ.get("SMDIM_CRON") or None,
                    help="optional schedule, e.g. '0 3 * * *' (default: $SMDIM_CRON; none = manual runs only)")
    ap.add_argument("--limit", type=int, default=None,
                    help="max flow runs executed at once (default: no limit; DVC's lock serialises stages)")
    args = ap.parse_args(argv)
    project = Path(args.project_dir).resolve()
    if not (project / "dvc.yaml").is_file():
        ap.error(f"{project}/dvc.yaml not found: --project-dir must be the smdim repository root")
    smdim.serve(
        name="full",
        parameters={"project_dir": str(project)},
        cron=args.cron,
        limit=args.limit,
        tags=["smdim"],
        description="The whole smdim pipeline: download, tokenize, train, sample, evaluate, report (+ benchmark).",
        # Import by module path, so runs load flows.flow from the repo root like `python -m` does.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


if __name__ == "__main__":
    main()
