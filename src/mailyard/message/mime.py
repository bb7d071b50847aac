"""The MIME tree of a message as offsets into its bytes (RFC 2045, 2046).

:func:`parse_mime` builds the tree with an explicit work list (no recursion
on message data). Each :class:`Part` covers ``data[start:end]``: its header
block is ``data[start:body_start]`` (blank line included) and its body
``data[body_start:end]``.

Multipart bodies are split on ``--boundary`` lines (RFC 2046 §5.1.1); the
CRLF before a delimiter belongs to the delimiter, not to the part before it.
A missing close delimiter ends the last part at the end of the body. A part
of type message/rfc822 (or message/global, RFC 6532) gets ``message``: the
encapsulated message as its own Part.

Bounds: nesting over ``max_depth`` levels (default 32) and parts beyond
``max_parts`` (default 5000) are not split further: such a multipart or
message is reported as application/octet-stream, its octets unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailyard.message.parse import (
    HeaderField,
    find_body_start,
    get_first,
    parse_content_type,
    parse_fields,
)

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_PARTS = 5000


@dataclass(eq=False)
class Part:
    data: bytes
    start: int
    body_start: int
    end: int
    fields: list[HeaderField]
    maintype: str = "TEXT"  # upper case, for decisions
    subtype: str = "PLAIN"
    params: list[tuple[str, bytes]] = field(default_factory=list)
    type_text: str = "text"  # as written, for BODYSTRUCTURE
    subtype_text: str = "plain"
    children: list[Part] = field(default_factory=list)
    message: Part | None = None
    depth: int = 0
    truncated: bool = False  # depth/part limit reached: treated as opaque

    @property
    def header(self) -> bytes:
        return self.data[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start : self.end]

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "MULTIPART" and not self.truncated

    @property
    def is_message(self) -> bool:
        return self.message is not None

    def param(self, name: str) -> bytes | None:
        low = name.lower()
        for k, v in self.params:
            if k.lower() == low:
                return v
        return None

    def header_value(self, name: str) -> bytes | None:
        return get_first(self.fields, name)

    def walk(self) -> list[Part]:
        """All parts in document order (iterative)."""
        out: list[Part] = []
        stack: list[Part] = [self]
        while stack:
            p = stack.pop()
            out.append(p)
            if p.message is not None:
                stack.append(p.message)
            stack.extend(reversed(p.children))
        return out


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes
                     ) -> list[tuple[int, int]]:
    """(start, end) of each body part between ``--boundary`` delimiters."""
    dash = b"--" + boundary
    parts: list[tuple[int, int]] = []
    pos = start
    cur: int | None = None  # start of the part being read
    while pos < end:
        idx = data.find(dash, pos, end)
        if idx < 0:
            break
        if idx != start and data[idx - 1 : idx] != b"\n":
            pos = idx + 1
            continue
        after = idx + len(dash)
        closing = data[after : after + 2] == b"--"
        line_end = data.find(b"\n", after, end)
        rest = data[after + (2 if closing else 0) : (end if line_end < 0 else line_end)]
        if rest.strip(b" \t\r"):
            pos = idx + 1  # "--boundaryX": a longer boundary, not ours
            continue
        if cur is not None:
            pend = idx
            if idx > start and data[idx - 1 : idx] == b"\n":
                pend -= 2 if idx - 1 > start and data[idx - 2 : idx - 1] == b"\r" else 1
            parts.append((cur, max(cur, pend)))
        nxt = end if line_end < 0 else line_end + 1
        if closing:
            cur = None
            break
        cur = nxt
        pos = nxt
    if cur is not None:
        parts.append((cur, end))
    return parts


def parse_mime(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
               max_parts: int = DEFAULT_MAX_PARTS) -> Part:
    root = _new_part(data, 0, len(data), depth=0, digest_default=False)
    count = 1
    work: list[Part] = [root]
    while work:
        p = work.pop()
        if p.maintype == "MULTIPART":
            boundary = p.param("boundary")
            if p.depth >= max_depth or count >= max_parts or not boundary:
                p.truncated = True
                continue
            digest = p.subtype == "DIGEST"
            for s, e in _split_multipart(data, p.body_start, p.end, boundary):
                if count >= max_parts:
                    break
                child = _new_part(data, s, e, depth=p.depth + 1, digest_default=digest)
                p.children.append(child)
                count += 1
            if not p.children:
                p.truncated = True
                continue
            work.extend(reversed(p.children))
        elif p.maintype == "MESSAGE" and p.subtype in ("RFC822", "GLOBAL"):
            if p.depth >= max_depth or count >= max_parts:
                p.truncated = True
                continue
            p.message = _new_part(data, p.body_start, p.end, depth=p.depth + 1,
                                  digest_default=False)
            count += 1
            work.append(p.message)
    return root


def _new_part(data: bytes, start: int, end: int, *, depth: int, digest_default: bool) -> Part:
    body_start = find_body_start(data, start, end)
    fields = parse_fields(data, start, body_start)
    ct = parse_content_type(get_first(fields, "Content-Type"))
    if ct is None:
        # RFC 2045 §5.2 default; RFC 2046 §5.1.5 in multipart/digest
        if digest_default:
            ct = ("message", "rfc822", [])
        else:
            ct = ("text", "plain", [("charset", b"us-ascii")])
    return Part(data, start, body_start, end, fields, ct[0].upper(), ct[1].upper(), ct[2],
                type_text=ct[0], subtype_text=ct[1], depth=depth)
