"""POP3 sessions over real loopback sockets, against a real SQLiteStore, driven by poplib."""

from __future__ import annotations

import asyncio
import base64
import poplib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from mailyard.config import AuthConfig, Config, LimitsConfig
from mailyard.policy.auth import Authenticator, hash_password
from mailyard.policy.recipients import RecipientResolver
from mailyard.server.context import ServerContext
from mailyard.server.pop3 import SEEN_BATCH, WHOLE_READ_MAX, handle_pop3
from mailyard.server.tls import make_certificate, server_context
from mailyard.storage.interface import Store
from mailyard.storage.models import MessageRef
from mailyard.storage.sqlite.store import SQLiteStore
from mailyard.testing.dns import FakeResolver

T = TypeVar("T")

USER = "alice@example.org"
PASSWORD = "correct horse"
M1 = b"From: bob@example.org\r\nSubject: one\r\n\r\nhello\r\n"
M2 = b"From: bob@example.org\r\nSubject: dots\r\n\r\n.hello\r\n..two\r\n.\r\nend\r\n"
M3 = b"From: bob@example.org\r\nSubject: three\r\nX-A: b\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n"
MESSAGES = [M1, M2, M3]


async def open_store(data: Path, *, seed: bool) -> SQLiteStore:
    store = SQLiteStore(data, fsync=False)
    await store.open()
    if seed:
        await store.add_domain("example.org")
        account = await store.add_account(USER, hash_password(PASSWORD))
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        for body in MESSAGES:
            await store.append(inbox.id, await store.blobs.put(body))
    return store


def make_ctx(store: SQLiteStore, *, tls: ssl.SSLContext | None = None, plaintext: bool = True,
             preauth_timeout: float = 60.0) -> ServerContext:
    config = Config(auth=AuthConfig(allow_plaintext_loopback=plaintext),
                    limits=LimitsConfig(preauth_timeout=preauth_timeout))
    s = cast(Store, store)
    return ServerContext(config=config, store=s, tls=tls,
                         auth=Authenticator(s, base_delay=0.0),
                         recipients=RecipientResolver(s), resolver=FakeResolver())


@asynccontextmanager
async def pop3_server(ctx: ServerContext, *, implicit_tls: bool = False,
                      transaction_timeout: float = 600.0) -> AsyncIterator[int]:
    def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
        return handle_pop3(r, w, ctx, implicit_tls=implicit_tls,
                           transaction_timeout=transaction_timeout)

    server = await asyncio.start_server(handler, "127.0.0.1", 0,
                                        ssl=ctx.tls if implicit_tls else None)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro_fn(), 60)

    return asyncio.run(main())


def login(port: int, user: str = USER, password: str = PASSWORD) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(user)
    client.pass_(password)
    return client


def retr_bytes(client: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key, hostnames=["localhost", "127.0.0.1"])
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server_context(cert, key), client


async def inbox_id(store: SQLiteStore) -> int:
    account = await store.get_account(USER)
    assert account is not None
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return inbox.id


async def inbox_uids(store: SQLiteStore) -> list[int]:
    return [m.uid for m in await store.list_messages(await inbox_id(store))]


def test_stat_list_retr_top_uidl_capa(tmp_path: Path) -> None:
    async def main() -> dict[str, Any]:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                def client() -> dict[str, Any]:
                    c = poplib.POP3("127.0.0.1", port, timeout=10)
                    capa = c.capa()
                    c.user(USER)
                    c.pass_(PASSWORD)
                    out = {
                        "capa": capa,
                        "capa_after": c.capa(),
                        "stat": c.stat(),
                        "list": c.list()[1],
                        "bodies": [retr_bytes(c, i) for i in (1, 2, 3)],
                        "top": c.top(3, 2)[1],
                        "uidl": c.uidl()[1],
                        "uidl1": c.uidl(1),
                        "quit": c.quit(),
                    }
                    return out

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    out = run(main)
    capa = out["capa"]
    for cap in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "UTF8"):
        assert cap in capa
    assert capa["IMPLEMENTATION"] == ["mailyard"]
    assert "STLS" not in capa  # no TLS context configured
    assert "USER" not in out["capa_after"] and "TOP" in out["capa_after"]
    assert out["stat"] == (3, sum(map(len, MESSAGES)))
    # Sizes are exactly the octets RETR delivers (before stuffing).
    assert out["list"] == [f"{i + 1} {len(m)}".encode() for i, m in enumerate(MESSAGES)]
    assert out["bodies"] == MESSAGES
    assert out["top"] == [b"From: bob@example.org", b"Subject: three", b"X-A: b", b"", b"l1",
                          b"l2"]
    uids = [line.split()[1] for line in out["uidl"]]
    assert len(set(uids)) == 3
    assert out["uidl1"].split()[2] == uids[0]
    assert out["quit"].startswith(b"+OK")


