"""Run DVC commands for the flow: stage listing, streamed output, bounded wait on the repo lock."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smdim.errors import SmdimError

# DVC's own texts when another dvc process is busy in the repo: the repo lock (.dvc/tmp/lock, which
# dvc gives up on after ~3 s) and the per-output lock (.dvc/tmp/rwlock, taken while a stage command
# runs: `dvc repro` releases the repo lock then). Either way nothing was half-written: safe to retry.
LOCK_MESSAGES = ("Unable to acquire lock", "is busy, it is being blocked by")
# How often a carriage-return progress line (tqdm) is forwarded: every redraw would flood the log.
PROGRESS_EVERY_S = 15.0
TAIL_LINES = 12
REPRO_LOCKED = 75  # flows/repro.py's exit code while another dvc process holds the repository



class DvcError(SmdimError):
    """A dvc command failed; the message ends with the last lines it wrote to stderr."""


class DvcLockTimeout(DvcError):
    """The DVC repository lock stayed held by another process for longer than allowed."""


@dataclass
class DvcRun:
    """What one dvc command did: its output lines and, for repro/exp run, each stage's fate."""

    args: list[str]
    stdout: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    lock_waits: int = 0



def dvc_executable() -> str:
    """The dvc next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def tool_env() -> dict[str, str]:
    """Environment for dvc: this interpreter's bin first on PATH, since stage commands call `python`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _pump(stream, emit: Callable[[str], None], tail: deque | None) -> None:
    """Forward a byte stream line by line; collapse \\r-redrawn progress lines to one per interval."""
    buf = b""
    last_progress = 0.0
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            piece, sep, buf = buf[:cut], buf[cut : cut + 1], buf[cut + 1 :]
            line = piece.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            if sep == b"\r":
                now = time.monotonic()
                if now - last_progress < PROGRESS_EVERY_S:
                    continue
                last_progress = now
            emit(line)
            if tail is not None:
                tail.append(line)
    line = buf.decode("utf-8", "replace").rstrip()
    if line:
        emit(line)
        if tail is not None:
            tail.append(line)


def _run_once(
    args: list[str], cwd: Path, log: logging.Logger | logging.LoggerAdapter, echo_stdout: bool = True
) -> tuple[int, DvcRun]:
    """Run one command, streaming stderr (and stdout if echo_stdout) into `log` as the lines arrive."""
    result = DvcRun(args=args)
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def out(line: str) -> None:
        result.stdout.append(line)
        if echo_stdout:
            log.info(line)

    def err(line: str) -> None:
        (log.error if line.startswith("ERROR") else log.info)(line)

    proc = subprocess.Popen(
        args, cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, out, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, tail), daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        rc = proc.wait()
    except BaseException:
        # A cancelled flow run must not leave dvc running and holding the repo lock.
        proc.terminate()
        proc.wait()
        raise
    for r in readers:
        r.join()
    result.stderr_tail = list(tail)
    return rc, result


def run_dvc(
    args: Sequence[str],
    cwd: str | os.PathLike,
    log: logging.Logger | logging.LoggerAdapter,
    *,
    lock_wait_s: float = 1800.0,
    lock_poll_s: float = 2.0,
    echo_stdout: bool = True,
) -> DvcRun:
    """Run `dvc <args>` in `cwd`; while another dvc holds the repo lock, retry for up to `lock_wait_s`.

    echo_stdout=False keeps stdout out of the log (still in the result): for machine-readable
    output such as `--json`, which would be one huge log line.
    """
    # The CLI reports a held lock only in words (its exit code is the generic one).
    def locked(rc: int, run: DvcRun) -> bool:
        return any(m in line for line in run.stderr_tail for m in LOCK_MESSAGES)

    return _retry_while_locked([dvc_executable(), *args], f"dvc {' '.join(args)}", Path(cwd), log,
                               locked, lock_wait_s, lock_poll_s, echo_stdout)


