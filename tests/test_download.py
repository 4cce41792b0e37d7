"""Download stage: real HTTP on 127.0.0.1 (Range resume, checksum, zip-slip, size cap), sources."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tool_env

from smdim.config import build
from smdim.data.config import DownloadConfig, EmbeddedConfig
from smdim.data.embedded import abc_tunes
from smdim.data.embedded import build as build_embedded
from smdim.data.extract import safe_extract
from smdim.data.fetch import download
from smdim.data.sources import fetch_dataset, select_pop909
from smdim.errors import SmdimError


class _Server:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files, with Range support.

    `cut_first` = N: the first GET announces the full length but sends only N bytes and closes.
    """

    def __init__(self, files: dict[str, bytes], cut_first: int | None = None) -> None:
        self.files, self.cut_first, self.requests = files, cut_first, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(dict(self.headers))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first is not None and len(server.requests) == 1:
                    self.wfile.write(body[: server.cut_first])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def _serve(files: dict[str, bytes], cut_first: int | None = None) -> _Server:
        servers.append(_Server(files, cut_first))
        return servers[-1]

    yield _serve
    for s in servers:
        s.close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _midi_zip(shared_data: Path, n: int = 3) -> bytes:
    songs = sorted((shared_data / "pop909").glob("*.mid"))[:n]
    members = {f"POP909-Dataset-master/POP909/{p.stem}/{p.name}": p.read_bytes() for p in songs}
    members[f"POP909-Dataset-master/POP909/{songs[0].stem}/versions/v1.mid"] = b"not kept"
    members["POP909-Dataset-master/README.md"] = b"readme"
    return _zip(members)


def _cfg(tmp_path: Path, **download: object) -> DownloadConfig:
    return build(DownloadConfig, {"cache_dir": str(tmp_path / "cache"), "retries": 2,
                                  "backoff_s": 0.01, "timeout_s": 10, **download}, "download")


def test_download_normal_and_archive_dataset(tmp_path, serve, shared_data):
    data = _midi_zip(shared_data)
    srv = serve({"/pop.zip": data})
    cfg = _cfg(tmp_path, pop909={"url": srv.url + "/pop.zip"})
    manifest = fetch_dataset("pop909", cfg, tmp_path / "raw" / "pop909", workers=1)
    assert [f["path"] for f in manifest["files"]] == ["001.mid", "002.mid", "003.mid"]
    assert manifest["source"]["archive_sha256"] == hashlib.sha256(data).hexdigest()
    for f in manifest["files"]:
        assert (shared_data / "pop909" / f["path"]).read_bytes() == (tmp_path / "raw/pop909" / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256((shared_data / "pop909" / f["path"]).read_bytes()).hexdigest()
    on_disk = json.loads((tmp_path / "raw/pop909/manifest.json").read_text())
    assert on_disk["counts"]["files"] == 3
    assert not list((tmp_path / "raw").glob(".extract-*"))
    # A second run reuses the cached archive: no new request.
    n = len(srv.requests)
    fetch_dataset("pop909", cfg, tmp_path / "raw2" / "pop909", workers=1)
    assert len(srv.requests) == n


def test_interrupted_transfer_resumes_with_range(tmp_path, serve):
    data = bytes(range(256)) * 4000  # ~1 MB
    srv = serve({"/big.bin": data}, cut_first=300_000)
    dest = tmp_path / "big.bin"
    got = download(srv.url + "/big.bin", dest, sha256=hashlib.sha256(data).hexdigest(),
                   retries=3, backoff_s=0.01, timeout_s=10, progress=False)
    assert dest.read_bytes() == data and got == hashlib.sha256(data).hexdigest()
    assert len(srv.requests) == 2
    assert "Range" not in srv.requests[0]
    assert srv.requests[1]["Range"] == "bytes=300000-"
    assert not dest.with_name("big.bin.part").exists()


def test_checksum_mismatch_stage_fails_cleanly(tmp_path, serve, shared_data):
    srv = serve({"/pop.zip": _midi_zip(shared_data)})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(datasets=["pop909"], cache_dir="cache", retries=0, backoff_s=0.0)
    params["download"]["pop909"].update(url=srv.url + "/pop.zip", sha256="0" * 64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = subprocess.run([sys.executable, "-m", "pipeline.download"], cwd=tmp_path, capture_output=True,
                       text=True, env=tool_env(PYTHONPATH=str(ROOT)))
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "sha256 mismatch" in err
    assert not (tmp_path / "data" / "raw").exists()
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]


def test_zip_slip_is_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"ok/a.mid": b"MThd", "../../escaped.mid": b"MThd"}))
    target = tmp_path / "deep" / "target"
    with pytest.raises(SmdimError, match="escapes"):
        safe_extract(archive, target, max_bytes=10**6)
    assert not (tmp_path / "escaped.mid").exists() and not (tmp_path / "deep" / "escaped.mid").exists()
    assert not target.exists()
    archive.write_bytes(_zip({"/abs/a.mid": b"MThd"}))
    with pytest.raises(SmdimError, match="absolute"):
        safe_extract(archive, target, max_bytes=10**6)


