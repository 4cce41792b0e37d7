"""Prefect orchestration: flow `smdim` served as deployment `full` on a real local Prefect server.

The flow is exercised on tiny DVC projects of our own (three stages of a few lines each), so its
mechanics (stage order, DVC up-to-date checks, artifacts, failures, lock contention, experiments)
are tested independently of the model code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import run, tool_env

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flows/ is a top-level package of the repo (pytest's pythonpath has it too)
    sys.path.insert(0, str(ROOT))

from flows.dvc_runs import (  # noqa: E402
    DvcError,
    DvcLockTimeout,
    _pump,
    list_stages,
    run_dvc,
    select_stages,
    set_args,
    stage_outcome,
)
from flows.report import evaluation_markdown, experiment_report, workspace_report  # noqa: E402
from smdim.errors import SmdimError  # noqa: E402

DVC = str(Path(sys.executable).parent / "dvc")
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LOCK_WAIT_LOG = "locked by another dvc process"


# ---------------------------------------------------------------- tiny DVC project


def tiny_project(path: Path, *, fail: bool = False) -> Path:
    """A git+DVC repo: download -> tokenize -> evaluate, each a few lines reading params.yaml."""
    steps = path / "steps"
    steps.mkdir(parents=True)
    (steps / "download.py").write_text(textwrap.dedent("""
        import pathlib, yaml
        n = yaml.safe_load(open("params.yaml"))["download"]["n"]
        out = pathlib.Path("data/raw"); out.mkdir(parents=True)
        (out / "notes.txt").write_text(" ".join(str(i) for i in range(n)))
        print("downloaded", n, "notes")
    """))
    (steps / "tokenize.py").write_text(textwrap.dedent("""
        import json, pathlib
        notes = pathlib.Path("data/raw/notes.txt").read_text().split()
        out = pathlib.Path("data/tokens"); out.mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps({"n_pieces": 1, "n_tokens": len(notes)}))
        res = pathlib.Path("results/tokenize"); res.mkdir(parents=True, exist_ok=True)
        (res / "metrics.json").write_text(json.dumps({"tokens_per_piece": len(notes)}))
    """))
    (steps / "evaluate.py").write_text(textwrap.dedent(f"""
        import json, pathlib, sys, yaml
        scale = yaml.safe_load(open("params.yaml"))["evaluate"]["scale"]
        if {fail!r}:
            print("evaluating against the reference set")
            sys.exit("error: data/reference: the reference set is empty; set evaluate.reference")
        n = json.loads(pathlib.Path("data/tokens/manifest.json").read_text())["n_tokens"]
        res = pathlib.Path("results/evaluate"); (res / "plots").mkdir(parents=True, exist_ok=True)
        oa = {{"pitch_range": 0.5, "average": n * scale / 100}}
        (res / "metrics.json").write_text(json.dumps({{"oa": oa, "oa_vs_length": {{"16": 0.4}}}}))
        (res / "plots" / "oa.png").write_bytes(b"not really a png")
    """))
    stages = {
        "download": {"cmd": "python steps/download.py", "deps": ["steps/download.py"],
                     "params": ["download"], "outs": ["data/raw"]},
        "tokenize": {"cmd": "python steps/tokenize.py", "deps": ["steps/tokenize.py", "data/raw"],
                     "outs": ["data/tokens"],
                     "metrics": [{"results/tokenize/metrics.json": {"cache": False}}]},
        "evaluate": {"cmd": "python steps/evaluate.py", "deps": ["steps/evaluate.py", "data/tokens"],
                     "params": ["evaluate"], "outs": ["results/evaluate/plots"],
                     "metrics": [{"results/evaluate/metrics.json": {"cache": False}}]},
    }
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (path / "params.yaml").write_text("download:\n  n: 5\nevaluate:\n  scale: 2\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "test"], [DVC, "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, path)
    return path


def dvc_up_to_date(project: Path) -> bool:
    """`dvc status` finds nothing changed."""
    return "Data and pipelines are up to date." in run([DVC, "status"], project).stdout


def hold_repo_lock(project: Path):
    """Take DVC's own repository lock, as a concurrent `dvc repro` would."""
    from dvc.lock import Lock

    (project / ".dvc" / "tmp").mkdir(exist_ok=True)
    lock = Lock(str(project / ".dvc" / "tmp" / "lock"))
    lock.lock()
    return lock


