"""The client side of SMTP, sans-IO: reply parsing, command building, body encoding.

Theory of operation
-------------------
Nothing here touches a socket, a clock or the event loop. The outbound courier
(``mailyard.queue.courier``) owns the connection; it

* feeds whatever the server sent into :class:`ReplyParser` and pulls complete
  :class:`ServerReply` values out of it (multi-line replies are joined, RFC 5321
  §4.2.1);
* builds command lines with the ``cmd_*`` functions, which refuse values that
  would let data smuggle a second command (CR, LF, NUL, spaces in addresses);
* reads EHLO capabilities with :func:`parse_ehlo` (RFC 5321 §4.1.1.1);
* pushes the stored message through :class:`BodyEncoder`, which streams: any
  bare CR or bare LF becomes CRLF and, for DATA, lines starting with "." get one
  more "." (RFC 5321 §4.5.2). For BDAT (RFC 3030) only the line ends are
  normalised; the chunk sizes come from the encoded bytes.

Remote replies are untrusted input. A malformed reply raises
:class:`SMTPProtocolError` (the one exception this module raises on purpose);
line length and line count are bounded so a hostile server cannot make us
buffer without limit.

We keep our own lenient reply type rather than the server catalogue's
``replies.Reply``: that class validates what *we* send (and rightly refuses an
enhanced code whose class disagrees with the reply code), while the client must
accept whatever a remote server says and classify it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "BodyEncoder",
    "Capabilities",
    "ReplyParser",
    "SMTPProtocolError",
    "ServerReply",
    "cmd_bdat",
    "cmd_data",
    "cmd_ehlo",
    "cmd_helo",
    "cmd_mail",
    "cmd_quit",
    "cmd_rcpt",
    "cmd_rset",
    "cmd_starttls",
    "needs_smtputf8",
    "xtext_encode",
]

# RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; real servers exceed it
# (long EHLO AUTH lists, verbose 5xx texts), so we allow 8x that and no more.
MAX_REPLY_LINE = 4096
# A multi-line reply longer than this is not a reply, it is an attack.
MAX_REPLY_LINES = 128

_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


class SMTPProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class ServerReply:
    """A complete (possibly multi-line) reply from the server."""

    code: int
    lines: tuple[str, ...]
    # RFC 3463 enhanced status code taken from the first line, when present and
    # consistent with the reply code's class (RFC 3463 §2).
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """The text of every line, without the enhanced code, joined by spaces."""
        out = []
        for line in self.lines:
            m = _ENHANCED_RE.match(line)
            out.append(line[m.end():] if m and self.enhanced else line)
        return " ".join(s for s in out if s)

    @property
    def kind(self) -> int:
        """The class digit: 2, 3, 4 or 5."""
        return self.code // 100

    @property
    def is_success(self) -> bool:
        return self.kind == 2

    @property
    def is_transient(self) -> bool:
        return self.kind == 4

    @property
    def is_permanent(self) -> bool:
        return self.kind == 5

    def status(self) -> str:
        """The enhanced status, or a generic one derived from the reply class."""
        if self.enhanced:
            return self.enhanced
        return {2: "2.0.0", 3: "2.0.0", 4: "4.0.0"}.get(self.kind, "5.0.0")

    def diagnostic(self) -> str:
        """``"550 5.1.1 No such user"``: the form used in logs and DSN Diagnostic-Code."""
        enh = f" {self.enhanced}" if self.enhanced else ""
        text = self.text
        return f"{self.code}{enh} {text}".rstrip() if text else f"{self.code}{enh}"


class ReplyParser:
    """Incremental reply parser: ``feed(bytes)`` then ``next_reply()`` until None."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        # Check the bound before anything else: a line that never ends must not grow forever.
        if self._buf.find(b"\n") < 0 and len(self._buf) > MAX_REPLY_LINE:
            raise SMTPProtocolError("reply line too long")

    def next_reply(self) -> ServerReply | None:
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise SMTPProtocolError("reply line too long")
                return None
            if nl > MAX_REPLY_LINE:
                raise SMTPProtocolError("reply line too long")
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            # RFC 5321 §4.2: lines end with CRLF; be liberal and accept a bare LF.
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = raw.decode("utf-8", "replace")
            # reply-line = *( Reply-code "-" [ textstring ] CRLF )
            #              Reply-code [ SP textstring ] CRLF        (RFC 5321 §4.2)
            if len(line) < 3 or not line[:3].isdigit() or not ("2" <= line[0] <= "5"):
                raise SMTPProtocolError(f"malformed reply line: {line[:80]!r}")
            code = int(line[:3])
            sep = line[3:4]
            if sep not in ("", " ", "-"):
                raise SMTPProtocolError(f"malformed reply line: {line[:80]!r}")
            if self._code is not None and code != self._code:
                raise SMTPProtocolError("reply code changed inside a multi-line reply")
            self._code = code
            self._lines.append(line[4:])
            if len(self._lines) > MAX_REPLY_LINES:
                raise SMTPProtocolError("too many lines in one reply")
            if sep == "-":
                continue
            lines = tuple(self._lines)
            self._lines = []
            self._code = None
            return ServerReply(code, lines, _enhanced(code, lines[0]))


