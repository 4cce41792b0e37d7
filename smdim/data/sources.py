"""Dataset sources: resolve where each dataset comes from, select its MIDI files, write it out."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smdim.data import embedded
from smdim.data.config import ArchiveConfig, DownloadConfig
from smdim.data.extract import archive_files, is_archive, safe_extract
from smdim.data.fetch import download, file_url_path, sha256_file
from smdim.data.manifest import MIDI_SUFFIXES, write_manifest
from smdim.errors import SmdimError

log = logging.getLogger(__name__)
Selector = Callable[[list[str]], dict[str, str]]  # source paths -> {source path: output path}


def fetch_dataset(name: str, cfg: DownloadConfig, out: Path, workers: int) -> dict[str, Any]:
    """Build data/raw/<name>/ in `out` (a fresh directory) and return its manifest."""
    out.mkdir(parents=True)
    if name == "embedded":
        skipped = embedded.build(cfg.embedded, out, workers)
        source = {"kind": "music21", "collections": list(cfg.embedded.collections),
                  "limit": cfg.embedded.limit}
    else:
        acfg: ArchiveConfig = getattr(cfg, name)
        select = select_pop909 if name == "pop909" else select_midi
        source, skipped = _fetch_files(name, acfg, cfg, out, select)
    manifest = write_manifest(out, name, source, skipped)
    log.info("%s: %d files (%.1f MB), %d skipped", name, manifest["counts"]["files"],
             manifest["counts"]["bytes"] / 1e6, len(skipped))
    return manifest


def select_midi(paths: list[str]) -> dict[str, str]:
    """Every .mid/.midi file, with a single top-level folder common to all of them dropped."""
    mids = [p for p in paths if p.lower().endswith(MIDI_SUFFIXES)]
    heads = {p.split("/")[0] for p in mids}
    strip = len(heads) == 1 and all("/" in p for p in mids)
    return {p: p.split("/", 1)[1] if strip else p for p in mids}


_POP909_SONG = re.compile(r"(\d{3})\.mid", re.IGNORECASE)


def select_pop909(paths: list[str]) -> dict[str, str]:
    """Only the main per-song files (POP909/NNN/NNN.mid or a flat NNN.mid), not versions/."""
    out: dict[str, str] = {}
    for p in paths:
        parts = p.split("/")
        m = _POP909_SONG.fullmatch(parts[-1])
        if not m or any(part.lower() == "versions" for part in parts[:-1]):
            continue
        if len(parts) > 1 and parts[-2] != m.group(1):
            continue
        out.setdefault(p, f"{m.group(1)}.mid")
    return out


def _limited(mapping: dict[str, str], limit: int | None) -> dict[str, str]:
    keys = sorted(mapping, key=lambda k: (mapping[k], k))[:limit]
    return {k: mapping[k] for k in keys}


def _fetch_files(
    name: str, acfg: ArchiveConfig, cfg: DownloadConfig, out: Path, select: Selector
) -> tuple[dict[str, Any], list[dict]]:
    where = f"download.{name}"
    if acfg.mirror:
        origin, kind = acfg.mirror, "mirror"
    elif acfg.path:
        origin, kind = acfg.path, "path"
    elif acfg.url:
        origin, kind = acfg.url, "url"
    elif name == "folkdb":
        raise SmdimError(
            f"{where}: folkdb has no public download; set {where}.url (an archive URL) "
            f"or {where}.path (a directory of MIDI files)"
        )
    else:
        raise SmdimError(f"{where}.path: not set; point it at a directory of .mid/.midi files")
    source: dict[str, Any] = {"kind": kind, kind: origin}
    local = file_url_path(origin) if "://" in origin else Path(origin).expanduser()
    if local is None:  # a network URL
        archive = _cached_download(name, origin, acfg, cfg)
        source["archive_sha256"] = sha256_file(archive)
        return source, _from_archive(archive, out, acfg, select)
    if local.is_dir():
        return source, _from_directory(local, out, acfg, select)
    if not local.exists():
        raise SmdimError(f"{where}.{kind}: {origin} does not exist; fix the path")
    if not is_archive(local):
        raise SmdimError(f"{where}.{kind}: {origin} is neither a directory nor a zip/tar archive")
    got = sha256_file(local)
    if acfg.sha256 and got != acfg.sha256.lower():
        raise SmdimError(
            f"{where}.{kind}: {origin} has sha256 {got}, expected {acfg.sha256}; "
            "use the right archive or fix the sha256 parameter"
        )
    source["archive_sha256"] = got
    return source, _from_archive(local, out, acfg, select)


def _cached_download(name: str, url: str, acfg: ArchiveConfig, cfg: DownloadConfig) -> Path:
    """The archive for `url` in cache_dir: reused when complete (and matching), else fetched."""
    base = Path(urllib.parse.urlparse(url).path).name or "archive"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    dest = Path(cfg.cache_dir) / name / f"{key}-{base}"
    if dest.exists():
        if acfg.sha256 is None or sha256_file(dest) == acfg.sha256.lower():
            log.info("%s: using the cached %s", name, dest)
            return dest
        dest.unlink()
    download(url, dest, sha256=acfg.sha256, retries=cfg.retries, backoff_s=cfg.backoff_s,
             timeout_s=cfg.timeout_s)
    return dest


def _from_archive(archive: Path, out: Path, acfg: ArchiveConfig, select: Selector) -> list[dict]:
    chosen = _limited(select(archive_files(archive)), acfg.limit)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=out.parent) as tmp:
        safe_extract(archive, tmp, max_bytes=int(acfg.max_extract_mb * 1e6), keep=chosen.__contains__)
        return _place(Path(tmp), out, chosen, move=True)


def _from_directory(root: Path, out: Path, acfg: ArchiveConfig, select: Selector) -> list[dict]:
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return _place(root, out, _limited(select(paths), acfg.limit), move=False)


def _place(root: Path, out: Path, chosen: dict[str, str], move: bool) -> list[dict]:
    """Copy/move the chosen files to their output names; a name taken twice is skipped."""
    skipped = []
    taken: set[str] = set()
    for src_rel, dst_rel in chosen.items():
        if dst_rel in taken:
            skipped.append({"item": src_rel, "reason": f"duplicate output name {dst_rel}"})
            continue
        taken.add(dst_rel)
        dst = out / dst_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.move if move else shutil.copyfile)(root / src_rel, dst)
    if not taken:
        raise SmdimError(f"{out.name}: the source holds no MIDI files to keep; check its url/path/mirror")
    return skipped