# ---------------------------------------------------------------- Prefect server + serve process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ApiError(OSError):
    """An HTTP error answer from the Prefect API (an OSError, so polling loops keep polling)."""


def api(base: str, method: str, path: str, body: dict | None = None):
    """One JSON call to the Prefect REST API."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            # A loaded 2-core box can make SQLite answer "database is locked" (500): ask again.
            if e.code < 500 or attempt == 4:
                raise ApiError(f"{method} {path} -> {e.code}: {e.read()[:2000]!r}") from e
        time.sleep(1 + attempt)


def _wait_for(check, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} not ready after {timeout} s\n{tail}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> dict:
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = tool_env(
        PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Test speed only: the serve process polls each second; no UI build and only the services
        # that record runs (event persister, task run recorder): the rest just burn the 2 cores.
        PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_UI_ENABLED="false",
        **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
            "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS",
            "REPOSSESSOR", "CLEANUP_RECONCILER", "TRIGGERS")},
    )
    log = home / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait_for(lambda: api(url, "GET", "/health"), 180, "prefect server", log)
        yield {"url": url, "env": env, "home": home}
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> dict:
    """`python -m flows.serve` (deployment smdim/full) whose default project is a tiny DVC repo."""
    project = tiny_project(tmp_path_factory.mktemp("served") / "proj")
    log = server["home"] / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.serve", "--project-dir", str(project)],
                                cwd=ROOT, env=server["env"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        dep = _wait_for(lambda: api(server["url"], "GET", "/deployments/name/smdim/full"), 120,
                        "deployment smdim/full", log)
        yield {**server, "project": project, "deployment_id": dep["id"], "serve_log": log}
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def side_runs(served, tmp_path_factory) -> dict:
    """A failing run and a parameter-override run, started together so they overlap the other tests."""
    broken = tiny_project(tmp_path_factory.mktemp("broken") / "proj", fail=True)
    exp = tiny_project(tmp_path_factory.mktemp("exp") / "proj")
    return {
        "broken": (broken, start_run(served, project_dir=str(broken))),
        "exp": (exp, exp.joinpath("params.yaml").read_text(),
                start_run(served, project_dir=str(exp), set_params={"evaluate.scale": 7},
                          experiment_name="scale7")),
    }


def start_run(served: dict, **parameters) -> str:
    """Create a flow run of smdim/full through the REST API; returns its id."""
    fr = api(served["url"], "POST", f"/deployments/{served['deployment_id']}/create_flow_run",
             {"parameters": parameters})
    return fr["id"]


def wait_final(served: dict, run_id: str, timeout: float = 240) -> str:
    """Poll until the flow run reaches a terminal state; return the state type."""
    return _wait_for(
        lambda: (s := api(served["url"], "GET", f"/flow_runs/{run_id}")["state_type"]) in FINAL and s,
        timeout, f"flow run {run_id}", served["serve_log"])


def run_logs(served: dict, run_id: str) -> str:
    """Every log line of a flow run (its tasks included), oldest first."""
    logs = api(served["url"], "POST", "/logs/filter",
               {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200})
    return "\n".join(entry["message"] for entry in logs)


def logs_containing(served: dict, run_id: str, text: str, timeout_s: float = 30.0) -> str:
    """The run's logs once `text` is among them: Prefect ships logs in batches, after the state."""
    deadline = time.monotonic() + timeout_s
    logs = run_logs(served, run_id)
    while text not in logs and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = run_logs(served, run_id)
    return logs