def _enhanced(code: int, first_line: str) -> str | None:
    m = _ENHANCED_RE.match(first_line)
    if not m:
        return None
    # RFC 3463 §2: the class must agree with the reply code's first digit; a
    # "250 5.0.0" is nonsense and is ignored rather than believed.
    if m.group(1) != str(code)[0]:
        return None
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"


# --- EHLO ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server advertised in its EHLO reply (RFC 5321 §4.1.1.1)."""

    esmtp: bool = True
    pipelining: bool = False  # RFC 2920
    size: int | None = None  # RFC 1870; 0 = no fixed limit
    eightbitmime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    chunking: bool = False  # RFC 3030
    binarymime: bool = False  # RFC 3030
    dsn: bool = False  # RFC 3461
    starttls: bool = False  # RFC 3207
    enhancedstatuscodes: bool = False  # RFC 2034
    auth: tuple[str, ...] = ()  # RFC 4954
    keywords: frozenset[str] = field(default_factory=frozenset)


HELO_CAPABILITIES = Capabilities(esmtp=False)


def parse_ehlo(reply: ServerReply) -> Capabilities:
    """Capabilities from a 250 EHLO reply; the first line is the greeting name."""
    kw: set[str] = set()
    size: int | None = None
    auth: tuple[str, ...] = ()
    for line in reply.lines[1:]:
        parts = line.split()
        if not parts:
            continue
        key = parts[0].upper()
        kw.add(key)
        if key == "SIZE":
            if len(parts) > 1 and parts[1].isdigit() and len(parts[1]) <= 18:
                size = int(parts[1])
            else:
                size = 0
        elif key == "AUTH":
            auth = tuple(p.upper() for p in parts[1:])
    return Capabilities(
        pipelining="PIPELINING" in kw,
        size=size,
        eightbitmime="8BITMIME" in kw,
        smtputf8="SMTPUTF8" in kw,
        chunking="CHUNKING" in kw,
        binarymime="BINARYMIME" in kw,
        dsn="DSN" in kw,
        starttls="STARTTLS" in kw,
        enhancedstatuscodes="ENHANCEDSTATUSCODES" in kw,
        auth=auth,
        keywords=frozenset(kw),
    )


# --- commands --------------------------------------------------------------------

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>]")


def _check_token(value: str, what: str) -> None:
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} contains a forbidden character: {value!r}")


def _check_address(addr: str) -> None:
    # A path may hold a quoted local part with spaces in theory (RFC 5321
    # §4.1.2); in practice we refuse CR, LF, NUL, "<" and ">" anywhere and
    # spaces, so an address can never end a command early.
    if any(c in addr for c in "\r\n\x00<> \t"):
        raise ValueError(f"address contains a forbidden character: {addr!r}")


def xtext_encode(value: str) -> str:
    """RFC 3461 §4: xtext; "+", "=" and anything outside 33..126 as "+XX"."""
    out = []
    for b in value.encode("utf-8"):
        if 33 <= b <= 126 and b not in (0x2B, 0x3D):
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)


def needs_smtputf8(*addresses: str) -> bool:
    """True when an envelope address is not ASCII (RFC 6531 §3.4)."""
    return any(not a.isascii() for a in addresses)


def cmd_ehlo(name: str) -> bytes:
    _check_token(name, "EHLO name")
    return f"EHLO {name}\r\n".encode("ascii")


def cmd_helo(name: str) -> bytes:
    _check_token(name, "HELO name")
    return f"HELO {name}\r\n".encode("ascii")


def cmd_starttls() -> bytes:
    return b"STARTTLS\r\n"


