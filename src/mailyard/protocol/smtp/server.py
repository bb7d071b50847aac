"""Sans-IO SMTP server core (RFC 5321, 3207, 4954, 1870, 6152, 6531, 2920, 3030, 3461, 2034).

Theory of operation
===================

The core never touches a socket, a clock or a database. Its driver (the
asyncio adapter) feeds bytes in with :meth:`SMTPServerConnection.receive_data`
and pulls :meth:`~SMTPServerConnection.next_event`, which returns an event,
``NEED_DATA`` or ``PAUSED``. Replies accumulate in an outgoing buffer that the
driver drains with :meth:`~SMTPServerConnection.data_to_send`.

Most commands are answered by the core itself (NOOP, RSET, syntax and
sequence errors, limits). Commands whose outcome depends on the world (is this
recipient ours? is this password right? is the message stored?) become events
that *need a decision*: the core pauses, ``next_event`` returns ``PAUSED``
until the driver calls :meth:`~SMTPServerConnection.respond`, and only then
reads the next pipelined command. So replies always leave in command order
(RFC 2920 §3.1) however many commands arrive in one packet.

**Everything that affects the state machine lives in this file**: the
``State`` enum, the ``COMMANDS`` table (which verb is legal in which state and
who handles it), ``SEQUENCE_ERRORS`` (what we say when it is not), and
``DECISIONS`` (where a decision takes us). Handlers below return a
:class:`Reply` or an event; they never write.

AUTH needs the world once for PLAIN and LOGIN (``AuthCredentials``: is this
password right?) and twice for SCRAM-SHA-256: ``AuthNeedSecrets`` asks for the
user's stored secrets after the client-first message, answered with
:meth:`~SMTPServerConnection.provide_secrets`; ``AuthProof`` carries the verdict
on the client's proof, answered like ``AuthCredentials``. The SASL machines
themselves live in ``protocol/sasl.py``; this core frames them (RFC 4954 §4).

Message content is streamed: DATA through :class:`DotUnstuffer`, BDAT by
octet count, in :class:`MessageData` pieces of at most
``ServerSettings.chunk_size`` octets. Nothing holds a whole message.

Bounded memory (DESIGN "Streams, not blobs"): a command line is read up to
``MAX_LINE_READ`` octets, beyond which it is discarded to the next LF; pipelined
input waiting behind a decision is capped by ``max_buffered`` (the driver is
expected to stop reading while ``PAUSED``, as with h11).

Line endings in commands: RFC 5321 §2.3.8 requires CRLF. What others do:
Postfix and Exim accept a bare LF as the end of a command line. What we do:
the same for *commands* (it cannot smuggle anything: no content is involved),
but a bare CR inside a command line is a syntax error, and in message content
only CRLF ends a line (see ``dotstuff``).
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from mailyard.protocol import sasl
from mailyard.protocol.smtp import replies as R
from mailyard.protocol.smtp.dotstuff import BareLineEndingDetector, DotUnstuffer
from mailyard.protocol.smtp.envelope import parse_mail, parse_rcpt
from mailyard.protocol.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    AuthNeedSecrets,
    AuthProof,
    ConnectionClosed,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    Quit,
    RcptTo,
    Sentinel,
    StartTLS,
)
from mailyard.protocol.smtp.replies import Reply

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCredentials",
    "AuthNeedSecrets",
    "AuthProof",
    "ConnectionClosed",
    "Event",
    "Hello",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "Quit",
    "RcptTo",
    "SMTPServerConnection",
    "ServerSettings",
    "StartTLS",
    "State",
]


# ---------------------------------------------------------------------------
# Limits, with the arithmetic beside each.
# ---------------------------------------------------------------------------

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
#: MAIL grows with each extension we advertise: SIZE +26 (RFC 1870 §3),
#: BODY=8BITMIME +14 (RFC 6152), SMTPUTF8 +9 (RFC 6531), RET=HDRS +9 and
#: ENVID= +107 (RFC 3461 §4.3-4.4: 100-char value), AUTH= +500 (RFC 4954 §5).
MAX_MAIL_LINE = MAX_COMMAND_LINE + 26 + 14 + 9 + 9 + 107 + 500
#: RCPT: NOTIFY=SUCCESS,FAILURE,DELAY +30, ORCPT= +507 (RFC 3461 §4.2: 500-char value).
MAX_RCPT_LINE = MAX_COMMAND_LINE + 30 + 507
#: RFC 4954 §4: AUTH lines and SASL responses may be up to 12288 octets.
MAX_AUTH_LINE = 12288
#: Nothing longer than this is ever buffered as one line.
MAX_LINE_READ = MAX_AUTH_LINE

_VERB_LIMITS = {"MAIL": MAX_MAIL_LINE, "RCPT": MAX_RCPT_LINE, "AUTH": MAX_AUTH_LINE}

#: Words that show an HTTP client (cross-protocol requests, RFC 5321 §4.3.2
#: lets us close): we answer 421 at once rather than counting errors.
_HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH"})


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Per-listener settings. ``allow_auth`` and ``auth_required`` default from
    ``mode``: no AUTH on an MX (port 25), AUTH required on submission."""

    hostname: str
    mode: Literal["mx", "submission"] = "mx"
    max_message_size: int = 35 * 1024 * 1024
    max_recipients: int = 100
    tls_available: bool = False
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    auth_requires_tls: bool = True
    auth_required: bool | None = None
    allow_auth: bool | None = None
    max_errors: int = 10
    max_auth_failures: int = 3
    chunk_size: int = 64 * 1024
    max_buffered: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.mode not in ("mx", "submission"):
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.allow_auth is None:
            object.__setattr__(self, "allow_auth", self.mode == "submission")
        if self.auth_required is None:
            object.__setattr__(self, "auth_required", self.mode == "submission")
        if self.max_message_size <= 0 or self.chunk_size <= 0:
            raise ValueError("sizes must be positive")
        if self.max_buffered < MAX_LINE_READ + 2:
            raise ValueError("max_buffered must hold at least one AUTH line")


