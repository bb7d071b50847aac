"""Inbound authentication cost per message: mailyard vs authheaders (dkimpy + pyspf).

Both sides check the same messages for SPF + DKIM + DMARC with DNS answered from memory
(warm cache: mailyard through FakeResolver, authheaders through a dict-backed dnsfunc and a
patched pyspf DNS lookup), on one core, in the same run. Prints messages/s and the ratio.

    python bench/bench_mailauth.py [--messages 400] [--rounds 3]

authheaders and pyspf are installed on first use if missing (pip install authheaders pyspf).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import subprocess
import sys
import time


def ensure_competitor() -> None:
    try:
        importlib.import_module("authheaders")
        importlib.import_module("spf")
    except ImportError:
        print("authheaders/pyspf missing: running `pip install authheaders pyspf` ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "authheaders", "pyspf"], check=True
        )


def build(n: int):  # type: ignore[no-untyped-def]
    from mailyard.mailauth.dkim import generate_key, sign_message

    priv, pub = generate_key("rsa", bits=2048)
    zones = {
        "a.test": {
            "TXT": ["v=spf1 ip4:192.0.2.0/24 include:_spf.a.test -all"],
            "MX": [(10, "mx.a.test")],
        },
        "_spf.a.test": {"TXT": ["v=spf1 ip4:198.51.100.0/24 mx -all"]},
        "mx.a.test": {"A": ["192.0.2.10"]},
        "sel._domainkey.a.test": {"TXT": [pub]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@a.test"]},
    }
    msgs = []
    for i in range(n):
        body = (f"Hello Bob, message {i}.\r\n" + "Some text for the body. " * 40 + "\r\n").encode()
        m = (
            f"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: test {i}\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{i}@a.test>\r\n\r\n"
        ).encode()
        m += body
        msgs.append(sign_message(m, domain="a.test", selector="sel", private_pem=priv) + m)
    return zones, msgs


def run_mailyard(zones, msgs, rounds):  # type: ignore[no-untyped-def]
    from mailyard.mailauth.dkim import verify_dkim
    from mailyard.mailauth.dmarc import check_dmarc
    from mailyard.mailauth.spf import check_spf
    from mailyard.testing.dns import FakeResolver

    r = FakeResolver(zones)

    async def one(m: bytes) -> str:
        spf = await check_spf("198.51.100.7", "bounce@a.test", "mx.a.test", resolver=r)
        dk = await verify_dkim(m, resolver=r)
        dm = await check_dmarc(m, spf, "a.test", dk, resolver=r)
        return f"{spf.result}/{dk[0].result}/{dm.result}"

    async def all_(msgs):  # type: ignore[no-untyped-def]
        return [await one(m) for m in msgs]

    outcome = asyncio.run(all_(msgs[:1]))[0]
    best = 0.0
    for _ in range(rounds):
        r.reset_counts()
        t = time.perf_counter()
        asyncio.run(all_(msgs))
        best = max(best, len(msgs) / (time.perf_counter() - t))
    return best, outcome


def run_authheaders(zones, msgs, rounds, *, cache_psl=False):  # type: ignore[no-untyped-def]
    import functools

    import authheaders
    import authheaders.dmarc_lookup as dl
    import spf as pyspf

    # As shipped, authheaders re-reads the Public Suffix List on every org-domain lookup
    # (several per message). cache_psl=True memoises that, to compare the checks themselves.
    if not hasattr(dl, "_bench_orig"):
        dl._bench_orig = dl.get_org_domain_from_suffix_list  # type: ignore[attr-defined]
    orig = dl._bench_orig  # type: ignore[attr-defined]
    dl.get_org_domain_from_suffix_list = (
        functools.lru_cache(maxsize=None)(orig) if cache_psl else orig
    )

    def txt(name):  # type: ignore[no-untyped-def]
        if isinstance(name, bytes):
            name = name.decode()
        name = name.rstrip(".").lower()
        vals = zones.get(name, {}).get("TXT")
        return vals[0] if vals else None

    def dnsfunc(name, timeout=5):  # type: ignore[no-untyped-def]
        return txt(name)

    def dnslookup(name, qtype, strict=True, timeout=None, level=0):  # type: ignore[no-untyped-def]
        node = zones.get(name.rstrip(".").lower(), {})
        if qtype == "TXT":
            for v in node.get("TXT", []):
                yield ((name, "TXT"), (v.encode(),))
        elif qtype == "A":
            for v in node.get("A", []):
                yield ((name, "A"), v)
        elif qtype == "MX":
            for p, h in node.get("MX", []):
                yield ((name, "MX"), (p, h))

    pyspf.DNSLookup = dnslookup

    def one(m: bytes) -> str:
        return authheaders.authenticate_message(
            m,
            "mx.b.test",
            spf=True,
            dkim=True,
            dmarc=True,
            ip="198.51.100.7",
            mail_from="bounce@a.test",
            helo="mx.a.test",
            dnsfunc=dnsfunc,
        )

    outcome = one(msgs[0])
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for m in msgs:
            one(m)
        best = max(best, len(msgs) / (time.perf_counter() - t))
    return best, outcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ensure_competitor()
    zones, msgs = build(args.messages)
    ours, o_out = run_mailyard(zones, msgs, args.rounds)
    few = msgs[: max(20, len(msgs) // 10)]
    shipped, t_out = run_authheaders(zones, few, 1)
    cached, _ = run_authheaders(zones, msgs, args.rounds, cache_psl=True)
    print(f"messages: {len(msgs)} x ~{len(msgs[0])} bytes, RSA-2048 DKIM, SPF include+mx, DMARC")
    print(f"mailyard                    : {ours:8.0f} msg/s   ({o_out})")
    print(f"authheaders (as shipped)    : {shipped:8.0f} msg/s   ({len(few)} msgs)")
    print(f"authheaders (PSL memoised)  : {cached:8.0f} msg/s")
    print(f"  its result: {' '.join(t_out.split())[:200]}")
    print(f"ratio mailyard / authheaders as shipped: {ours / shipped:.1f}x")
    print(f"ratio mailyard / authheaders PSL memoised: {ours / cached:.2f}x")


if __name__ == "__main__":
    main()
