"""RFC 5321 §4.1.2 Path / Mailbox grammar, with RFC 6531 (SMTPUTF8) extensions.

::

    Reverse-path   = Path / "<>"
    Forward-path   = Path
    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l          = At-domain *( "," At-domain )
    At-domain      = "@" Domain
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    Dot-string     = Atom *("."  Atom)
    Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
    QcontentSMTP   = qtextSMTP / quoted-pairSMTP
    quoted-pairSMTP= %d92 %d32-126
    qtextSMTP      = %d32-33 / %d35-91 / %d93-126
    Domain         = sub-domain *("." sub-domain)
    sub-domain     = Let-dig [Ldh-str]

RFC 6531 §3.3 adds UTF8-non-ascii to atext, qtextSMTP and sub-domain
(U-labels); we allow any non-ASCII, non-control character there only when
``allow_utf8`` is true (the transaction used ``SMTPUTF8``).

Source routes (``<@a,@b:user@c>``): RFC 5321 §4.1.1.3 and appendix C say
servers "MUST accept" the syntax and "SHOULD ignore" the route. What others
do: Postfix and Exim strip it. What we do: accept the syntax, strip the route
and report it in ``ParsedPath.source_route`` so policy may refuse it.

``<postmaster>`` without a domain is accepted by :func:`parse_path` (RFC 5321
§4.1.1.3 requires it for RCPT); callers refuse it for MAIL.

Limits (RFC 5321 §4.5.3.1): local part 64 octets, domain 255 octets, path
256 octets (counted in UTF-8 octets, brackets included).

Address literals: ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]``; general
address literals (``[tag:...]``) are refused, since no tag other than IPv6
is registered (RFC 5321 §4.1.3).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AddressError", "ParsedPath", "is_valid_domain", "parse_path", "split_path"]

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT_ASCII = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"  # hyphen escaped: classes get extended
_ATOM_ASCII = re.compile(rf"[{_ATEXT_ASCII}]+")
_DOT_STRING_ASCII = re.compile(rf"[{_ATEXT_ASCII}]+(?:\.[{_ATEXT_ASCII}]+)*")
# UTF8-non-ascii: anything >= U+0080 except C1 controls.
_NONASCII = "\u00a0-\U0010ffff"
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT_ASCII}{_NONASCII}]+(?:\.[{_ATEXT_ASCII}{_NONASCII}]+)*")
_LDH_LABEL_ASCII = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LDH_LABEL_UTF8 = re.compile(
    rf"[A-Za-z0-9{_NONASCII}](?:[A-Za-z0-9{_NONASCII}-]*[A-Za-z0-9{_NONASCII}])?"
)
_SIMPLE_LOCAL = re.compile(rf"[{_ATEXT_ASCII}{_NONASCII}]+(?:\.[{_ATEXT_ASCII}{_NONASCII}]+)*")


class AddressError(ValueError):
    """The path does not parse. ``needs_utf8`` is true when the only problem is
    non-ASCII text without SMTPUTF8 (RFC 6531 §3.7.4.1: 553 5.6.7)."""

    def __init__(self, message: str, *, needs_utf8: bool = False) -> None:
        super().__init__(message)
        self.needs_utf8 = needs_utf8


@dataclass(frozen=True)
class ParsedPath:
    """A parsed reverse- or forward-path.

    ``local`` is the local part with quoting removed (``"a b"`` gives ``a b``);
    ``domain`` is the domain as sent or the literal including brackets;
    ``is_null`` for ``<>``; ``domain == ""`` and not null for ``<postmaster>``.
    """

    local: str
    domain: str
    is_null: bool = False
    source_route: tuple[str, ...] = ()
    is_literal: bool = False

    @property
    def is_postmaster(self) -> bool:
        return not self.is_null and self.domain == "" and self.local.lower() == "postmaster"

    @functools.cached_property  # the instance is immutable (and shared: see parse_path)
    def mailbox(self) -> str:
        """Canonical ``local@domain`` (local part quoted only when needed),
        ``""`` for the null path and ``postmaster`` for bare postmaster."""
        if self.is_null:
            return ""
        local = self.local
        if not _SIMPLE_LOCAL.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if not self.domain:
            return local
        return f"{local}@{self.domain}"


def split_path(text: str) -> tuple[str, str]:
    """Split ``<path> params`` into the bracketed path and the rest.

    The path ends at the first ``>`` outside a quoted string; ``text`` must
    start with ``<``. Raises :class:`AddressError`.
    """
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    in_quote = False
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == ">":
            return text[: i + 1], text[i + 1 :]
        i += 1
    raise AddressError("unterminated path")


def is_valid_domain(domain: str, *, allow_utf8: bool) -> bool:
    """RFC 5321 ``Domain`` (sub-domains of letters, digits, hyphens), with
    U-labels when ``allow_utf8``."""
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN:
        return False
    label_re = _LDH_LABEL_UTF8 if allow_utf8 else _LDH_LABEL_ASCII
    return all(len(lbl) <= 63 and label_re.fullmatch(lbl) for lbl in domain.split("."))


def _parse_literal(text: str) -> None:
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise AddressError("bad IPv6 address literal")
        return
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            raise AddressError("bad IPv4 address literal")
        return
    raise AddressError("unsupported address literal")


def _check_ascii(text: str, allow_utf8: bool) -> None:
    if not allow_utf8 and not text.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8", needs_utf8=True)


def _parse_local(text: str, allow_utf8: bool) -> tuple[str, int]:
    """Parse a Local-part at the start of ``text``; return (value, length)."""
    if text.startswith('"'):
        value: list[str] = []
        i = 1
        n = len(text)
        while i < n:
            c = text[i]
            if c == '"':
                return "".join(value), i + 1
            if c == "\\":
                if i + 1 >= n:
                    break
                q = text[i + 1]
                if not (" " <= q <= "~" or (allow_utf8 and ord(q) >= 0xA0)):
                    raise AddressError("bad quoted-pair")
                value.append(q)
                i += 2
                continue
            if not (
                c in " !" or "#" <= c <= "[" or "]" <= c <= "~" or (allow_utf8 and ord(c) >= 0xA0)
            ):
                raise AddressError("bad character in quoted local part")
            value.append(c)
            i += 1
        raise AddressError("unterminated quoted local part")
    regex = _DOT_STRING_UTF8 if allow_utf8 else _DOT_STRING_ASCII
    m = regex.match(text)
    if not m:
        raise AddressError("bad local part")
    return m.group(0), m.end()


#: Paths parsed recently (a session sends the same MAIL FROM and RCPT TO paths again and
#: again): ParsedPath is immutable, so a hit is shared. Only successes are kept; the
#: whole map is dropped when full, which bounds its memory whatever the peers send.
_PATH_CACHE: dict[tuple[str, bool], ParsedPath] = {}
_PATH_CACHE_MAX = 4096


def parse_path(text: str, *, allow_utf8: bool) -> ParsedPath:
    """Parse ``<...>`` (brackets included). Raises :class:`AddressError`."""
    key = (text, allow_utf8)
    path = _PATH_CACHE.get(key)
    if path is None:
        path = _parse_path(text, allow_utf8)
        if len(_PATH_CACHE) >= _PATH_CACHE_MAX:
            _PATH_CACHE.clear()
        _PATH_CACHE[key] = path
    return path


def _parse_path(text: str, allow_utf8: bool) -> ParsedPath:
    if any(c in text for c in "\r\n\x00"):
        raise AddressError("control characters in path")
    if not (text.startswith("<") and text.endswith(">")) or len(text) < 2:
        raise AddressError("path must be enclosed in <>")
    if len(text.encode("utf-8")) > MAX_PATH:
        raise AddressError("path too long")
    _check_ascii(text, allow_utf8)
    inner = text[1:-1]
    if inner == "":
        return ParsedPath("", "", is_null=True)
    if inner.lower() == "postmaster":
        return ParsedPath(inner, "")

    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("bad source route")
        hops = inner[:colon].split(",")
        for hop in hops:
            if not hop.startswith("@") or not is_valid_domain(hop[1:], allow_utf8=allow_utf8):
                raise AddressError("bad source route")
        route = tuple(h[1:] for h in hops)
        inner = inner[colon + 1 :]

    local, used = _parse_local(inner, allow_utf8)
    rest = inner[used:]
    if not rest.startswith("@"):
        raise AddressError("missing @domain")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError("local part too long")
    domain = rest[1:]
    if domain.startswith("[") and domain.endswith("]"):
        _parse_literal(domain)
        return ParsedPath(local, domain, source_route=route, is_literal=True)
    if not is_valid_domain(domain, allow_utf8=allow_utf8):
        raise AddressError("bad domain")
    return ParsedPath(local, domain, source_route=route)