# ---------------------------------------------------------------------------
# The state table.
# ---------------------------------------------------------------------------


class State(enum.Enum):
    GREETED = "greeted"  # greeting sent (or TLS just started): HELO/EHLO expected
    READY = "ready"  # hello done, no transaction
    MAIL = "mail"  # sender accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading DATA content up to <CRLF>.<CRLF>
    BDAT = "bdat"  # reading the octets of one BDAT chunk
    CHUNKING = "chunking"  # between BDAT chunks of one message (RFC 3030)
    AUTH = "auth"  # reading a SASL response line (RFC 4954 §4)
    TLS = "tls"  # STARTTLS answered; waiting for tls_started()
    CLOSED = "closed"


#: Verbs legal in every command state (RFC 5321 §4.1.4: RSET, NOOP, QUIT,
#: HELP, VRFY, EXPN any time; EHLO/HELO any time, resetting the transaction).
_ANYTIME = {
    "EHLO": "hello",
    "HELO": "hello",
    "NOOP": "noop",
    "RSET": "rset",
    "QUIT": "quit",
    "HELP": "help",
    "VRFY": "vrfy",
    "EXPN": "expn",
}

#: state -> verb -> handler name (``_cmd_<name>``). A verb missing here is
#: answered from SEQUENCE_ERRORS.
COMMANDS: dict[State, dict[str, str]] = {
    State.GREETED: {**_ANYTIME},
    State.READY: {**_ANYTIME, "MAIL": "mail", "STARTTLS": "starttls", "AUTH": "auth"},
    State.MAIL: {**_ANYTIME, "RCPT": "rcpt"},
    State.RCPT: {**_ANYTIME, "RCPT": "rcpt", "DATA": "data", "BDAT": "bdat"},
    State.CHUNKING: {**_ANYTIME, "BDAT": "bdat"},
}

KNOWN_VERBS = frozenset(v for table in COMMANDS.values() for v in table)

