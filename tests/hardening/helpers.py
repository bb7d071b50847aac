"""Shared pieces of the hardening tests: a real ``mailyard serve`` with config
overrides, POP3 readers, a threaded SMTP sink and raw-socket helpers.

Everything runs against the real server process (``tests.integration.harness``):
the promises tested here (durability, limits, deadlines) are properties of the
whole program, not of one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailyard.testing.smtpsink import ReceivedMessage, SMTPSink
from tests.integration.harness import PASSWORD, Dialog, Server, make_server

# The outside world for one test server: a remote sender domain with SPF and DMARC
# (so MX-mode acceptance passes), and a remote recipient domain whose MX is loopback.
ZONE = {
    "remote.example": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "MX": [(10, "mx.remote.example")]},
    "_dmarc.remote.example": {"TXT": ["v=DMARC1; p=none"]},
    "mx.remote.example": {"A": ["127.0.0.1"]},
    "example.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "MX": [(10, "mail.example.test")]},
    "mail.example.test": {"A": ["127.0.0.1"]},
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def set_config(data: Path, section: str, **values: Any) -> None:
    """Set ``[section] key = value`` in DIR/mailyard.toml (replacing an existing key)."""
    cfg = data / "mailyard.toml"
    lines = cfg.read_text().splitlines()
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header]
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [ln for ln in lines[start + 1:end]
            if ln.split("=", 1)[0].strip() not in values]
    new = [f"{k} = {_toml(v)}" for k, v in values.items()]
    lines[start + 1:end] = new + body
    cfg.write_text("\n".join(lines) + "\n")


def hardened_server(tmp: Path, nameserver: str, *, users: tuple[str, ...] = ("alice", "bob"),
                    imap: bool = False, **sections: dict[str, Any]) -> Server:
    """An initialised (not started) server: plaintext auth from loopback, no HTTP,
    IMAP only when asked, plus ``sections`` overrides ({"limits": {...}, ...})."""
    srv = make_server(tmp, users=users, nameserver=nameserver)
    listen: dict[str, Any] = {"http": ""}
    if not imap:
        listen.update(imap="", imaps="")
    set_config(srv.data, "listen", **listen)
    set_config(srv.data, "auth", allow_plaintext_loopback=True)
    for section, values in sections.items():
        set_config(srv.data, section, **values)
    return srv


# -- clients -------------------------------------------------------------------------

def pop3_retr_all(srv: Server, user: str, *, domain: str = "example.test"
                  ) -> tuple[list[bytes], list[bytes]]:
    """(messages, -ERR replies) for RETR of every message of ``user``'s INBOX."""
    p = poplib.POP3(*srv.addr("pop3"), timeout=20)
    try:
        p.user(f"{user}@{domain}")
        p.pass_(PASSWORD)
        count, _ = p.stat()
        out: list[bytes] = []
        errors: list[bytes] = []
        for i in range(1, count + 1):
            try:
                _, lines, _ = p.retr(i)
            except poplib.error_proto as e:
                errors.append(e.args[0] if e.args else b"")
                continue
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out, errors
    finally:
        with contextlib.suppress(Exception):
            p.quit()


def pop3_messages(srv: Server, user: str, *, domain: str = "example.test") -> list[bytes]:
    """Every message of ``user``'s INBOX as stored (RETR, unstuffed, CRLF); no -ERR allowed."""
    out, errors = pop3_retr_all(srv, user, domain=domain)
    assert not errors, errors
    return out


def count_with(messages: list[bytes], marker: bytes) -> int:
    return sum(1 for m in messages if marker in m)


def simple_message(marker: str, *, sender: str = "sender@remote.example",
                   body: str = "hello\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: someone@example.test\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@remote.example>\r\n\r\n{body}").encode()


def send_mx(srv: Server, rcpts: list[str], data: bytes, *,
            sender: str = "sender@remote.example") -> None:
    with smtplib.SMTP(*srv.addr("smtp"), timeout=30) as s:
        s.ehlo("client.remote.example")
        s.sendmail(sender, rcpts, data)


def first_octets(srv: Server, listener: str = "smtp") -> bytes:
    """What a new connection receives first (b"" when the server closes or resets it)."""
    with socket.create_connection(srv.addr(listener), timeout=5) as s:
        s.settimeout(5)
        try:
            return s.recv(1024)
        except OSError:
            return b""


def wait_for(pred: Callable[[], bool], timeout: float, *, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the peer closes or ``timeout`` passes without data."""
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


# -- a remote SMTP peer in a thread --------------------------------------------------

class ThreadedSink:
    """:class:`SMTPSink` on its own event loop in a thread, for blocking tests.

    ``after_accept`` runs (in the sink's thread) right after the sink wrote its
    ``250`` for a message: the hook a kill -9 "after the remote 250" needs.
    """

    def __init__(self, *, port: int = 0, **kwargs: Any) -> None:
        self.bind_port = port
        self.after_accept: Callable[[ReceivedMessage], None] | None = None
        outer = self

        class _Sink(SMTPSink):
            async def _finish(self, say: object, msg: ReceivedMessage) -> bool:
                ok = await super()._finish(say, msg)
                if ok and outer.after_accept is not None:
                    outer.after_accept(msg)
                return ok

        self.sink = _Sink(**kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedSink:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sink.start("127.0.0.1", self.bind_port), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.sink.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def port(self) -> int:
        return self.sink.port

    @property
    def messages(self) -> list[ReceivedMessage]:
        return list(self.sink.messages)


@contextlib.contextmanager
def running(srv: Server) -> Iterator[Server]:
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def dialog_in_data(srv: Server, rcpt: str) -> Dialog:
    """A raw MX session from sender@remote.example to ``rcpt``, answered 354 to DATA."""
    d = Dialog(*srv.addr("smtp"))
    assert d.reply()[0] == 220
    assert d.cmd("EHLO client.remote.example")[0] == 250
    assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
    assert d.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert d.cmd("DATA")[0] == 354
    return d
