"""Small helpers around asyncio streams shared by the protocol adapters."""

from __future__ import annotations

import asyncio


def discard_buffered(reader: asyncio.StreamReader) -> None:
    """Drop plaintext a StreamReader already holds (before a STARTTLS/STLS handshake).

    Bytes that arrived after the STARTTLS command but before the handshake must never be
    read as commands afterwards (CVE-2011-0411 class). asyncio has no public way to drop
    what a StreamReader buffered, so this clears its private buffer; re-check on upgrades
    (tests/integration/test_smtp_policy.py::test_pipelined_after_starttls_is_discarded).
    """
    buf = getattr(reader, "_buffer", None)
    if isinstance(buf, bytearray):
        buf.clear()
