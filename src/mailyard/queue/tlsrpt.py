"""SMTP TLS Reporting (RFC 8460): what our outbound sessions saw of each domain's TLS,
told once a day to the domains that publish where they want it.

Collection (§4): the courier reports every SMTP session it opens to an MX host of a
domain, under the policy that applied to it (the domain's MTA-STS policy, or
"no-policy-found"):
- a success when STARTTLS was negotiated as the policy asks (a verified certificate
  under ``enforce``; any certificate otherwise);
- a failure with its result type (§4.3): ``starttls-not-supported`` (not offered or
  refused), ``certificate-expired``, ``certificate-host-mismatch``,
  ``certificate-not-trusted``, ``validation-failure`` (the handshake failed otherwise,
  or an MX is not in the policy); and, once per delivery attempt while a policy
  fetch is failing, ``sts-policy-fetch-error``, ``sts-policy-invalid`` or
  ``sts-webpki-invalid`` (§4.3.2.2).
Counts are kept per UTC day, domain, policy and failure detail, in memory, and written
to ``state_file`` (JSON, replaced atomically) by the sender's periodic pass and at
shutdown: a crash may lose a few minutes of counts, never a report already sent.

Reports (§5): for each complete UTC day, each domain with counts is looked up at
``_smtp._tls.<domain>`` (exactly one ``v=TLSRPTv1`` record, §3); its ``rua`` URIs get
the JSON report gzip-compressed: ``mailto:`` as a DKIM-signed multipart/report
message (§5.3) queued from the null sender, ``https:`` as a POST of
``application/tlsrpt+gzip`` (§5.2). A day is dropped once one endpoint took it, when
the domain asks for no reports, or after REPORT_GIVE_UP days of failures.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from mailyard.mailauth.resolver import DNSError, NXDomain, Resolver
from mailyard.queue.statefile import read_json, write_json

log = logging.getLogger(__name__)

# §4.3 result types.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"

REPORT_GIVE_UP = 3  # days a report is retried (DNS trouble, every endpoint failing)
MAX_DETAILS = 100  # failure-details rows kept per policy and day (the rest only counted)

# OpenSSL verify codes (X509_V_ERR_*) -> result type.
_VERIFY_CODES = {
    10: CERTIFICATE_EXPIRED,  # CERT_HAS_EXPIRED
    62: CERTIFICATE_HOST_MISMATCH,  # HOSTNAME_MISMATCH
    18: CERTIFICATE_NOT_TRUSTED,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: CERTIFICATE_NOT_TRUSTED,  # SELF_SIGNED_CERT_IN_CHAIN
    20: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    2: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_GET_ISSUER_CERT
}


def tls_result_type(exc: BaseException) -> str:
    """The §4.3 result type of a failed TLS handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, VALIDATION_FAILURE)
    if isinstance(exc, ssl.CertificateError):
        return CERTIFICATE_HOST_MISMATCH
    return VALIDATION_FAILURE


def policy_fetch_result_type(exc: BaseException) -> str:
    """The §4.3.2.2 result type of a failed MTA-STS policy fetch."""
    from mailyard.queue.mtasts import PolicyError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # aiohttp wraps the ssl error
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError | ssl.CertificateError):
            return STS_WEBPKI_INVALID
        if type(e).__name__ in ("ClientConnectorCertificateError", "ServerFingerprintMismatch"):
            return STS_WEBPKI_INVALID
        if isinstance(e, PolicyError):
            return STS_POLICY_INVALID
        e = e.__cause__ or e.__context__
    return STS_POLICY_FETCH_ERROR


@dataclass(frozen=True, slots=True)
class PolicyDesc:
    """The "policy" object of a report (§4.4): what applied to the sessions counted."""

    type: str  # "sts" or "no-policy-found"
    strings: tuple[str, ...] = ()
    mx: tuple[str, ...] = ()

    @classmethod
    def of(cls, policy: Any) -> PolicyDesc:
        """From an MTA-STS ``Policy`` (queue.mtasts), or None for no policy."""
        if policy is None:
            return cls("no-policy-found")
        lines = ("version: STSv1", f"mode: {policy.mode}",
                 *(f"mx: {m}" for m in policy.mx), f"max_age: {policy.max_age}")
        return cls("sts", lines, tuple(policy.mx))

    def key(self) -> str:
        return json.dumps([self.type, list(self.strings), list(self.mx)])


