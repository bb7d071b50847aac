"""BODY and BODYSTRUCTURE (RFC 9051 §7.5.2, grammar §9 ``body``).

Built from the MIME tree (mime.py) as nested lists for
``protocol.imap.response.serialize``. Type, subtype, parameter names and
values and the encoding are written as they appear in the message (defaults:
"text" "plain" ("charset" "us-ascii"), "7bit"; a text part without charset
gets ("charset" "us-ascii") first; TEXT/PLAIN; CHARSET=US-ASCII alone is
written in the default form), as Dovecot does, so that
tests can compare our output with Dovecot's byte for byte
(tests/message/test_message_dovecot.py). Sizes are exact body octets;
``lines`` counts LF octets (what others do: Dovecot counts LFs, so a last
line without a line end is not counted; the RFC says only "size of the body
in text lines"; what we do: the same as Dovecot).

Extension data (BODYSTRUCTURE only, RFC 9051 §7.5.2):
single part: md5, disposition, language, location;
multipart: parameters, disposition, language, location.

The tree depth is bounded by mime.py's ``max_depth``, so building the lists
by recursion here is bounded too (at most ~2 * 32 frames).
"""

from __future__ import annotations

from typing import Any

from mailyard.message.envelope import envelope
from mailyard.message.mime import Part, parse_mime
from mailyard.message.parse import parse_disposition
from mailyard.protocol.imap.response import Adjacent


def count_lines(body: bytes) -> int:
    return body.count(b"\n")


def _params(params: list[tuple[str, bytes]]) -> list[Any] | None:
    if not params:
        return None
    flat: list[Any] = []
    for k, v in params:
        flat += [k.encode("ascii", "replace"), v]
    return flat


def _nval(v: bytes | None) -> bytes | None:
    return v if v else None


def _ext_common(p: Part) -> list[Any]:
    disp = parse_disposition(p.header_value("Content-Disposition"))
    disp_v: Any = None if disp is None else [disp[0].encode("ascii", "replace"),
                                             _params(disp[1])]
    lang = p.header_value("Content-Language")
    lang_v: Any = None
    if lang:
        langs = [x.strip() for x in lang.split(b",") if x.strip()]
        lang_v = langs[0] if len(langs) == 1 else (langs or None)
    return [disp_v, lang_v, _nval(p.header_value("Content-Location"))]


def _structure(p: Part, ext: bool) -> list[Any]:
    if p.is_multipart:
        out: list[Any] = [Adjacent(_structure(c, ext) for c in p.children)]
        out.append(p.subtype_text.encode("ascii", "replace"))
        if ext:
            out.append(_params(p.params))
            out += _ext_common(p)
        return out
    maintype, params = p.maintype, p.params
    type_text, subtype_text = p.type_text, p.subtype_text
    if p.truncated:
        # too deep / too many parts / multipart without boundary: opaque bytes
        maintype, type_text, subtype_text = "APPLICATION", "application", "octet-stream"
        params = [(k, v) for k, v in params if k.lower() != "boundary"]
    if maintype == "TEXT":
        cs = p.param("charset")
        if cs is None:
            params = [("charset", b"us-ascii"), *params]  # RFC 2045 §5.2 default
        elif (p.subtype == "PLAIN" and len(params) == 1
              and cs.lower() == b"us-ascii"):
            # the default spelled out: written in the default form, as Dovecot does
            type_text, subtype_text, params = "text", "plain", [("charset", b"us-ascii")]
    enc = p.header_value("Content-Transfer-Encoding")
    fields: list[Any] = [
        type_text.encode("ascii", "replace"), subtype_text.encode("ascii", "replace"),
        _params(params),
        _nval(p.header_value("Content-ID")), _nval(p.header_value("Content-Description")),
        enc if enc else b"7bit", p.body_size,
    ]
    if p.message is not None:
        fields.append(envelope(p.message.fields))
        fields.append(_structure(p.message, ext))
        fields.append(count_lines(p.body))
    elif maintype == "TEXT":
        fields.append(count_lines(p.body))
    if ext:
        fields.append(_nval(p.header_value("Content-MD5")))
        fields += _ext_common(p)
    return fields


def bodystructure(msg: bytes | Part, *, extensible: bool = True) -> list[Any]:
    """BODYSTRUCTURE (``extensible``) or BODY of a whole message."""
    root = msg if isinstance(msg, Part) else parse_mime(msg)
    return _structure(root, extensible)


def body(msg: bytes | Part) -> list[Any]:
    return bodystructure(msg, extensible=False)
