"""What happens to a message once its last octet arrived: authenticate or sign, then
store it durably for local recipients and queue it for remote ones — in one transaction.

Shared by the SMTP adapter (MX and submission) and the queue (DSNs to local senders).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field
from typing import Any

from mailyard.ids import token_hex
from mailyard.message.parse import drop_fields, utc_date
from mailyard.message.text import index_text
from mailyard.policy.addresses import AddressError, canonical_domain, split_address
from mailyard.policy.recipients import Verdict
from mailyard.protocol.smtp.replies import Reply
from mailyard.server.context import ServerContext
from mailyard.storage.interface import InsufficientStorage, Spool
from mailyard.storage.models import (
    Account,
    BlobRef,
    DeliveryTarget,
    QueueEntry,
    QueueRecipient,
    TextSource,
)

# DKIM verification and signing need the whole message in memory (dkimpy); the SIZE
# limit bounds it. Messages above this cap (only with a raised max_message_size) are not
# signed on submission.
MAX_VERIFY_SIZE = 64 * 1024 * 1024
MAX_INDEX_SIZE = 4 * 1024 * 1024


@dataclass
class Submission:
    mode: str  # "mx" | "submission"
    session_id: str
    remote_ip: str
    remote_host: str
    helo: str
    tls: bool
    account: Account | None
    sender: str
    mail: Any  # the core's MailFrom event (params: SMTPUTF8, BODY, RET, ENVID)
    local_rcpts: list[tuple[str, list[int]]] = field(default_factory=list)
    remote_rcpts: list[Any] = field(default_factory=list)
    # Local recipients that asked NOTIFY=SUCCESS: (address, ORCPT, DSN action).
    notify_success: list[tuple[str, tuple[str, str] | None, str]] = field(default_factory=list)
    spf: Any = None
    #: MX: the session's iprev result for the client, if known; set to the one used
    iprev: Any = None


_pipeline: Any = None


def auth_pipeline() -> Any:
    """``mailyard.mailauth.pipeline``, imported at first use (servers without an MX
    listener never need it) and then kept: no import statement per message."""
    global _pipeline
    if _pipeline is None:
        from mailyard.mailauth import pipeline

        _pipeline = pipeline
    return _pipeline


def _r(code: int, enhanced: str, text: str) -> Reply:
    return Reply.make(code, text, enhanced)


def _protocol(sub: Submission) -> str:
    """RFC 3848 / RFC 6531 §3.7.3 "with" keywords."""
    utf8 = bool(getattr(sub.mail, "smtputf8", False))
    base = "UTF8SMTP" if utf8 else "ESMTP"
    if sub.tls:
        base += "S"
    if sub.account is not None:
        base += "A"
    return base


def received_header(*, helo: str, remote_ip: str, hostname: str, protocol: str,
                    msg_id: str, for_rcpt: str | None, now: float) -> bytes:
    """RFC 5321 §4.4 trace line; every part comes from validated input (no CR/LF)."""
    ip = f"IPv6:{remote_ip}" if ":" in remote_ip else remote_ip
    parts = f"from {helo or 'unknown'} ([{ip}])\r\n\tby {hostname} (mailyard) with {protocol} id {msg_id}"
    if for_rcpt:
        parts += f"\r\n\tfor <{for_rcpt}>"
    return f"Received: {parts};\r\n\t{_date(now)}\r\n".encode()


_last_date: tuple[int, str] = (-1, "")


def _date(now: float) -> str:
    """RFC 5322 date-time of ``now`` (UTC), formatted once per second."""
    global _last_date
    second = int(now // 1)
    if _last_date[0] != second:
        _last_date = (second, utc_date(second))
    return _last_date[1]


def _received(ctx: ServerContext, sub: Submission, now: float, msg_id: str) -> bytes:
    rcpts = [a for a, _ in sub.local_rcpts] + [r.address for r in sub.remote_rcpts]
    return received_header(helo=sub.helo, remote_ip=sub.remote_ip, hostname=ctx.hostname,
                           protocol=_protocol(sub), msg_id=msg_id,
                           for_rcpt=rcpts[0] if len(rcpts) == 1 else None, now=now)


def _address_key(address: str) -> str:
    """Two forms of one mailbox: the local part as given (RFC 5321 §2.4), the domain as
    ``canonical_domain`` gives it (case, a trailing dot, U-label or A-label)."""
    try:
        local, domain = split_address(address)
        return f"{local}@{canonical_domain(domain)}"
    except AddressError:
        return address


def _unique(rcpts: list[Any]) -> list[Any]:
    """Remote recipients once each: two aliases that forward to the same address, or a
    client that names it twice, give one RCPT TO at the next hop and one copy (the
    first occurrence, with its DSN request, is kept)."""
    seen: set[str] = set()
    out = []
    for r in rcpts:
        key = _address_key(r.address)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _return_path(sender: str) -> bytes:
    return f"Return-Path: <{sender}>\r\n".encode()


async def _store_blob(ctx: ServerContext, spool: Spool, prefix: bytes) -> BlobRef:
    """``prefix + spool`` as a blob for the ``deliver``/``queue_add`` that follows.

    A store that can *stage* (the SQLite backend) only hashes here and writes the
    bytes in the same batch as the index records: one durable step per message.
    A staged spool is not consumed; it must stay intact until that call returns.
    """
    stage = getattr(ctx.store.blobs, "stage", None)
    if stage is not None:
        return await stage(spool, prefix=prefix)  # type: ignore[no-any-return]
    return await ctx.store.blobs.commit(spool, prefix=prefix)


async def _copy_spool(ctx: ServerContext, spool: Spool) -> Spool:
    other = ctx.store.blobs.new_spool()
    for chunk in spool.chunks():
        other.write(chunk)
    return other


class _Body:
    """The spooled message, read into memory at most once per transaction.

    Stripping forged results, DMARC/DKIM checks, ARC sealing, DKIM signing and the
    search text all need the whole message; a spilled spool would otherwise be read
    (and copied) from disk once for each of them.
    """

    def __init__(self, spool: Spool, data: bytes | None = None) -> None:
        self.spool = spool
        self._data = data

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.spool.read_all()
        return self._data


_RETURN_PATH = frozenset((b"return-path",))


def _drop_return_path(ctx: ServerContext, body: _Body) -> _Body:
    """Remove Return-Path fields the client wrote: the one that counts is added at final
    delivery (RFC 5321 §4.4), and a message arriving with one would be stored with two,
    the forged one read by some clients. Postfix drops them the same way."""
    return _rewritten(ctx, body, drop_fields(body.data, _RETURN_PATH))


def _strip_forged_results(ctx: ServerContext, body: _Body) -> _Body:
    """Remove Authentication-Results fields that claim our authserv-id (RFC 8601 §5)."""
    from mailyard.mailauth.authresults import strip_our_authentication_results

    content = body.data
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end]
    if b"authentication-results" not in head.lower():
        return body
    stripped = strip_our_authentication_results(content, ctx.hostname)
    return _rewritten(ctx, body, None if stripped == content else stripped)


def _rewritten(ctx: ServerContext, body: _Body, content: bytes | None) -> _Body:
    """``body`` with ``content`` in a new spool (the old one dropped), or as it is when
    ``content`` is None (nothing to change)."""
    if content is None:
        return body
    clean = ctx.store.blobs.new_spool()
    clean.write(content)
    body.spool.abort()
    return _Body(clean, content)


async def _authenticate(ctx: ServerContext, sub: Submission, content: bytes
                        ) -> tuple[bytes, str, Reply | None]:
    """MX mode: SPF/DKIM/DMARC. Returns (header bytes to prepend, mailbox, refusal).

    The verdict is recorded for DMARC reports by a write nobody waits for: queued
    first, it rides in the delivery's group commit.
    """
    verdict = await auth_pipeline().authenticate_message(
        content, ip=sub.remote_ip, helo=sub.helo, mail_from=sub.sender,
        resolver=ctx.resolver, authserv_id=ctx.hostname, spf_result=sub.spf,
        iprev_result=sub.iprev)
    sub.iprev = verdict.iprev
    await _record(ctx, sub, verdict,
                  delivery_follows=verdict.action not in ("reject", "tempfail"))
    header = verdict.header
    if not header.endswith("\r\n"):
        header += "\r\n"
    if verdict.action in ("reject", "tempfail"):
        code = 550 if verdict.action == "reject" else 451
        enhanced, _, text = (verdict.reply_text or "").partition(" ")
        if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", enhanced):
            enhanced, text = ("5.7.1" if code == 550 else "4.7.1"), verdict.reply_text
        return b"", "", _r(code, enhanced, text or "Rejected by the sender domain's policy")
    mailbox = "Junk" if verdict.action == "junk" else "INBOX"
    return header.encode("utf-8"), mailbox, None


async def _active_key(ctx: ServerContext, domain: str) -> tuple[str, str, str] | None:
    """(selector, algorithm, private PEM) of an active RSA key of ``domain``, if any."""
    for _d, selector, algorithm, pem, active in await ctx.store.list_dkim_keys(domain):
        if active and algorithm.startswith("rsa"):
            return selector, algorithm, pem
    return None


async def _arc_seal(ctx: ServerContext, sub: Submission, body: _Body, auth_header: bytes,
                    received: bytes) -> bytes:
    """MX mode, forwarding through an alias: ARC-seal the copy we relay (RFC 8617 §5.1)
    with the key of the alias's domain, so that the next hop can trust our verdicts."""
    from mailyard.mailauth.arc import arc_seal

    via = next((getattr(r, "via", "") for r in sub.remote_rcpts if getattr(r, "via", "")), "")
    if not via or body.spool.size > MAX_VERIFY_SIZE:
        return b""
    try:
        _, domain = split_address(via)
    except AddressError:
        return b""
    key = await _active_key(ctx, domain)
    if key is None:
        return b""
    selector, _algorithm, pem = key
    auth_results = auth_header.decode("utf-8", "replace")
    try:
        return arc_seal(received + body.data, domain=domain, selector=selector,
                        private_pem=pem, authserv_id=ctx.hostname, auth_results=auth_results)
    except ValueError as e:
        ctx.log.warning("ARC sealing for %s failed: %s", via, e)
        return b""