def parse_tlsrpt(records: Iterable[str]) -> list[str] | None:
    """The rua URIs of the ``_smtp._tls`` TXT records (§3), or None when the domain
    has no (or more than one) TLSRPTv1 record."""
    found = [r for r in records if r.replace(" ", "").replace("\t", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return None
    ruas: list[str] = []
    for field in found[0].split(";")[1:]:
        key, eq, value = field.partition("=")
        if eq and key.strip() == "rua":
            ruas += [u.strip() for u in value.split(",") if u.strip()]
    return [u for u in ruas if u.lower().startswith(("mailto:", "https:"))] or None


# A mailto: address we write into a header and an envelope: a dot-atom local part and a
# host name. The URI comes from someone else's DNS: nothing else (no CR, LF, space,
# quotes or second address) gets through.
_MAILTO_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                        r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


def mailto_address(uri: str) -> str:
    """The address of a ``mailto:`` rua URI (RFC 6068), or ValueError when it is not
    one plain address."""
    to = urllib.parse.unquote(uri[len("mailto:"):].split("?", 1)[0]).strip()
    if len(to) > 254 or not _MAILTO_RE.fullmatch(to):
        raise ValueError(f"not a usable mailto: URI: {uri[:100]!r}")
    return to


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def day_range(day: str) -> tuple[int, int]:
    """(start, end) Unix times of a UTC day: 00:00:00 and 23:59:59."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(start.timestamp()), int((start + timedelta(days=1)).timestamp()) - 1


class TLSReporter:
    """Counts of TLS outcomes per UTC day, domain and policy (see the module's text)."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 state_file: Path | None = None, sending_ip: str = "") -> None:
        self._clock = clock
        self._file = state_file
        self.sending_ip = sending_ip
        # day -> domain -> policy key -> {"ok": n, "fail": n, "details": {detail key: n}}
        self._days: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self.dirty = False
        if state_file is not None:
            self._load(state_file)

    def now(self) -> float:
        return self._clock()

    # -- collection -------------------------------------------------------------------
    def _counts(self, domain: str, policy: PolicyDesc) -> dict[str, Any]:
        by_domain = self._days.setdefault(_day(self._clock()), {})
        by_policy = by_domain.setdefault(domain.lower().rstrip("."), {})
        self.dirty = True
        return by_policy.setdefault(policy.key(), {"ok": 0, "fail": 0, "details": {}})

    def success(self, domain: str, policy: PolicyDesc) -> None:
        self._counts(domain, policy)["ok"] += 1

    def failure(self, domain: str, policy: PolicyDesc, result_type: str, *,
                mx_host: str = "", receiving_ip: str = "", reason: str = "") -> None:
        counts = self._counts(domain, policy)
        counts["fail"] += 1
        details: dict[str, int] = counts["details"]
        key = json.dumps([result_type, mx_host, receiving_ip, reason[:200]])
        if key in details or len(details) < MAX_DETAILS:
            details[key] = details.get(key, 0) + 1

    # -- reports ----------------------------------------------------------------------
    def due(self) -> list[tuple[str, str]]:
        """(day, domain) of the complete days (before today, UTC) that have counts."""
        today = _day(self._clock())
        return [(day, domain) for day in sorted(self._days) if day < today
                for domain in sorted(self._days[day])]

    def report(self, day: str, domain: str, *, organization: str, contact: str,
               report_id: str) -> dict[str, Any]:
        """The §4.4 JSON report of ``domain`` for ``day``."""
        policies = []
        for pkey, counts in sorted(self._days.get(day, {}).get(domain, {}).items()):
            ptype, strings, mx = json.loads(pkey)
            policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
            if strings:
                policy["policy-string"] = strings
            if mx:
                policy["mx-host"] = mx
            details = []
            for dkey, n in sorted(counts["details"].items()):
                result_type, mx_host, receiving_ip, reason = json.loads(dkey)
                d: dict[str, Any] = {"result-type": result_type, "failed-session-count": n}
                if self.sending_ip:
                    d["sending-mta-ip"] = self.sending_ip
                if mx_host:
                    d["receiving-mx-hostname"] = mx_host
                if receiving_ip:
                    d["receiving-ip"] = receiving_ip
                if reason:
                    d["failure-reason-code"] = reason
                details.append(d)
            entry: dict[str, Any] = {
                "policy": policy,
                "summary": {"total-successful-session-count": counts["ok"],
                            "total-failure-session-count": counts["fail"]},
            }
            if details:
                entry["failure-details"] = details
            policies.append(entry)
        return {
            "organization-name": organization,
            "date-range": {"start-datetime": f"{day}T00:00:00Z",
                           "end-datetime": f"{day}T23:59:59Z"},
            "contact-info": contact,
            "report-id": report_id,
            "policies": policies,
        }

    def forget(self, day: str, domain: str) -> None:
        by_domain = self._days.get(day)
        if by_domain is not None and by_domain.pop(domain, None) is not None:
            self.dirty = True
            if not by_domain:
                del self._days[day]

    # -- state file -------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        doc = read_json(path, what="TLS report counts")
        if doc is None:
            return
        days = doc.get("days") if isinstance(doc, dict) else None
        if not isinstance(days, dict):
            log.warning("TLS report counts %s: no \"days\": starting without them", path)
            return
        for day, by_domain in days.items():
            try:
                day_range(day)
                for domain, by_policy in by_domain.items():
                    for pkey, counts in by_policy.items():
                        ptype, strings, mx = json.loads(pkey)
                        if not (isinstance(ptype, str) and isinstance(strings, list)
                                and isinstance(mx, list)):
                            raise ValueError(pkey)
                        ok, fail = int(counts["ok"]), int(counts["fail"])
                        details = {str(k): int(v) for k, v in counts["details"].items()}
                        for k in details:
                            if len(json.loads(k)) != 4:
                                raise ValueError(k)
                        self._days.setdefault(day, {}).setdefault(str(domain), {})[pkey] = {
                            "ok": ok, "fail": fail, "details": details}
            except (AttributeError, KeyError, TypeError, ValueError):
                log.warning("TLS report counts %s: day %r skipped (malformed)", path, day)
                self._days.pop(day, None)

    def save(self) -> None:
        """Write the counts to a new file and rename it over the old one (atomic)."""
        if self._file is None or not self.dirty:
            return
        if write_json(self._file, {"days": self._days}, what="TLS report counts"):
            self.dirty = False


# -- sending ----------------------------------------------------------------------------

QueueMail = Callable[[str, bytes], Awaitable[None]]  # (recipient, message) -> queued
Post = Callable[[str, bytes], Awaitable[None]]  # (https URI, gzip body) -> accepted or raises
Sign = Callable[[bytes], Awaitable[bytes]]  # message -> DKIM-Signature field(s) to prepend


def make_aiohttp_post(*, ca_file: str | None = None, resolver: Resolver | None = None,
                      timeout: float = 60.0) -> Post:
    """The production ``https:`` submitter (§5.2): a POST of the gzip-compressed report
    as ``application/tlsrpt+gzip`` over verified TLS, no redirects; any 2xx is taken.
    Host names resolve as the MTA-STS fetch's do (``dns.nameservers``)."""

    async def post(uri: str, gz: bytes) -> None:
        import aiohttp

        from mailyard.queue.mtasts import aiohttp_connector

        connector = aiohttp_connector(ca_file=ca_file, resolver=resolver)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                         connector=connector) as session, \
                session.post(uri, data=gz, allow_redirects=False,
                             headers={"Content-Type": "application/tlsrpt+gzip"}) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")

    return post


def report_message(report: dict[str, Any], gz: bytes, *, day: str, domain: str,
                   submitter: str, sender: str, to: str, now: float) -> bytes:
    """The §5.3 message carrying ``gz`` (the gzip-compressed ``report`` of ``day``)."""
    report_id = report["report-id"]
    start, end = day_range(day)
    filename = f"{submitter}!{domain}!{start}!{end}!{report_id}.json.gz"
    boundary = "=_tlsrpt_" + secrets.token_hex(12)
    ok = sum(p["summary"]["total-successful-session-count"] for p in report["policies"])
    failed = sum(p["summary"]["total-failure-session-count"] for p in report["policies"])
    text = (f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain},\r\n"
            f"{report['date-range']['start-datetime']} to {report['date-range']['end-datetime']}:"
            f"\r\n{ok} successful and {failed} failed TLS sessions.\r\n")
    b64 = base64.encodebytes(gz).replace(b"\n", b"\r\n").decode("ascii")
    head = (
        f"From: <{sender}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>\r\n"
        f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}\r\n"
        f"Message-ID: <{report_id}@{submitter}>\r\n"
        f"TLS-Report-Domain: {domain}\r\n"
        f"TLS-Report-Submitter: {submitter}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt";\r\n\tboundary="{boundary}"\r\n'
    )
    body = (
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        f"{text}\r\n"
        f"--{boundary}\r\n"
        f'Content-Type: application/tlsrpt+gzip; name="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
        f"{b64}\r\n"
        f"--{boundary}--\r\n"
    )
    return (head + body).encode("ascii")


