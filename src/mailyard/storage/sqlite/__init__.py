"""The embedded default storage backend: SQLite (WAL) metadata + content-addressed files."""

from mailyard.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
