"""COMPRESS=DEFLATE (RFC 4978) over real sockets: imaplib with a deflating transport,
a raw client that pipelines after COMPRESS, refusals, a zip bomb and broken data."""

from __future__ import annotations

import imaplib
import tracemalloc
import zlib
from pathlib import Path

from tests.imap.support import M3, PASSWORD, USER, ImapTestServer, RawClient

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with RFC 4978 framing switched on by :meth:`compress`.

    imaplib reads through ``read``/``readline`` and writes through ``send``
    (IMAP4_stream overrides the same three), so only those change."""

    def compress(self) -> None:
        typ, data = self._simple_command("COMPRESS", "DEFLATE")  # type: ignore[attr-defined]
        assert typ == "OK", data
        self._z = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._d = zlib.decompressobj(-15)
        self._pending = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._pending += self._d.decompress(chunk)
        return True

    def read(self, size: int) -> bytes:
        if not hasattr(self, "_d"):
            return super().read(size)
        while len(self._pending) < size and self._fill():
            pass
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def readline(self) -> bytes:
        if not hasattr(self, "_d"):
            return super().readline()
        while b"\n" not in self._pending and self._fill():
            pass
        i = self._pending.find(b"\n") + 1 or len(self._pending)
        out, self._pending = self._pending[:i], self._pending[i:]
        return out

    def send(self, data: bytes) -> None:
        if not hasattr(self, "_z"):
            super().send(data)
            return
        self.sock.sendall(self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH))


class DeflateRaw(RawClient):
    """RawClient whose socket I/O goes through raw DEFLATE after :meth:`start`."""

    def start(self, leftover: bytes = b"") -> None:
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)
        self.wire_in = 0
        self.buf = self.d.decompress(leftover)
        real = self.sock

        class Sock:
            def recv(_, n: int) -> bytes:
                while True:
                    data = real.recv(n)
                    if not data:
                        return b""
                    self.wire_in += len(data)
                    out = self.d.decompress(data)
                    if out:
                        return out

            def sendall(_, data: bytes) -> None:
                real.sendall(self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH))

            def close(_) -> None:
                real.close()

        self.sock = Sock()  # type: ignore[assignment]


def test_imaplib_over_deflate_select_fetch_append(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        c = DeflateIMAP4("127.0.0.1", srv.port, timeout=10)
        c.login(USER, PASSWORD)
        typ, data = c.capability()
        assert b"COMPRESS=DEFLATE" in data[0].split()
        c.compress()
        typ, data = c.capability()
        assert typ == "OK" and b"COMPRESS=DEFLATE" not in data[0].split()
        assert c.select("INBOX") == ("OK", [b"3"])
        typ, data = c.fetch("3", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == M3
        msg = b"Subject: squeezed\r\n\r\n" + b"compressible line\r\n" * 5000
        typ, data = c.append("INBOX", None, None, msg)
        assert typ == "OK"
        typ, data = c.fetch("4", "(RFC822.SIZE BODY.PEEK[TEXT]<0.17>)")
        assert data[0][0].startswith(b"4 (RFC822.SIZE %d" % len(msg))
        assert data[0][1] == b"compressible line"
        # a second COMPRESS is refused (RFC 4978 §3)
        typ, data = c._simple_command("COMPRESS", "DEFLATE")  # type: ignore[attr-defined]
        assert typ == "NO"
        assert data == [b"[COMPRESSIONACTIVE] Compression is already active"]
        assert c.logout()[0] == "BYE"


def test_raw_deflate_pipelined_after_compress_and_idle(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        _, tagged = raw.cmd("COMPRESS X-UNKNOWN")
        assert tagged.startswith(b"t2 BAD")
        # pipeline: COMPRESS and, already deflated, a SELECT right behind it
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw.send(b"c1 COMPRESS DEFLATE\r\n" + z.compress(b"c2 SELECT INBOX\r\n")
                 + z.flush(zlib.Z_SYNC_FLUSH))
        line = raw.line()
        assert line == b"c1 OK DEFLATE active"
        dr = DeflateRaw.__new__(DeflateRaw)
        dr.sock, dr.n = raw.sock, 10
        dr.start(raw.buf)
        dr.z = z  # the same deflate stream the SELECT went out on
        untagged, tagged = dr.until(b"c2")
        assert tagged == b"c2 OK [READ-WRITE] SELECT completed"
        assert b"* 3 EXISTS" in untagged
        # server-to-client compression really happens: a big FETCH costs few wire octets
        srv.deliver(b"Subject: big\r\n\r\n" + b"a" * 400_000 + b"\r\n")
        untagged, _ = dr.cmd("NOOP")
        assert untagged == [b"* 4 EXISTS", b"* 4 RECENT"]  # 3 at SELECT, +1
        before = dr.wire_in
        untagged, tagged = dr.cmd("FETCH 4 BODY.PEEK[]")
        assert tagged.endswith(b"OK FETCH completed") and len(untagged[-1]) > 400_000
        assert dr.wire_in - before < 20_000
        # IDLE works over the compressed stream
        dr.send(b"i1 IDLE\r\n")
        assert dr.line().startswith(b"+ ")
        srv.deliver(b"Subject: pushed\r\n\r\nx\r\n")
        assert dr.line() == b"* 5 EXISTS"
        assert dr.line() == b"* 5 RECENT"
        dr.send(b"DONE\r\n")
        assert dr.line() == b"i1 OK IDLE terminated"
        _, tagged = dr.cmd("LOGOUT")
        assert tagged.endswith(b"OK LOGOUT completed")


def test_zip_bomb_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    """64 MiB of one byte without a line end deflate to ~64 KiB; the server must
    discard it chunk by chunk (line too long) and carry on, never holding it all."""
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        _, tagged = raw.cmd("COMPRESS DEFLATE")
        assert tagged == b"t2 OK DEFLATE active"
        dr = DeflateRaw.__new__(DeflateRaw)
        dr.sock, dr.n = raw.sock, 2
        dr.start(raw.buf)
        tracemalloc.start()
        try:
            real = raw.sock
            real.sendall(dr.z.compress(b"x1 NOOP ") + dr.z.flush(zlib.Z_SYNC_FLUSH))
            for _ in range(64):
                real.sendall(dr.z.compress(b"A" * (1 << 20)))
            real.sendall(dr.z.compress(b"\r\n") + dr.z.flush(zlib.Z_SYNC_FLUSH))
            untagged, tagged = dr.cmd("NOOP")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        assert len(bomb.compress(b"A" * (1 << 20)) + bomb.flush()) < 4096  # the ratio
        assert untagged == [b"x1 BAD line too long"]
        assert tagged == b"t3 OK NOOP completed"
        # the client side holds ~1 MiB at a time; the server never the whole 64 MiB
        assert peak < 24 * 1024 * 1024, peak


def test_corrupt_deflate_stream_gets_bye(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        _, tagged = raw.cmd("COMPRESS DEFLATE")
        assert tagged == b"t2 OK DEFLATE active"
        raw.send(b"\xff" * 64)  # not a valid deflate block
        raw.sock.settimeout(5)
        data = b""
        try:
            while chunk := raw.sock.recv(4096):
                data += chunk
        except (ConnectionError, TimeoutError):
            pass
        # the BYE still travels in the server's (intact) deflate stream
        assert zlib.decompressobj(-15).decompress(raw.buf + data).startswith(
            b"* BYE Invalid compressed data")
        # the server is still up for others
        other = RawClient(srv.port)
        other.login()
        _, tagged = other.cmd("NOOP")
        assert tagged == b"t2 OK NOOP completed"


def test_read_raw_releases_output_held_back_by_the_chunk_limit() -> None:
    """Inputs whose expansion ends around READ_CHUNK (the limit falls inside
    back-references): every octet comes out in bounded chunks without waiting for
    more client data. (With CPython's zlib the held-back case did not show up in
    these inputs; session.read_raw also guards it with ``inflate_full``.)"""
    import asyncio

    from mailyard.server.imap.session import READ_CHUNK, Session

    async def drain(payload: bytes) -> bytes:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        reader = asyncio.StreamReader()
        data = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        # without the empty stored block that ends a sync flush, nothing is left in
        # unconsumed_tail when the limit cuts a back-reference: zlib holds the rest
        reader.feed_data(data[:-4])
        s = Session.__new__(Session)
        s.reader, s.inflate, s.inflate_full = reader, zlib.decompressobj(-15), False
        got = b""
        while len(got) < len(payload):
            chunk = await asyncio.wait_for(s.read_raw(), 2.0)  # no EOF: must not block
            assert 0 < len(chunk) <= READ_CHUNK
            got += chunk
        return got

    for extra in range(-300, 300, 7):
        payload = b"x1 NOOP " + b"ab" * ((READ_CHUNK + extra) // 2) + b"\r\n"
        assert asyncio.run(drain(payload)) == payload