def reproduce(
    stage: str,
    cwd: str | os.PathLike,
    log: logging.Logger | logging.LoggerAdapter,
    *,
    lock_wait_s: float = 1800.0,
    lock_poll_s: float = 2.0,
) -> tuple[DvcRun, list[str]]:
    """`dvc repro <stage>` (with its upstream) in `cwd`; returns the run and the stages that ran.

    It goes through DVC's Python API in a subprocess (flows/repro.py): the stages' output still
    streams into `log`, the stages that ran come from DVC's return value, and a held lock from
    its exit code.
    """
    with tempfile.TemporaryDirectory(prefix="smdim-repro-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).with_name("repro.py")), stage, str(result)]
        run = _retry_while_locked(cmd, f"dvc repro {stage}", Path(cwd), log,
                                  lambda rc, _: rc == REPRO_LOCKED, lock_wait_s, lock_poll_s, True)
        return run, json.loads(result.read_text())["ran"]


def _retry_while_locked(
    cmd: list[str], what: str, cwd: Path, log: logging.Logger | logging.LoggerAdapter,
    locked: Callable[[int, DvcRun], bool], lock_wait_s: float, lock_poll_s: float, echo_stdout: bool,
) -> DvcRun:
    """Run `cmd` until it succeeds, retrying (bounded) while `locked` says another dvc holds the repo."""
    deadline = time.monotonic() + lock_wait_s
    waits = 0
    while True:
        rc, result = _run_once(cmd, cwd, log, echo_stdout)
        result.lock_waits = waits
        if rc == 0:
            return result
        is_locked = locked(rc, result)
        if is_locked and time.monotonic() + lock_poll_s < deadline:
            waits += 1
            log.warning(
                "%s: the repository is locked by another dvc process (another flow run?); "
                "retrying in %.0f s (wait %d)", what, lock_poll_s, waits,
            )
            time.sleep(lock_poll_s)
            continue
        shown = " | ".join(result.stderr_tail[-6:]) or "(no stderr)"
        if is_locked:
            raise DvcLockTimeout(
                f"{what} in {cwd}: the repository stayed locked for {lock_wait_s:.0f} s; "
                f"wait for the other dvc process or raise lock_wait_s: {shown}"
            )
        raise DvcError(f"{what} in {cwd} exited {rc}: {shown}")


def list_stages(project: str | os.PathLike) -> list[str]:
    """Stage names of the project's dvc.yaml, in file order (which is pipeline order)."""
    # Names only (no hashing, no dvc process): `dvc repro <name>` accepts a foreach/matrix group's
    # name as well as a plain stage's, so dvc.yaml's top-level keys are exactly what we can run.
    path = Path(project) / "dvc.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SmdimError(f"{path}: not found; project_dir must be the smdim repository root") from None
    except yaml.YAMLError as e:
        raise SmdimError(f"{path}: invalid YAML ({str(e).splitlines()[0]}); fix the file") from None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        raise SmdimError(f"{path}: no `stages:` mapping; nothing to run")
    return [str(name) for name in stages]


def select_stages(available: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """The requested stages (all when None) in pipeline order; `group@key` picks one foreach item."""
    if not available:
        raise SmdimError("dvc.yaml: no stages defined yet; nothing to run")
    if requested is None:
        return list(available)
    for name in requested:
        if name.split("@", 1)[0] not in available:
            raise SmdimError(f"stages: unknown stage {name!r}; dvc.yaml has {', '.join(available)}")
    order = {s: i for i, s in enumerate(available)}
    return sorted(dict.fromkeys(requested), key=lambda n: order[n.split("@", 1)[0]])


def lock_entries(project: str | os.PathLike, rev: str | None = None) -> dict[str, Any]:
    """The stage entries of dvc.lock, in the workspace or at git revision `rev` ({} if none).

    dvc.lock is DVC's machine-readable record of what each stage last ran with (deps, params,
    outs hashes): a stage whose entry changed was reproduced, one whose entry did not was not.
    """
    project = Path(project)
    if rev is None:
        path = project / "dvc.lock"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    else:
        p = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=project, capture_output=True, text=True)
        text = p.stdout if p.returncode == 0 else ""
    doc = yaml.safe_load(text) or {}
    return dict(doc.get("stages") or {}) if isinstance(doc, dict) else {}


def changed_stages(before: dict[str, Any], after: dict[str, Any]) -> dict[str, str]:
    """Stage -> 'ran' for every dvc.lock entry that differs (ran, or restored from DVC's run cache)."""
    return {name: "ran" for name, entry in after.items() if before.get(name) != entry}


def experiment_rev(project: str | os.PathLike, name: str) -> str:
    """The git commit of DVC experiment `name` (DVC keeps experiments as refs under refs/exps/)."""
    p = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                       cwd=project, capture_output=True, text=True, check=True)
    for line in p.stdout.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            return sha
    raise SmdimError(f"dvc experiment {name!r} not found under refs/exps in {project}")


def stage_outcome(stage: str, outcomes: dict[str, str]) -> str:
    """One stage's (or a foreach group's) outcome from `changed_stages`: 'ran' if any item ran."""
    own = [v for k, v in outcomes.items() if k == stage or k.startswith(f"{stage}@")]
    return "ran" if "ran" in own else "up to date"


def set_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments for `dvc exp run`; values go as YAML (JSON is YAML) except plain strings."""
    args: list[str] = []
    for key, value in overrides.items():
        if not isinstance(key, str) or "." not in key:
            raise SmdimError(f"params overrides: key {key!r} must look like 'section.key'")
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["-S", f"{key}={text}"]
    return args