#: state -> verb -> reply for a known verb out of sequence (default ``HELO_FIRST``
#: before hello, ``NEED_MAIL`` otherwise). BDAT out of sequence still has its
#: chunk read and thrown away before the reply, or the chunk would be taken as
#: commands (RFC 3030 §2).
SEQUENCE_ERRORS: dict[State, dict[str, Reply]] = {
    State.GREETED: {},
    State.READY: {"RCPT": R.NEED_MAIL, "DATA": R.NEED_MAIL, "BDAT": R.NEED_MAIL},
    State.MAIL: {
        "MAIL": R.NESTED_MAIL,
        "DATA": R.NO_VALID_RECIPIENTS,
        "BDAT": R.NO_VALID_RECIPIENTS,
        "STARTTLS": R.STARTTLS_NOT_HERE,
        "AUTH": R.AUTH_NOT_NOW,
    },
    State.RCPT: {"MAIL": R.NESTED_MAIL, "STARTTLS": R.STARTTLS_NOT_HERE, "AUTH": R.AUTH_NOT_NOW},
    State.CHUNKING: {
        "MAIL": R.NESTED_MAIL,
        "RCPT": R.RCPT_AFTER_BDAT,
        "DATA": R.DATA_AFTER_BDAT,
        "STARTTLS": R.STARTTLS_NOT_HERE,
        "AUTH": R.AUTH_NOT_NOW,
    },
}

#: Event needing a decision -> (state after a 2xx reply, state otherwise);
#: ``None`` keeps the current state.
DECISIONS: dict[type[Event], tuple[State | None, State | None]] = {
    Hello: (State.READY, State.GREETED),
    MailFrom: (State.MAIL, None),
    RcptTo: (State.RCPT, None),
    AuthCredentials: (State.READY, State.READY),
    AuthProof: (State.READY, State.READY),
    # (AuthNeedSecrets is answered by provide_secrets(), which continues the exchange in
    # State.AUTH; respond() with a 4xx/5xx ends it in State.READY.)
    MessageComplete: (State.READY, State.READY),
}

#: The reply ``respond(None)`` sends for each decision.
DEFAULT_ACCEPT: dict[type[Event], Reply] = {
    Hello: R.OK,  # replaced by the HELO line or EHLO capability list
    MailFrom: R.SENDER_OK,
    RcptTo: R.RECIPIENT_OK,
    AuthCredentials: R.AUTH_OK,
    AuthProof: R.AUTH_OK,  # R.AUTH_FAILED for an invalid proof
    MessageComplete: R.MESSAGE_ACCEPTED,
}

_BDAT_RE = re.compile(r"(\d{1,18})(?: +(LAST))?", re.IGNORECASE)
_HELO_NAME_RE = re.compile(
    r"[A-Za-z0-9_\u00a0-\U0010ffff-]+(?:\.[A-Za-z0-9_\u00a0-\U0010ffff-]+)*\.?"
)
_HELO_LITERAL_RE = re.compile(r"\[[!-Z^-~]+\]")


@dataclass
class _Transaction:
    """Everything RSET forgets (RFC 5321 §4.1.1.5)."""

    smtputf8: bool = False
    recipients: int = 0
    bdat_used: bool = False
    content_started: bool = False  # MessageData already emitted
    size: int = 0
    too_big: bool = False
    unstuffer: DotUnstuffer | None = None
    detector: BareLineEndingDetector = field(default_factory=BareLineEndingDetector)
    bdat_remaining: int = 0
    bdat_last: bool = False
    bdat_reject: Reply | None = None  # chunk being thrown away, then this reply
    bdat_return_state: State = State.READY


