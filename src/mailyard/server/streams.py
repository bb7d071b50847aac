"""Small helpers around asyncio streams shared by the protocol adapters."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, Protocol


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


def below_high_water(transport: Any) -> bool:
    """True when the transport's write buffer is at or below its high-water mark, so
    that ``drain()`` would not wait (False when the transport cannot tell)."""
    try:
        return bool(transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1])
    except (AttributeError, NotImplementedError, TypeError):
        return False


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


class SessionStopping(Exception):
    """The server is stopping and the session was waiting for its client's next command."""


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


class Quiesce:
    """How a stopping server tells its sessions (one per server process).

    A session waiting for its client's next command, with nothing of its own in flight
    (no SMTP transaction, no POP3 or IMAP command half received), registers for that
    wait; ``stop()`` interrupts every registered wait, and a session that starts one
    after ``stop()`` sees ``stopping`` first. Each then says goodbye in its protocol
    (421, -ERR, * BYE) and closes, so an idle client (an IMAP IDLE, a pooled SMTP
    connection) does not hold the shutdown for its grace period, while a session in
    the middle of a message finishes it first.
    """

    __slots__ = ("_waiting", "stopping")

    def __init__(self) -> None:
        self.stopping = False
        self._waiting: set[Interruptible] = set()

    def add(self, session: Interruptible) -> None:
        self._waiting.add(session)

    def discard(self, session: Interruptible) -> None:
        self._waiting.discard(session)

    def stop(self) -> None:
        self.stopping = True
        waiting, self._waiting = self._waiting, set()
        for session in waiting:
            session.interrupt()


class ReadWatchdog:
    """Bounds every wait for the peer with one lazy timer per session.

    ``read(reader, n, deadline)`` waits for data until ``deadline`` (loop time) and
    raises TimeoutError past it. Instead of a timeout context per read (arming and
    cancelling a timer each time cost more than the rest of a small command's work),
    one timer stays armed: when it fires during a read that is not yet due, it re-arms
    itself for that read's deadline; when it finds the read overdue, it cancels the
    session's task, and ``read`` turns that cancellation, and only that one, into
    TimeoutError (told apart from a cancellation from outside the way
    ``asyncio.timeout`` does it, with ``Task.uncancel``). A busy session so arms about
    one timer per timeout period. ``close()`` at the end of the session.

    A read given a :class:`Quiesce` is a wait between commands: it raises
    SessionStopping at once when the server is stopping, or when ``stop()`` interrupts it.
    """

    __slots__ = ("_deadline", "_fired", "_loop", "_reading", "_stopped", "_task", "_timer")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._reading = False
        self._fired = False
        self._stopped = False

    async def read(self, reader: asyncio.StreamReader, n: int, deadline: float,
                   quiesce: Quiesce | None = None) -> bytes:
        if deadline <= self._loop.time():
            raise TimeoutError
        if quiesce is not None:
            if quiesce.stopping:
                raise SessionStopping
            quiesce.add(self)
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none, or a later one: (re-)arm
            self._arm(deadline)
        self._reading = True
        try:
            return await reader.read(n)
        except asyncio.CancelledError:
            task = self._task
            if not (self._fired or self._stopped) or task is None:
                raise
            stopped = self._stopped
            self._fired = self._stopped = False
            if task.uncancel() > 0:
                raise  # cancelled from outside as well
            if stopped:
                raise SessionStopping from None
            raise TimeoutError from None
        finally:
            self._reading = False
            if quiesce is not None:
                quiesce.discard(self)

    def interrupt(self) -> None:
        """End the read in progress with SessionStopping (from Quiesce.stop)."""
        if self._reading and self._task is not None and not (self._fired or self._stopped):
            self._stopped = True
            self._task.cancel()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._reading or self._task is None:
            return  # not waiting on the peer: the next read arms it again
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        if self._stopped:
            return  # already interrupted
        self._fired = True
        self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