def test_tar_symlink_escaping_is_rejected(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("data/link.mid")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(SmdimError, match="outside the target"):
        safe_extract(archive, tmp_path / "t", max_bytes=10**6)
    assert not (tmp_path / "t").exists()


def test_size_cap(tmp_path, serve):
    archive = _zip({"a.mid": b"x" * 300_000, "b.mid": b"y" * 300_000})
    srv = serve({"/big.zip": archive})
    cfg = _cfg(tmp_path, local={"url": srv.url + "/big.zip", "max_extract_mb": 0.5})
    with pytest.raises(SmdimError, match="over the cap"):
        fetch_dataset("local", cfg, tmp_path / "raw" / "local", workers=1)
    assert not [f for f in (tmp_path / "raw").rglob("*.mid")]
    cfg = _cfg(tmp_path, local={"url": srv.url + "/big.zip", "max_extract_mb": 1.0})
    assert fetch_dataset("local", cfg, tmp_path / "ok" / "local", workers=1)["counts"]["files"] == 2


def test_folkdb_without_url_or_path_is_one_line_error(tmp_path):
    with pytest.raises(SmdimError) as e:
        fetch_dataset("folkdb", _cfg(tmp_path), tmp_path / "raw" / "folkdb", workers=1)
    msg = str(e.value)
    assert "\n" not in msg and "download.folkdb.url" in msg and "download.folkdb.path" in msg


def test_mirror_directory_and_limit(tmp_path, shared_data):
    cfg = _cfg(tmp_path, maestro={"mirror": (shared_data / "maestro-sample").as_uri(), "limit": 4},
               pop909={"mirror": str(shared_data / "pop909"), "limit": 6})
    m = fetch_dataset("maestro", cfg, tmp_path / "raw" / "maestro", workers=1)
    assert m["counts"]["files"] == 4 and m["source"]["kind"] == "mirror"
    m = fetch_dataset("pop909", cfg, tmp_path / "raw" / "pop909", workers=1)
    assert [f["path"] for f in m["files"]] == [f"{i:03d}.mid" for i in range(1, 7)]


def test_mirror_archive_file_checked_against_pinned_sha(tmp_path, shared_data):
    archive = tmp_path / "pop.zip"
    archive.write_bytes(_midi_zip(shared_data, n=2))
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    cfg = _cfg(tmp_path, pop909={"mirror": archive.as_uri(), "sha256": good})
    m = fetch_dataset("pop909", cfg, tmp_path / "raw" / "pop909", workers=1)
    assert [f["path"] for f in m["files"]] == ["001.mid", "002.mid"] and m["source"]["archive_sha256"] == good
    cfg = _cfg(tmp_path, pop909={"mirror": str(archive), "sha256": "f" * 64})
    with pytest.raises(SmdimError, match="expected f+"):
        fetch_dataset("pop909", cfg, tmp_path / "bad" / "pop909", workers=1)
    assert not list((tmp_path / "bad").rglob("*.mid"))


def test_pop909_selection_skips_versions():
    paths = ["R/POP909/001/001.mid", "R/POP909/001/versions/001.mid", "R/POP909/002/002.mid",
             "R/POP909/002/003.mid", "R/POP909/index.xlsx", "004.mid"]
    assert select_pop909(paths) == {"R/POP909/001/001.mid": "001.mid",
                                    "R/POP909/002/002.mid": "002.mid", "004.mid": "004.mid"}


def test_embedded_small_limit(tmp_path):
    out = tmp_path / "embedded"
    skipped = build_embedded(EmbeddedConfig(collections=["han1", "chorales"], limit=3), out, workers=1)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mid"))
    assert [f for f in files if f.startswith("han1/")] == ["han1/0001.mid", "han1/0002.mid", "han1/0003.mid"]
    assert len(files) + len(skipped) == 6
    assert all(p.read_bytes().startswith(b"MThd") for p in out.rglob("*.mid"))


def test_abc_split_matches_tune_count():
    from music21 import common

    text = (common.getCorpusFilePath() / "essenFolksong" / "han1.abc").read_text(encoding="latin-1")
    tunes = abc_tunes(text)
    assert len(tunes) == 554 and all(t.startswith("X:") for t in tunes)
