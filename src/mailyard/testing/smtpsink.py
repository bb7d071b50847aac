"""A tiny scriptable SMTP peer for outbound-delivery tests.

    sink = SMTPSink(rcpt_replies={"bad@x.test": "550 5.1.1 no such user"})
    await sink.start("127.0.0.1", 0)
    ... deliver to sink.port ...
    sink.messages[0].content, sink.messages[0].recipients

Behaviour is plain attributes, changeable between connections: ``greeting``,
``ehlo_reply`` (a non-250 makes the client fall back to HELO), ``extensions``,
``starttls_context`` (STARTTLS is offered when set), ``starttls_reply``,
``mail_reply``, ``rcpt_replies`` / ``rcpt_default``, ``data_reply``,
``hang_after_data`` (accept the message then never answer),
``disconnect_after_dot`` (drop the connection instead of answering).

It records every accepted transaction (:class:`ReceivedMessage`), with the raw
wire form of the body as well as the unstuffed content.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

DEFAULT_EXTENSIONS = ("PIPELINING", "SIZE 100000000", "8BITMIME", "SMTPUTF8", "DSN",
                      "ENHANCEDSTATUSCODES")


@dataclass
class ReceivedMessage:
    sender: str
    mail_params: list[str]
    recipients: list[str]
    rcpt_params: dict[str, list[str]]
    wire: bytes  # what came after DATA (dot-stuffed, with the terminator) or the BDAT chunks
    content: bytes  # unstuffed message
    tls: bool
    helo: str
    via: str  # "DATA" or "BDAT"


@dataclass
class SinkConnection:
    tls: bool = False
    commands: list[str] = field(default_factory=list)


class SMTPSink:
    def __init__(self, *, hostname: str = "sink.test",
                 greeting: str = "220 sink.test ESMTP ready",
                 extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
                 ehlo_reply: str | None = None,
                 starttls_context: ssl.SSLContext | None = None,
                 starttls_reply: str = "220 2.0.0 Ready to start TLS",
                 mail_reply: str = "250 2.1.0 OK",
                 rcpt_replies: dict[str, str] | None = None,
                 rcpt_default: str = "250 2.1.5 OK",
                 data_reply: str = "250 2.0.0 queued",
                 hang_after_data: bool = False,
                 disconnect_after_dot: bool = False) -> None:
        self.hostname = hostname
        self.greeting = greeting
        self.extensions = extensions
        self.ehlo_reply = ehlo_reply
        self.starttls_context = starttls_context
        self.starttls_reply = starttls_reply
        self.mail_reply = mail_reply
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.rcpt_default = rcpt_default
        self.data_reply = data_reply
        self.hang_after_data = hang_after_data
        self.disconnect_after_dot = disconnect_after_dot
        self.messages: list[ReceivedMessage] = []
        self.connections: list[SinkConnection] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop_listening(self) -> None:
        """Refuse new connections (the "remote is down" case); ``start`` again to resume."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        await self.stop_listening()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def __aenter__(self) -> SMTPSink:
        if self._server is None:
            await self.start(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = SinkConnection()
        self.connections.append(conn)

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say(self.greeting)
        if not self.greeting.startswith("2"):
            return
        helo = ""
        sender: str | None = None
        mail_params: list[str] = []
        rcpts: list[str] = []
        rcpt_params: dict[str, list[str]] = {}
        chunks: list[bytes] = []
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            conn.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                if self.ehlo_reply is not None:
                    await say(self.ehlo_reply)
                    continue
                helo = line[5:]
                exts = list(self.extensions)
                if self.starttls_context is not None and not conn.tls:
                    exts.append("STARTTLS")
                lines = [self.hostname, *exts]
                out = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
                await say("\r\n".join(out))
            elif verb == "HELO":
                helo = line[5:]
                await say(f"250 {self.hostname}")
            elif verb == "STARTTLS":
                if self.starttls_context is None or conn.tls:
                    await say("502 5.5.1 no")
                    continue
                await say(self.starttls_reply)
                if not self.starttls_reply.startswith("220"):
                    continue
                await writer.start_tls(self.starttls_context)
                conn.tls = True
                sender, rcpts, chunks = None, [], []
            elif verb == "MAIL":
                await say(self.mail_reply)
                if self.mail_reply.startswith("2"):
                    parts = line[10:].split(" ")
                    sender = parts[0].strip("<>")
                    mail_params = parts[1:]
                    rcpts, rcpt_params, chunks = [], {}, []
            elif verb == "RCPT":
                parts = line[8:].split(" ")
                addr = parts[0].strip("<>")
                if sender is None:
                    await say("503 5.5.1 MAIL first")
                    continue
                reply = self.rcpt_replies.get(addr.lower(), self.rcpt_default)
                if reply.startswith("2"):
                    rcpts.append(addr)
                    rcpt_params[addr] = parts[1:]
                await say(reply)
            elif verb == "DATA":
                if sender is None or not rcpts:
                    await say("554 5.5.1 no valid recipients")
                    continue
                await say("354 go ahead")
                wire = bytearray()
                while True:
                    ln = await reader.readline()
                    if not ln:
                        return
                    wire += ln
                    if ln == b".\r\n":
                        break
                body = bytes(wire[:-3])
                content = b"".join(
                    (x[1:] if x.startswith(b".") else x) for x in body.splitlines(keepends=True))
                if not await self._finish(say, ReceivedMessage(
                        sender, mail_params, rcpts, rcpt_params, bytes(wire), content,
                        conn.tls, helo, "DATA")):
                    return
                sender, rcpts = None, []
            elif verb == "BDAT":
                parts = line.split()
                size = int(parts[1])
                data = await reader.readexactly(size)
                chunks.append(data)
                if len(parts) > 2 and parts[2].upper() == "LAST":
                    content = b"".join(chunks)
                    if sender is None or not rcpts:
                        await say("554 5.5.1 no valid recipients")
                    elif not await self._finish(say, ReceivedMessage(
                            sender, mail_params, rcpts, rcpt_params, content, content,
                            conn.tls, helo, "BDAT")):
                        return
                    sender, rcpts, chunks = None, [], []
                else:
                    await say(f"250 2.0.0 {size} octets")
            elif verb == "RSET":
                sender, rcpts, chunks = None, [], []
                await say("250 2.0.0 OK")
            elif verb == "NOOP":
                await say("250 2.0.0 OK")
            elif verb == "QUIT":
                await say("221 2.0.0 bye")
                return
            else:
                await say("500 5.5.2 unknown command")

    async def _finish(self, say: object, msg: ReceivedMessage) -> bool:
        if self.disconnect_after_dot:
            return False
        if self.hang_after_data:
            await asyncio.Event().wait()  # until cancelled or the client goes away
        if self.data_reply.startswith("2"):
            self.messages.append(msg)
        await say(self.data_reply)  # type: ignore[operator]
        return True