def test_dot_stuffing_on_the_wire_byte_for_byte(tmp_path: Path) -> None:
    async def main() -> bytes:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\nRETR 2\r\n".encode())
                await reader.readline()
                await reader.readline()
                status = await reader.readline()
                assert status == f"+OK {len(M2)} octets\r\n".encode()
                wire = await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"QUIT\r\n")
                assert (await reader.readline()).startswith(b"+OK")
                writer.close()
                return wire
        finally:
            await store.close()

    wire = run(main)
    assert wire == (b"From: bob@example.org\r\nSubject: dots\r\n\r\n"
                    b"..hello\r\n...two\r\n..\r\nend\r\n.\r\n")


def test_second_session_gets_in_use(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                def client() -> tuple[bytes, bytes]:
                    first = login(port)
                    second = poplib.POP3("127.0.0.1", port, timeout=10)
                    second.user(USER)
                    with pytest.raises(poplib.error_proto) as info:
                        second.pass_(PASSWORD)
                    refused = cast(bytes, info.value.args[0])
                    second.close()
                    first.quit()
                    # The lock is released by QUIT: a new session may log in.
                    third = login(port)
                    ok = third.stat()
                    third.quit()
                    return refused, str(ok).encode()

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    refused, ok = run(main)
    assert refused.startswith(b"-ERR [IN-USE]")
    assert ok == b"(3, %d)" % sum(map(len, MESSAGES))


def test_bad_password_gets_auth_code(tmp_path: Path) -> None:
    async def main() -> bytes:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                def client() -> bytes:
                    c = poplib.POP3("127.0.0.1", port, timeout=10)
                    c.user(USER)
                    with pytest.raises(poplib.error_proto) as info:
                        c.pass_("wrong")
                    c.close()
                    return cast(bytes, info.value.args[0])

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    assert run(main).startswith(b"-ERR [AUTH]")


def test_dele_then_quit_removes_and_marks_seen(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], frozenset[str]]:
        store = await open_store(tmp_path, seed=True)
        try:
            before = await inbox_uids(store)
            async with pop3_server(make_ctx(store)) as port:
                def client() -> None:
                    c = login(port)
                    retr_bytes(c, 3)
                    c.dele(1)
                    c.dele(2)
                    with pytest.raises(poplib.error_proto):
                        c.dele(2)  # already deleted
                    c.quit()

                await asyncio.to_thread(client)
            after = await inbox_uids(store)
            inbox = await inbox_id(store)
            (left,) = await store.list_messages(inbox)
            return before, after, left.flags
        finally:
            await store.close()

    before, after, flags = run(main)
    assert after == [before[2]]
    assert "\\Seen" in flags  # RETR marks \Seen, like Dovecot


