"""The IMAP connection state table (RFC 9051 §3, §6).

Everything about which command is legal in which state lives here, as data.

     connection --> NOT_AUTHENTICATED --LOGIN/AUTHENTICATE ok--> AUTHENTICATED
                                                                  |   ^
                                             SELECT/EXAMINE ok    v   | CLOSE, UNSELECT,
                                                               SELECTED   failed SELECT
     any state --LOGOUT--> LOGOUT (server sends BYE, then OK, then closes)

A command outside its states gets ``BAD`` and changes nothing (RFC 9051 §6:
"commands ... only valid in certain states"; a failed SELECT in SELECTED
leaves AUTHENTICATED, RFC 9051 §6.3.2, which the session applies via
:func:`after`).
"""

from __future__ import annotations

import enum

from mailyard.protocol.imap import commands as c


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


NA = State.NOT_AUTHENTICATED
AU = State.AUTHENTICATED
SE = State.SELECTED

_ANY = frozenset({NA, AU, SE})
_AUTHED = frozenset({AU, SE})
_SELECTED = frozenset({SE})

# command name (commands.Command.name) -> states where it is legal
LEGAL: dict[str, frozenset[State]] = {
    # §6.1 any state
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,  # RFC 2971: any state
    # §6.2 not authenticated
    "STARTTLS": frozenset({NA}), "AUTHENTICATE": frozenset({NA}), "LOGIN": frozenset({NA}),
    # RFC 4978 §3: COMPRESS after authentication (it may also follow STARTTLS;
    # we only allow it once authenticated, as Dovecot does).
    "COMPRESS": _AUTHED,
    # §6.3 authenticated (also valid in selected)
    # RFC 9051 §6.3.1 / RFC 5161 §3.1: ENABLE only in the authenticated state
    "ENABLE": frozenset({AU}), "SELECT": _AUTHED, "CREATE": _AUTHED, "DELETE": _AUTHED,
    "RENAME": _AUTHED, "SUBSCRIBE": _AUTHED, "UNSUBSCRIBE": _AUTHED, "LIST": _AUTHED,
    "LSUB": _AUTHED, "NAMESPACE": _AUTHED, "STATUS": _AUTHED, "IDLE": _AUTHED,
    "GETQUOTA": _AUTHED, "GETQUOTAROOT": _AUTHED, "SETQUOTA": _AUTHED,
    "APPEND": _AUTHED,
    # §6.4 selected
    "CHECK": _SELECTED, "CLOSE": _SELECTED, "UNSELECT": _SELECTED, "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED, "FETCH": _SELECTED, "STORE": _SELECTED, "COPY": _SELECTED,
    "MOVE": _SELECTED, "SORT": _SELECTED, "THREAD": _SELECTED,
}

# Commands that must not be pipelined behind others because they change how
# the bytes that follow are read (RFC 9051 §5.5, RFC 4978 §4, RFC 2595 §3.1).
BARRIERS = frozenset({"STARTTLS", "COMPRESS", "AUTHENTICATE", "IDLE", "LOGOUT"})


def is_legal(command: c.Command | str, state: State) -> bool:
    name = command if isinstance(command, str) else command.name
    return state in LEGAL.get(name, frozenset())


def check(command: c.Command | str, state: State) -> str | None:
    """None when legal, else the text for a tagged BAD."""
    if is_legal(command, state):
        return None
    name = command if isinstance(command, str) else command.name
    if state is State.LOGOUT:
        return "connection is closing"
    if state is NA:
        return f"{name} needs authentication"
    if state is AU and LEGAL.get(name) == _SELECTED:
        return f"{name} needs a selected mailbox"
    return f"{name} not allowed now"


def after(command: c.Command, state: State, ok: bool) -> State:
    """The state after ``command`` completed (``ok``: tagged OK was sent)."""
    name = command.name
    if name == "LOGOUT":
        return State.LOGOUT
    if name in ("LOGIN", "AUTHENTICATE"):
        return AU if ok else state
    if name == "SELECT":
        # RFC 9051 §6.3.2: a failed SELECT/EXAMINE leaves no mailbox selected.
        return SE if ok else (AU if state is SE else state)
    if name in ("CLOSE", "UNSELECT") and ok:
        return AU
    return state