def run_artifacts(served: dict, run_id: str) -> list[dict]:
    """Artifacts a flow run created."""
    return api(served["url"], "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})


def report_of(served: dict, run_id: str) -> str:
    """The run's `smdim-report` Markdown artifact."""
    reports = [a["data"] for a in run_artifacts(served, run_id) if a["key"] == "smdim-report"]
    assert len(reports) == 1, run_artifacts(served, run_id)
    return reports[0]


# ---------------------------------------------------------------- tests with the server


def test_deployment_run_reproduces_pipeline_and_publishes_report(served, side_runs):
    """`prefect deployment run smdim/full --watch` -> COMPLETED, DVC outputs, report + plot links."""
    # (side_runs is requested here only to start those runs now, alongside this one.)
    project = served["project"]
    p = run([PREFECT, "deployment", "run", "smdim/full", "--watch", "--watch-timeout", "120"], ROOT,
            env=served["env"])
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", p.stdout)[1]
    assert api(served["url"], "GET", f"/flow_runs/{run_id}")["state_type"] == "COMPLETED"

    assert (project / "data/raw/notes.txt").read_text() == "0 1 2 3 4"
    assert json.loads((project / "results/evaluate/metrics.json").read_text())["oa"]["average"] == 0.1
    assert dvc_up_to_date(project)

    report = report_of(served, run_id)
    for stage in ("download", "tokenize", "evaluate"):
        assert f"| {stage} | ran | 0 |" in report
    assert "| pitch_range | 0.5 |" in report and "| **average** | 0.1 |" in report
    assert "| tokens_per_piece | 5 |" in report  # results/tokenize/metrics.json
    assert "| n_tokens | 5 |" in report  # data/tokens/manifest.json
    assert "`results/train/metrics.json` missing (written by the train stage)" in report
    links = [a["data"] for a in run_artifacts(served, run_id) if a["type"] == "markdown" and a["key"] is None]
    plot = (project / "results/evaluate/plots/oa.png").as_uri()
    assert any(plot in link for link in links), links

    logs = logs_containing(served, run_id, "report: results/samples/metrics.json: missing")
    assert "downloaded 5 notes" in logs  # the stage's own stdout, streamed into Prefect
    assert "report: results/samples/metrics.json: missing" in logs


def test_second_run_finds_every_stage_up_to_date(served):
    """Once DVC has reproduced the workspace, a flow run re-runs nothing."""
    project = served["project"]
    run([DVC, "repro"], project)  # independent of test order: bring the workspace up to date
    before = (project / "dvc.lock").read_text()
    run_id = start_run(served, project_dir=str(project))
    assert wait_final(served, run_id) == "COMPLETED"
    report = report_of(served, run_id)
    for stage in ("download", "tokenize", "evaluate"):
        assert f"| {stage} | up to date | 0 |" in report
    skip = "Stage 'evaluate' didn't change, skipping"
    assert skip in logs_containing(served, run_id, skip)
    assert (project / "dvc.lock").read_text() == before


def test_failing_stage_fails_flow_with_stage_error_in_logs(served, side_runs):
    """A stage that exits non-zero -> flow run FAILED, its error line in the logs, no half output."""
    project, run_id = side_runs["broken"]
    assert wait_final(served, run_id) == "FAILED"
    logs = logs_containing(served, run_id, "failed to reproduce 'evaluate'")
    assert "the reference set is empty; set evaluate.reference" in logs
    assert "failed to reproduce 'evaluate'" in logs
    assert (project / "data/tokens/manifest.json").is_file()  # upstream stages completed
    assert not (project / "results/evaluate/metrics.json").exists()
    state = api(served["url"], "GET", f"/flow_runs/{run_id}")["state"]
    assert "the reference set is empty" in (state.get("message") or "")  # why it failed, in the UI


def test_two_runs_at_once_wait_for_the_dvc_lock(served, tmp_path):
    """Two simultaneous runs on one workspace: both wait on DVC's lock, both complete, each stage runs once."""
    project = tiny_project(tmp_path / "shared")
    lock = hold_repo_lock(project)
    try:
        ids = [start_run(served, project_dir=str(project), lock_wait_s=120.0) for _ in range(2)]
        # Deterministic contention: release only once both runs have hit the lock.
        _wait_for(lambda: all(LOCK_WAIT_LOG in run_logs(served, i) for i in ids), 60,
                  "both runs waiting on the DVC lock", served["serve_log"])
    finally:
        lock.unlock()
    assert [wait_final(served, i) for i in ids] == ["COMPLETED", "COMPLETED"]
    assert dvc_up_to_date(project)
    assert (project / "data/raw/notes.txt").read_text() == "0 1 2 3 4"
    assert json.loads((project / "results/evaluate/metrics.json").read_text())["oa"]["average"] == 0.1
    reports = [report_of(served, i) for i in ids]
    for stage in ("download", "tokenize", "evaluate"):
        assert sum(re.search(rf"\| {stage} \| ran \|", r) is not None for r in reports) == 1, reports


def test_param_overrides_run_as_experiment_and_leave_params_yaml(served, side_runs):
    """set_params -> `dvc exp run --temp -S`: an experiment is recorded, params.yaml is untouched."""
    project, params_before, run_id = side_runs["exp"]
    assert wait_final(served, run_id) == "COMPLETED", run_logs(served, run_id)
    assert (project / "params.yaml").read_text() == params_before
    assert not (project / "results/evaluate/metrics.json").exists()  # workspace left as it was
    assert "scale7" in run([DVC, "exp", "list", "--name-only"], project).stdout
    report = report_of(served, run_id)
    assert "| evaluate.scale | 7 |" in report
    assert "| evaluate | ran |" in report  # read from the experiment's dvc.lock, not DVC's output
    assert re.search(r"\| results/evaluate/metrics.json: oa.average \| [^|]* \| 0.35 \|", report), report


# ---------------------------------------------------------------- the pieces, without a server


def test_stage_selection_follows_dvc_yaml_order(tmp_path):
    """Stages come from dvc.yaml, are returned in pipeline order, and unknown names fail clearly."""
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  download: {cmd: 'true'}\n  tokenize: {cmd: 'true'}\n  evaluate: {cmd: 'true'}\n")
    stages = list_stages(tmp_path)
    assert stages == ["download", "tokenize", "evaluate"]
    assert select_stages(stages, None) == stages
    assert select_stages(stages, ["evaluate", "download"]) == ["download", "evaluate"]
    assert select_stages(stages, ["evaluate", "download@maestro"]) == ["download@maestro", "evaluate"]
    assert stage_outcome("download", {"download@a": "up to date", "download@b": "ran"}) == "ran"
    assert stage_outcome("tokenize", {"download": "ran"}) == "up to date"
    with pytest.raises(SmdimError, match="unknown stage 'trian'; dvc.yaml has download, tokenize"):
        select_stages(stages, ["trian"])
    with pytest.raises(SmdimError, match="no stages"):
        select_stages([], None)
    with pytest.raises(SmdimError, match="dvc.yaml: not found"):
        list_stages(tmp_path / "elsewhere")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(SmdimError, match="no stages"):
        select_stages(list_stages(tmp_path), None)


def test_set_args_format_values_as_yaml():
    """Overrides become `-S key=value` with YAML values (bool/None/list), strings as given."""
    assert set_args({"train.steps": 10, "model.bidirectional": False, "sample.method": "cached",
                     "train.lr": None, "evaluate.lengths": [128, 256]}) == [
        "-S", "train.steps=10", "-S", "model.bidirectional=false", "-S", "sample.method=cached",
        "-S", "train.lr=null", "-S", "evaluate.lengths=[128, 256]"]
    with pytest.raises(SmdimError, match="section.key"):
        set_args({"steps": 3})


def test_locked_repository_times_out_clearly_then_runs(tmp_path):
    """While another process holds DVC's lock, run_dvc retries (bounded), then fails naming the lock."""
    project = tiny_project(tmp_path / "p")
    log = logging.getLogger("test_flows.lock")
    lock = hold_repo_lock(project)
    try:
        with pytest.raises(DvcLockTimeout, match="stayed locked for 1 s.*Unable to acquire lock"):
            run_dvc(["repro", "download"], project, log, lock_wait_s=1.0, lock_poll_s=0.2)
    finally:
        lock.unlock()
    assert not (project / "data/raw").exists()
    done = run_dvc(["repro", "download"], project, log, lock_wait_s=1.0)
    assert done.lock_waits == 0 and (project / "data/raw").exists()


def test_failing_command_error_carries_stderr_tail(tmp_path):
    """A failed stage raises DvcError ending with the stage's own error line."""
    project = tiny_project(tmp_path / "p", fail=True)
    with pytest.raises(DvcError, match="exited 255: .*the reference set is empty") as e:
        run_dvc(["repro", "evaluate"], project, logging.getLogger("test_flows.fail"), lock_wait_s=5)
    assert not isinstance(e.value, DvcLockTimeout)


def test_progress_redraws_are_collapsed():
    """tqdm-style \\r redraws are forwarded once per interval, full lines always."""
    lines: list[str] = []
    _pump(io.BytesIO(b"start\n10%\r50%\r100%\ndone\nlast"), lines.append, None)
    assert lines == ["start", "10%", "100%", "done", "last"]


def test_report_says_what_is_missing(tmp_path):
    """With no stage outputs yet the report lists each missing file instead of failing."""
    md, missing, plots = workspace_report(tmp_path, [{"stage": "download", "status": "ran"}])
    assert plots == [] and "| download | ran | 0 |" in md
    assert any(m.startswith("results/evaluate/metrics.json: missing") for m in missing)
    assert any(m.startswith("data/tokens/manifest.json: missing") for m in missing)
    (tmp_path / "results/evaluate").mkdir(parents=True)
    (tmp_path / "results/evaluate/metrics.json").write_text("{broken")
    _, missing, _ = workspace_report(tmp_path, [])
    assert any("results/evaluate/metrics.json: unreadable (JSONDecodeError" in m for m in missing)


def test_evaluation_table_follows_the_metrics_contract():
    """OA per attribute beside its ceiling, the average last, OA vs length sorted by length."""
    md = evaluation_markdown({"oa": {"average": 0.6, "pitch_range": 0.55, "velocity": 0.65},
                              "oa_ceiling": {"average": 0.9, "pitch_range": 0.8, "velocity": 1.0},
                              "oa_vs_length": {"1024": 0.5, "128": 0.7}, "n_pieces": 8})
    assert "| pitch_range | 0.55 | 0.8 |\n| velocity | 0.65 | 1 |\n| **average** | 0.6 | 0.9 |" in md
    assert md.index("| 128 | 0.7 |") < md.index("| 1024 | 0.5 |")
    assert "| n_pieces | 8 |" in md


def test_experiment_report_shows_changed_metrics_and_counts_the_rest():
    """An override that moves two metrics out of hundreds must not bury them in a table of zeros."""
    diff = {
        "results/train/metrics.json": {"loss": {"old": 1.5, "new": 1.25, "diff": -0.25},
                                       "step": {"old": 10, "new": 10, "diff": 0}},
        "results/evaluate/metrics.json": {"oa.average": {"new": 0.5}},  # absent at HEAD: changed
        "results/benchmark/metrics.json": {f"cell{i}": {"old": i, "new": i, "diff": 0} for i in range(300)},
    }
    md = experiment_report(Path("/p"), "exp1", {"train.steps": 20}, diff, {"train": "ran"})
    assert "| results/train/metrics.json: loss | 1.5 | 1.25 | -0.25 |" in md
    assert re.search(r"\| results/evaluate/metrics.json: oa.average \| [^|]* \| 0.5 \|", md)
    assert "metrics.json: step" not in md and "cell7" not in md
    assert "301 unchanged metrics not shown" in md
    same = {"m.json": {"a": {"old": 1, "new": 1, "diff": 0}}}
    assert "(no metric changed)" in experiment_report(Path("/p"), "e", {}, same, {})
