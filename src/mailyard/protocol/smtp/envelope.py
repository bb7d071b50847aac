"""MAIL and RCPT arguments (RFC 5321 §4.1.1.2-3) to events or error replies.

Pure functions: the state checks (AUTH required, recipient limit) stay in
``server``; here is only the grammar of paths (``address``) and of the ESMTP
parameters we advertise: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8
(RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461), AUTH= (RFC 4954 §5, ignored).
Unknown parameters get 555 5.5.4 (RFC 5321 §4.1.1.11).
"""

from __future__ import annotations

import re

from mailyard.protocol.smtp import replies as R
from mailyard.protocol.smtp.address import AddressError, parse_path, split_path
from mailyard.protocol.smtp.events import MailFrom, RcptTo
from mailyard.protocol.smtp.params import ParamError, parse_params, xtext_decode
from mailyard.protocol.smtp.replies import Reply

__all__ = ["parse_mail", "parse_rcpt"]

_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


# MAIL FROM:<path> [params]  (RFC 5321 §4.1.1.2)
def parse_mail(arg: str, *, max_message_size: int, auth: bool = True) -> Reply | MailFrom:
    """The argument of MAIL (after the verb) to an event, or the error reply.
    ``auth``: the AUTH extension is offered, so its AUTH= parameter may be used."""
    if arg[:5].upper() != "FROM:":
        return R.SYNTAX_ERROR
    try:
        raw_path, rest = split_path(arg[5:].lstrip(" "))
    except AddressError:
        return R.BAD_SENDER_SYNTAX
    if rest and not rest.startswith(" "):
        return R.BAD_SENDER_SYNTAX
    try:
        params = parse_params(rest)
    except ParamError as exc:
        return R.DUPLICATE_PARAM if "duplicate" in str(exc) else R.BAD_PARAM_VALUE
    smtputf8 = "SMTPUTF8" in params
    if not smtputf8 and not arg.isascii():
        return R.NON_ASCII_ADDRESS
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                return R.BAD_PARAM_VALUE
            size = int(value)
        elif key == "BODY":
            body = (value or "").upper()
            if body == "BINARYMIME":
                return R.BINARYMIME_UNSUPPORTED
            if body not in ("7BIT", "8BITMIME"):
                return R.BAD_PARAM_VALUE
        elif key == "SMTPUTF8":
            if value is not None:
                return R.BAD_PARAM_VALUE
        elif key == "RET":
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                return R.BAD_PARAM_VALUE
        elif key == "ENVID":
            if value is None or len(value) > 100:
                return R.BAD_PARAM_VALUE
            try:
                envid = xtext_decode(value)
            except ParamError:
                return R.BAD_PARAM_VALUE
        elif key == "AUTH":
            if not auth:
                return R.UNKNOWN_PARAM  # not advertised (port 25): RFC 5321 §4.1.1.11
            # RFC 4954 §5: we may ignore it, but it must still be xtext.
            try:
                xtext_decode(value or "")
            except ParamError:
                return R.BAD_PARAM_VALUE
            if value is None:
                return R.BAD_PARAM_VALUE
        else:
            return R.UNKNOWN_PARAM
    try:
        path = parse_path(raw_path, allow_utf8=smtputf8)
    except AddressError as exc:
        return R.NON_ASCII_ADDRESS if exc.needs_utf8 else R.BAD_SENDER_SYNTAX
    if path.is_postmaster:
        return R.BAD_SENDER_SYNTAX  # bare <postmaster> is for RCPT only
    if size is not None and size > max_message_size:
        return R.MESSAGE_TOO_BIG  # RFC 1870 §6.1
    return MailFrom(
        address=raw_path[1:-1],
        path=path,
        params=params,
        size=size,
        body=body,
        smtputf8=smtputf8,
        ret=ret,
        envid=envid,
    )


# RCPT TO:<path> [params]  (RFC 5321 §4.1.1.3)
def parse_rcpt(arg: str, *, smtputf8: bool) -> Reply | RcptTo:
    """The argument of RCPT (after the verb) to an event, or the error reply."""
    if arg[:3].upper() != "TO:":
        return R.SYNTAX_ERROR
    try:
        raw_path, rest = split_path(arg[3:].lstrip(" "))
    except AddressError:
        return R.BAD_RECIPIENT_SYNTAX
    if rest and not rest.startswith(" "):
        return R.BAD_RECIPIENT_SYNTAX
    utf8 = smtputf8
    if not utf8 and not arg.isascii():
        return R.NON_ASCII_ADDRESS
    try:
        params = parse_params(rest)
    except ParamError as exc:
        return R.DUPLICATE_PARAM if "duplicate" in str(exc) else R.BAD_PARAM_VALUE
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in params.items():
        if key == "NOTIFY":
            # RFC 3461 §4.1: "NEVER" alone, or a list of SUCCESS/FAILURE/DELAY.
            items = tuple((value or "").upper().split(","))
            if items == ("NEVER",) or (
                items and all(i in _NOTIFY_VALUES for i in items) and len(set(items)) == len(items)
            ):
                notify = items
            else:
                return R.BAD_PARAM_VALUE
        elif key == "ORCPT":
            # RFC 3461 §4.2: addr-type ";" xtext, at most 500 characters.
            addr_type, semi, encoded = (value or "").partition(";")
            if not semi or len(value or "") > 500 or not _ADDR_TYPE_RE.fullmatch(addr_type):
                return R.BAD_PARAM_VALUE
            try:
                orcpt = (addr_type.lower(), xtext_decode(encoded))
            except ParamError:
                return R.BAD_PARAM_VALUE
        else:
            return R.UNKNOWN_PARAM
    try:
        path = parse_path(raw_path, allow_utf8=utf8)
    except AddressError as exc:
        return R.NON_ASCII_ADDRESS if exc.needs_utf8 else R.BAD_RECIPIENT_SYNTAX
    if path.is_null:
        return R.NULL_RECIPIENT
    return RcptTo(address=raw_path[1:-1], path=path, params=params, notify=notify, orcpt=orcpt)
