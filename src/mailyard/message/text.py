"""Decoded text for search (RFC 9051 §6.4.4 BODY/TEXT) and PREVIEW (RFC 8970).

:func:`searchable_text` gives the decoded header values and the decoded text
of every text/* part (HTML reduced to its text), bounded to ``max_chars``
per field so a huge message costs bounded memory. It feeds
``storage.models.SearchableText`` at delivery and the search evaluator.

:func:`preview` follows RFC 8970 §3.1: the text of the first text/plain (or,
failing that, text/html) part, whitespace collapsed, at most 256 characters
(RFC 8970 §3.1 "MUST NOT exceed 256 characters"); we cut at 200 on a word
boundary as the RFC's examples suggest.
"""

from __future__ import annotations

import codecs
import html
import re

from mailyard.message.mime import Part, parse_mime
from mailyard.message.parse import decode_header
from mailyard.message.sections import UnknownCTE, decode_cte
from mailyard.storage.models import SearchableText

MAX_TEXT_CHARS = 1_000_000
PREVIEW_CHARS = 200

_TAG_RE = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_WS_RE = re.compile(r"\s+")


def decode_text(raw: bytes, charset: bytes | None) -> str:
    """A text body's octets as text, for search and PREVIEW.

    RFC 6532 mail (SMTPUTF8) carries raw UTF-8 without declaring a charset. A text part
    with no Content-Type (whose RFC 2045 §5.2 default the MIME parser fills in as
    us-ascii) or with a declared us-ascii cannot account for 8-bit octets, so such a body
    is read as UTF-8 when it is valid UTF-8; otherwise as before, as ASCII with each
    8-bit octet replaced (U+FFFD). A Content-Type without a charset parameter was, and
    is, read as UTF-8 with invalid octets replaced; an unknown charset likewise. The
    full-text index (``index_text``) and the evaluator's scan (``searchctx``) both come
    here through :func:`part_text`, so they agree on what a body says."""
    cs = (charset or b"utf-8").decode("ascii", "replace").strip() or "utf-8"
    try:
        name = codecs.lookup(cs).name
    except LookupError:
        cs = name = "utf-8"
    if name == "ascii" and not raw.isascii():
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw.decode(cs, "replace")


def part_text(p: Part) -> str | None:
    """Decoded text of one text/* leaf, or None for other parts."""
    if p.maintype != "TEXT" or p.is_multipart or p.truncated:
        return None
    try:
        raw = decode_cte(p.body, p.header_value("Content-Transfer-Encoding"))
    except UnknownCTE:
        raw = p.body
    text = decode_text(raw, p.param("charset"))
    if p.subtype == "HTML":
        text = html.unescape(_TAG_RE.sub(" ", text))
    return text


def _bounded_join(pieces: list[str], limit: int) -> str:
    out = "\n".join(pieces)
    return out[:limit]


def headers_text(p: Part) -> str:
    return "\n".join(f"{f.name}: {decode_header(f.value)}" for f in p.fields)


def body_text(msg: bytes | Part, *, max_chars: int = MAX_TEXT_CHARS,
              attached_headers: bool = False) -> str:
    """Decoded text of the text parts. With ``attached_headers`` the headers of
    attached messages are included too: SEARCH TEXT matches them, SEARCH BODY
    does not (what others do: Dovecot; tests/message/test_message_dovecot.py)."""
    root = msg if isinstance(msg, Part) else parse_mime(msg)
    pieces: list[str] = []
    total = 0
    for p in root.walk():
        if p.message is not None:
            t = headers_text(p.message) if attached_headers else None
        else:
            t = part_text(p)
        if t:
            pieces.append(t)
            total += len(t)
            if total >= max_chars:
                break
    return _bounded_join(pieces, max_chars)


def searchable_text(msg: bytes | Part, *, max_chars: int = MAX_TEXT_CHARS
                    ) -> tuple[str, str]:
    """(decoded top-level headers, decoded body text for SEARCH BODY)."""
    st = searchable_fields(msg, max_chars=max_chars)
    return st.headers, st.body


def index_text(content: bytes) -> SearchableText | None:
    """What the full-text index stores for a message (see :func:`searchable_fields`);
    None for one that cannot be parsed, which is stored all the same, just not indexed."""
    try:
        return searchable_fields(content)
    except Exception:
        return None


def searchable_fields(msg: bytes | Part, *, max_chars: int = MAX_TEXT_CHARS
                      ) -> SearchableText:
    """What the full-text index is fed at delivery (storage.models.SearchableText):
    ``headers`` (top-level, decoded), ``body`` (text parts, for SEARCH BODY) and
    ``extra["attached_headers"]`` (headers of attached messages; SEARCH TEXT
    covers headers + body + attached headers)."""
    root = msg if isinstance(msg, Part) else parse_mime(msg)
    attached = "\n".join(headers_text(p.message) for p in root.walk()
                         if p.message is not None)
    return SearchableText(headers=headers_text(root)[:max_chars],
                          body=body_text(root, max_chars=max_chars),
                          extra={"attached_headers": attached[:max_chars]} if attached else {})


def preview(msg: bytes | Part, *, max_chars: int = PREVIEW_CHARS) -> str:
    root = msg if isinstance(msg, Part) else parse_mime(msg)
    html_part: Part | None = None
    chosen: Part | None = None
    for p in root.walk():
        if p is not root and p.maintype == "MESSAGE":
            break  # RFC 8970 §3.1: do not look into attached messages
        disp = p.header_value("Content-Disposition")
        if disp and disp.strip().lower().startswith(b"attachment"):
            continue
        if p.maintype == "TEXT" and p.subtype == "PLAIN" and not p.is_multipart:
            chosen = p
            break
        if p.maintype == "TEXT" and p.subtype == "HTML" and html_part is None:
            html_part = p
    chosen = chosen or html_part
    if chosen is None:
        return ""
    text = _WS_RE.sub(" ", part_text(chosen) or "").strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut
