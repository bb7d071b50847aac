"""The channel between ``mailyard serve`` and its SMTP receiver processes.

One Unix socketpair per receiver, made by the server and inherited by the child
(never a path on disk, so no other process can connect to it). Frames are a
4-octet big-endian length and a pickle. Pickle is safe here only because both
ends are processes of this server started from the same installed code; nothing
from the network is unpickled (message bytes travel as ``bytes`` inside a frame).

Messages, as tuples:
    worker -> server   ("call", id, method, args, kwargs)   answered with ("ok"|"err", id, value)
                       ("note", method, args, kwargs)        one-way, never answered
                       ("ready",)                            the worker is accepting
    server -> worker   ("ok", id, result) / ("err", id, (exception class name, text, errno))
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from mailyard.storage.models import BlobRef

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a message over max_message_size travels by path, not in a frame


@dataclass(frozen=True, slots=True)
class WireBlob(BlobRef):
    """A message staged in a worker: its id and size (hashed there), the header octets to
    put before the spooled content, and that content — inline, or the path of the spool
    file it spilled to (which stays until the call that takes it returns)."""

    prefix: bytes = b""
    data: bytes | None = None
    path: str | None = None


class ChannelClosed(ConnectionError):
    """The other end went away."""


class Channel:
    """Framed pickles over one stream (both ends use it).

    Frames sent during one turn of the event loop leave in ONE write at the end of it
    (corked): the replies a group commit wakes, or the calls of several sessions, cost
    one syscall and one wake-up of the other process, not one each.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._out: list[bytes] = []

    async def recv(self) -> tuple[Any, ...]:
        try:
            head = await self.reader.readexactly(_HEADER.size)
            (n,) = _HEADER.unpack(head)
            if n > MAX_FRAME:
                raise ChannelClosed(f"frame of {n} octets")
            payload = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            raise ChannelClosed(str(e) or "closed") from None
        msg = pickle.loads(payload)
        if not isinstance(msg, tuple) or not msg:
            raise ChannelClosed(f"not a message: {type(msg).__name__}")
        return msg

    def send(self, msg: tuple[Any, ...]) -> None:
        if self.writer.is_closing():
            raise ChannelClosed("closed")
        payload = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out += (_HEADER.pack(len(payload)), payload)

    def flush(self) -> None:
        """Write what ``send`` queued (at the end of the loop's turn, or now)."""
        out, self._out = self._out, []
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out))

    async def drain(self) -> None:
        self.flush()
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(str(e) or "closed") from None

    def close(self) -> None:
        self.flush()
        self.writer.close()


async def open_channel(sock: Any) -> Channel:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    return Channel(reader, writer)


def encode_error(e: BaseException) -> tuple[str, str, int | None]:
    return type(e).__name__, str(e), getattr(e, "errno", None)


def decode_error(value: tuple[str, str, int | None]) -> Exception:
    """The exception the server's store raised, as the worker's code expects to catch it:
    the storage errors by class (InsufficientStorage -> 452), OSError with its errno."""
    from mailyard.storage import interface

    name, text, err = value
    cls = getattr(interface, name, None)
    if isinstance(cls, type) and issubclass(cls, interface.StorageError):
        exc = cls.__new__(cls)
        exc.args = (text,)
        return exc
    if err is not None:
        return OSError(err, text)
    return interface.StorageError(f"{name}: {text}")