async def send_due(reporter: TLSReporter, *, resolver: Resolver, submitter: str,
                   organization: str, contact: str, queue_mail: QueueMail, post: Post,
                   sign: Sign) -> int:
    """Send every complete day's reports; returns how many reports went out."""
    sent = 0
    now = reporter.now()
    for day, domain in reporter.due():
        too_old = _day(now - REPORT_GIVE_UP * 86400) >= day
        try:
            ruas = parse_tlsrpt(await resolver.txt(f"_smtp._tls.{domain}"))
        except NXDomain:
            ruas = None
        except DNSError as e:
            if too_old:
                log.warning("TLS report for %s (%s) dropped: %s", domain, day, e)
                reporter.forget(day, domain)
            continue  # a temporary DNS failure: the next pass tries again
        if not ruas:
            reporter.forget(day, domain)  # the domain wants no reports
            continue
        report_id = f"{day}-{secrets.token_hex(8)}"
        report = reporter.report(day, domain, organization=organization, contact=contact,
                                 report_id=report_id)
        gz = gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)
        taken = False
        for uri in ruas:
            try:
                if uri.lower().startswith("mailto:"):
                    to = mailto_address(uri)
                    msg = report_message(report, gz, day=day, domain=domain, submitter=submitter,
                                         sender=f"noreply-tlsrpt@{submitter}", to=to, now=now)
                    await queue_mail(to, await sign(msg) + msg)
                else:
                    await post(uri, gz)
                taken = True
                log.info("TLS report for %s (%s) sent to %s", domain, day, uri)
            except Exception as e:
                log.warning("TLS report for %s (%s) to %s failed: %s", domain, day, uri, e)
        if taken or too_old:
            reporter.forget(day, domain)
            sent += taken
    reporter.save()
    return sent
