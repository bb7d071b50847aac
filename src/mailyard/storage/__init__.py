"""Storage: the seam (``interface``, ``models``) and its backends.

``open_store`` picks a backend from a location: a directory (or ``sqlite://``
+ path) gives the embedded SQLite backend; ``postgresql://`` URLs are reserved
for the PostgreSQL backend. The store is returned unopened: ``await
store.open()`` before use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailyard.storage.interface import StorageError, Store


def open_store(url_or_dir: str | Path, *, clock: Callable[[], float] = time.time,
               **options: Any) -> Store:
    """A backend for ``url_or_dir`` (a data directory, ``sqlite:///abs/dir`` or ``sqlite://rel``)."""
    loc = str(url_or_dir)
    if loc.startswith(("postgres://", "postgresql://")):
        try:
            from mailyard.storage.postgres import PostgresStore  # type: ignore[attr-defined]
        except ImportError as exc:
            raise StorageError("the PostgreSQL backend is not available") from exc
        return PostgresStore(loc, clock=clock, **options)  # type: ignore[no-any-return]
    if loc.startswith("sqlite://"):
        loc = loc[len("sqlite://"):]
    elif "://" in loc:
        raise StorageError(f"unknown storage URL scheme: {loc.split('://', 1)[0]}")
    from mailyard.storage.sqlite import SQLiteStore

    return SQLiteStore(Path(loc), clock=clock, **options)


__all__ = ["open_store"]
