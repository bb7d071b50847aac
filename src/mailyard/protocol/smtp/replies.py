"""The SMTP reply catalogue: every reply the server core sends, by name.

A :class:`Reply` is a code (RFC 5321 §4.2), an optional enhanced status code
(RFC 3463, sent when the client used EHLO and we advertise ENHANCEDSTATUSCODES,
RFC 2034 §3), one or more lines of text, and the RFC clause that decides it.

Handlers *return* replies; they never write (STYLE habit 2). Replies that
carry per-connection text (the greeting, the EHLO capability list) are built
by the small functions at the bottom of this module.

Enhanced codes used here come from the IANA "SMTP Enhanced Status Codes"
registry (RFC 5248). Where the brief of this module suggested an unregistered
code (``5.6.11`` for bare CR/LF) we use the generic registered ``5.6.0``
("other or undefined media error") instead and say why in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["Reply"]

_ENHANCED_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    ``lines`` holds the text of each line without the code; ``to_bytes``
    renders ``250-first`` ... ``250 last`` per RFC 5321 §4.2.1.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    rfc: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if not self.lines:
            raise ValueError("a reply needs at least one line")
        if self.enhanced is not None:
            if not _ENHANCED_RE.match(self.enhanced):
                raise ValueError(f"bad enhanced status code: {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                # RFC 3463 §2: the class digit must agree with the reply code.
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        for line in self.lines:
            # A reply line can never carry a line break: that would let text
            # supplied by the application forge further replies.
            if "\r" in line or "\n" in line or "\x00" in line:
                raise ValueError("reply text must not contain CR, LF or NUL")

    @classmethod
    def make(cls, code: int, text: str, enhanced: str | None = None, rfc: str = "") -> Reply:
        """Build a single-line reply (``text`` may contain ``\\n`` to make several lines)."""
        return cls(code, tuple(text.split("\n")), enhanced, rfc)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    def with_text(self, text: str) -> Reply:
        """The same code and enhanced code with other text."""
        return replace(self, lines=tuple(text.split("\n")))

    def to_bytes(self, *, enhanced: bool = True) -> bytes:
        """Wire form. ``enhanced=False`` drops the enhanced status code
        (a HELO session, RFC 2034 §3). Rendered once per instance and form:
        the catalogue's replies are sent over and over."""
        wire = self.__dict__.get("_wire_e" if enhanced else "_wire")
        if wire is None:
            wire = self._render(enhanced)
            # Not a field: eq, hash and repr ignore it (and the instance is frozen).
            self.__dict__["_wire_e" if enhanced else "_wire"] = wire
        return wire  # type: ignore[no-any-return]

    def _render(self, enhanced: bool) -> bytes:
        out: list[bytes] = []
        last = len(self.lines) - 1
        prefix = f"{self.enhanced} " if (enhanced and self.enhanced) else ""
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            # RFC 2034 §4: each line of a multi-line reply carries the code.
            out.append(f"{self.code}{sep}{prefix}{line}".encode() + b"\r\n")
        return b"".join(out)


def _r(code: int, enhanced: str | None, text: str, rfc: str) -> Reply:
    return Reply(code, (text,), enhanced, rfc)


# --- 2xx -------------------------------------------------------------------
OK = _r(250, "2.0.0", "OK", "RFC 5321 §4.2.2")
SENDER_OK = _r(250, "2.1.0", "Sender OK", "RFC 5321 §3.3; RFC 3463 X.1.0")
RECIPIENT_OK = _r(250, "2.1.5", "Recipient OK", "RFC 5321 §3.3; RFC 3463 X.1.5")
MESSAGE_ACCEPTED = _r(250, "2.0.0", "Message accepted", "RFC 5321 §4.1.1.4")
CHUNK_OK = _r(250, "2.0.0", "Chunk received", "RFC 3030 §2")
RESET_OK = _r(250, "2.0.0", "Reset OK", "RFC 5321 §4.1.1.5")
NOOP_OK = _r(250, "2.0.0", "OK", "RFC 5321 §4.1.1.9")
VRFY_CANNOT = _r(
    252,
    "2.5.2",
    "Cannot VRFY user, but will accept message and attempt delivery",
    "RFC 5321 §3.5.3",
)
HELP = _r(214, "2.0.0", "See RFC 5321, https://www.rfc-editor.org/rfc/rfc5321", "RFC 5321 §4.1.1.8")
BYE = _r(221, "2.0.0", "Bye", "RFC 5321 §4.1.1.10")
AUTH_OK = _r(235, "2.7.0", "Authentication successful", "RFC 4954 §6")
START_TLS = _r(220, "2.0.0", "Ready to start TLS", "RFC 3207 §4")

