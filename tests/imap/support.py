"""An in-process IMAP server on a loopback port, over a real SQLiteStore, for client tests.

The server runs on its own event loop in a background thread, so blocking clients
(imaplib, imapclient) can drive it from the test thread, several at once. ``run``
executes a coroutine on the server loop (to deliver mail or inspect the store).
"""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast

from mailyard.config import AuthConfig, Config, LimitsConfig
from mailyard.message.text import searchable_text
from mailyard.policy.auth import Authenticator, hash_password, scram_secret
from mailyard.policy.recipients import RecipientResolver
from mailyard.server.context import ServerContext
from mailyard.server.imap import handle_imap
from mailyard.server.tls import make_certificate, server_context
from mailyard.storage.interface import Store
from mailyard.storage.models import SearchableText
from mailyard.storage.sqlite.store import SQLiteStore
from mailyard.testing.dns import FakeResolver

T = TypeVar("T")

USER = "alice@example.org"
PASSWORD = "correct horse"
OTHER = "bob@example.org"

M1 = (b"From: Bob Smith <bob@example.org>\r\nTo: alice@example.org\r\n"
      b"Subject: hello there\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
      b"Message-ID: <m1@example.org>\r\n\r\nfirst body with a zebra\r\n")
M2 = (b"From: Carol <carol@example.net>\r\nTo: alice@example.org\r\n"
      b"Subject: Re: hello there\r\nDate: Tue, 8 Feb 1994 10:00:00 +0000\r\n"
      b"Message-ID: <m2@example.org>\r\nIn-Reply-To: <m1@example.org>\r\n"
      b"References: <m1@example.org>\r\n"
      b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
      b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
      b"part one text\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
      b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n--XX--\r\n")
M3 = (b"From: Dave <dave@example.com>\r\nTo: alice@example.org\r\n"
      b"Subject: another topic\r\nDate: Wed, 9 Feb 1994 08:00:00 +0000\r\n"
      b"Message-ID: <m3@example.org>\r\n\r\n" + b"line of text\r\n" * 200)
MESSAGES = [M1, M2, M3]


def text_of(body: bytes) -> SearchableText:
    headers, text = searchable_text(body)
    return SearchableText(headers=headers, body=text)


class ImapTestServer:
    def __init__(self, tmp_path: Path, *, plaintext: bool = True, tls: bool = False,
                 quota: int | None = None, max_message_size: int = 10 * 1024 * 1024,
                 preauth_timeout: float = 60.0, idle_timeout: float = 1800.0,
                 seed: bool = True) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.store: SQLiteStore | None = None
        self.server: asyncio.Server | None = None
        self.tls_server: asyncio.Server | None = None
        self.port = 0
        self.tls_port = 0
        self.server_tls: ssl.SSLContext | None = None
        if tls:
            cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
            make_certificate(cert, key, hostnames=["localhost", "127.0.0.1"])
            self.server_tls = server_context(cert, key)
        self.config = Config(auth=AuthConfig(allow_plaintext_loopback=plaintext),
                             limits=LimitsConfig(preauth_timeout=preauth_timeout,
                                                 idle_timeout=idle_timeout,
                                                 max_message_size=max_message_size))
        self.quota = quota
        self.seed = seed
        self.account_id = 0
        self.other_id = 0

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> ImapTestServer:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        store = SQLiteStore(self.tmp_path / "data", fsync=False)
        await store.open()
        self.store = store
        await store.add_domain("example.org")
        # As ``mailyard user add`` makes them: argon2id hash and SCRAM-SHA-256 secret.
        acc = await store.add_account(USER, hash_password(PASSWORD), quota_bytes=self.quota,
                                      scram_sha256=scram_secret(PASSWORD))
        other = await store.add_account(OTHER, hash_password(PASSWORD),
                                        scram_sha256=scram_secret(PASSWORD))
        self.account_id, self.other_id = acc.id, other.id
        if self.seed:
            for body in MESSAGES:
                await self._deliver(body, "INBOX", ())
        s = cast(Store, store)
        ctx = ServerContext(config=self.config, store=s, tls=self.server_tls,
                            auth=Authenticator(s, base_delay=0.0),
                            recipients=RecipientResolver(s), resolver=FakeResolver())
        await ctx.auth.refresh()  # as the server does at start: SCRAM-SHA-256 offered
        self.ctx = ctx
        self.server = await asyncio.start_server(
            lambda r, w: handle_imap(r, w, ctx, implicit_tls=False), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        if self.server_tls is not None:
            self.tls_server = await asyncio.start_server(
                lambda r, w: handle_imap(r, w, ctx, implicit_tls=True), "127.0.0.1", 0,
                ssl=self.server_tls)
            self.tls_port = self.tls_server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for srv in (self.server, self.tls_server):
            if srv is not None:
                srv.close()
                await srv.wait_closed()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()

    # -- store helpers -----------------------------------------------------------------
    async def _deliver(self, body: bytes, mailbox: str, flags: tuple[str, ...]) -> int:
        assert self.store is not None
        mb = await self.store.get_mailbox(self.account_id, mailbox)
        assert mb is not None
        d = await self.store.append(mb.id, await self.store.blobs.put(body), flags=flags,
                                    text=text_of(body))
        return d.uid

    def deliver(self, body: bytes, mailbox: str = "INBOX", flags: tuple[str, ...] = ()) -> int:
        return self.run(self._deliver(body, mailbox, flags))

    def uids(self, mailbox: str = "INBOX") -> list[int]:
        async def q() -> list[int]:
            assert self.store is not None
            mb = await self.store.get_mailbox(self.account_id, mailbox)
            assert mb is not None
            return [m.uid for m in await self.store.list_messages(mb.id)]
        return self.run(q())

    def flags(self, uid: int, mailbox: str = "INBOX") -> frozenset[str]:
        async def q() -> frozenset[str]:
            assert self.store is not None
            mb = await self.store.get_mailbox(self.account_id, mailbox)
            assert mb is not None
            (m,) = await self.store.get_messages(mb.id, [uid])
            return m.flags
        return self.run(q())

    # -- clients -----------------------------------------------------------------------
    def imaplib(self, *, login: bool = True) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        if login:
            c.login(USER, PASSWORD)
        return c


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """A line-level IMAP client for exact protocol checks (no library smoothing)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        import socket

        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock) if tls is not None else sock
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def line(self) -> bytes:
        """One response line, with any literals it announces folded in."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(f"closed; got {out + self.buf!r}")
                self.buf += chunk
            part, _, self.buf = self.buf.partition(b"\r\n")
            out += part
            if part.endswith(b"}") and b"{" in part:
                size = int(part[part.rindex(b"{") + 1 : -1])
                while len(self.buf) < size:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise EOFError("closed inside a literal")
                    self.buf += chunk
                out += b"\r\n" + self.buf[:size]
                self.buf = self.buf[size:]
                continue
            return out

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        """Send ``tag text`` and read up to the tagged reply: (untagged lines, tagged line)."""
        self.n += 1
        tag = b"t%d" % self.n
        data = text.encode() if isinstance(text, str) else text
        self.send(tag + b" " + data + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[list[bytes], bytes]:
        lines: list[bytes] = []
        while True:
            ln = self.line()
            if ln.startswith(tag + b" "):
                return lines, ln
            lines.append(ln)

    def login(self, user: str = USER, password: str = PASSWORD) -> None:
        _, tagged = self.cmd(f'LOGIN "{user}" "{password}"')
        assert b" OK " in tagged, tagged

    def close(self) -> None:
        self.sock.close()
