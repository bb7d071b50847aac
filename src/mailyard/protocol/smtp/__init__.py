"""SMTP protocol, sans-IO: the server core (``server``), its reply catalogue
(``replies``), path grammar (``address``), ESMTP parameters (``params``,
``envelope``), DATA transparency (``dotstuff``) and the client side (``client``).
"""

from mailyard.protocol.smtp.address import AddressError, ParsedPath, parse_path
from mailyard.protocol.smtp.replies import Reply
from mailyard.protocol.smtp.server import ServerSettings, SMTPServerConnection

__all__ = [
    "AddressError",
    "ParsedPath",
    "Reply",
    "SMTPServerConnection",
    "ServerSettings",
    "parse_path",
]