class SMTPServerConnection:
    """One SMTP server session. See the module docstring."""

    def __init__(self, settings: ServerSettings, *, tls_active: bool = False) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.state = State.GREETED
        self.hello_name: str | None = None
        self.extended = False
        self.authenticated_as: str | None = None
        self.authzid: str | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._pending: Event | None = None
        self._tx = _Transaction()
        self._eof = False
        self._discarding_line = False
        self._errors = 0
        self._auth_failures = 0
        self._sasl: sasl.ServerMechanism | None = None
        self._closed_event: Event | None = None
        self._overflow = False
        self._verb = ""  # verb of the command being handled

    # --- driver API ------------------------------------------------------

    def greeting(self) -> bytes:
        """The 220 banner to send first (RFC 5321 §4.3.1)."""
        return R.greeting(self.settings.hostname).to_bytes(enhanced=False)

    def receive_data(self, data: bytes) -> None:
        if self.state in (State.TLS, State.CLOSED) or self._eof:
            # After STARTTLS nothing sent in the clear is kept (CVE-2011-0411);
            # after close or EOF there is no one to answer.
            return
        self._in += data
        if len(self._in) > self.settings.max_buffered:
            self._in.clear()
            self._overflow = True

    def receive_eof(self) -> None:
        self._eof = True

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        """Octets received and not yet processed."""
        return len(self._in)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def awaiting_decision(self) -> Event | None:
        return self._pending

    def next_event(self) -> Event | Sentinel:
        """The next event, ``NEED_DATA`` or ``PAUSED``."""
        if self._events:
            return self._events.popleft()
        if self.state is State.CLOSED:
            return self._closed_event or ConnectionClosed("closed")
        if self._overflow:
            self._pending = None
            return self._close(R.PIPELINE_OVERFLOW, "pipelined input overflow")
        if self._pending is not None or self.state is State.TLS:
            return PAUSED
        while True:
            result = self._step()
            if self._events:
                return self._events.popleft()
            if result is not None:
                return result

    def respond(self, reply: Reply | None = None) -> None:
        """Answer the event awaiting a decision; ``None`` accepts with the
        default reply. For ``Hello`` any 2xx accepts and the core sends its
        own HELO line or EHLO capability list."""
        event = self._pending
        if event is None:
            if self.state is State.CLOSED:
                return
            raise RuntimeError("respond() without an event awaiting a decision")
        if isinstance(event, AuthNeedSecrets):
            if reply is None:
                self.provide_secrets(sasl.unmatchable_secrets())
                return
            if reply.is_success:
                raise RuntimeError("answer AuthNeedSecrets with provide_secrets()")
            self._pending = None
            self._sasl = None
            self.state = State.READY
            self._send(reply)
            return
        kind = type(event)
        if reply is None:
            reply = DEFAULT_ACCEPT[kind]
            if isinstance(event, AuthProof) and not event.valid:
                reply = R.AUTH_FAILED
        elif isinstance(event, AuthProof) and not event.valid and reply.is_success:
            raise RuntimeError("an invalid SCRAM proof cannot be accepted")
        self._pending = None
        ok_state, fail_state = DECISIONS[kind]
        accepted = reply.is_success
        if isinstance(event, Hello):
            if accepted:
                self.hello_name = event.name
                self.extended = event.extended
                reply = self._hello_reply(event)
            else:
                self.hello_name = None
                self.extended = False
        elif isinstance(event, MailFrom) and accepted:
            self._tx = _Transaction(smtputf8=event.smtputf8)
        elif isinstance(event, RcptTo) and accepted:
            self._tx.recipients += 1
        elif isinstance(event, AuthCredentials | AuthProof):
            if accepted:
                self.authenticated_as = event.authcid
                self.authzid = event.authzid or None
            else:
                self._auth_failures += 1
                if self._auth_failures >= self.settings.max_auth_failures:
                    self._send(reply)
                    self._events.append(
                        self._close(R.TOO_MANY_AUTH_FAILURES, "too many authentication failures")
                    )
                    return
        elif isinstance(event, MessageComplete):
            self._tx = _Transaction()
        new_state = ok_state if accepted else fail_state
        if new_state is not None:
            self.state = new_state
        self._send(reply)

    def provide_secrets(self, secrets: sasl.ScramSecrets) -> None:
        """Answer :class:`AuthNeedSecrets`: the exchange goes on (server-first message)."""
        event = self._pending
        if not isinstance(event, AuthNeedSecrets):
            if self.state is State.CLOSED:
                return
            raise RuntimeError("provide_secrets() without an AuthNeedSecrets event")
        self._pending = None
        machine = self._sasl
        assert machine is not None
        outcome = self._auth_step(machine.secrets(secrets))
        if outcome is not None:  # pragma: no cover - secrets() always returns a challenge
            raise RuntimeError(f"unexpected SASL step after secrets: {outcome!r}")

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS succeeded: forget everything learnt
        in the clear, EHLO is needed again (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_started() without STARTTLS")
        self.tls_active = True
        self.state = State.GREETED
        self.hello_name = None
        self.extended = False
        self.authenticated_as = None
        self.authzid = None
        self._tx = _Transaction()
        self._in.clear()

    def shutdown(self, reply: Reply = R.SHUTTING_DOWN) -> None:
        """Close from our side (server stopping, timeout): queue ``reply``
        and end; ``next_event`` then reports the close."""
        if self.state is State.CLOSED:
            return
        self._pending = None
        self._abort_message("shutdown")
        self._events.append(self._close(reply, "shutdown"))

    # --- machinery -------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes(enhanced=self.extended)

    def _close(self, reply: Reply | None, reason: str) -> ConnectionClosed:
        if reply is not None:
            self._send(reply)
        self.state = State.CLOSED
        self._in.clear()
        event = ConnectionClosed(reason)
        self._closed_event = event
        return event

    def _emit(self, event: Event) -> None:
        if event.needs_decision:
            self._pending = event
        self._events.append(event)

    def _abort_message(self, reason: str) -> None:
        """End the transaction; if a message was being received, tell the
        driver to drop what it spooled."""
        tx = self._tx
        receiving = self.state in (State.DATA, State.CHUNKING) or (
            self.state is State.BDAT and tx.bdat_reject is None
        )
        if receiving or tx.content_started:
            self._events.append(MessageAborted(reason))
        self._tx = _Transaction()

    def _error(self, reply: Reply) -> None:
        """A syntax, sequence or unknown-command error (RFC 5321 §4.3.2:
        after too many, we may close with 421)."""
        self._errors += 1
        if self._errors >= self.settings.max_errors:
            self._abort_message("too many errors")
            self._events.append(self._close(R.TOO_MANY_ERRORS, "too many errors"))
        else:
            self._send(reply)

    def _step(self) -> Event | Sentinel | None:
        """Make progress; return NEED_DATA, an event, or None to go on."""
        if self.state is State.DATA:
            return self._step_data()
        if self.state is State.BDAT:
            return self._step_bdat()
        if self.state in (State.CLOSED, State.TLS) or self._pending is not None:
            return PAUSED
        line = self._read_line()
        if line is None:
            if self._eof:
                self._abort_message("connection closed")
                return self._close(None, "eof")
            return NEED_DATA
        if line is _TOO_LONG:
            if self.state is State.AUTH:
                self._sasl = None
                self.state = State.READY
            self._error(R.LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        if self.state is State.AUTH:
            self._auth_response(line)
        else:
            self._command(line)
        return None

    def _read_line(self) -> bytes | object | None:
        """One line without its LF (and CR), ``_TOO_LONG``, or None for more data."""
        buf = self._in
        if self._discarding_line:
            idx = buf.find(b"\n")
            if idx < 0:
                buf.clear()
                return None
            del buf[: idx + 1]
            self._discarding_line = False
        idx = buf.find(b"\n", 0, MAX_LINE_READ)
        if idx < 0:
            if len(buf) >= MAX_LINE_READ:
                # Too long: answer now, drop the line up to its LF (which may
                # already be here, or come later: then drop as it comes).
                end = buf.find(b"\n", MAX_LINE_READ)
                if end < 0:
                    buf.clear()
                    self._discarding_line = True
                else:
                    del buf[: end + 1]
                return _TOO_LONG
            return None
        line = bytes(buf[:idx])
        del buf[: idx + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    # --- commands --------------------------------------------------------

    def _command(self, raw: bytes) -> None:
        if b"\r" in raw:
            self._error(R.BARE_CR_IN_COMMAND)
            return
        if b"\x00" in raw:
            self._error(R.SYNTAX_ERROR)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error(R.INVALID_UTF8)
            return
        line = line.rstrip(" ")
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in _HTTP_VERBS or verb.endswith(":"):
            self._abort_message("not SMTP")
            self._events.append(self._close(R.NOT_SMTP, "not SMTP"))
            return
        if verb not in KNOWN_VERBS:
            self._error(R.UNKNOWN_COMMAND)
            return
        self._verb = verb
        if len(raw) + 2 > _VERB_LIMITS.get(verb, MAX_COMMAND_LINE):
            self._error(R.LINE_TOO_LONG)
            return
        handler_name = COMMANDS[self.state].get(verb)
        if handler_name is None:
            default = R.HELO_FIRST if self.state is State.GREETED else R.NEED_MAIL
            reply = SEQUENCE_ERRORS[self.state].get(verb, default)
            if verb == "BDAT":
                # The chunk is read and thrown away, then ``reply`` is sent.
                syntax = self._cmd_bdat(arg, reject=reply)
                if syntax is not None:
                    self._error(syntax)
            else:
                self._error(reply)
            return
        outcome = _HANDLERS[handler_name](self, arg)
        if isinstance(outcome, Reply):
            if outcome.code in _ERROR_CODES:
                self._error(outcome)
            else:
                self._send(outcome)
        elif isinstance(outcome, Event):
            self._emit(outcome)

    def _cmd_hello(self, arg: str) -> Reply | Event:
        name = arg.strip(" ")
        if not name or not (_HELO_NAME_RE.fullmatch(name) or _HELO_LITERAL_RE.fullmatch(name)):
            return R.BAD_HELO
        # RFC 5321 §4.1.4: a second EHLO/HELO resets the transaction.
        self._abort_message("reset by HELO/EHLO")
        return Hello(name, extended=self._verb == "EHLO")

    def _hello_reply(self, event: Hello) -> Reply:
        if not event.extended:
            return R.helo_reply(self.settings.hostname, event.name)
        caps = [
            "PIPELINING",
            f"SIZE {self.settings.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if self.settings.tls_available and not self.tls_active:
            caps.append("STARTTLS")
        if self._auth_offered():
            caps.append("AUTH " + " ".join(self.settings.auth_mechanisms))
        return R.ehlo_reply(self.settings.hostname, event.name, caps)

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(
            s.allow_auth
            and s.auth_mechanisms
            and self.authenticated_as is None
            and (self.tls_active or not s.auth_requires_tls)
        )

    def _cmd_noop(self, arg: str) -> Reply:
        return R.NOOP_OK  # RFC 5321 §4.1.1.9: any argument is ignored

    def _cmd_rset(self, arg: str) -> Reply:
        if arg:
            return R.SYNTAX_ERROR
        self._abort_message("reset by RSET")
        if self.state is not State.GREETED:
            self.state = State.READY
        return R.RESET_OK

    def _cmd_quit(self, arg: str) -> Event:
        self._abort_message("QUIT")
        self._send(R.BYE)
        self.state = State.CLOSED
        self._in.clear()
        event = Quit()
        self._closed_event = event
        return event

    def _cmd_help(self, arg: str) -> Reply:
        return R.HELP

    def _cmd_vrfy(self, arg: str) -> Reply:
        return R.VRFY_CANNOT if arg else R.SYNTAX_ERROR

    def _cmd_expn(self, arg: str) -> Reply:
        return R.EXPN_NOT_IMPLEMENTED if arg else R.SYNTAX_ERROR

    def _cmd_starttls(self, arg: str) -> Reply | Event:
        if arg:
            return R.NO_PARAMS_ALLOWED
        if self.tls_active:
            return R.ALREADY_TLS
        if not self.settings.tls_available:
            return R.TLS_NOT_AVAILABLE
        self._send(R.START_TLS)
        # CVE-2011-0411: anything pipelined after STARTTLS arrived in the
        # clear and must not be executed after the handshake.
        self._in.clear()
        self.state = State.TLS
        return StartTLS()

    # MAIL FROM:<path> [params]  (RFC 5321 §4.1.1.2)
    def _cmd_mail(self, arg: str) -> Reply | Event:
        if self.settings.auth_required and self.authenticated_as is None:
            return R.AUTH_REQUIRED  # RFC 4954 §6
        return parse_mail(arg, max_message_size=self.settings.max_message_size,
                          auth=bool(self.settings.allow_auth))

    # RCPT TO:<path> [params]  (RFC 5321 §4.1.1.3)
    def _cmd_rcpt(self, arg: str) -> Reply | Event:
        outcome = parse_rcpt(arg, smtputf8=self._tx.smtputf8)
        if isinstance(outcome, RcptTo) and self._tx.recipients >= self.settings.max_recipients:
            return R.TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.10
        return outcome

    # DATA  (RFC 5321 §4.1.1.4)
    def _cmd_data(self, arg: str) -> Reply | None:
        if arg:
            return R.SYNTAX_ERROR
        if self._tx.bdat_used:
            return R.DATA_AFTER_BDAT
        self._send(R.START_DATA)
        self._tx.unstuffer = DotUnstuffer()
        self._tx.size = 0
        self.state = State.DATA
        return None

    def _step_data(self) -> Event | Sentinel | None:
        tx = self._tx
        unstuffer = tx.unstuffer
        assert unstuffer is not None
        piece = bytes(self._in[: self.settings.chunk_size])
        content, used = unstuffer.feed(piece)
        del self._in[:used]
        if content:
            self._add_content(content)
        if unstuffer.done:
            self._end_of_message(bare=unstuffer.bare_line_ending, chunked=False)
            return None
        if used == 0:
            if self._eof:
                self._abort_message("connection closed")
                return self._close(None, "eof")
            return NEED_DATA
        return None

    def _add_content(self, content: bytes) -> None:
        tx = self._tx
        if tx.too_big:
            return
        if tx.size + len(content) > self.settings.max_message_size:
            # Keep reading to the end, stream nothing more (RFC 1870 §6.3).
            tx.too_big = True
            return
        tx.size += len(content)
        tx.content_started = True
        self._events.append(MessageData(content))

    def _end_of_message(self, *, bare: bool, chunked: bool) -> None:
        tx = self._tx
        if bare or tx.too_big:
            reply = R.BARE_LINE_ENDING if bare else R.MESSAGE_TOO_BIG
            self._events.append(MessageAborted("bare CR or LF" if bare else "message too big"))
            self._tx = _Transaction()
            self.state = State.READY
            self._send(reply)
            return
        self.state = State.READY
        self._emit(MessageComplete(size=tx.size, chunked=chunked))

    # BDAT n [LAST]  (RFC 3030 §2)
    def _cmd_bdat(self, arg: str, reject: Reply | None = None) -> Reply | None:
        m = _BDAT_RE.fullmatch(arg)
        if not m:
            return R.SYNTAX_ERROR  # no size: we cannot know where the chunk ends
        size = int(m.group(1))
        last = m.group(2) is not None
        tx = self._tx
        tx.bdat_return_state = self.state
        tx.bdat_reject = reject
        tx.bdat_remaining = size
        tx.bdat_last = last
        if reject is None:
            tx.bdat_used = True
        self.state = State.BDAT
        return None

    def _step_bdat(self) -> Event | Sentinel | None:
        tx = self._tx
        if tx.bdat_remaining:
            if not self._in:
                if self._eof:
                    self._abort_message("connection closed")
                    return self._close(None, "eof")
                return NEED_DATA
            take = min(tx.bdat_remaining, len(self._in), self.settings.chunk_size)
            piece = bytes(self._in[:take])
            del self._in[:take]
            tx.bdat_remaining -= take
            if tx.bdat_reject is None:
                # BDAT content is not dot-stuffed but still must be CRLF text
                # (RFC 3030 §3 without BINARYMIME); we reject bare CR/LF as
                # for DATA, at the end of the chunk where it is seen.
                tx.detector.feed(piece)
                if not tx.detector.found:
                    self._add_content(piece)
            if tx.bdat_remaining:
                return None
        # End of this chunk.
        if tx.bdat_reject is not None:
            reply = tx.bdat_reject
            self.state = tx.bdat_return_state
            tx.bdat_reject = None
            self._send(reply)
            return None
        if tx.detector.found or (tx.bdat_last and tx.detector.finish()):
            self._end_of_message(bare=True, chunked=True)
            return None
        if tx.too_big:
            self._end_of_message(bare=False, chunked=True)
            return None
        if tx.bdat_last:
            self._end_of_message(bare=False, chunked=True)
            return None
        self.state = State.CHUNKING
        self._send(R.CHUNK_OK)
        return None

    # AUTH mechanism [initial-response]  (RFC 4954 §4)
    def _cmd_auth(self, arg: str) -> Reply | Event | None:
        s = self.settings
        if not s.allow_auth:
            return R.AUTH_NOT_AVAILABLE
        if self.authenticated_as is not None:
            return R.ALREADY_AUTHENTICATED
        if s.auth_requires_tls and not self.tls_active:
            return R.ENCRYPTION_REQUIRED
        parts = arg.split(" ")
        if not parts[0] or len(parts) > 2:
            return R.SYNTAX_ERROR
        mechanism = parts[0].upper()
        machine = sasl.server_mechanism(mechanism)
        if mechanism not in (m.upper() for m in s.auth_mechanisms) or machine is None:
            return R.AUTH_UNKNOWN_MECHANISM
        initial: bytes | None = None
        if len(parts) == 2:
            if parts[1] == "*":
                return R.AUTH_CANCELLED
            try:
                initial = sasl.b64decode_strict(parts[1])
            except sasl.SaslError:
                return R.AUTH_BAD_BASE64
        self._sasl = machine
        try:
            step = machine.start(initial)
        except sasl.SaslError:
            self._sasl = None
            return R.AUTH_BAD_RESPONSE
        return self._auth_step(step)

    def _auth_response(self, line: bytes) -> None:
        machine = self._sasl
        self.state = State.READY
        self._sasl = None
        if machine is None:  # pragma: no cover - AUTH state implies a machine
            return
        if line.strip() == b"*":
            self._send(R.AUTH_CANCELLED)
            return
        try:
            data = sasl.b64decode_strict(line)
        except sasl.SaslError:
            self._error(R.AUTH_BAD_BASE64)
            return
        try:
            step = machine.step(data)
        except sasl.SaslError:
            self._error(R.AUTH_BAD_RESPONSE)
            return
        self._sasl = machine
        outcome = self._auth_step(step)
        if isinstance(outcome, Event):
            self._emit(outcome)
        elif outcome is not None:
            self._error(outcome)

    def _auth_step(self, step: sasl.SaslStep) -> Reply | Event | None:
        if isinstance(step, sasl.Challenge):
            self.state = State.AUTH
            text = base64.b64encode(step.data).decode("ascii")
            self._send(Reply(334, (text,), None, "RFC 4954 §4"))
            return None
        if isinstance(step, sasl.NeedSecrets):
            # The machine stays: provide_secrets() feeds it (see events.AuthNeedSecrets).
            self.state = State.READY
            return AuthNeedSecrets(step.mechanism, step.authcid, step.authzid)
        self._sasl = None
        self.state = State.READY
        if isinstance(step, sasl.ProofChecked):
            return AuthProof(step.mechanism, step.authzid, step.authcid, step.valid)
        return AuthCredentials(step.mechanism, step.authzid, step.authcid, step.password)


#: COMMANDS' handler names to the functions, looked up once.
_HANDLERS = {
    name: getattr(SMTPServerConnection, "_cmd_" + name)
    for table in COMMANDS.values()
    for name in table.values()
}
_TOO_LONG = object()
#: Replies that count towards ``max_errors`` (syntax, sequence, unknown).
_ERROR_CODES = frozenset({500, 501, 503, 504, 555})