def test_dele_then_drop_keeps_messages_and_releases_lock(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], tuple[int, int]]:
        store = await open_store(tmp_path, seed=True)
        try:
            before = await inbox_uids(store)
            async with pop3_server(make_ctx(store)) as port:
                def client() -> tuple[int, int]:
                    c = login(port)
                    c.dele(1)
                    c.rset()
                    c.dele(2)
                    c.close()  # no QUIT: the connection just drops
                    return (0, 0)

                await asyncio.to_thread(client)
                # Wait until the server noticed the drop and released the lock.
                for _ in range(100):
                    if await store.lock_maildrop((await store.get_account(USER)).id):  # type: ignore[union-attr]
                        await store.unlock_maildrop((await store.get_account(USER)).id)  # type: ignore[union-attr]
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("maildrop lock not released after a drop")

                def again() -> tuple[int, int]:
                    c = login(port)
                    stat = c.stat()
                    c.quit()
                    return stat

                stat = await asyncio.to_thread(again)
            return before, await inbox_uids(store), stat
        finally:
            await store.close()

    before, after, stat = run(main)
    assert after == before
    assert stat == (3, sum(map(len, MESSAGES)))


def test_uidl_stable_across_store_reopen(tmp_path: Path) -> None:
    def uidl(port: int) -> list[bytes]:
        c = login(port)
        out = c.uidl()[1]
        c.quit()
        return out

    async def main() -> tuple[list[bytes], list[bytes]]:
        store = await open_store(tmp_path, seed=True)
        async with pop3_server(make_ctx(store)) as port:
            first = await asyncio.to_thread(uidl, port)
        await store.close()
        store = await open_store(tmp_path, seed=False)
        try:
            async with pop3_server(make_ctx(store)) as port:
                second = await asyncio.to_thread(uidl, port)
        finally:
            await store.close()
        return first, second

    first, second = run(main)
    assert first == second
    assert len(first) == 3


def test_stls_then_login(tmp_path: Path) -> None:
    server_tls, client_tls = tls_files(tmp_path)

    async def main() -> dict[str, Any]:
        store = await open_store(tmp_path / "data", seed=True)
        try:
            async with pop3_server(make_ctx(store, tls=server_tls, plaintext=False)) as port:
                def client() -> dict[str, Any]:
                    c = poplib.POP3("127.0.0.1", port, timeout=10)
                    before = c.capa()
                    with pytest.raises(poplib.error_proto) as info:
                        c.user(USER)
                    c.stls(client_tls)
                    after = c.capa()
                    c.user(USER)
                    c.pass_(PASSWORD)
                    body = retr_bytes(c, 2)
                    c.quit()
                    return {"before": before, "refused": info.value.args[0], "after": after,
                            "body": body}

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    out = run(main)
    assert "STLS" in out["before"] and "USER" not in out["before"]
    assert out["refused"].startswith(b"-ERR [AUTH]")
    assert "STLS" not in out["after"] and "USER" in out["after"]
    assert out["body"] == M2


def test_stls_pipelined_plaintext_is_discarded(tmp_path: Path) -> None:
    """CVE-2011-0411: a command injected after STLS in the clear must not run under TLS."""
    server_tls, client_tls = tls_files(tmp_path)

    async def main() -> bytes:
        store = await open_store(tmp_path / "data", seed=True)
        try:
            async with pop3_server(make_ctx(store, tls=server_tls, plaintext=False)) as port:
                def client() -> bytes:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                        f = raw.makefile("rb")
                        f.readline()
                        raw.sendall(b"STLS\r\nUSER injected@example.org\r\n")
                        assert f.readline().startswith(b"+OK")
                        with client_tls.wrap_socket(raw) as tls:
                            tls.sendall(b"NOOP\r\n")
                            reply = tls.makefile("rb").readline()
                            tls.sendall(b"QUIT\r\n")
                            return reply

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    # Had "USER injected" run inside TLS, the first reply would be "+OK Send PASS".
    assert run(main) == b"-ERR NOOP is not valid in this state\r\n"


