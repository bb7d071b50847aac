"""The ``mailyard`` command: set up, run and administer a server.

    mailyard --data DIR init --domain example.test [--hostname H] [--dev]
    mailyard --data DIR serve
    mailyard --data DIR quickstart
    mailyard --data DIR domain add|list|remove ...
    mailyard --data DIR user add|passwd|list|remove|quota ...
    mailyard --data DIR alias add|list|remove ...
    mailyard --data DIR dkim keygen|rotate|list ...
    mailyard --data DIR dns records|check DOMAIN
    mailyard --data DIR queue list|show|retry|delete ...

Every error is one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from mailyard.config import (
    CONFIG_NAME,
    DEV_PORTS,
    STANDARD_PORTS,
    Config,
    ConfigError,
    listener_ports,
    load_config,
    render_config,
)
from mailyard.policy.addresses import AddressError, canonical_address, canonical_domain


class CLIError(Exception):
    pass


def _data_dir(args: argparse.Namespace) -> Path:
    d = args.data or os.environ.get("MAILYARD_DATA")
    if not d:
        raise CLIError("no data directory: pass --data DIR or set MAILYARD_DATA")
    return Path(d)


def _config(args: argparse.Namespace) -> Config:
    return load_config(_data_dir(args))


async def _with_store(cfg: Config, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from mailyard.server.app import open_store

    store = open_store(cfg)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal for the password prompt: use --password-stdin")
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            raise CLIError("the passwords differ")
    if len(pw) < 4:
        raise CLIError("password too short (at least 4 characters)")
    return pw


# -- init / serve -----------------------------------------------------------------------

async def _generate_dkim(store: Any, domain: str, *, selector: str, algorithm: str) -> None:
    from mailyard.mailauth.dkim import generate_key

    pem, _txt = generate_key("ed25519" if algorithm.startswith("ed25519") else "rsa")
    alg = "ed25519-sha256" if algorithm.startswith("ed25519") else "rsa-sha256"
    await store.add_dkim_key(domain, selector, alg, pem, active=True)


def _dkim_selector(taken: Iterable[str] = ()) -> str:
    """my<year><month>, with a letter after it when that is taken (my202611b, ...)."""
    import time

    base = "my" + time.strftime("%Y%m")
    used = set(taken)
    for suffix in ("", *"bcdefghijklmnopqrstuvwxyz"):
        if base + suffix not in used:
            return base + suffix
    raise CLIError(f"every default selector {base}[a-z] is taken; choose one with --selector")


_SELECTOR = re.compile(r"(?i)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def _check_selector(selector: str) -> str:
    """RFC 6376 §3.1: a selector is dot-separated DNS labels (letters, digits, hyphens)."""
    if len(selector) > 63 or not _SELECTOR.fullmatch(selector):
        raise CLIError(f"not a DKIM selector: {selector!r} (letters, digits, '-' and '.', "
                       "as in a DNS name)")
    return selector.lower()


async def _dkim_records(store: Any, domain: str) -> list[tuple[str, str, str, bool]]:
    """(selector, algorithm, public TXT value, active) of each DKIM key of ``domain``."""
    from mailyard.mailauth.keys import public_txt_from_private

    return [(sel, alg, public_txt_from_private(pem, alg), active)
            for d, sel, alg, pem, active in await store.list_dkim_keys(domain) if d == domain]


async def _print_records(store: Any, cfg: Config, domain: str) -> None:
    from mailyard.dnstool.records import records_for

    selectors = [(sel, alg, txt) for sel, alg, txt, active in await _dkim_records(store, domain)
                 if active]
    for line in records_for(domain, hostname=cfg.hostname, dkim_selectors=selectors,
                            ports=listener_ports(cfg.listen)):
        print(line)


def cmd_init(args: argparse.Namespace) -> int:
    data = _data_dir(args)
    try:
        domain = canonical_domain(args.domain)
    except AddressError as e:
        raise CLIError(str(e)) from None
    hostname = args.hostname or f"mail.{domain}"
    cfg_path = data / CONFIG_NAME
    if cfg_path.exists() and not args.force:
        raise CLIError(f"{cfg_path} exists (use --force to overwrite the config)")
    data.mkdir(parents=True, exist_ok=True)
    ports = DEV_PORTS if args.dev else STANDARD_PORTS
    bind = args.bind or ("127.0.0.1" if args.dev else "0.0.0.0")
    cfg_path.write_text(render_config(hostname=hostname, ports=ports, bind=bind,
                                      nameservers=args.nameserver or []), encoding="utf-8")
    cfg = load_config(data)
    tls_cert, tls_key = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    if args.cert and args.key:
        tls_cert.parent.mkdir(parents=True, exist_ok=True)
        tls_cert.write_bytes(Path(args.cert).read_bytes())
        tls_key.write_bytes(Path(args.key).read_bytes())
        os.chmod(tls_key, 0o600)
    elif not tls_cert.exists():
        from mailyard.server.tls import make_certificate

        make_certificate(tls_cert, tls_key, hostnames=[hostname, "localhost", "127.0.0.1"])

    async def setup(store: Any) -> None:
        if await store.get_domain(domain) is None:
            await store.add_domain(domain)
        keys = await store.list_dkim_keys(domain)
        if not [k for k in keys if k[4]]:
            await _generate_dkim(store, domain, selector=_dkim_selector(k[1] for k in keys),
                                 algorithm="rsa")
        print(f"Initialised {data} for {domain} (hostname {hostname}).")
        print(f"Config: {cfg_path}")
        print("\nPublish these DNS records:\n")
        await _print_records(store, cfg, domain)

    _run(_with_store(cfg, setup))
    return 0


def _connect_help(cfg: Config, user: str | None, password: str | None) -> str:
    lines = ["mailyard is running:"]
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http"):
        spec = getattr(cfg.listen, name)
        if spec:
            lines.append(f"  {name:<12} {spec}")
    if user:
        sub = cfg.listen.submission or cfg.listen.submissions
        pop = cfg.listen.pop3 or cfg.listen.pop3s
        lines += [
            "",
            f"Demo account: {user}  password: {password}",
            "Try it:",
            f"  swaks --server {sub} --tls --auth-user {user} --auth-password "
            f"{password} --from {user} --to {user}" if sub else "",
            f"  curl -k --ssl-reqd --url pop3://{pop}/1 --user {user}:{password}" if pop else "",
            f"  python3 -c \"import imaplib,ssl; c=imaplib.IMAP4('{(cfg.listen.imap or '').rpartition(':')[0]}',"
            f"{(cfg.listen.imap or ':0').rpartition(':')[2]}); c.starttls(ssl._create_unverified_context()); "
            f"c.login('{user}','{password}'); print(c.select())\"" if cfg.listen.imap else "",
        ]
    lines.append("Stop with Ctrl-C (SIGTERM finishes in-flight transactions).")
    return "\n".join(line for line in lines if line is not None)


def _serve(cfg: Config, *, banner: str | None = None) -> int:
    from mailyard.server.app import run
    from mailyard.server.logsink import configure

    configure(cfg.log.level)

    def ready(app: Any) -> None:
        if banner:
            print(banner, flush=True)
        else:
            print("mailyard listening:\n  " + "\n  ".join(app.describe()), flush=True)

    return run(cfg, ready=ready)


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(_config(args))


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Everything for a demo on a fresh machine: init --dev, a demo user, then serve."""
    data = Path(args.data or os.environ.get("MAILYARD_DATA") or "./mailyard-data")
    args.data = str(data)
    domain = args.domain
    user = f"demo@{domain}"
    password = args.password
    if not (data / CONFIG_NAME).exists():
        ns = argparse.Namespace(data=str(data), domain=domain, hostname=None, dev=True,
                                force=False, bind=None, cert=None, key=None, nameserver=None)
        cmd_init(ns)
    cfg = load_config(data)

    from mailyard.policy.auth import hash_password, scram_secret

    async def ensure_user(store: Any) -> None:
        if await store.get_domain(domain) is None:
            await store.add_domain(domain)
        if await store.get_account(user) is None:
            await store.add_account(user, hash_password(password),
                                    scram_sha256=scram_secret(password))
            await _ensure_postmaster(store, user)
        else:
            await store.set_password(user, hash_password(password),
                                     scram_sha256=scram_secret(password))

    _run(_with_store(cfg, ensure_user))
    return _serve(cfg, banner=_connect_help(cfg, user, password))


