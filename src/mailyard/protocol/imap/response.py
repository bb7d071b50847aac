"""Serialisers for IMAP server responses (RFC 9051 §7).

Values are plain Python:

* ``None`` -> ``NIL``; ``int`` -> number;
* ``str`` / ``bytes`` -> a string, quoted when it can be (RFC 9051 §4.3:
  no CR, LF or NUL; 8-bit only when the client enabled UTF8=ACCEPT /
  IMAP4rev2, and then only valid UTF-8), otherwise a literal;
* :class:`Atom` -> written as is (flags, keywords, ``NIL``-free tokens);
* :class:`Literal` -> always a literal; :class:`Literal8` -> ``~{n}`` when the
  data holds NUL (RFC 3516 §4.2), else a plain literal;
* a plain literal never carries NUL (RFC 9051 §9 ``CHAR8`` is %x01-ff): each
  NUL octet is sent as 0x80, as Dovecot does, so the size stays the octet count
  of the stored message (RFC822.SIZE); BINARY[] gives the octets unchanged;
* ``list`` / ``tuple`` -> a parenthesised list;
* :class:`Raw` -> bytes written unchanged (pre-serialised pieces).

Writing is iterative, so the depth of a value can never raise RecursionError.
Large bodies should not be built into one ``bytes``: write
:func:`fetch_prefix`, then :func:`literal_header` and stream the blob, then
``b")\\r\\n"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mailyard.protocol.imap.mailbox import name_to_wire
from mailyard.protocol.imap.sequence import SequenceSet, from_numbers

CRLF = b"\r\n"
QUOTED_MAX = 4096  # longer strings go as literals to keep lines short


class Atom(str):
    """A token written verbatim (flags, keywords, capability names)."""


class Raw(bytes):
    """Already-serialised bytes."""


class Literal(bytes):
    """Always sent as a literal."""


class Literal8(bytes):
    """BINARY[] content (RFC 3516 §4.2): always sent as ``~{n}``."""


def literal_header(size: int, *, binary: bool = False) -> bytes:
    return (b"~{%d}\r\n" if binary else b"{%d}\r\n") % size


def no_nul(data: bytes) -> bytes:
    """``data`` fit for a plain literal: NUL octets become 0x80 (module docstring)."""
    return data.replace(b"\0", b"\x80") if b"\0" in data else data


def literal(data: bytes) -> bytes:
    """A plain literal of ``data``, header and all."""
    return literal_header(len(data)) + no_nul(data)


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """Quoted string when allowed, else a literal (RFC 9051 §4.3)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    quotable = (len(data) <= QUOTED_MAX and b"\n" not in data and b"\r" not in data
                and b"\0" not in data)
    if quotable and not data.isascii():
        if utf8:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                quotable = False
        else:
            quotable = False
    if quotable:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """An atom when the text is a plain atom, else a string."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if data and all(0x20 < b < 0x7F and b not in b'(){ %*"\\]' for b in data) and \
            data.upper() != b"NIL":
        return data
    return string(data, utf8=utf8)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: modified UTF-7 unless UTF8=ACCEPT."""
    return astring(name_to_wire(name, utf8=utf8), utf8=utf8)


class Adjacent(tuple):  # type: ignore[type-arg]
    """Values written back to back, without spaces or parentheses.

    RFC 9051 §9: ``body-type-mpart = 1*body SP media-subtype`` and
    ``env-from = "(" 1*address ")" / nil`` juxtapose their elements:
    ``((...)(...) "mixed")``, ``(("a" NIL "b" "c")("d" NIL "e" "f"))``.
    """


_CLOSE = object()
_END_ADJ = object()


