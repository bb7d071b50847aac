"""Random identifiers (message, queue entry and session ids) from a buffer of CSPRNG bytes.

``secrets.token_hex`` makes a ``getrandom`` system call per id. On the SMTP path that
is one per message, and a system call from the event loop gives the GIL away and must
take it back, a wait of its own while the storage threads hold it. So the bytes are
drawn from ``os.urandom`` 4 KiB at a time (one call per 512 ids of 8 bytes); they are
the same CSPRNG output ``secrets`` would use. A forked child (an SMTP receiver process)
drops what it inherited, so parent and child never hand out the same id.
"""

from __future__ import annotations

import os
import threading

_REFILL = 4096
_lock = threading.Lock()
_buf = b""
_pos = 0


def token_hex(nbytes: int = 8) -> str:
    """``nbytes`` random bytes as hex, like ``secrets.token_hex(nbytes)``."""
    global _buf, _pos
    with _lock:
        end = _pos + nbytes
        if end > len(_buf):
            _buf = os.urandom(max(_REFILL, nbytes))
            _pos, end = 0, nbytes
        out = _buf[_pos:end]
        _pos = end
    return out.hex()


def _forget() -> None:
    global _buf, _pos, _lock
    _lock = threading.Lock()
    _buf, _pos = b"", 0


os.register_at_fork(after_in_child=_forget)
