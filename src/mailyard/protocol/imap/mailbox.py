"""Mailbox names: modified UTF-7 (RFC 3501 §5.1.3) and our naming rules.

Inside mailyard a mailbox name is a ``str`` in Unicode with "/" as the
hierarchy delimiter (storage/interface.py). On the wire it is modified UTF-7
unless the client enabled UTF8=ACCEPT (RFC 6855 §3, RFC 9051 §5.1).

Decoding is strict (RFC 3501 §5.1.3): a "&" shift must be closed by "-",
the base64 must be the modified alphabet ("," instead of "/") without "="
padding, must not encode printable US-ASCII (which has to be written
directly), must not leave non-zero padding bits, and "&-" is the only way to
write "&". Anything else is :class:`MailboxNameError` so that two spellings
can never name one mailbox.

What we accept as a name (decided here, :func:`validate_name`):

* not empty, at most 1000 octets of UTF-8 (a bound for the index and paths);
* no NUL and no control characters (C0, DEL, C1) — they break LIST output
  and logs;
* no leading "/", no empty segment ("a//b"), no "." or ".." segment — names
  must never look like a path escape even though storage does not use them as
  paths;
* a trailing "/" is removed by CREATE (RFC 9051 §6.3.4) and refused elsewhere;
* "INBOX" in any case, as the first segment, is spelled "INBOX" (RFC 9051 §5.1).
"""

from __future__ import annotations

import base64
import binascii

MAX_NAME_OCTETS = 1000
DELIMITER = "/"


class MailboxNameError(ValueError):
    pass


def encode_mutf7(name: str) -> str:
    """Unicode -> modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Modified UTF-7 -> Unicode, strictly. Raises :class:`MailboxNameError`."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        o = ord(ch)
        if o < 0x20 or o > 0x7E:
            raise MailboxNameError("8-bit or control character in modified UTF-7 name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise MailboxNameError("unterminated '&' shift in mailbox name")
        chunk = text[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if "=" in chunk or "/" in chunk:
            raise MailboxNameError("bad base64 in modified UTF-7")
        b64 = chunk.replace(",", "/")
        pad = (-len(b64)) % 4
        if pad == 3:
            raise MailboxNameError("bad base64 length in modified UTF-7")
        try:
            raw = base64.b64decode(b64 + "=" * pad, validate=True)
        except (binascii.Error, ValueError):
            raise MailboxNameError("bad base64 in modified UTF-7")
        if len(raw) % 2 or not raw:
            raise MailboxNameError("odd UTF-16 length in modified UTF-7")
        # Non-zero padding bits mean a second spelling of the same bytes.
        if base64.b64encode(raw).decode("ascii").rstrip("=") != b64:
            raise MailboxNameError("non-canonical base64 in modified UTF-7")
        try:
            decoded = raw.decode("utf-16-be")
        except UnicodeDecodeError:
            raise MailboxNameError("bad UTF-16 in modified UTF-7")
        if any(0x20 <= ord(c) <= 0x7E for c in decoded):
            raise MailboxNameError("printable ASCII encoded in modified UTF-7")
        if out and _prev_was_shift(out):
            # "&AAA-&AAA-" must be written as one shift; RFC 3501 forbids
            # adjacent shifts only implicitly, and Dovecot refuses them too.
            raise MailboxNameError("adjacent modified UTF-7 shifts")
        out.append(_Shifted(decoded))
    return "".join(out)


class _Shifted(str):
    """A decoded shift sequence, remembered to refuse adjacent shifts."""


def _prev_was_shift(out: list[str]) -> bool:
    return isinstance(out[-1], _Shifted)


def normalize_inbox(name: str) -> str:
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def validate_name(name: str, *, for_create: bool = False) -> str:
    """Check a decoded name against our rules; return the canonical form."""
    if for_create and len(name) > 1 and name.endswith(DELIMITER):
        name = name.rstrip(DELIMITER)  # RFC 9051 §6.3.4
    if not name:
        raise MailboxNameError("empty mailbox name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_OCTETS:
        raise MailboxNameError("mailbox name too long")
    for ch in name:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o <= 0x9F:
            raise MailboxNameError("control character in mailbox name")
        if 0xD800 <= o <= 0xDFFF:
            raise MailboxNameError("unpaired surrogate in mailbox name")
    if name.startswith(DELIMITER):
        raise MailboxNameError("mailbox name starts with the hierarchy delimiter")
    for seg in name.split(DELIMITER):
        if seg == "":
            raise MailboxNameError("empty hierarchy level in mailbox name")
        if seg in (".", ".."):
            raise MailboxNameError("'.' or '..' hierarchy level in mailbox name")
    return normalize_inbox(name)


def wire_to_name(raw: bytes, *, utf8: bool, for_create: bool = False) -> str:
    """Decode and validate a mailbox name as it came off the wire."""
    if utf8:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("mailbox name is not UTF-8")
    else:
        try:
            text = decode_mutf7(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise MailboxNameError("8-bit mailbox name without UTF8=ACCEPT")
    return validate_name(text, for_create=for_create)


def wire_to_pattern(raw: bytes, *, utf8: bool) -> str:
    """LIST/LSUB patterns: decoded like names, but "*" and "%" are kept and
    empty strings are allowed (RFC 9051 §6.3.9)."""
    if utf8:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("pattern is not UTF-8")
    else:
        try:
            text = decode_mutf7(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise MailboxNameError("8-bit pattern without UTF8=ACCEPT")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise MailboxNameError("control character in pattern")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_OCTETS:
        raise MailboxNameError("pattern too long")
    return text


def name_to_wire(name: str, *, utf8: bool) -> str:
    return name if utf8 else encode_mutf7(name)
