"""Atomic file and directory writes: nothing already produced is lost or left half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smdim.errors import SmdimError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over `path`, on error delete it."""
    with _temp_for(Path(path), Path.touch) as tmp:
        yield tmp
        if tmp.exists():  # a normal file's permissions, like any file the user writes
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on success it replaces `path` whole.

    Safe with several writers at once (e.g. two `python -m pipeline.download`): each builds its
    own temp directory and the last to finish wins; readers see a complete old or new `path`.
    """
    with _temp_for(Path(path), Path.mkdir) as tmp:
        yield tmp
        _replace_dir(tmp, Path(path))


@contextlib.contextmanager
def _temp_for(path: Path, create: Callable[[Path], object]) -> Iterator[Path]:
    """A new temp sibling of `path` (stale ones of killed writers cleared first), removed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(path)
    tmp = _temp_sibling(path, "tmp")
    create(tmp)
    try:
        yield tmp
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename directory `src` to `dst`, moving any existing `dst` aside first (then deleting it)."""
    old_dirs = []
    try:
        while True:
            try:
                os.rename(src, dst)  # succeeds when dst is absent (or an empty directory)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = _temp_sibling(dst, "old")
            try:
                os.rename(dst, old)
            except FileNotFoundError:  # another writer moved it aside first: try again
                continue
            old_dirs.append(old)
    finally:
        for old in old_dirs:
            shutil.rmtree(old, ignore_errors=True)


def _temp_sibling(path: Path, kind: str) -> Path:
    """`.<name>.<pid>-<random>.<kind>` next to `path`: the pid tells whether its writer still runs."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def clear_stale_temps(path: str | os.PathLike) -> int:
    """Delete temp siblings of `path` left by killed writers (their process is gone); return how many.

    Siblings of live processes are in use by a concurrent writer and stay.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.(tmp|old)$")
    removed = 0
    if not path.parent.is_dir():
        return 0
    for sibling in path.parent.iterdir():
        m = pattern.match(sibling.name)
        if m is None or _alive(int(m[1])):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, indented and with sorted keys so reruns are byte-identical."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with a one-line error naming the file when it is missing or broken."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmdimError(f"{path}: not found; run the stage that produces it (dvc repro)") from None
    except json.JSONDecodeError as e:
        raise SmdimError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it and rerun") from None
