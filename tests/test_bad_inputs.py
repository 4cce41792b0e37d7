"""Bad inputs end in one line naming the file and what to do, never a traceback, and leave data intact."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tool_env

from smdim.io import atomic_dir, atomic_path, clear_stale_temps


def _stage(project: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=project, capture_output=True,
                          text=True, env={**tool_env(), "PYTHONPATH": str(ROOT)})


def _download_project(tmp_path: Path, mirror: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["datasets"] = ["local"]
    params["download"]["local"]["mirror"] = str(mirror)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    [line] = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    return line


def _generate_from_edited_shipped_model(tmp_path: Path, edit) -> tuple[str, dict]:
    """`smdim generate` on a copy of the shipped checkpoint after `edit(ckpt)`, as a hand edit might
    leave it; returns its one error line (no output may be written) and the edited checkpoint."""
    from smdim.pretrained import PRETRAINED

    ckpt = torch.load(PRETRAINED, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    p = subprocess.run([sys.executable, "-m", "smdim.cli", "generate", "--checkpoint", str(tmp_path / "edited.pt"),
                        "--out", str(tmp_path / "x.mid")], capture_output=True, text=True, cwd=ROOT)
    line = _one_error_line(p)
    assert not (tmp_path / "x.mid").exists()
    return line, ckpt


def test_truncated_tar_gz_mirror(tmp_path, shared_data):
    songs = sorted((shared_data / "pop909").glob("*.mid"))[:3]
    data = _tar_gz({f"midi/{p.name}": p.read_bytes() for p in songs})
    mirror = tmp_path / "corpus.tar.gz"
    mirror.write_bytes(data[: len(data) // 2])
    project = _download_project(tmp_path, mirror)
    line = _one_error_line(_stage(project, "pipeline.download"))
    assert f"{mirror}: truncated or corrupt archive" in line and "download it again" in line
    assert not (project / "data/raw").exists()
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".raw.")]


def test_zip_whose_header_understates_an_entry(tmp_path, shared_data):
    song = sorted((shared_data / "pop909").glob("*.mid"))[0].read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("midi/a.mid", song)
    data = bytearray(buf.getvalue())
    data[data.find(song[:64]) + 40] ^= 0xFF  # the stored bytes no longer match the header's CRC
    mirror = tmp_path / "corpus.zip"
    mirror.write_bytes(bytes(data))
    line = _one_error_line(_stage(_download_project(tmp_path, mirror), "pipeline.download"))
    assert f"{mirror}: truncated or corrupt archive (Bad CRC-32" in line


def test_concurrent_atomic_dir_writers_all_succeed_and_last_wins(tmp_path):
    target = tmp_path / "raw"
    start = threading.Barrier(3)
    errors = []

    def write(i: int) -> None:
        try:
            with atomic_dir(target) as tmp:
                for k in range(20):
                    (tmp / f"{k}.txt").write_text(str(i))
                start.wait()  # all three rename at the same moment
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    contents = {p.read_text() for p in target.iterdir()}
    assert len(contents) == 1 and len(list(target.iterdir())) == 20  # one writer's complete set
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_three_download_stages_at_once(tmp_path, shared_data):
    project = _download_project(tmp_path, shared_data / "pop909")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["download"]["local"]["limit"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**tool_env(), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.download"], cwd=project, env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    assert sorted(p.name for p in (project / "data/raw/local").iterdir()) == [
        "001.mid", "002.mid", "003.mid", "manifest.json"]
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]


def test_stale_temp_siblings_of_killed_writers_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # that process has exited
    stale_dir = tmp_path / f".tokens.{pid}-0a1b2c3d.tmp"
    stale_dir.mkdir()
    (stale_dir / "shard.parquet").write_text("half")
    stale_file = tmp_path / f".model.pt.{pid}-0a1b2c3d.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".tokens.{os.getpid()}-99999999.tmp"  # a concurrent writer, still running
    live.mkdir()
    other = tmp_path / ".tokens.v2.123-0a1b2c3d.tmp"  # belongs to a sibling named tokens.v2
    other.mkdir()
    with atomic_dir(tmp_path / "tokens") as out:
        (out / "x").write_text("ok")
    with atomic_path(tmp_path / "model.pt") as f:
        f.write_text("weights")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and other.exists()
    assert clear_stale_temps(tmp_path / "tokens") == 0


@pytest.mark.parametrize("case", ["directory", "resume-state", "random-bytes"])
def test_generate_with_a_wrong_checkpoint_says_what_to_use(tmp_path, case):
    if case == "directory":
        path = tmp_path / "models"
        path.mkdir()
        expect = "models: is a directory; pass the checkpoint file, e.g."
    elif case == "resume-state":
        path = tmp_path / "last.pt"
        torch.save({"step": 10, "fingerprint": {}, "model": {}}, path)
        expect = "last.pt: a training resume state, not a model; use models/model.pt"
    else:
        path = tmp_path / "model.pt"
        path.write_bytes(os.urandom(4096))
        expect = "model.pt: not a PyTorch checkpoint"
    p = subprocess.run([sys.executable, "-m", "smdim.cli", "generate", "--checkpoint", str(path),
                        "--out", str(tmp_path / "x.mid")], capture_output=True, text=True, cwd=ROOT)
    line = _one_error_line(p)
    assert expect in line and "weights_only" not in line


@pytest.mark.parametrize("shares", [lambda n: [[0.5] * 11] * n, lambda n: "C major",
                                    lambda n: [[-1.0] + [0.1] * 11] * n, lambda n: [[0.1] * 12] * (n + 1)],
                         ids=["short-row", "not-numbers", "negative", "extra-row"])
def test_generate_with_damaged_key_shares_says_so_at_load(tmp_path, shares):
    def edit(ckpt):
        ckpt["extra"]["key_shares"] = shares(1 + len(ckpt["extra"]["collections"]))

    line, ckpt = _generate_from_edited_shipped_model(tmp_path, edit)
    n = 1 + len(ckpt["extra"]["collections"])  # rows: all pieces, then one per collection
    assert f"edited.pt: key_shares must be {n} rows of 12 non-negative tonic shares" in line, line
    ckpt["extra"]["key_shares"] = [[1.0] + [0.0] * 11] * n  # well formed: loads, and draws C
    torch.save(ckpt, tmp_path / "fine.pt")
    from smdim.sampling.composer import load_composer

    assert load_composer(str(tmp_path / "fine.pt")).tonics_for("prior", [None, None], 0) == [0, 0]


@pytest.mark.parametrize("edit,expect", [
    ({"temperature": "hot"}, "sample_defaults.temperature: input should be a valid number"),
    ({"method": "bogus"}, "sample_defaults.method: input should be 'ancestral'"),
    ({"top_p": 2.0}, "sample_defaults: top_p must be in (0, 1]"),
], ids=["wrong-type", "unknown-method", "out-of-range"])
def test_generate_with_damaged_sample_defaults_says_so_at_load(tmp_path, edit, expect):
    line, _ = _generate_from_edited_shipped_model(tmp_path, lambda ckpt: ckpt["extra"]["sample_defaults"].update(edit))
    assert f"edited.pt:{expect}" in line, line


def test_bpe_vocab_below_the_base_vocabulary(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tokenize"]["bpe_vocab"] = 100
    project = tmp_path / "proj"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    line = _one_error_line(_stage(project, "pipeline.tokenize"))
    assert "tokenize: bpe_vocab=100 must be larger than the 285 base REMI tokens" in line, line
    assert not (project / "data").exists(), "nothing tokenized before the check"
