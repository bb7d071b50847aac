"""Exact zone-file lines for a mail domain served by mailyard (BIND syntax, absolute names).

Every record a receiving and sending domain needs: MX, the host's A/AAAA, SPF, DKIM for each
selector, DMARC (starting at p=none with reports, and the rollout advice), MTA-STS (RFC 8461),
TLS-RPT (RFC 8460), autoconfig/autodiscover, and the SRV records of RFC 6186 with RFC 8314's
preference for implicit TLS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from mailyard.config import CLIENT_LISTENERS

TTL = 3600


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def txt_strings(value: str) -> str:
    """A TXT value as quoted character-strings of at most 255 octets (RFC 1035 §3.3.14)."""
    data = value.replace("\\", "\\\\").replace('"', '\\"')
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [""]
    return " ".join(f'"{c}"' for c in chunks)


def mta_sts_policy(mx_hosts: list[str], *, mode: str = "testing", max_age: int = 604800) -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.2)."""
    if mode not in ("enforce", "testing", "none"):
        raise ValueError("mode must be enforce, testing or none")
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {h.rstrip('.')}" for h in mx_hosts]
    lines.append(f"max_age: {max_age}")
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(policy: str) -> str:
    """A stable id (RFC 8461 §3.1: 1-32 alphanumerics) that changes when the policy does."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def records_for(
    domain: str,
    *,
    hostname: str,
    dkim_selectors: list[tuple[str, str, str]],
    ports: Mapping[str, int | None],
    ip4: str | None = None,
    ip6: str | None = None,
    report_address: str | None = None,
    mta_sts_mode: str = "testing",
) -> list[str]:
    """Zone lines (comments start with ";") for ``domain`` whose mail host is ``hostname``.

    ``dkim_selectors`` are (selector, algorithm, public TXT value) as made by
    :func:`mailyard.mailauth.dkim.generate_key`. ``ports`` maps listener names to the
    port each is configured on, None (or absent) when not listened on, as
    :func:`mailyard.config.listener_ports` gives them: the SRV records carry these ports,
    and a service not offered gets target "." (RFC 6186 §4).
    """
    d = domain.rstrip(".").lower()
    host = hostname.rstrip(".").lower()
    D, H = _fqdn(d), _fqdn(host)
    rua = report_address or f"postmaster@{d}"
    out: list[str] = [f"; Mail records for {d} (mail host {host})", f"$TTL {TTL}", ""]

    out += ["; Where mail for the domain goes (RFC 5321 §5.1)", f"{D} IN MX 10 {H}", ""]
    out.append(f"; Addresses of {host} (in the zone that holds {host}); also set its PTR to it")
    out.append(f"{H} IN A {ip4}" if ip4 else f"; {H} IN A <IPv4 address of {host}>")
    if ip6:
        out.append(f"{H} IN AAAA {ip6}")
    out.append("")

    spf_terms = ["mx"]
    if ip4:
        spf_terms.append(f"ip4:{ip4}")
    if ip6:
        spf_terms.append(f"ip6:{ip6}")
    spf = "v=spf1 " + " ".join(spf_terms) + " -all"
    out += [
        "; SPF (RFC 7208): only our mail host may send as this domain",
        f"{D} IN TXT {txt_strings(spf)}",
        "",
    ]

    out.append("; DKIM public keys (RFC 6376 §3.6; ed25519: RFC 8463)")
    for selector, algorithm, txt in dkim_selectors:
        out.append(f"; selector {selector} ({algorithm})")
        out.append(f"{selector}._domainkey.{D} IN TXT {txt_strings(txt)}")
    if not dkim_selectors:
        out.append("; (no DKIM selectors configured: run the key generation first)")
    out.append("")

    dmarc = f"v=DMARC1; p=none; rua=mailto:{rua}; adkim=r; aspf=r"
    out += [
        "; DMARC (RFC 7489): start by monitoring. Rollout, watching the aggregate reports:",
        ";   1. p=none (now) until every legitimate source passes SPF or DKIM aligned",
        ";   2. p=quarantine; pct=10, then pct=50, then pct=100",
        ";   3. p=reject",
        f"_dmarc.{D} IN TXT {txt_strings(dmarc)}",
        "",
    ]

    policy = mta_sts_policy([host], mode=mta_sts_mode)
    out += [
        "; MTA-STS (RFC 8461): change id= whenever the policy file changes",
        f"_mta-sts.{D} IN TXT {txt_strings(f'v=STSv1; id={mta_sts_id(policy)}')}",
        f"mta-sts.{D} IN CNAME {H}",
        f"; serve this at https://mta-sts.{d}/.well-known/mta-sts.txt (valid TLS certificate):",
    ]
    out += [f";   {line}" for line in policy.rstrip("\r\n").split("\r\n")]
    out += [
        "; when reports show no failures, switch mode to enforce (and the id above)",
        "",
        "; SMTP TLS reporting (RFC 8460)",
        f"_smtp._tls.{D} IN TXT {txt_strings(f'v=TLSRPTv1; rua=mailto:{rua}')}",
        "",
        "; Client autoconfiguration (Thunderbird autoconfig, Outlook autodiscover)",
        f"autoconfig.{D} IN CNAME {H}",
        f"autodiscover.{D} IN CNAME {H}",
        "",
        "; Service records (RFC 6186), implicit TLS preferred (RFC 8314 §5.1: lower priority);",
        '; target "." says the service is not offered (RFC 6186 §4)',
    ]
    out += srv_records(d, host, ports)
    return out


def srv_records(domain: str, hostname: str, ports: Mapping[str, int | None]) -> list[str]:
    """The RFC 6186 SRV lines of ``domain`` whose mail host is ``hostname``, one per
    client listener (:data:`mailyard.config.CLIENT_LISTENERS`), with the port from
    ``ports`` (see :func:`records_for`)."""
    D, H = _fqdn(domain.lower()), _fqdn(hostname.lower())
    out = []
    for service, _, _, priority in CLIENT_LISTENERS:
        name = f"_{service}._tcp.{D}"
        port = ports.get(service)
        if port is None:
            out.append(f"{name} IN SRV 0 0 0 .")
        elif port == 0:  # the kernel picks the port at start: nothing fixed to publish
            out.append(f"; {name} IN SRV {priority} 1 <port> {H}"
                       f"  (listen.{service} has port 0: configure a fixed port)")
        else:
            out.append(f"{name} IN SRV {priority} 1 {port} {H}")
    return out
