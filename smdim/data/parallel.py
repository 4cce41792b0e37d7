"""Ordered parallel map over worker processes (in-process when workers == 1)."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def ordered_map(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = (), chunksize: int = 2
) -> Iterator[Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]]:
    """Yield `imap(fn, items)` giving results in input order, run on `workers` processes."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield map
        return
    pool = multiprocessing.get_context().Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield lambda fn, items: pool.imap(fn, items, chunksize=chunksize)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