async def _record(ctx: ServerContext, sub: Submission, verdict: Any, *,
                  delivery_follows: bool) -> None:
    """Keep each verdict for DMARC aggregate reports (RFC 7489 §7.2); never fails delivery."""
    try:
        dkim = ",".join(f"{r.domain}:{r.result}" for r in verdict.dkim) or "none"
        disposition = {"reject": "reject", "junk": "quarantine"}.get(verdict.action, "none")
        await ctx.store.record_auth_result(
            when=ctx.clock(), source_ip=sub.remote_ip,
            header_from=verdict.dmarc.domain or "", spf=verdict.spf.result, dkim=dkim,
            dmarc=verdict.dmarc.result, disposition=disposition,
            delivery_follows=delivery_follows)
    except Exception:
        ctx.log.exception("could not record the authentication results")


async def _sign(ctx: ServerContext, sub: Submission, body: _Body) -> bytes:
    """Submission: DKIM-sign with every active key of the sender's domain."""
    from mailyard.mailauth import dkim as dkim_mod

    if not sub.sender or body.spool.size > MAX_VERIFY_SIZE:
        return b""
    try:
        _, domain = split_address(sub.sender)
    except AddressError:
        return b""
    keys = [k for k in await ctx.store.list_dkim_keys(domain) if k[4]]
    if not keys:
        return b""
    content = body.data
    out = b""
    for _domain, selector, algorithm, pem, _active in keys:
        try:
            out += dkim_mod.sign_message(content, domain=domain, selector=selector,
                                         private_pem=pem, algorithm=algorithm)
        except Exception:
            ctx.log.exception("DKIM signing failed for %s/%s", domain, selector)
    return out


