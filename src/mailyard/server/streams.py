"""Small helpers around asyncio streams shared by the protocol adapters."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any


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


def ack_now(sock: Any) -> None:
    """Have the kernel acknowledge what it has received at once (Linux TCP_QUICKACK).

    Called when a STARTTLS handshake completes. The client's last handshake flight (its
    Finished) is then waiting for an ACK the kernel may delay by 40 ms or more, and a
    client without TCP_NODELAY holds its first command back until that ACK comes (Nagle):
    TLS 1.3 session tickets, which used to carry the ACK, are no longer sent (tls.py).
    """
    opt = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or opt is None:
        return
    with contextlib.suppress(OSError, AttributeError, TypeError, ValueError):
        sock.setsockopt(socket.IPPROTO_TCP, opt, 1)


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
    sock = writer.get_extra_info("socket")
    # Nothing is dropped after the handshake: reading was paused before the go-ahead, so
    # whatever the reader holds now came through TLS, possibly the client's first command.
    await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
    ack_now(sock)
