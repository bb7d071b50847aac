"""POP3 as a sans-IO core (RFC 1939, 2449, 2595, 3206, 5034, 6856).

``state.py`` holds the state table, ``connection.py`` the :class:`POP3Connection`,
``events.py`` what it hands to the application, ``dotstuff.py`` the streaming
byte-stuffer and TOP cutter used for RETR/TOP bodies.
"""

from mailyard.protocol.pop3.connection import (
    FLUSH_AT,
    MAX_COMMAND_LINE,
    RESP_CODES,
    SASL_LINE_MAX,
    LocalProtocolError,
    POP3Connection,
)
from mailyard.protocol.pop3.dotstuff import DotStuffer, TopLimiter
from mailyard.protocol.pop3.events import (
    FLUSH,
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    AuthNeedSecrets,
    AuthProof,
    ConnectionClosed,
    Event,
    Pass,
    Quit,
    Retr,
    Sentinel,
    Stls,
    Top,
)
from mailyard.protocol.pop3.state import State

__all__ = [
    "FLUSH",
    "FLUSH_AT",
    "MAX_COMMAND_LINE",
    "NEED_DATA",
    "PAUSED",
    "RESP_CODES",
    "SASL_LINE_MAX",
    "AuthCredentials",
    "AuthNeedSecrets",
    "AuthProof",
    "ConnectionClosed",
    "DotStuffer",
    "Event",
    "LocalProtocolError",
    "POP3Connection",
    "Pass",
    "Quit",
    "Retr",
    "Sentinel",
    "State",
    "Stls",
    "Top",
    "TopLimiter",
]