# --- 3xx -------------------------------------------------------------------
START_DATA = _r(354, None, "End data with <CR><LF>.<CR><LF>", "RFC 5321 §4.1.1.4")
AUTH_EMPTY_CHALLENGE = _r(334, None, "", "RFC 4954 §4")
AUTH_LOGIN_USERNAME = _r(334, None, "VXNlcm5hbWU6", "draft-murchison-sasl-login")  # "Username:"
AUTH_LOGIN_PASSWORD = _r(334, None, "UGFzc3dvcmQ6", "draft-murchison-sasl-login")  # "Password:"

# --- 4xx -------------------------------------------------------------------
TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors, closing connection", "RFC 5321 §4.3.2")
TOO_MANY_AUTH_FAILURES = _r(
    421, "4.7.0", "Too many authentication failures, closing connection", "RFC 4954 §4"
)
NOT_SMTP = _r(421, "4.7.0", "This is an SMTP server, closing connection", "RFC 5321 §4.3.2")
PIPELINE_OVERFLOW = _r(
    421, "4.7.0", "Too much pipelined input, closing connection", "RFC 2920 §3.1"
)
SHUTTING_DOWN = _r(421, "4.3.2", "Service shutting down, closing connection", "RFC 5321 §3.8")
TOO_MANY_RECIPIENTS = _r(452, "4.5.3", "Too many recipients", "RFC 5321 §4.5.3.1.10")
LOCAL_ERROR = _r(451, "4.3.0", "Local error in processing, try again later", "RFC 5321 §4.2.3")

