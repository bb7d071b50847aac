"""A ready-made search context (protocol.imap.search.MessageContext) for one message.

The session builds one per message from its index row; ``data`` (the message
bytes) is needed only when the key uses header/body/text/sent-date keys
(``search.needs_text(key)``), so flag-only searches never read blobs. The MIME
parse and decoded text are computed once, on first use, and bounded
(text.MAX_TEXT_CHARS).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
from dataclasses import dataclass, field

from mailyard.message.mime import Part, parse_mime
from mailyard.message.parse import HeaderField, decode_header, find_body_start, parse_fields
from mailyard.message.text import body_text, headers_text


@dataclass
class MessageSearchContext:
    uid: int
    seq: int
    flags: frozenset[str]
    size: int
    internaldate: float
    savedate: float | None = None
    modseq: int = 0
    email_id: str = ""
    thread_id: str = ""
    data: bytes | None = None
    _root: Part | None = field(default=None, repr=False)
    _body: str | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)
    _fields: list[HeaderField] | None = field(default=None, repr=False)

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = parse_mime(self.data or b"")
        return self._root

    def header_fields(self) -> list[HeaderField]:
        """The top-level header fields (what ``root.fields`` holds), without building
        the MIME tree when only header keys are asked."""
        if self._root is not None:
            return self._root.fields
        if self._fields is None:
            data = self.data or b""
            self._fields = parse_fields(data, 0, find_body_start(data))
        return self._fields

    def header(self, name: str) -> list[str]:
        low = name.lower()
        return [decode_header(f.value) for f in self.header_fields() if f.name.lower() == low]

    def sent_date(self) -> _dt.date | None:
        """The Date: header's date in its own zone (RFC 9051 §6.4.4 SENT*).

        A missing or unparseable Date: counts as 1970-01-01 (what others do:
        Dovecot uses time 0; what we do: the same, so such mail sorts and
        searches as oldest)."""
        vals = self.header("Date")
        epoch = _dt.date(1970, 1, 1)
        if not vals:
            return epoch
        try:
            d = email.utils.parsedate_to_datetime(vals[0])
        except (TypeError, ValueError, IndexError):
            return epoch
        return d.date() if d is not None else epoch

    def body_text(self) -> str:
        if self._body is None:
            self._body = body_text(self.root)
        return self._body

    def full_text(self) -> str:
        if self._text is None:
            self._text = headers_text(self.root) + "\n" + body_text(self.root,
                                                                    attached_headers=True)
        return self._text
