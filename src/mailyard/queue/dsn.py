"""Delivery status notifications (RFC 3464, RFC 3461 §6), built as bytes.

* Sent from the null sender ``<>`` (RFC 5321 §4.5.5, so a DSN can never cause
  another one) and never to ``<>``: a bounce of a bounce goes nowhere.
* ``NOTIFY`` (RFC 3461 §4.1): NEVER -> nothing; FAILURE / DELAY / SUCCESS select
  the reports; no NOTIFY -> failures, and delays at our discretion (we send them).
  SUCCESS reports say "delivered" (into a local mailbox), "expanded" (an alias that
  fanned out) or "relayed" (to a next hop that does not take DSN requests on, RFC 3461
  §6.2.1); they return only the headers (the content went where it was sent).
* ``RET`` (RFC 3461 §4.3): HDRS -> text/rfc822-headers; FULL or unset -> the
  whole message as message/rfc822, unless it is larger than ``max_original``,
  in which case only its headers are returned (the body is said to be omitted).
* SMTPUTF8 messages get the RFC 6533 types (message/global-delivery-status,
  message/global, message/global-headers).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from mailyard.ids import token_hex
from mailyard.message.parse import utc_date
from mailyard.storage.interface import BlobStore
from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient

MAX_ORIGINAL = 256 * 1024  # octets of the original returned with RET=FULL
MAX_HEADERS = 64 * 1024  # octets of header read for RET=HDRS

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class DSNRecipient:
    address: str
    action: str  # "failed" | "delayed" | "delivered" | "expanded" | "relayed"
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str
    from_remote: bool = False  # diagnostic is an SMTP reply
    remote_mta: str = ""
    orcpt: str | None = None  # as stored: "rfc822;xtext"
    notify: str | None = None
    last_attempt: float | None = None


SUCCESS_ACTIONS = frozenset({"delivered", "expanded", "relayed"})


def dsn_entry(dsn: bytes, blob: BlobRef, to: str, now: float) -> QueueEntry:
    """The queue entry that sends the report ``dsn``, stored as ``blob``, to ``to``: from
    the null sender (RFC 5321 §4.5.5, RFC 3461 §6.2), due at once, SMTPUTF8 when the
    address needs it, an 8-bit body when the report has one."""
    return QueueEntry(id=token_hex(8), sender="", blob=blob,
                      recipients=(QueueRecipient(to),), created=now, next_attempt=now,
                      smtputf8=not to.isascii(), body_8bit=not dsn.isascii())


def wants(notify: str | None, action: str) -> bool:
    """Does the recipient's NOTIFY ask for a report of this ``action``?"""
    success = action in SUCCESS_ACTIONS
    if notify is None:
        # RFC 3461 §4.1: default is FAILURE (and DELAY at the MTA's discretion)
        return not success
    words = {w.strip().upper() for w in notify.split(",")}
    if "NEVER" in words:
        return False
    return ("SUCCESS" if success else "FAILURE" if action == "failed" else "DELAY") in words