def serialize(value: Any, *, utf8: bool = False) -> bytes:
    out = bytearray()
    stack: list[Any] = [value]
    # per open container: [space needed before the next item, adjacent mode]
    levels: list[list[bool]] = [[False, False]]
    while stack:
        v = stack.pop()
        if v is _CLOSE or v is _END_ADJ:
            if v is _CLOSE:
                out += b")"
            levels.pop()
            levels[-1][0] = True
            continue
        top = levels[-1]
        if top[0] and not top[1]:
            out += b" "
        top[0] = True
        if isinstance(v, Adjacent):
            levels.append([False, True])
            stack.append(_END_ADJ)
            stack.extend(reversed(v))
            continue
        if isinstance(v, list | tuple):
            out += b"("
            levels.append([False, False])
            stack.append(_CLOSE)
            stack.extend(reversed(v))
            continue
        if v is None:
            out += b"NIL"
        elif isinstance(v, bool):
            raise TypeError("bool is not an IMAP value")
        elif isinstance(v, int):
            out += b"%d" % v
        elif isinstance(v, Atom):
            out += v.encode("utf-8")
        elif isinstance(v, Raw):
            out += v
        elif isinstance(v, Literal8):
            out += literal_header(len(v), binary=True) + v
        elif isinstance(v, Literal):
            out += literal(v)
        elif isinstance(v, str | bytes):
            out += string(v, utf8=utf8)
        else:
            raise TypeError(f"cannot serialise {type(v).__name__}")
    return bytes(out)


# -- whole responses -------------------------------------------------------------------------
def _code(code: str | None) -> bytes:
    return b"" if not code else b"[" + code.encode("utf-8") + b"] "