def test_implicit_tls(tmp_path: Path) -> None:
    server_tls, client_tls = tls_files(tmp_path)

    async def main() -> tuple[dict[str, list[str]], tuple[int, int]]:
        store = await open_store(tmp_path / "data", seed=True)
        try:
            ctx = make_ctx(store, tls=server_tls, plaintext=False)
            async with pop3_server(ctx, implicit_tls=True) as port:
                def client() -> tuple[dict[str, list[str]], tuple[int, int]]:
                    c = poplib.POP3_SSL("127.0.0.1", port, context=client_tls, timeout=10)
                    capa = c.capa()
                    c.user(USER)
                    c.pass_(PASSWORD)
                    stat = c.stat()
                    c.quit()
                    return capa, stat

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    capa, stat = run(main)
    assert "STLS" not in capa and "USER" in capa
    assert stat == (3, sum(map(len, MESSAGES)))


def test_large_message_streams(tmp_path: Path) -> None:
    line = b"x" * 998 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + (b"." + line[1:]) * 3000 + line * 3000  # ~6 MB

    async def main() -> tuple[int, bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            inbox = await inbox_id(store)
            await store.append(inbox, await store.blobs.put(big))
            async with pop3_server(make_ctx(store)) as port:
                def client() -> tuple[int, bytes]:
                    c = login(port)
                    size = int(c.list(4).split()[2])
                    body = retr_bytes(c, 4)
                    c.quit()
                    return size, body

                return await asyncio.to_thread(client)
        finally:
            await store.close()

    size, body = run(main)
    assert size == len(big)
    assert body == big


def test_preauth_timeout_disconnects(tmp_path: Path) -> None:
    async def main() -> bytes:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store, preauth_timeout=0.3)) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                rest = await asyncio.wait_for(reader.read(), 10)  # until the server closes
                writer.close()
                return rest
        finally:
            await store.close()

    assert run(main) == b"-ERR Disconnected for inactivity\r\n"


def test_transaction_timeout_releases_lock_without_deleting(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, bool, list[int], list[int]]:
        store = await open_store(tmp_path, seed=True)
        try:
            before = await inbox_uids(store)
            async with pop3_server(make_ctx(store), transaction_timeout=0.3) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\nDELE 1\r\n".encode())
                for _ in range(3):
                    await reader.readline()
                rest = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                account = await store.get_account(USER)
                assert account is not None
                await asyncio.sleep(0.1)
                free = await store.lock_maildrop(account.id)
            return rest, free, before, await inbox_uids(store)
        finally:
            await store.close()

    rest, free, before, after = run(main)
    assert rest == b"-ERR Disconnected for inactivity\r\n"
    assert free
    assert after == before


def test_inactivity_timer_counts_from_the_last_command(tmp_path: Path) -> None:
    # Commands every 0.1 s keep a session with a 0.5 s (before login) or 0.3 s (after)
    # timer alive for well past that; silence then ends it. After login the shorter
    # transaction timer applies at once, not when the pre-login one would have run out.
    async def session(port: int, *, login_first: bool) -> tuple[list[bytes], bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = [await reader.readline()]
        if login_first:
            writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
            replies += [await reader.readline(), await reader.readline()]
        for _ in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"NOOP\r\n")  # -ERR before login: still activity
            replies.append(await reader.readline())
        t0 = asyncio.get_running_loop().time()
        rest = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        idle = asyncio.get_running_loop().time() - t0
        writer.close()
        return replies, rest, idle

    async def main() -> list[tuple[list[bytes], bytes, float]]:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store, preauth_timeout=0.5)) as port:
                before = await session(port, login_first=False)
            async with pop3_server(make_ctx(store, preauth_timeout=3.0),
                                   transaction_timeout=0.3) as port:
                after = await session(port, login_first=True)
            return [before, after]
        finally:
            await store.close()

    (replies, rest, idle), (replies2, rest2, idle2) = run(main)
    assert replies[0].startswith(b"+OK") and len(replies) == 9
    assert all(r.startswith(b"-ERR") for r in replies[1:])
    assert rest == b"-ERR Disconnected for inactivity\r\n"
    assert 0.4 <= idle < 2.0
    assert all(r.startswith(b"+OK") for r in replies2) and len(replies2) == 11
    assert rest2 == b"-ERR Disconnected for inactivity\r\n"
    assert 0.2 <= idle2 < 2.0  # the transaction timer, not what was left of the pre-login one


