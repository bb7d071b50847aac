"""The POP3 state table. Everything that affects the state machine lives here.

Theory of operation
-------------------
RFC 1939 §3 names three states: AUTHORIZATION (after the greeting, until the
client has identified itself), TRANSACTION (the maildrop is locked and open) and
UPDATE (after QUIT in TRANSACTION: the server removes the messages marked
deleted, releases the lock and closes). We split AUTHORIZATION into the
sub-states the extensions need:

* ``USER_GIVEN``: PASS "may only be given in the AUTHORIZATION state
  immediately after a successful USER command" (RFC 1939 §7); any other
  command forgets the user name.
* ``SASL``: inside an AUTH exchange (RFC 5034 §4); lines are base64 client
  responses or ``*``, never commands.
* ``STARTING_TLS``: STLS was accepted (RFC 2595 §4); the TLS handshake is under
  way and every plaintext octet received is dropped (CVE-2011-0411: commands
  pipelined after STLS must not be run inside the TLS session).

``CLOSED`` is the end: QUIT answered, or the peer went away.

Which command is legal in which state is the data below (:data:`COMMANDS`),
its argument shape is :data:`SYNTAX`, and every move between states is one
row of :data:`TRANSITIONS`. ``connection.py`` only looks these up.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    USER_GIVEN = "USER_GIVEN"
    SASL = "SASL"
    STARTING_TLS = "STARTING_TLS"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Arg(enum.Enum):
    """Argument shapes (RFC 1939 §3: keyword, then arguments separated by single spaces)."""

    NONE = "none"
    MSG = "msg"  # one message number
    OPT_MSG = "[msg]"  # an optional message number
    MSG_LINES = "msg n"  # TOP
    REST = "rest"  # the rest of the line, spaces included (USER, PASS: RFC 1939 §7)
    AUTH = "mech [initial]"  # RFC 5034 §4 (AUTH alone lists mechanisms, RFC 1734 legacy)


SYNTAX: dict[str, Arg] = {
    "USER": Arg.REST,
    "PASS": Arg.REST,
    "AUTH": Arg.AUTH,
    "STLS": Arg.NONE,
    "UTF8": Arg.NONE,
    "CAPA": Arg.NONE,
    "QUIT": Arg.NONE,
    "STAT": Arg.NONE,
    "LIST": Arg.OPT_MSG,
    "RETR": Arg.MSG,
    "DELE": Arg.MSG,
    "NOOP": Arg.NONE,
    "RSET": Arg.NONE,
    "TOP": Arg.MSG_LINES,
    "UIDL": Arg.OPT_MSG,
}

_AUTHORIZATION = frozenset({"USER", "AUTH", "STLS", "UTF8", "CAPA", "QUIT"})
_TRANSACTION = frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
                          "CAPA", "QUIT"})

# Commands accepted per state. States absent here take no commands at all.
COMMANDS: dict[State, frozenset[str]] = {
    # RFC 1939 §4, RFC 2449 §5 (CAPA in both states), RFC 2595 §4 (STLS),
    # RFC 5034 §4 (AUTH), RFC 6856 §2 (UTF8: AUTHORIZATION only).
    State.AUTHORIZATION: _AUTHORIZATION,
    State.USER_GIVEN: _AUTHORIZATION | {"PASS"},
    # RFC 1939 §5, §7.
    State.TRANSACTION: _TRANSACTION,
}


class Trigger(enum.Enum):
    USER_OK = "USER accepted"
    OTHER_COMMAND = "a command other than PASS after USER"
    AUTH_START = "AUTH needs a challenge"
    AUTH_ABORT = "AUTH cancelled or malformed response"
    LOGIN_OK = "credentials accepted and maildrop locked"
    LOGIN_FAILED = "credentials refused or maildrop busy"
    STLS = "STLS accepted"
    TLS_STARTED = "TLS handshake done"
    QUIT = "QUIT"
    UPDATE_DONE = "QUIT answered"
    EOF = "peer closed"
    TOO_MANY_ERRORS = "error replies reached max_errors"


# (state, trigger) -> next state. A missing pair is a bug in connection.py.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.AUTHORIZATION, Trigger.USER_OK): State.USER_GIVEN,
    (State.USER_GIVEN, Trigger.USER_OK): State.USER_GIVEN,
    (State.USER_GIVEN, Trigger.OTHER_COMMAND): State.AUTHORIZATION,
    (State.AUTHORIZATION, Trigger.AUTH_START): State.SASL,
    (State.SASL, Trigger.AUTH_ABORT): State.AUTHORIZATION,
    # PASS comes from USER_GIVEN; a SASL exchange finishes from SASL, or from
    # AUTHORIZATION when the initial response completed it (RFC 5034 §4).
    (State.USER_GIVEN, Trigger.LOGIN_OK): State.TRANSACTION,
    (State.SASL, Trigger.LOGIN_OK): State.TRANSACTION,
    (State.AUTHORIZATION, Trigger.LOGIN_OK): State.TRANSACTION,
    (State.USER_GIVEN, Trigger.LOGIN_FAILED): State.AUTHORIZATION,
    (State.SASL, Trigger.LOGIN_FAILED): State.AUTHORIZATION,
    (State.AUTHORIZATION, Trigger.LOGIN_FAILED): State.AUTHORIZATION,
    # RFC 2595 §4: STLS only in AUTHORIZATION; afterwards the client starts over
    # (it must forget capabilities; we forget any USER given).
    (State.AUTHORIZATION, Trigger.STLS): State.STARTING_TLS,
    (State.STARTING_TLS, Trigger.TLS_STARTED): State.AUTHORIZATION,
    # RFC 1939 §4: QUIT in AUTHORIZATION closes without UPDATE; §6: in TRANSACTION
    # it enters UPDATE.
    (State.AUTHORIZATION, Trigger.QUIT): State.CLOSED,
    (State.TRANSACTION, Trigger.QUIT): State.UPDATE,
    (State.UPDATE, Trigger.UPDATE_DONE): State.CLOSED,
}
# The peer may go away in any state; a peer that is not speaking POP3 is cut off in any.
for _s in State:
    TRANSITIONS[(_s, Trigger.EOF)] = State.CLOSED
    TRANSITIONS[(_s, Trigger.TOO_MANY_ERRORS)] = State.CLOSED


class InvalidTransition(RuntimeError):
    """A (state, trigger) pair with no row: a bug in the caller, never peer input."""


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(f"{trigger.value!r} in state {state.value}") from None
