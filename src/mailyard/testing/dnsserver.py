"""A tiny authoritative DNS server on loopback, for tests and benchmarks.

It answers from a plain map (name -> type -> values) over UDP and TCP; names it
does not know get NXDOMAIN, known names without the type get NODATA. It runs in
a background thread with its own event loop so that blocking test code (smtplib,
subprocesses) can use it. The two-domain integration tests use Debian's knot
instead; this one keeps unit and single-server tests fast and self-contained.

    with DNSServer({"example.test": {"MX": [(10, "mail.example.test")]}}) as dns:
        nameserver = f"127.0.0.1:{dns.port}"
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[str, dict[str, list[Any]]]
DEFAULT_TTL = 300


def _rdata_text(rdtype: str, value: Any) -> str:
    if rdtype == "MX":
        pref, host = value
        return f"{pref} {host.rstrip('.') + '.' if host else '.'}"
    if rdtype == "TXT":
        text = str(value)
        # split into 255-octet character-strings
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
        return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    if rdtype in ("CNAME", "PTR", "NS"):
        return str(value).rstrip(".") + "."
    return str(value)


class DNSServer:
    def __init__(self, zone: Zone | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 servfail: Iterable[str] = ()) -> None:
        self.zone: Zone = {}
        self.ttls: dict[str, int] = {}  # per name; DEFAULT_TTL otherwise
        self.asked: collections.Counter[tuple[str, str]] = collections.Counter()  # (name, type)
        self.servfail = {n.lower().rstrip(".") for n in servfail}
        for name, types in (zone or {}).items():
            self.set(name, types)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.queries = 0

    def set(self, name: str, types: dict[str, list[Any]], *, ttl: int = DEFAULT_TTL) -> None:
        key = name.lower().rstrip(".")
        self.zone.setdefault(key, {}).update({t.upper(): list(v) for t, v in types.items()})
        self.ttls[key] = ttl

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        self.queries += 1
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if not query.question:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire()
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.asked[(name, rdtype)] += 1
        if name in self.servfail:
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp.to_wire()
        types = self.zone.get(name)
        if types is None:
            # An empty non-terminal (a parent of a known name) is NODATA, not NXDOMAIN.
            if not any(k.endswith("." + name) for k in self.zone):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp.to_wire()
        values = types.get(rdtype)
        if values is None and "CNAME" in types and rdtype != "CNAME":
            values, rdtype = types["CNAME"], "CNAME"
        if values:
            rrset = dns.rrset.from_text_list(q.name, self.ttls.get(name, DEFAULT_TTL), dns.rdataclass.IN, rdtype,
                                             [_rdata_text(rdtype, v) for v in values])
            resp.answer.append(rrset)
        return resp.to_wire()

    # -- running -------------------------------------------------------------------------
    def start(self) -> DNSServer:
        self._thread = threading.Thread(target=self._run, name="dns-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("DNS server did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._serve())
        loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                out = server.answer(data)
                if out is not None:
                    self.transport.sendto(out, addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while True:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                    out = server.answer(await reader.readexactly(n))
                    if out is None:
                        break
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
            writer.close()

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # UDP and TCP must share one port number. With port 0 the UDP port is picked by the
        # kernel, and another process may hold that number for TCP: try again with a new one.
        for attempt in range(50):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((self.host, self.port))
            port = sock.getsockname()[1]
            try:
                tcp_server = await asyncio.start_server(tcp, self.host, port)
            except OSError:
                sock.close()
                if self.port != 0 or attempt == 49:
                    raise
                continue
            break
        self.port = port
        transport, _ = await loop.create_datagram_endpoint(UDP, sock=sock)
        self._ready.set()
        await self._stop.wait()
        tcp_server.close()
        transport.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
