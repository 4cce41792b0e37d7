"""Shared fixtures: the real MIDI files in ../shared/data and temporary DVC projects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SMDIM_SHARED_DATA", ROOT.parent / "shared" / "data"))
BIN = Path(sys.executable).parent

# Tests never talk to analytics endpoints and keep tool state in temp dirs.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: POP909 songs, MAESTRO samples, broken MIDI files (never copied into the repo)."""
    if not (SHARED_DATA / "pop909").is_dir():
        pytest.fail(f"{SHARED_DATA}: shared test data not found; set SMDIM_SHARED_DATA")
    return SHARED_DATA


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` with `override` merged in recursively (override wins)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH (dvc stages call `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure show stdout+stderr in the assertion."""
    p = subprocess.run(cmd, cwd=cwd, env=kw.pop("env", tool_env()), capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        # The error lines first: a failing DVC experiment says why long before the tail (seen once
        # in test_objectives_comparison, with the reason cut off).
        lines = p.stdout.splitlines() + p.stderr.splitlines()  # not stdout + stderr: its last line has no newline
        errors = [line for line in lines if "ERROR" in line or "Error" in line]
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nerror lines:\n" + "\n".join(errors[-30:])
                             + f"\n--- stdout tail:\n{p.stdout[-4000:]}\n--- stderr tail:\n{p.stderr[-4000:]}")
    return p


@pytest.fixture
def make_project(tmp_path: Path):
    """Factory: a temporary git+DVC repo holding this project's pipeline with params overrides."""

    def _make(overrides: dict | None = None, name: str = "proj") -> Path:
        proj = tmp_path / name
        proj.mkdir()
        for item in ("dvc.yaml", ".dvcignore", "smdim", "pipeline", "flows"):
            src = ROOT / item
            if src.is_dir():
                shutil.copytree(src, proj / item, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, proj / item)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params = deep_merge(params, overrides or {})
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "init", "-q"], proj)
        run(["git", "config", "user.email", "t@example.com"], proj)
        run(["git", "config", "user.name", "test"], proj)
        run([str(BIN / "dvc"), "init", "-q"], proj)
        run([str(BIN / "dvc"), "config", "core.analytics", "false"], proj)
        run(["git", "add", "-A"], proj)
        run(["git", "commit", "-qm", "init"], proj)
        return proj

    return _make


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokens_dir(shared_data, tmp_path_factory) -> Path:
    """data/tokens for 24 POP909 songs: the project's REMI tokenizer.json and one contract shard."""
    from smdim.tokenization.config import TokenizeConfig

    return write_tokens_dir(shared_data, tmp_path_factory.mktemp("tokens"), TokenizeConfig())


def write_tokens_dir(shared_data: Path, out: Path, cfg) -> Path:
    """24 POP909 songs tokenized with `cfg` (a TokenizeConfig) into `out` as data/tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smdim.tokenization.encode import encode_file
    from smdim.tokenization.tokenizer import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(cfg)
    tok.save(out / "tokenizer.json")
    rows = []
    for i, path in enumerate(sorted((shared_data / "pop909").glob("*.mid"))[:24]):
        rows.append((path.stem, "valid" if i % 6 == 0 else "train", encode_file(tok, path)))
    table = pa.table({
        "dataset": pa.array(["pop909"] * len(rows), pa.string()),
        "piece_id": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "source_sha256": pa.array(["0" * 64] * len(rows), pa.string()),
        "n_tokens": pa.array([len(r[2]) for r in rows], pa.int32()),
        "n_bars": pa.array([r[2].count(tok["Bar_None"]) for r in rows], pa.int32()),
        "tokens": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
    })
    pq.write_table(table, out / "shard-00000.parquet", compression="zstd")
    return out