# -- domains, users, aliases ----------------------------------------------------------

def cmd_domain(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def go(store: Any) -> None:
        if args.action == "add":
            d = canonical_domain(args.name)
            if await store.get_domain(d) is not None:
                raise CLIError(f"domain {d} exists")
            await store.add_domain(d)
            keys = await store.list_dkim_keys(d)
            if not [k for k in keys if k[4]]:
                await _generate_dkim(store, d, selector=_dkim_selector(k[1] for k in keys),
                                     algorithm="rsa")
            print(f"added {d}; publish:")
            await _print_records(store, cfg, d)
        elif args.action == "remove":
            d = canonical_domain(args.name)
            if await store.get_domain(d) is None:
                raise CLIError(f"no domain {d}")
            await store.remove_domain(d)
            print(f"removed {d}")
        else:
            for dom in await store.list_domains():
                print(dom.name)

    _run(_with_store(cfg, go))
    return 0


def _parse_size(text: str) -> int | None:
    t = text.strip().upper()
    if t in ("0", "NONE", "UNLIMITED"):
        return None
    mult = 1
    for suffix, m in (("K", 1024), ("M", 1024**2), ("G", 1024**3), ("T", 1024**4)):
        if t.endswith(suffix):
            mult, t = m, t[:-1]
            break
    try:
        size = int(float(t) * mult)
    except (ValueError, OverflowError):
        raise CLIError(f"not a size: {text!r} (e.g. 500M, 2G, none)") from None
    if size <= 0:
        raise CLIError(f"not a size: {text!r} (a quota is positive; 'none' for no limit)")
    return size


def _user_address(text: str) -> str:
    """An address a user can have: what an SMTP client can send to unquoted and a mail
    client can log in with (a dot-atom local part, RFC 5322 §3.4.1), canonical."""
    from mailyard.protocol.smtp.address import AddressError as PathError
    from mailyard.protocol.smtp.address import parse_path

    text = text.strip()
    try:
        path = parse_path(f"<{text}>", allow_utf8=True)
    except PathError as e:
        raise CLIError(f"not a valid address: {text!r} ({e})") from None
    if (path.is_null or not path.domain or path.source_route or path.is_literal
            or path.mailbox.startswith('"')):
        raise CLIError(f"not a valid address for a user: {text!r} (local@domain, the local "
                       "part letters, digits and !#$%&'*+-/=?^_`{|}~ between single dots)")
    return canonical_address(path.mailbox)


async def _ensure_postmaster(store: Any, user: str) -> None:
    """RFC 5321 §4.5.1: every domain MUST accept mail for postmaster@ (where the DMARC and
    TLS-RPT reports of the records we print go too). The domain's first user gets it, as
    an ordinary alias the admin may change, unless the domain already routes it (an
    alias, an account or a catch-all)."""
    domain = user.rpartition("@")[2]
    pm = f"postmaster@{domain}"
    if (user == pm or await store.get_alias(pm) is not None
            or await store.get_account(pm) is not None
            or await store.get_alias(f"@{domain}") is not None):
        return
    await store.add_alias(pm, [user])
    print(f"{pm} -> {user} (RFC 5321 postmaster; 'mailyard alias remove {pm}', then "
          "'alias add', to send it elsewhere)")


def _signal_server(cfg: Config, sig: int) -> int | None:
    """Signal the ``mailyard serve`` of this data directory, if one runs: the pid its
    ``run/listeners.json`` names, when that process is alive and is that server (a
    stale file's pid may belong to another program now). The pid signalled, or None."""
    import json

    try:
        info = json.loads((Path(cfg.data_dir) / "run" / "listeners.json").read_text())
        pid = int(info["pid"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not {b"serve", b"quickstart"} & set(argv) or not any(b"mailyard" in a for a in argv):
        return None
    try:
        os.kill(pid, sig)
    except OSError:
        return None
    return pid


def cmd_user(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from mailyard.policy.auth import hash_password, scram_secret

    async def go(store: Any) -> None:
        if args.action == "list":
            for acct in await store.list_accounts(args.domain):
                quota = "unlimited" if acct.quota_bytes is None else f"{acct.quota_bytes} bytes"
                usage = await store.account_usage(acct.id)
                print(f"{acct.address}\tused {usage} bytes\tquota {quota}")
            return
        if args.action == "add":
            addr = _user_address(args.address)
            domain = addr.rpartition("@")[2]
            if await store.get_domain(domain) is None:
                raise CLIError(f"{domain} is not a local domain: 'mailyard domain add {domain}' first")
            if await store.get_account(addr) is not None:
                raise CLIError(f"user {addr} exists")
            alias = await store.get_alias(addr)
            if alias is not None:
                # The alias is looked up before the account: the user would get no mail.
                raise CLIError(f"{addr} is an alias (-> {', '.join(alias.targets)}): the user "
                               f"would receive nothing; 'mailyard alias remove {addr}' first")
            pw = _read_password(args)
            quota_bytes = _parse_size(args.quota) if args.quota else None
            # Both forms of the password: argon2id for PLAIN/LOGIN, SCRAM-SHA-256's secret.
            await store.add_account(addr, hash_password(pw), quota_bytes=quota_bytes,
                                    scram_sha256=scram_secret(pw))
            print(f"added {addr}")
            if "+" in addr.partition("@")[0]:
                base = addr.partition("+")[0] + "@" + domain
                print(f"note: '+' is the sub-address separator: mail to {addr} reaches this "
                      f"user, not {base}")
            await _ensure_postmaster(store, addr)
            return
        addr = canonical_address(args.address)
        if await store.get_account(addr) is None:
            raise CLIError(f"no user {addr}")
        if args.action == "passwd":
            pw = _read_password(args)
            await store.set_password(addr, hash_password(pw), scram_sha256=scram_secret(pw))
            print(f"password changed for {addr}")
        elif args.action == "quota":
            await store.set_quota(addr, _parse_size(args.size))
            print(f"quota of {addr} set to {args.size}")
        elif args.action == "remove":
            await store.remove_account(addr)
            print(f"removed {addr}")

    _run(_with_store(cfg, go))
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def go(store: Any) -> None:
        if args.action == "list":
            for alias in await store.list_aliases(args.domain):
                print(f"{alias.source}\t-> {', '.join(alias.targets)}")
            return
        src = args.source.strip()
        src = "@" + canonical_domain(src[1:]) if src.startswith("@") else canonical_address(src)
        if args.action == "add":
            domain = src.rpartition("@")[2]
            if await store.get_domain(domain) is None:
                raise CLIError(f"{domain} is not a local domain")
            targets = [canonical_address(t) for t in args.targets]
            if not targets:
                raise CLIError("an alias needs at least one target")
            if await store.get_alias(src) is not None:
                raise CLIError(f"alias {src} exists (remove it first)")
            if not args.force and await store.get_account(src) is not None:
                # An alias is looked up before the account: it would take all its mail.
                raise CLIError(f"{src} is a user: an alias would take all of its mail "
                               "(--force to do that anyway)")
            await store.add_alias(src, targets)
            print(f"{src} -> {', '.join(targets)}")
        else:
            if await store.get_alias(src) is None:
                raise CLIError(f"no alias {src}")
            await store.remove_alias(src)
            print(f"removed {src}")

    _run(_with_store(cfg, go))
    return 0


# -- DKIM and DNS ---------------------------------------------------------------------

def cmd_dkim(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def go(store: Any) -> None:
        from mailyard.mailauth.keys import public_txt_from_private

        if args.action == "list":
            for d, sel, alg, _pem, active in await store.list_dkim_keys(args.domain):
                state = "active" if active else "retired"
                print(f"{d}\t{sel}\t{alg}\t{state}")
            return
        d = canonical_domain(args.domain)
        if await store.get_domain(d) is None:
            raise CLIError(f"{d} is not a local domain")
        existing = await store.list_dkim_keys(d)
        if args.action == "retire":
            selector = _check_selector(args.selector_name)
            if not any(k[1] == selector for k in existing):
                raise CLIError(f"no DKIM key {selector} for {d}")
            await store.set_dkim_active(d, selector, False)
            left = [k[1] for k in existing if k[4] and k[1] != selector]
            print(f"retired {selector} for {d}; signing with: {', '.join(left) or 'no key'}")
            return
        selector = (_check_selector(args.selector) if args.selector
                    else _dkim_selector(k[1] for k in existing))
        if any(k[1] == selector for k in existing):
            raise CLIError(f"selector {selector} exists for {d}; choose another with --selector")
        await _generate_dkim(store, d, selector=selector, algorithm=args.algorithm)
        for dd, sel, alg, pem, _active in await store.list_dkim_keys(d):
            if sel == selector and dd == d:
                print(f'{sel}._domainkey.{d}. IN TXT "{public_txt_from_private(pem, alg)}"')
        old = [k[1] for k in existing if k[4] and k[2].startswith(args.algorithm[:3])]
        if args.action == "rotate" and old:
            # The old key keeps signing beside the new one until the new record is
            # published (a signature that fails beside one that passes is harmless; one
            # that fails alone would fail DKIM, and DMARC with it).
            print(f"; publish the record above; until then both keys sign. Once 'mailyard "
                  f"dns check {d} --selector {selector}' finds it, retire the old key: "
                  + "; ".join(f"mailyard dkim retire {d} {o}" for o in old))

    _run(_with_store(cfg, go))
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    cfg = _config(args)
    d = canonical_domain(args.domain)
    if args.action == "records":
        async def go(store: Any) -> None:
            if await store.get_domain(d) is None:
                raise CLIError(f"{d} is not a local domain: 'mailyard domain add {d}' first "
                               "('dns check' looks at any domain)")
            await _print_records(store, cfg, d)

        _run(_with_store(cfg, go))
        return 0

    from mailyard.dnstool.check import check_domain, findings_json, render_findings
    from mailyard.mailauth.resolver import DnsResolver

    async def check(store: Any) -> int:
        keys = await _dkim_records(store, d)
        selectors = list(args.selector or []) or [sel for sel, _, _, active in keys if active]
        expected: dict[str, Any] | None = None
        if await store.get_domain(d) is not None:
            # One of ours: compare with what `dns records` prints (MX host, keys, SRV ports).
            expected = {"hostname": cfg.hostname, "ports": listener_ports(cfg.listen),
                        "dkim": {sel: txt for sel, _, txt, _ in keys}}
        resolver = DnsResolver(cfg.dns.nameservers or None, timeout=cfg.dns.timeout)
        findings = await check_domain(d, resolver=resolver, selectors=selectors,
                                      expected=expected)
        print(findings_json(findings) if args.json else render_findings(findings))
        return 1 if any(f.status == "error" for f in findings) else 0

    return int(_run(_with_store(cfg, check)))


# -- queue ---------------------------------------------------------------------------------

def cmd_queue(args: argparse.Namespace) -> int:
    cfg = _config(args)
    import time

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    async def go(store: Any) -> None:
        if args.action == "list":
            entries = await store.queue_list()
            if not entries:
                print("queue is empty")
            for e in entries:
                pending = [r.address for r in e.recipients if r.state == "pending"]
                print(f"{e.id}  from <{e.sender}>  {e.blob.size} bytes  next {when(e.next_attempt)}"
                      f"  attempts {e.attempts}  to {', '.join(pending)}"
                      + (f"\n    last error: {e.last_error}" if e.last_error else ""))
        elif args.action == "show":
            e = await store.queue_get(args.id)
            if e is None:
                raise CLIError(f"no queue entry {args.id}")
            print(f"id: {e.id}\nsender: <{e.sender}>\nsize: {e.blob.size}\ncreated: {when(e.created)}"
                  f"\nnext attempt: {when(e.next_attempt)}\nattempts: {e.attempts}"
                  f"\nlast error: {e.last_error or '-'}"
                  f"\ndelay warning sent: {'yes' if e.delay_warned else 'no'}")
            for r in e.recipients:
                print(f"  {r.address}: {r.state} (attempts {r.attempts}) {r.last_status}")
        elif args.action == "retry":
            if args.id and await store.queue_get(args.id) is None:
                raise CLIError(f"no queue entry {args.id}")
            n = await store.queue_retry_now(args.id, time.time())
            if not n:
                print("nothing to retry (no entry has a recipient pending)")
                return
            pid = _signal_server(cfg, signal.SIGUSR1)
            where = (f"the running server (pid {pid}) is trying them now" if pid else
                     "no running server was found: it tries them when it starts")
            print(f"{n} entr{'y' if n == 1 else 'ies'} scheduled now; {where}")
        elif args.action == "delete":
            if await store.queue_get(args.id) is None:
                raise CLIError(f"no queue entry {args.id}")
            await store.queue_delete(args.id)
            print(f"deleted {args.id}")

    _run(_with_store(cfg, go))
    return 0


# -- argument parsing ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailyard", description="A complete mail server.")
    p.add_argument("--data", help="the instance's folder (or env MAILYARD_DATA)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="create config, TLS certificate, DKIM key and database")
    s.add_argument("--domain", required=True)
    s.add_argument("--hostname", help="this server's name (default mail.DOMAIN)")
    s.add_argument("--dev", action="store_true", help="unprivileged ports on 127.0.0.1")
    s.add_argument("--bind", help="listen address for every listener")
    s.add_argument("--cert", help="PEM certificate to use instead of a self-signed one")
    s.add_argument("--key", help="PEM key for --cert")
    s.add_argument("--nameserver", action="append", help="DNS server ip[:port] (repeatable)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run every listener")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("quickstart", help="demo: init --dev, a demo user, serve")
    s.add_argument("--domain", default="example.test")
    s.add_argument("--password", default="demo-password")
    s.set_defaults(func=cmd_quickstart)

    s = sub.add_parser("domain", help="local domains")
    ss = s.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        a = ss.add_parser(action)
        a.add_argument("name")
    ss.add_parser("list")
    s.set_defaults(func=cmd_domain)

    s = sub.add_parser("user", help="mail accounts")
    ss = s.add_subparsers(dest="action", required=True)
    a = ss.add_parser("add")
    a.add_argument("address")
    a.add_argument("--password-stdin", action="store_true")
    a.add_argument("--quota", help="e.g. 500M, 2G")
    a = ss.add_parser("passwd")
    a.add_argument("address")
    a.add_argument("--password-stdin", action="store_true")
    a = ss.add_parser("quota")
    a.add_argument("address")
    a.add_argument("size", help="e.g. 500M, 2G, none")
    a = ss.add_parser("remove")
    a.add_argument("address")
    a = ss.add_parser("list")
    a.add_argument("--domain")
    s.set_defaults(func=cmd_user)

    s = sub.add_parser("alias", help="aliases, fan-out lists and catch-alls (@domain)")
    ss = s.add_subparsers(dest="action", required=True)
    a = ss.add_parser("add")
    a.add_argument("source", help="local@domain, or @domain for a catch-all")
    a.add_argument("targets", nargs="+")
    a.add_argument("--force", action="store_true",
                   help="even when the source is a user (the alias takes its mail)")
    a = ss.add_parser("remove")
    a.add_argument("source")
    a = ss.add_parser("list")
    a.add_argument("--domain")
    s.set_defaults(func=cmd_alias)

    s = sub.add_parser("dkim", help="DKIM keys")
    ss = s.add_subparsers(dest="action", required=True)
    for action in ("keygen", "rotate"):
        a = ss.add_parser(action)
        a.add_argument("domain")
        a.add_argument("--selector")
        a.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    a = ss.add_parser("retire", help="stop signing with a key (its record may then go)")
    a.add_argument("domain")
    a.add_argument("selector_name", metavar="selector")
    a = ss.add_parser("list")
    a.add_argument("--domain")
    s.set_defaults(func=cmd_dkim)

    s = sub.add_parser("dns", help="DNS records to publish, and a check of what is published")
    ss = s.add_subparsers(dest="action", required=True)
    a = ss.add_parser("records")
    a.add_argument("domain")
    a = ss.add_parser("check")
    a.add_argument("domain")
    a.add_argument("--selector", action="append")
    a.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_dns)

    s = sub.add_parser("queue", help="the outbound queue")
    ss = s.add_subparsers(dest="action", required=True)
    ss.add_parser("list")
    for action in ("show", "delete"):
        a = ss.add_parser(action)
        a.add_argument("id")
    a = ss.add_parser("retry")
    a.add_argument("id", nargs="?")
    s.set_defaults(func=cmd_queue)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, ConfigError, AddressError) as e:
        print(f"mailyard: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a storage error: one line, not a traceback
        from mailyard.storage.interface import StorageError

        if isinstance(e, StorageError):
            print(f"mailyard: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
