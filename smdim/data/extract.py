"""Safe extraction of zip and tar archives: no path escapes (zip-slip), no links, a size cap."""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from smdim.errors import SmdimError


@dataclass(frozen=True)
class _Member:
    name: str  # path inside the archive, '/'-separated
    size: int  # uncompressed size announced by the archive
    kind: str  # "file" | "dir" | "link" | "other"
    link: str = ""  # for "link": its target relative to the archive root (normalised)


def is_archive(path: str | os.PathLike) -> bool:
    """True if `path` is a zip or tar file (by content, not by name)."""
    path = Path(path)
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


# What a truncated or damaged archive raises, from the container or its compression layer.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


@contextmanager
def _intact(archive: Path) -> Iterator[None]:
    """Turn a damaged archive's low-level error into one line naming the file and what to do."""
    try:
        yield
    except _CORRUPT as e:
        reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise SmdimError(
            f"{archive}: truncated or corrupt archive ({reason}); delete it and download it again, "
            "or point the mirror at an intact copy"
        ) from None


def archive_files(archive: str | os.PathLike) -> list[str]:
    """Names of the regular files in `archive` (nothing is extracted)."""
    archive = Path(archive)
    with _intact(archive), _open(archive) as (members, _):
        return [m.name for m in members if m.kind == "file"]


def safe_extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    max_bytes: int,
    keep: Callable[[str], bool] = lambda name: True,
) -> list[str]:
    """Extract the regular files of `archive` that `keep(name)` selects; return their names.

    The whole archive is checked before anything is written: a member with an absolute path,
    a `..` component, or a link pointing outside `target` rejects it, and so does a selected
    total larger than `max_bytes` (also enforced while writing, in case headers lie).
    """
    archive, target = Path(archive), Path(target)
    with _intact(archive), _open(archive) as (members, opener):
        chosen = []
        for m in members:
            _check(archive, m)
            if m.kind == "file" and keep(m.name):
                chosen.append(m)
        announced = sum(m.size for m in chosen)
        if announced > max_bytes:
            raise SmdimError(
                f"{archive}: would extract {announced / 1e6:.1f} MB, over the cap of "
                f"{max_bytes / 1e6:.1f} MB; raise max_extract_mb if the archive is trusted"
            )
        target.mkdir(parents=True, exist_ok=True)
        written = 0
        for m in chosen:
            out = target.joinpath(*m.name.split("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener(m) as src, open(out, "wb") as dst:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > max_bytes:
                        raise SmdimError(
                            f"{archive}: extracted data exceeds the cap of {max_bytes / 1e6:.1f} MB "
                            "(sizes in the archive are wrong); raise max_extract_mb if trusted"
                        )
                    dst.write(block)
    return [m.name for m in chosen]


def _check(archive: Path, m: _Member) -> None:
    name = m.name
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise SmdimError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in name.replace("\\", "/").split("/"):
        raise SmdimError(f"{archive}: member {name!r} escapes the target with '..'; refusing")
    if m.kind == "link":
        if m.link.startswith("/") or m.link == ".." or m.link.startswith("../"):
            raise SmdimError(
                f"{archive}: link {name!r} -> {m.link!r} points outside the target; refusing"
            )


def _symlink_target(name: str, linkname: str) -> str:
    if linkname.startswith("/"):
        return linkname
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))


@contextmanager
def _open(archive: Path) -> Iterator[tuple[list[_Member], Callable[[_Member], IO[bytes]]]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = {}
            members = []
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    link = _symlink_target(info.filename, zf.read(info).decode("utf-8", "replace"))
                    m = _Member(info.filename, 0, "link", link)
                else:
                    m = _Member(info.filename, info.file_size, "dir" if info.is_dir() else "file")
                infos[info.filename] = info
                members.append(m)
            yield members, lambda m: zf.open(infos[m.name])
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise SmdimError(f"{archive}: not a zip or tar archive; check the url/mirror") from None
    with tf:
        infos = {}
        members = []
        for info in tf.getmembers():
            infos[info.name] = info
            if info.issym():
                m = _Member(info.name, 0, "link", _symlink_target(info.name, info.linkname))
            elif info.islnk():  # hard links name their target from the archive root
                link = info.linkname if info.linkname.startswith("/") else posixpath.normpath(info.linkname)
                m = _Member(info.name, 0, "link", link)
            else:
                kind = "file" if info.isfile() else "dir" if info.isdir() else "other"
                m = _Member(info.name, info.size, kind)
            members.append(m)
        yield members, lambda m: tf.extractfile(infos[m.name])