def test_garbage_and_overlong_lines_do_not_kill_the_server(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(b"\xff\xfe\x00\r\n" + b"A" * 100_000 + b"\r\nRETR 1\r\nCAPA\r\n")
                replies = [await reader.readline() for _ in range(4)]
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"QUIT\r\n")
                replies.append(await reader.readline())
                writer.close()
                return replies
        finally:
            await store.close()

    replies = run(main)
    assert replies == [b"-ERR Invalid characters in command\r\n", b"-ERR Line too long\r\n",
                       b"-ERR RETR is not valid in this state\r\n", b"+OK Capability list follows\r\n",
                       b"+OK Bye\r\n"]


def test_missing_blob_gives_sys_temp_and_session_continues(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            ctx = make_ctx(store)
            real = store.blobs

            class Broken:
                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                async def read(self, blob_id: str, *args: Any) -> bytes:
                    raise OSError("disk on fire")

                def reader(self, blob_ids: Any) -> Any:
                    return self

                async def stream(self, blob_id: str, **kw: Any) -> AsyncIterator[bytes]:
                    raise OSError("disk on fire")
                    yield b""  # pragma: no cover

            store.blobs = cast(Any, Broken())
            ctx = replace(ctx)
            async with pop3_server(ctx) as port:
                def client() -> tuple[bytes, bytes]:
                    c = login(port)
                    with pytest.raises(poplib.error_proto) as info:
                        c.retr(1)
                    stat = c.stat()
                    c.quit()
                    return info.value.args[0], str(stat).encode()

                return await asyncio.to_thread(client)
        finally:
            store.blobs = real
            await store.close()

    err, stat = run(main)
    assert err.startswith(b"-ERR [SYS/TEMP]")
    assert stat.startswith(b"(3,")


def test_pipelined_commands_are_answered_in_one_write(tmp_path: Path) -> None:
    def stuffed(m: bytes) -> bytes:
        return b"".join(b"." + ln if ln.startswith(b".") else ln
                        for ln in m.splitlines(keepends=True)) + b".\r\n"

    async def main() -> tuple[bytes, list[int]]:
        store = await open_store(tmp_path, seed=True)
        writes: list[int] = []
        try:
            ctx = make_ctx(store)

            def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
                real_write = w.write

                def write(data: bytes) -> None:  # type: ignore[override]
                    writes.append(len(data))
                    real_write(data)

                w.write = write  # type: ignore[method-assign]
                return handle_pop3(r, w, ctx, implicit_tls=False)

            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
                await reader.readline()
                await reader.readline()
                writes.clear()
                writer.write(b"RETR 2\r\nRETR 9\r\nSTAT\r\nTOP 3 1\r\nRETR 1\r\n")
                want = 5
                out = b""
                while out.count(b"\r\n.\r\n") < 3 or want:
                    out += await asyncio.wait_for(reader.read(65536), 10)
                    want = 0
                writer.write(b"QUIT\r\n")
                await reader.read()
                writer.close()
            finally:
                server.close()
                await server.wait_closed()
            return out, writes
        finally:
            await store.close()

    out, writes = run(main)
    total = sum(len(m) for m in MESSAGES)
    assert out == (b"+OK " + str(len(M2)).encode() + b" octets\r\n" + stuffed(M2)
                   + b"-ERR No such message\r\n"
                   + f"+OK 3 {total}\r\n".encode()
                   + b"+OK " + str(len(M3)).encode() + b" octets\r\n"
                   + stuffed(M3.split(b"\r\n\r\n")[0] + b"\r\n\r\nl1\r\n")
                   + b"+OK " + str(len(M1)).encode() + b" octets\r\n" + stuffed(M1))
    assert writes[0] == len(out)  # all five answers in one write (then QUIT's)


def test_pipelined_junk_gets_ten_errors_then_the_connection_closes(tmp_path: Path) -> None:
    async def main() -> bytes:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\nRETR 1\r\n".encode()
                             + b"GET / HTTP/1.1\r\n" * 50 + b"DELE 1\r\nQUIT\r\n")
                out = await asyncio.wait_for(reader.read(), 10)  # until the server closes
                writer.close()
                return out
        finally:
            await store.close()

    out = run(main)
    lines = out.split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[1].startswith(b"+OK")
    assert out.count(b"-ERR Unknown command\r\n") == 10
    assert out.endswith(b"-ERR Unknown command\r\n-ERR Too many errors, closing\r\n")
    assert M1 in out


