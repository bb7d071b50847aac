"""ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2) and their values.

::

    Mail-parameters  = esmtp-param *(SP esmtp-param)
    esmtp-param      = esmtp-keyword ["=" esmtp-value]
    esmtp-keyword    = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    esmtp-value      = 1*(%d33-60 / %d62-126)    ; RFC 6531 §3.3 adds UTF8-non-ascii

Keywords are case-insensitive; we key the dict by the upper-cased keyword.
xtext (RFC 3461 §4): ``+`` followed by two upper-case hex digits encodes one
octet; every other character is itself.
"""

from __future__ import annotations

import re

__all__ = ["ParamError", "parse_params", "xtext_decode", "xtext_encode"]

_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_XTEXT_RE = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


class ParamError(ValueError):
    """A parameter list or value is malformed (501 5.5.4)."""


def parse_params(text: str, *, allow_utf8: bool = True) -> dict[str, str | None]:
    """Parse the parameters after a path. Raises :class:`ParamError` on bad
    syntax or a repeated keyword."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if item == "":
            continue  # be liberal about repeated spaces
        key, eq, value = item.partition("=")
        if not _KEYWORD_RE.fullmatch(key):
            raise ParamError(f"bad parameter keyword {key[:20]!r}")
        if eq:
            if value == "" or "=" in value:
                raise ParamError("bad parameter value")
            for c in value:
                o = ord(c)
                if o < 33 or o == 127 or (o > 127 and not allow_utf8):
                    raise ParamError("bad character in parameter value")
        key = key.upper()
        if key in params:
            raise ParamError(f"duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext. Raises :class:`ParamError`.

    The decoded octets are read as UTF-8 (RFC 6533 allows UTF-8 in ORCPT);
    CR, LF and NUL are refused.
    """
    if not _XTEXT_RE.fullmatch(text):
        raise ParamError("bad xtext")
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += text[i].encode("ascii")
            i += 1
    if b"\r" in out or b"\n" in out or b"\x00" in out:
        raise ParamError("control character in xtext")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError("xtext is not UTF-8")


def xtext_encode(text: str) -> str:
    """Encode to RFC 3461 §4 xtext (for the client side and tests)."""
    out: list[str] = []
    for b in text.encode("utf-8"):
        if 33 <= b <= 126 and b not in (0x2B, 0x3D):
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)
