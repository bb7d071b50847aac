"""Small helpers around asyncio streams shared by the protocol adapters."""

from __future__ import annotations

import asyncio
import ssl


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


def pause_reading(writer: asyncio.StreamWriter) -> None:
    """Stop reading before answering STARTTLS/STLS with its go-ahead.

    The client may send its ClientHello right behind our go-ahead, while
    ``StreamWriter.start_tls`` is still awaiting ``drain()``; read into the StreamReader
    then, it would be lost and both sides would wait for each other. ``loop.start_tls``
    resumes reading once the TLS protocol owns the socket (asyncio and uvloop alike).
    """
    pause = getattr(writer.transport, "pause_reading", None)
    if pause is not None:
        pause()


async def upgrade_to_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         context: ssl.SSLContext, go_ahead: bytes, *,
                         handshake_timeout: float) -> None:
    """Send the go-ahead (e.g. ``220 2.0.0 Ready to start TLS``) and do the handshake.

    Plaintext the client pipelined before it saw the go-ahead is dropped, never
    executed after the handshake (CVE-2011-0411 class).
    """
    pause_reading(writer)
    writer.write(go_ahead)
    discard_buffered(reader)
    # Nothing is dropped after the handshake: reading was paused before the go-ahead, so
    # whatever the reader holds now came through TLS, possibly the client's first command.
    await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
