"""The `smdim` Prefect flow: one task per DVC stage, then a report artifact.

DVC stays the single source of truth for what is up to date: every task shells out to `dvc repro`
(or `dvc exp run --temp` when parameters are overridden) and Prefect adds scheduling, retries,
logs and artifacts on top.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_runs import (
    changed_stages,
    experiment_rev,
    list_stages,
    lock_entries,
    reproduce,
    run_dvc,
    select_stages,
    set_args,
    stage_outcome,
)
from flows.report import PAGE, experiment_report, split_changed, workspace_report

# Cache policy on every task: NO_CACHE, because DVC *is* the cache. It hashes each stage's deps,
# params and code and skips (or restores from its run cache) whatever is unchanged, in ~1 s. A
# Prefect cache keyed on the task inputs (stage name, project dir) would wrongly skip a stage after
# params.yaml or smdim/ changed; INPUTS + TASK_SOURCE still cannot see those files.


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def reproduce_stage(stage: str, project_dir: str, lock_wait_s: float) -> dict[str, Any]:
    """`dvc repro <stage>` in the workspace; returns the stage's outcome (ran / up to date)."""
    # With its upstream (not --single-item): a run restricted to, say, ["train"] still refreshes
    # stale data first, and DVC's check of an up-to-date upstream stage costs well under a second.
    run, ran = reproduce(stage, project_dir, get_run_logger(), lock_wait_s=lock_wait_s)
    outcomes = dict.fromkeys(ran, "ran")
    return {
        "stage": stage,
        "status": stage_outcome(stage, outcomes),
        "upstream": {k: v for k, v in outcomes.items() if k.split("@", 1)[0] != stage},
        "lock_waits": run.lock_waits,
    }


@task(name="dvc-experiment", cache_policy=NO_CACHE)
def run_experiment(
    stages: list[str], set_params: dict[str, Any], project_dir: str, lock_wait_s: float,
    experiment_name: str | None = None,
) -> dict[str, Any]:
    """`dvc exp run --temp -S ...`: the overridden pipeline runs in a copy, recorded as an experiment."""
    # --temp keeps the user's params.yaml and outputs untouched: a plain `dvc exp run -S` would leave
    # the overrides in params.yaml, and the next scheduled run of `full` would silently inherit them.
    # Named here, not by DVC, so the flow knows it without reading DVC's human-readable output.
    name = experiment_name or f"flow-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    args = ["exp", "run", "--temp", "--name", name, *set_args(set_params)]
    log = get_run_logger()
    run_dvc([*args, *stages], project_dir, log, lock_wait_s=lock_wait_s)
    outcomes = changed_stages(lock_entries(project_dir, "HEAD"),
                              lock_entries(project_dir, experiment_rev(project_dir, name)))
    diff = run_dvc(["metrics", "diff", "--all", "--json", "HEAD", name], project_dir, log,
                   lock_wait_s=lock_wait_s, echo_stdout=False)
    metrics_diff = json.loads("\n".join(diff.stdout) or "{}")
    changed, unchanged = split_changed(metrics_diff)
    log.info("experiment %s vs HEAD: %d metrics changed, %d unchanged (table in the smdim-report artifact)",
             name, len(changed), len(unchanged))
    stage_fates = {s: stage_outcome(s, outcomes) for s in stages}
    return {"name": name, "stages": stage_fates, "metrics_diff": metrics_diff}


@task(name="report", cache_policy=NO_CACHE)
def publish_report(
    project_dir: str, stage_results: list[dict[str, Any]], experiment: dict[str, Any] | None = None,
    set_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Markdown artifact with stage outcomes, metrics and data statistics; links to each plot and the page."""
    log = get_run_logger()
    project = Path(project_dir)
    if experiment is not None:
        md = experiment_report(project, experiment["name"], set_params or {},
                               experiment["metrics_diff"], experiment["stages"])
        create_markdown_artifact(md, key="smdim-report", description=f"experiment {experiment['name']}")
        return {"experiment": experiment["name"], "missing": [], "plots": []}
    md, missing, plots = workspace_report(project, stage_results)
    for note in missing:
        log.warning("report: %s", note)
    create_markdown_artifact(md, key="smdim-report", description="smdim pipeline: metrics and data")
    page = project / PAGE
    if page.is_file():
        create_link_artifact(page.resolve().as_uri(), link_text="listening report (index.html)",
                             key="smdim-listening-report", description="metrics, plots, every piece with audio")
    for plot in plots:
        rel = plot.relative_to(project).as_posix()
        create_link_artifact(plot.resolve().as_uri(), link_text=rel, description=f"plot {rel}")
    return {"missing": missing, "plots": [p.relative_to(project).as_posix() for p in plots],
            "page": PAGE if page.is_file() else None}


@flow(name="smdim")
def smdim(
    stages: list[str] | None = None,
    project_dir: str = ".",
    set_params: dict[str, Any] | None = None,
    experiment_name: str | None = None,
    lock_wait_s: float = 1800.0,
    download_retries: int = 3,
    download_retry_delay_s: float = 30.0,
) -> dict[str, Any]:
    """Run the smdim DVC pipeline (all stages, or `stages` with their upstream) and publish a report.

    set_params: params.yaml overrides {"section.key": value}; when given, the run is a DVC
    experiment (`dvc exp run --temp -S`) and the workspace is left as it was.
    lock_wait_s: how long a stage waits for another dvc process (e.g. a concurrent run) to release
    the repository lock before failing.
    """
    log = get_run_logger()
    project = str(Path(project_dir).resolve())
    chosen = select_stages(list_stages(project), stages)
    log.info("project %s; stages %s", project, ", ".join(chosen))
    if set_params:
        exp = run_experiment(chosen, set_params, project, lock_wait_s, experiment_name)
        return {"stages": chosen, "experiment": exp["name"],
                "report": publish_report(project, [], exp, set_params)}
    results = []
    for stage in chosen:
        step = reproduce_stage
        if stage == "download" or stage.startswith("download@"):
            # Only the download touches the network, where a retry can help; the other stages are
            # deterministic, so a retry would just fail again after the same work.
            step = reproduce_stage.with_options(
                retries=download_retries, retry_delay_seconds=download_retry_delay_s
            )
        results.append(step(stage, project, lock_wait_s))
    return {"stages": results, "report": publish_report(project, results)}
