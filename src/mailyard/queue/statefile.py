"""Small JSON state files kept under the data folder (``cache/``): the MTA-STS policy
cache and the TLS report counts. Written whole to a new file, fsynced and renamed
over the old one, so a crash leaves the old file or the new one, never half of one.
Neither is worth stopping the server for: a file that cannot be read or written is
logged and the caller goes on without it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_json(path: Path, *, what: str) -> Any | None:
    """The document in ``path``; None when there is none (silently) or it cannot be
    read or parsed (logged, naming ``what``)."""
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s %s not read (%s): starting without it", what, path, e)
        return None


def write_json(path: Path, doc: Any, *, what: str, indent: int | None = None) -> bool:
    """Replace ``path`` with ``doc`` atomically and durably; False (logged) on failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=indent, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("%s %s not written: %s", what, path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