def _text(text: str) -> bytes:
    # resp-text is one line: never let CR/LF from anywhere split a response.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8")


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``a1 OK [READ-WRITE] SELECT completed``; status is OK / NO / BAD."""
    return tag.encode("ascii") + b" " + status.encode() + b" " + _code(code) + _text(text) + CRLF


def untagged(status_or_data: str | bytes, text: str = "", code: str | None = None) -> bytes:
    """``* OK [UIDNEXT 4] text`` or ``* <data>`` when ``text`` is empty."""
    head = status_or_data.encode() if isinstance(status_or_data, str) else status_or_data
    if not text and not code:
        return b"* " + head + CRLF
    return b"* " + head + b" " + _code(code) + _text(text) + CRLF


def bye(text: str, code: str | None = None) -> bytes:
    return untagged("BYE", text, code)


def continuation(text: str = "Ready") -> bytes:
    return b"+ " + _text(text) + CRLF


def continuation_b64(data: bytes) -> bytes:
    import base64

    return b"+ " + base64.b64encode(data) + CRLF


def capability(caps: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + " ".join(caps).encode("ascii") + CRLF


def enabled(caps: Iterable[str]) -> bytes:
    joined = " ".join(caps)
    return b"* ENABLED" + ((" " + joined).encode("ascii") if joined else b"") + CRLF


def flags(flag_list: Iterable[str]) -> bytes:
    return b"* FLAGS " + serialize([Atom(f) for f in flag_list]) + CRLF


def exists(n: int) -> bytes:
    return b"* %d EXISTS\r\n" % n


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: Iterable[int] | SequenceSet, *, earlier: bool = False) -> bytes:
    """RFC 7162 §3.2.10."""
    s = uids if isinstance(uids, SequenceSet) else from_numbers(uids)
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + str(s).encode() + CRLF


def search(numbers: Iterable[int], *, modseq: int | None = None, kind: str = "SEARCH"
           ) -> bytes:
    """Plain ``* SEARCH`` (RFC 9051 §7.3.2 / RFC 3501), or ``* SORT`` (RFC 5256 §4) with
    ``kind``, with RFC 7162 MODSEQ (§3.1.5) when there are numbers."""
    body = " ".join(str(n) for n in numbers)
    out = b"* " + kind.encode() + (b" " + body.encode() if body else b"")
    if modseq is not None and body:
        out += b" (MODSEQ %d)" % modseq
    return out + CRLF


def esearch(tag: str | None, *, uid: bool,
            results: Mapping[str, int | Sequence[int] | str]) -> bytes:
    """RFC 9051 §7.3.4 / RFC 4731: ``* ESEARCH (TAG "a") UID MIN 2 COUNT 3``.

    ``results`` keys MIN, MAX, COUNT, MODSEQ take ints; ALL takes the numbers
    (written as a compact sequence set; omitted when empty, RFC 4731 §3.1) or a
    sequence-set already written (ESORT keeps the sort order, RFC 5267 §3.2).
    """
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + string(tag) + b")"
    if uid:
        out += b" UID"
    for k, v in results.items():
        if k == "ALL":
            assert not isinstance(v, int)
            if not v:
                continue
            out += b" ALL " + (v if isinstance(v, str) else str(from_numbers(v))).encode()
        else:
            assert isinstance(v, int)
            out += b" " + k.encode() + b" %d" % v
    return out + CRLF


def list_response(name: str, *, attributes: Iterable[str] = (), delimiter: str | None = "/",
                  utf8: bool = False, kind: str = "LIST",
                  extended: Sequence[tuple[str, Any]] = ()) -> bytes:
    """``* LIST (\\HasNoChildren) "/" INBOX`` (RFC 9051 §7.3.1).

    ``extended`` items (RFC 5258 §3.5), e.g. ``("CHILDINFO", ["SUBSCRIBED"])``
    or ``("OLDNAME", ["old"])``; their values go through :func:`serialize`.
    """
    out = b"* " + kind.encode() + b" " + serialize([Atom(a) for a in attributes]) + b" "
    out += b"NIL" if delimiter is None else string(delimiter)
    out += b" " + mailbox(name, utf8=utf8)
    if extended:
        parts: list[Any] = []
        for k, v in extended:
            parts.append(Atom(k))
            if k == "OLDNAME" and isinstance(v, list | tuple):
                parts.append([Raw(mailbox(x, utf8=utf8)) for x in v])
            else:
                parts.append(v)
        out += b" " + serialize(parts, utf8=utf8)
    return out + CRLF


def status(name: str, items: Mapping[str, Any], *, utf8: bool = False) -> bytes:
    """``* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)``; values go through
    :func:`serialize` (``MAILBOXID (F2212)``, RFC 8474 §4.2, is a list)."""
    flat: list[Any] = []
    for k, v in items.items():
        flat += [Atom(k), v]
    return b"* STATUS " + mailbox(name, utf8=utf8) + b" " + serialize(flat) + CRLF


def fetch_prefix(seq: int) -> bytes:
    return b"* %d FETCH (" % seq


def fetch(seq: int, items: Sequence[tuple[str, Any]], *, utf8: bool = False) -> bytes:
    """``* 12 FETCH (FLAGS (\\Seen) UID 4827313 BODY[] {5}\\r\\nhello)``.

    Item names are written as given (``"BODY[HEADER.FIELDS (FROM)]"``, use
    :meth:`FetchItem.response_name`); values through :func:`serialize`.
    Wrap flags in :class:`Atom`, pass bodies as ``bytes`` (literal chosen when
    needed) or :class:`Literal` to force a literal.
    """
    parts: list[bytes] = []
    for name, value in items:
        parts.append(name.encode("ascii") + b" " + serialize(value, utf8=utf8))
    return fetch_prefix(seq) + b" ".join(parts) + b")" + CRLF


def namespace(personal: Sequence[tuple[str, str]] | None = (("", "/"),),
              other: Sequence[tuple[str, str]] | None = None,
              shared: Sequence[tuple[str, str]] | None = None) -> bytes:
    def ns(v: Sequence[tuple[str, str]] | None) -> Any:
        return None if not v else [[p, d] for p, d in v]

    return b"* NAMESPACE " + serialize([ns(personal), ns(other), ns(shared)])[1:-1] + CRLF


def id_response(params: Mapping[str, str | None] | None) -> bytes:
    if not params:
        return b"* ID NIL\r\n"
    flat: list[Any] = []
    for k, v in params.items():
        flat += [k, v]
    return b"* ID " + serialize(flat) + CRLF


def quota(root: str, resources: Sequence[tuple[str, int, int]]) -> bytes:
    """RFC 9208 §5.1: ``* QUOTA "" (STORAGE 10 512)`` (usage, limit)."""
    flat: list[Any] = []
    for name, usage, limit in resources:
        flat += [Atom(name), usage, limit]
    return b"* QUOTA " + string(root) + b" " + serialize(flat) + CRLF


def quotaroot(name: str, roots: Iterable[str], *, utf8: bool = False) -> bytes:
    out = b"* QUOTAROOT " + mailbox(name, utf8=utf8)
    for r in roots:
        out += b" " + string(r)
    return out + CRLF