def test_seen_is_stored_for_every_message_of_a_long_session(tmp_path: Path) -> None:
    # More RETRs than one \\Seen batch: the background writes all land by QUIT.
    count = SEEN_BATCH * 2 + 7

    async def main() -> list[MessageRef]:
        store = await open_store(tmp_path, seed=True)
        try:
            inbox = await inbox_id(store)
            for i in range(count - len(MESSAGES)):
                await store.append(inbox, await store.blobs.put(b"Subject: %d\r\n\r\nx\r\n" % i))
            async with pop3_server(make_ctx(store)) as port:
                def client() -> None:
                    c = login(port)
                    for n in range(1, count + 1):
                        c.retr(n)
                    c.quit()

                await asyncio.to_thread(client)
            return await store.list_messages(inbox)
        finally:
            await store.close()

    refs = run(main)
    assert len(refs) == count
    assert all("\\Seen" in r.flags for r in refs)


def test_unreadable_large_message_gives_sys_temp(tmp_path: Path) -> None:
    # Past WHOLE_READ_MAX a message is streamed: a failure to open it is a clean -ERR too.
    big = b"Subject: big\r\n\r\n" + b"y" * 998 + b"\r\n" + b"z" * (WHOLE_READ_MAX + 10) + b"\r\n"

    async def main() -> tuple[bytes, bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            inbox = await inbox_id(store)
            await store.append(inbox, await store.blobs.put(big))
            real = store.blobs

            class Broken:
                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                async def stream(self, blob_id: str, **kw: Any) -> AsyncIterator[bytes]:
                    raise OSError("disk on fire")
                    yield b""  # pragma: no cover

            store.blobs = cast(Any, Broken())
            async with pop3_server(make_ctx(store)) as port:
                def client() -> tuple[bytes, bytes]:
                    c = login(port)
                    with pytest.raises(poplib.error_proto) as info:
                        c.retr(4)
                    small = retr_bytes(c, 1)  # read in one piece: unaffected
                    c.quit()
                    return info.value.args[0], small

                return await asyncio.to_thread(client)
        finally:
            store.blobs = real
            await store.close()

    err, small = run(main)
    assert err.startswith(b"-ERR [SYS/TEMP]")
    assert small == M1


def test_sasl_plain_and_login_over_the_wire(tmp_path: Path) -> None:
    b64 = base64.b64encode

    async def main() -> list[bytes]:
        store = await open_store(tmp_path, seed=True)
        try:
            async with pop3_server(make_ctx(store)) as port:
                replies = []
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n"
                             + b"STAT\r\nQUIT\r\n")
                replies += [await reader.readline() for _ in range(3)]
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(b"AUTH LOGIN\r\n")
                replies.append(await reader.readline())
                writer.write(b64(USER.encode()) + b"\r\n")
                replies.append(await reader.readline())
                writer.write(b64(PASSWORD.encode()) + b"\r\nQUIT\r\n")
                replies += [await reader.readline() for _ in range(2)]
                writer.close()
                return replies
        finally:
            await store.close()

    replies = run(main)
    total = sum(map(len, MESSAGES))
    assert replies == [
        b"+OK Maildrop has 3 messages (%d octets)\r\n" % total,
        b"+OK 3 %d\r\n" % total,
        b"+OK Bye\r\n",
        b"+ " + base64.b64encode(b"Username:") + b"\r\n",
        b"+ " + base64.b64encode(b"Password:") + b"\r\n",
        b"+OK Maildrop has 3 messages (%d octets)\r\n" % total,
        b"+OK Bye\r\n",
    ]