def _queue_recipient(rcpt: Any) -> QueueRecipient:
    notify = getattr(rcpt, "notify", None)
    orcpt = getattr(rcpt, "orcpt", None)
    return QueueRecipient(
        address=rcpt.address,
        notify=",".join(notify) if isinstance(notify, tuple) else notify,
        orcpt=";".join(orcpt) if isinstance(orcpt, tuple) else orcpt,
    )


async def deliver_dsn_locally(ctx: ServerContext, dsn: bytes, recipient: str) -> bool:
    """A DSN for a local address goes straight into its mailbox, durably, like any other
    delivery (with ``Return-Path: <>``). False when the address is not local."""
    res = await ctx.recipients.resolve(recipient)
    if res.verdict is not Verdict.LOCAL or not res.account_ids:
        return False
    report = ctx.store.blobs.new_spool()
    try:
        report.write(dsn)
        blob = await _store_blob(ctx, report, b"Return-Path: <>\r\n")
        await ctx.store.deliver(blob, [DeliveryTarget(account_id=i) for i in res.account_ids],
                                internaldate=ctx.clock(), text=index_text)
    finally:
        report.abort()
    return True


async def _report_delivered(ctx: ServerContext, sub: Submission, spool: Spool, prefix: bytes,
                            now: float) -> None:
    """NOTIFY=SUCCESS on local recipients: a "delivered" (or "expanded") DSN to the sender,
    with the message's headers (RFC 3461 §4.1, §6.2). The message is stored already: a
    report that cannot be made is logged, never a failure of the message."""
    from mailyard.queue.dsn import (
        MAX_HEADERS,
        DSNRecipient,
        build_dsn,
        dsn_entry,
        header_block,
    )

    try:
        mail = sub.mail
        entry = QueueEntry(id="", sender=sub.sender, blob=BlobRef(blob_id="", size=spool.size),
                           recipients=(), created=now, next_attempt=now,
                           envid=getattr(mail, "envid", None),
                           smtputf8=bool(getattr(mail, "smtputf8", False)))
        rcpts = [DSNRecipient(addr, action, "2.0.0", "delivered to the recipient's mailbox",
                              orcpt=";".join(orcpt) if orcpt else None, notify="SUCCESS",
                              last_attempt=now)
                 for addr, orcpt, action in sub.notify_success]
        head = prefix + next(iter(spool.chunks(MAX_HEADERS)), b"")
        dsn = build_dsn(entry, rcpts, reporting_mta=ctx.hostname, original=header_block(head),
                        original_is_full=False, now=now)
        if dsn is None:
            return
        if await deliver_dsn_locally(ctx, dsn, sub.sender):
            return
        report = ctx.store.blobs.new_spool()
        try:
            report.write(dsn)
            blob = await _store_blob(ctx, report, b"")
            await ctx.store.queue_add(dsn_entry(dsn, blob, sub.sender, now))
            ctx.wake_queue()
        finally:
            report.abort()
    except Exception:
        ctx.log.exception("could not send the delivery report asked for in %s", sub.session_id)