def xtext_decode(value: str) -> str:
    out = bytearray()
    i = 0
    raw = value.encode("utf-8", "replace")
    while i < len(raw):
        c = raw[i]
        if c == 0x2B and re.fullmatch(rb"[0-9A-F]{2}", raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


def _clean(text: str) -> str:
    """One header line's worth of text: no CR/LF/NUL can end the field early."""
    return re.sub(r"[\r\n\x00]+", " ", text).strip()


def _date(when: float) -> str:
    return utc_date(when)


async def load_original(blobs: BlobStore, entry: QueueEntry, *,
                        max_original: int = MAX_ORIGINAL) -> tuple[bytes, bool]:
    """(content, is_full): the whole message for RET=FULL when small enough, else headers."""
    full = (entry.ret or "FULL").upper() != "HDRS" and entry.blob.size <= max_original
    if full:
        return await blobs.read(entry.blob.blob_id), True
    head = await blobs.read(entry.blob.blob_id, 0, MAX_HEADERS)
    return header_block(head), False


def header_block(data: bytes) -> bytes:
    m = re.search(rb"\r?\n\r?\n", data)
    return data[: m.start()] + b"\r\n" if m else data


def build_dsn(entry: QueueEntry, recipients: Sequence[DSNRecipient], *, reporting_mta: str,
              original: bytes, original_is_full: bool, now: float,
              will_retry_until: float | None = None) -> bytes | None:
    """The DSN message, or None when it must not be sent (sender <>, NOTIFY)."""
    if not entry.sender:
        return None  # never to <> (RFC 3461 §6.2, RFC 5321 §4.5.5)
    chosen = [r for r in recipients if wants(r.notify, r.action)]
    if not chosen:
        return None
    failed = any(r.action == "failed" for r in chosen)
    success = all(r.action in SUCCESS_ACTIONS for r in chosen)
    if success and original_is_full:
        original, original_is_full = header_block(original), False
    utf8 = entry.smtputf8 or not entry.sender.isascii() or any(
        not r.address.isascii() for r in chosen)
    boundary = f"=_mailyard_{uuid.uuid4().hex}"
    host = _clean(reporting_mta)
    subject = ("Undelivered Mail Returned to Sender" if failed
               else "Successful Mail Delivery Report" if success
               else "Delayed Mail (still being retried)")
    lines: list[str] = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_clean(entry.sender)}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{host}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {host}.",
        "",
    ]
    if failed:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients.", ""]
    elif success:
        lines += ["Your message was delivered to the destinations below, as you asked to be",
                  "told (a message relayed onwards may still be reported on by the next",
                  "system).", ""]
    else:
        lines += ["Your message could not be delivered yet to one or more recipients.",
                  "It will be retried; you do not need to send it again."]
        if will_retry_until is not None:
            lines.append(f"Delivery will be attempted until {_date(will_retry_until)}.")
        lines.append("")
    for r in chosen:
        lines.append(f"<{_clean(r.address)}>: {_clean(r.diagnostic)}")
    if not original_is_full:
        lines += ["", "Only the headers of the original message are included."]
    report_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    lines += ["", f"--{boundary}", "Content-Description: Delivery report",
              f"Content-Type: {report_type}", "",
              f"Reporting-MTA: dns; {host}"]
    if entry.envid:
        lines.append(f"Original-Envelope-Id: {_clean(entry.envid)}")
    lines.append(f"Arrival-Date: {_date(entry.created)}")
    for r in chosen:
        lines.append("")
        lines.append(f"Final-Recipient: {'utf-8' if not r.address.isascii() else 'rfc822'}; "
                     f"{_clean(r.address)}")
        if r.orcpt:
            atype, _, value = r.orcpt.partition(";")
            lines.append(f"Original-Recipient: {_clean(atype)}; {_clean(xtext_decode(value))}")
        lines.append(f"Action: {r.action}")
        lines.append(f"Status: {_clean(r.status)}")
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        if r.diagnostic:
            kind = "smtp" if r.from_remote else "X-Mailyard"
            lines.append(f"Diagnostic-Code: {kind}; {_clean(r.diagnostic)}")
        if r.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.action == "delayed" and will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {_date(will_retry_until)}")
    if original_is_full:
        ctype = "message/global" if utf8 else "message/rfc822"
        desc = "Undelivered Message" if failed else "Delayed Message"
    else:
        ctype = "message/global-headers" if utf8 else "text/rfc822-headers"
        desc = ("Undelivered Message Headers" if failed else "Message Headers" if success
                else "Delayed Message Headers")
    lines += ["", f"--{boundary}", f"Content-Description: {desc}", f"Content-Type: {ctype}"]
    if original_is_full and not original.isascii():
        lines.append("Content-Transfer-Encoding: 8bit")
    lines.append("")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    body = _EOL.sub(b"\r\n", original)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head + body + f"\r\n--{boundary}--\r\n".encode("ascii")
