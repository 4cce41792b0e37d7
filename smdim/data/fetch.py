"""HTTP download with resume (Range), retries with back-off, checksum check and atomic rename."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from smdim.errors import SmdimError

log = logging.getLogger(__name__)
CHUNK = 1 << 16


class _Retryable(Exception):
    """A transient failure: the transfer may be retried (and resumed)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_url_path(url: str) -> Path | None:
    """The local path of a file:// URL, or None for any other scheme."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parts.path))


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> str:
    """Fetch an http(s) `url` to `dest` (resuming `dest`.part), verify `sha256`; return the sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, retries, backoff_s, timeout_s, progress)
    got = sha256_file(part)
    if sha256 is not None and got != sha256.lower():
        part.unlink()
        raise SmdimError(
            f"{url}: sha256 mismatch (expected {sha256}, got {got}); the download was deleted, "
            "rerun or fix the sha256/url parameter"
        )
    os.replace(part, dest)
    return got


def _fetch_with_retries(
    url: str, part: Path, retries: int, backoff_s: float, timeout_s: float, progress: bool
) -> None:
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout_s, progress)
            return
        except _Retryable as e:
            if attempt == retries:
                raise SmdimError(
                    f"{url}: download failed after {retries + 1} attempts ({e}); "
                    "rerun to resume, or set a mirror"
                ) from None
            delay = backoff_s * 2**attempt
            log.warning("%s: %s; retrying in %.1f s (resuming)", url, e, delay)
            time.sleep(delay)


def _fetch_once(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    """One HTTP request that continues `part` from its current size."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "smdim-download"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Our .part is as long as (or longer than) the file: start over to be sure.
            part.unlink()
            raise _Retryable("HTTP 416 on resume; restarting from scratch") from None
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code}") from None
        raise SmdimError(f"{url}: HTTP {e.code} {e.reason}; check the url parameter") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range: take the whole body again
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        got = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                   desc=Path(urllib.parse.urlparse(url).path).name, disable=not progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Retryable(f"connection lost after {got} bytes ({type(e).__name__})") from None
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and got < total:
        raise _Retryable(f"connection closed after {got} of {total} bytes")