def cmd_mail(sender: str, *, size: int | None = None, body: str | None = None,
             smtputf8: bool = False, ret: str | None = None, envid: str | None = None) -> bytes:
    """MAIL FROM with the ESMTP parameters the caller chose to use.

    ``envid`` is given raw and xtext-encoded here (RFC 3461 §4.4); ``ret`` is
    FULL or HDRS (RFC 3461 §4.3); ``body`` is 7BIT/8BITMIME/BINARYMIME (RFC 6152).
    """
    _check_address(sender)
    params = []
    if size is not None:
        params.append(f"SIZE={int(size)}")
    if body:
        _check_token(body, "BODY")
        params.append(f"BODY={body}")
    if smtputf8:
        params.append("SMTPUTF8")
    if ret:
        _check_token(ret, "RET")
        params.append(f"RET={ret.upper()}")
    if envid:
        params.append(f"ENVID={xtext_encode(envid)}")
    line = f"MAIL FROM:<{sender}>" + "".join(" " + p for p in params) + "\r\n"
    return line.encode("utf-8")


def cmd_rcpt(recipient: str, *, notify: str | None = None, orcpt: str | None = None) -> bytes:
    """RCPT TO; ``orcpt`` is given as stored ("rfc822;xtext-already-encoded")."""
    _check_address(recipient)
    params = []
    if notify:
        _check_token(notify, "NOTIFY")
        params.append(f"NOTIFY={notify.upper()}")
    if orcpt:
        _check_token(orcpt, "ORCPT")
        params.append(f"ORCPT={orcpt}")
    line = f"RCPT TO:<{recipient}>" + "".join(" " + p for p in params) + "\r\n"
    return line.encode("utf-8")


def cmd_data() -> bytes:
    return b"DATA\r\n"


def cmd_bdat(size: int, *, last: bool = False) -> bytes:
    return f"BDAT {int(size)}{' LAST' if last else ''}\r\n".encode("ascii")


def cmd_rset() -> bytes:
    return b"RSET\r\n"


def cmd_quit() -> bytes:
    return b"QUIT\r\n"


# --- body ---------------------------------------------------------------------------

_EOL = re.compile(rb"\r\n|\r|\n")


class BodyEncoder:
    """Streams a stored message onto the wire.

    * Line ends: CRLF, bare CR and bare LF all become CRLF. A CR at the end of
      one chunk is held back until the next chunk shows whether LF follows.
    * ``dot_stuff=True`` (DATA): a line starting with "." gets another "."
      (RFC 5321 §4.5.2), and :meth:`finish` appends the terminating
      ``CRLF . CRLF`` (adding the CRLF only if the content did not end with one).
    * ``dot_stuff=False`` (BDAT, RFC 3030): no stuffing, no terminator; the
      content still ends with CRLF.

    Memory: the output of one ``feed`` is at most twice its input plus 3 bytes.
    """

    def __init__(self, *, dot_stuff: bool = True) -> None:
        self._dot_stuff = dot_stuff
        # Start as if a CRLF had just been sent, so a "." on the first line is
        # stuffed without a special case.
        self._at_line_start = True
        self._held_cr = False
        self._finished = False
        self.eight_bit = False  # seen any octet > 127 so far

    def feed(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("encoder already finished")
        if not data:
            return b""
        prefix = b""
        if self._held_cr:
            self._held_cr = False
            prefix = b"\r\n"
            if data[:1] == b"\n":  # the held CR was half of a CRLF
                data = data[1:]
        if data.endswith(b"\r"):
            self._held_cr = True
            data = data[:-1]
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        out = prefix + _EOL.sub(b"\r\n", data)
        if not out:
            return b""
        if self._dot_stuff:
            out = out.replace(b"\r\n.", b"\r\n..")
            if self._at_line_start and out[:1] == b".":
                out = b"." + out
        self._at_line_start = out.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = b""
        if self._held_cr:
            self._held_cr = False
            out = b"\r\n"
            self._at_line_start = True
        if not self._at_line_start:
            out += b"\r\n"
        if self._dot_stuff:
            out += b".\r\n"
        return out


def encode_body(data: bytes, *, dot_stuff: bool = True) -> bytes:
    """One-shot form of :class:`BodyEncoder` (tests, small DSNs)."""
    enc = BodyEncoder(dot_stuff=dot_stuff)
    return enc.feed(data) + enc.finish()