# --- 5xx -------------------------------------------------------------------
UNKNOWN_COMMAND = _r(500, "5.5.1", "Command not recognized", "RFC 5321 §4.2.4")
LINE_TOO_LONG = _r(500, "5.5.6", "Line too long", "RFC 5321 §4.5.3.1.4; RFC 3463 X.5.6")
INVALID_UTF8 = _r(500, "5.5.2", "Command is not valid UTF-8", "RFC 6531 §3.3")
SYNTAX_ERROR = _r(501, "5.5.2", "Syntax error in parameters or arguments", "RFC 5321 §4.2.2")
BARE_CR_IN_COMMAND = _r(501, "5.5.2", "Bare CR in command line", "RFC 5321 §2.3.8")
BAD_HELO = _r(501, "5.5.2", "Invalid domain name or address literal", "RFC 5321 §4.1.4")
NO_PARAMS_ALLOWED = _r(501, "5.5.4", "Syntax error (no parameters allowed)", "RFC 3207 §4")
BAD_SENDER_SYNTAX = _r(501, "5.1.7", "Bad sender address syntax", "RFC 5321 §4.1.2; RFC 3463 X.1.7")
BAD_RECIPIENT_SYNTAX = _r(
    501, "5.1.3", "Bad recipient address syntax", "RFC 5321 §4.1.2; RFC 3463 X.1.3"
)
BAD_PARAM_VALUE = _r(501, "5.5.4", "Invalid parameter value", "RFC 5321 §4.1.1.11")
DUPLICATE_PARAM = _r(501, "5.5.4", "Duplicate parameter", "RFC 5321 §4.1.1.11")
AUTH_CANCELLED = _r(501, "5.7.0", "Authentication cancelled", "RFC 4954 §4")
AUTH_BAD_BASE64 = _r(501, "5.5.2", "Cannot Base64-decode client response", "RFC 4954 §4")
AUTH_BAD_RESPONSE = _r(501, "5.5.2", "Malformed authentication response", "RFC 4616 §2")
COMMAND_NOT_IMPLEMENTED = _r(502, "5.5.1", "Command not implemented", "RFC 5321 §4.2.4")
EXPN_NOT_IMPLEMENTED = _r(502, "5.5.1", "EXPN not available", "RFC 5321 §3.5.2")
HELO_FIRST = _r(503, "5.5.1", "Send EHLO or HELO first", "RFC 5321 §4.1.4")
NESTED_MAIL = _r(503, "5.5.1", "Sender already specified", "RFC 5321 §4.1.4")
NEED_MAIL = _r(503, "5.5.1", "Need MAIL command first", "RFC 5321 §4.1.4")
NEED_RCPT = _r(503, "5.5.1", "Need RCPT command first", "RFC 5321 §3.3")
DATA_AFTER_BDAT = _r(503, "5.5.1", "DATA not allowed after BDAT", "RFC 3030 §2")
RCPT_AFTER_BDAT = _r(503, "5.5.1", "RCPT not allowed after BDAT", "RFC 3030 §2")
STARTTLS_NOT_HERE = _r(503, "5.5.1", "STARTTLS not allowed now", "RFC 3207 §4")
ALREADY_TLS = _r(503, "5.5.1", "TLS already active", "RFC 3207 §4.2")
AUTH_NOT_AVAILABLE = _r(503, "5.5.1", "AUTH not available", "RFC 4954 §4")
AUTH_NOT_NOW = _r(503, "5.5.1", "AUTH not allowed during a mail transaction", "RFC 4954 §4")
ALREADY_AUTHENTICATED = _r(503, "5.5.1", "Already authenticated", "RFC 4954 §4")
AUTH_UNKNOWN_MECHANISM = _r(504, "5.5.4", "Unrecognized authentication type", "RFC 4954 §4")
AUTH_REQUIRED = _r(530, "5.7.0", "Authentication required", "RFC 4954 §6")
AUTH_FAILED = _r(535, "5.7.8", "Authentication credentials invalid", "RFC 4954 §6")
ENCRYPTION_REQUIRED = _r(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
    "RFC 4954 §6",
)
NO_VALID_RECIPIENTS = _r(554, "5.5.1", "No valid recipients", "RFC 5321 §3.3")
MESSAGE_TOO_BIG = _r(552, "5.3.4", "Message size exceeds fixed limit", "RFC 1870 §6.3")
BARE_LINE_ENDING = _r(
    550,
    "5.6.0",
    "Bare CR or LF not allowed in message content",
    "RFC 5321 §2.3.8; CVE-2023-51766",
)
NON_ASCII_ADDRESS = _r(
    553, "5.6.7", "Non-ASCII addresses not permitted without SMTPUTF8", "RFC 6531 §3.7.4.1"
)
NULL_RECIPIENT = _r(553, "5.1.3", "Null recipient not allowed", "RFC 5321 §4.1.1.3")
UNKNOWN_PARAM = _r(555, "5.5.4", "Unsupported parameter", "RFC 5321 §4.1.1.11")
TLS_NOT_AVAILABLE = _r(502, "5.5.1", "STARTTLS not available", "RFC 3207 §4")
BINARYMIME_UNSUPPORTED = _r(555, "5.5.4", "BODY=BINARYMIME not supported", "RFC 3030 §3")


def greeting(hostname: str) -> Reply:
    """The 220 banner (RFC 5321 §4.3.1). No enhanced code: RFC 2034 §3."""
    return Reply(220, (f"{hostname} ESMTP mailyard",), None, "RFC 5321 §4.3.1")


def helo_reply(hostname: str, client_name: str) -> Reply:
    return Reply(250, (f"{hostname} Hello {client_name}",), None, "RFC 5321 §4.1.1.1")


def ehlo_reply(hostname: str, client_name: str, capabilities: list[str]) -> Reply:
    """Multi-line EHLO reply: greeting line then one extension per line (RFC 5321 §4.1.1.1)."""
    return Reply(250, (f"{hostname} Hello {client_name}", *capabilities), None, "RFC 5321 §4.1.1.1")


def catalogue() -> dict[str, Reply]:
    """Every named constant reply in this module, by name (tests walk it)."""
    return {name: value for name, value in globals().items() if isinstance(value, Reply)}