async def accept_message(ctx: ServerContext, sub: Submission, spool: Spool) -> Reply:
    now = ctx.clock()
    # The message's own id: in its Received header, its queue entry (``mailyard queue
    # show ID``), the DEBUG log line and the 250 reply, so a "queued as" can be traced.
    msg_id = token_hex(8)
    sub.remote_rcpts = _unique(sub.remote_rcpts)
    try:
        received = _received(ctx, sub, now, msg_id)
        mailbox = "INBOX"
        auth_header = b""
        body = _Body(spool)
        if sub.mode == "mx":
            body = _strip_forged_results(ctx, body)
            spool = body.spool
            auth_header, mailbox, refusal = await _authenticate(ctx, sub, body.data)
            if refusal is not None:
                return refusal
            # After the checks (a signature may cover the field), before the ARC seal.
            body = _drop_return_path(ctx, body)
        else:
            body = _drop_return_path(ctx, body)
            auth_header = await _sign(ctx, sub, body)
        spool = body.spool
        account_ids: list[int] = []
        for _addr, ids in sub.local_rcpts:
            for i in ids:
                if i not in account_ids:
                    account_ids.append(i)
        text: TextSource = None
        if account_ids and spool.size <= MAX_INDEX_SIZE:
            # Extracted from the stored message by the store's indexer, after the commit.
            text = index_text
        queue_blob = None
        if sub.remote_rcpts:
            # The queued copy carries no Return-Path (RFC 5321 §4.4: added at final delivery).
            staging = hasattr(ctx.store.blobs, "stage")  # staging leaves the spool intact
            src = await _copy_spool(ctx, spool) if account_ids and not staging else spool
            seal = b""
            if sub.mode == "mx" and auth_header:
                seal = await _arc_seal(ctx, sub, body, auth_header, received)
            queue_blob = await _store_blob(ctx, src, seal + auth_header + received)
        local_blob = None
        prefix = b""
        if account_ids:
            prefix = _return_path(sub.sender) + auth_header + received
            local_blob = await _store_blob(ctx, spool, prefix)
        entry = None
        if queue_blob is not None:
            mail = sub.mail
            entry = QueueEntry(
                id=msg_id,
                sender=sub.sender,
                blob=queue_blob,
                recipients=tuple(_queue_recipient(r) for r in sub.remote_rcpts),
                created=now,
                next_attempt=now,
                ret=getattr(mail, "ret", None),
                envid=getattr(mail, "envid", None),
                smtputf8=bool(getattr(mail, "smtputf8", False)),
                body_8bit=(getattr(mail, "body", None) or "").upper() == "8BITMIME",
            )
        targets = [DeliveryTarget(account_id=i, mailbox=mailbox) for i in account_ids]
        if local_blob is not None:
            await ctx.store.deliver(local_blob, targets, queue=entry, internaldate=now, text=text)
        elif entry is not None:
            await ctx.store.queue_add(entry)
        if entry is not None:
            ctx.wake_queue()
        if local_blob is not None and sub.notify_success and sub.sender:
            await _report_delivered(ctx, sub, spool, prefix, now)
        stored = local_blob or queue_blob
        # DEBUG, not INFO: even through server/logsink.py a line per message cost 5-10%
        # of bench_smtp.py's throughput. ``[log] level = "debug"`` turns it on.
        ctx.log.debug("%s %s: %s accepted from=<%s> size=%d local=%d remote=%d", sub.mode,
                      sub.remote_ip, msg_id, sub.sender, stored.size if stored else 0,
                      len(account_ids), len(sub.remote_rcpts))
    except InsufficientStorage:
        return _r(452, "4.3.1", "Insufficient system storage")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return _r(452, "4.3.1", "Insufficient system storage")
        ctx.log.exception("delivery failed")
        return _r(451, "4.3.0", "Local error in processing, try again later")
    except Exception:
        ctx.log.exception("delivery failed")
        return _r(451, "4.3.0", "Local error in processing, try again later")
    finally:
        spool.abort()  # the spool in use (it may have been replaced); idempotent
    return _r(250, "2.0.0", f"Ok: queued as {msg_id}")
