"""Many IDLE connections over TLS: mailyard against Dovecot, in one run.

    python3 bench/bench_idle.py [--connections 10000] [--procs 1] [--only mailyard|dovecot]

C connections to the implicit-TLS port (imaps), all as the same user (so that one new
message must reach every one of them), each LOGIN + SELECT INBOX + IDLE. Then:

* memory per connection: the server's memory with all C connections idling, minus its
  memory after one warm-up session, divided by C. For mailyard (one process) that is
  VmRSS; for Dovecot (many processes) the sum of PSS over all its processes, with the
  sum of RSS shown too.
* notification latency: one message is delivered — to mailyard by SMTP on its MX port,
  to Dovecot by LMTP — and the bench times from the end of DATA until every connection
  has read ``* n EXISTS`` (the median and the slowest connection are printed).

The client runs on asyncio (uvloop when installed) in ``--procs`` processes; connections
are opened 200 at a time. The bench raises its own RLIMIT_NOFILE to the hard limit
before starting the servers, which inherit it. mailyard is configured with
``[limits] max_connections`` and ``max_connections_per_ip`` above C; Dovecot with
``mail_max_userip_connections`` above C, imap-login in high-performance mode
(service_count = 0) and ``--dovecot-client-limit`` connections per imap process (default
1000: one process per connection would need C processes and C inotify instances, more
than the kernel's default of 128 per user allows).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_imap import (
    DOMAIN,
    ImapClient,
    bench_dir,
    dovecot_maildir,
    exists_of,
    init_mailyard,
    load_mailyard,
    make_message,
    proc_kb,
    start_dovecot,
    start_mailyard,
    stop,
    tree_memory,
    use_uvloop,
    write_maildir,
)

USER = f"bob@{DOMAIN}"
PRELOAD = 20
OPEN_AT_ONCE = 200


# -- client worker (one per --procs) -----------------------------------------------------

def worker(port: int, pipe: Connection) -> None:
    use_uvloop()
    asyncio.run(_worker(port, pipe))


async def _worker(port: int, pipe: Connection) -> None:
    """Commands from the parent: ("open", n) opens n more idling connections, ("round", k,
    timeout) reports when each connection read the k-th new ``* n EXISTS``, ("quit",)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sem = asyncio.Semaphore(OPEN_AT_ONCE)
    clients: list[ImapClient] = []
    watchers: list[asyncio.Task[None]] = []
    seen: dict[int, list[float]] = {}  # k-th new message -> monotonic times it was read
    complete: dict[int, asyncio.Event] = {}
    loop = asyncio.get_running_loop()

    def event(k: int) -> asyncio.Event:
        return complete.setdefault(k, asyncio.Event())

    async def watch(cl: ImapClient, n0: int) -> None:
        got = 0
        while True:
            n = await cl.wait_exists(n0 + got + 1)
            now = time.monotonic()
            for k in range(got + 1, n - n0 + 1):
                times = seen.setdefault(k, [])
                times.append(now)
                if len(times) == len(clients):
                    event(k).set()
            got = n - n0

    async def open_one(errors: list[str]) -> None:
        async with sem:
            try:
                cl = await ImapClient.connect(port, ssl_ctx=ctx)
                await cl.login(USER)
                _s, untagged = await cl.command("SELECT INBOX")
                await cl.idle()
            except Exception as e:
                errors.append(repr(e)[:120])
                return
            clients.append(cl)
            watchers.append(asyncio.create_task(watch(cl, exists_of(untagged))))

    while True:
        msg = await loop.run_in_executor(None, pipe.recv)
        if msg[0] == "open":
            errors: list[str] = []
            t0 = time.monotonic()
            await asyncio.gather(*(open_one(errors) for _ in range(msg[1])))
            pipe.send(("ready", len(clients), errors[:3], len(errors), time.monotonic() - t0))
        elif msg[0] == "round":
            _, k, timeout = msg
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event(k).wait(), timeout)
            pipe.send(("seen", seen.get(k, [])))
        else:
            break
    for w in watchers:
        w.cancel()
    for cl in clients:
        cl.writer.transport.abort()


# -- delivery ----------------------------------------------------------------------------

async def smtp_deliver(port: int, msg: bytes) -> tuple[float, float]:
    """SMTP one message to USER; returns (monotonic end of DATA, seconds until the 250)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"delivery refused: {line!r}")
                return line

    await reply()
    for cmd in (b"EHLO bench.remote.example", b"MAIL FROM:<sender@remote.example>",
                f"RCPT TO:<{USER}>".encode(), b"DATA"):
        writer.write(cmd + b"\r\n")
        await reply()
    writer.write(msg + b".\r\n")
    t0 = time.monotonic()
    await reply()
    t1 = time.monotonic()
    writer.write(b"QUIT\r\n")
    with contextlib.suppress(Exception):
        await reply()
    writer.close()
    return t0, t1 - t0


async def append_deliver(port: int, msg: bytes) -> tuple[float, float]:
    """APPEND one message on a fresh plaintext connection (logged in beforehand)."""
    cl = await ImapClient.connect(port)
    await cl.login(USER)
    t0 = time.monotonic()
    await cl.command("APPEND INBOX", literal=msg)
    t1 = time.monotonic()
    await cl.close()
    return t0, t1 - t0


def lda_deliver(conf: Path, msg: bytes) -> tuple[float, float]:
    """Dovecot's own MDA (dovecot-lda), run as the dovecot user like an MTA would."""
    lda = "/usr/lib/dovecot/dovecot-lda"
    t0 = time.monotonic()
    subprocess.run([lda, "-c", str(conf), "-o", "log_path=/dev/stderr", "-d", USER,
                    "-f", "sender@remote.example"], input=msg.replace(b"\r\n", b"\n"),
                   check=True, user="dovecot", group="dovecot", stdout=subprocess.DEVNULL)
    return t0, time.monotonic() - t0


# -- one server ----------------------------------------------------------------------------

Deliver = Callable[[bytes], tuple[float, float]]


def run(imaps: int, deliveries: list[tuple[str, Deliver]], *, pid: int,
        connections: int, procs: int, timeout: float) -> dict[str, Any]:
    # warm-up: one session through every step, so imports and caches are in place
    async def warm() -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        cl = await ImapClient.connect(imaps, ssl_ctx=ctx)
        await cl.login(USER)
        await cl.command("SELECT INBOX")
        await cl.idle()
        await cl.done()
        await cl.close()

    asyncio.run(warm())
    time.sleep(1.0)
    mem0 = tree_memory(pid)
    rss0 = proc_kb(pid)
    mpctx = mp.get_context("fork")
    pipes, workers = [], []
    for _ in range(procs):
        parent, child = mpctx.Pipe()
        p = mpctx.Process(target=worker, args=(imaps, child), daemon=True)
        p.start()
        pipes.append(parent)
        workers.append(p)

    def open_more(count: int) -> tuple[int, int, list[str], float]:
        t = time.monotonic()
        for i, pp in enumerate(pipes):
            pp.send(("open", count // procs + (1 if i < count % procs else 0)))
        ready = [pp.recv() for pp in pipes]
        secs = time.monotonic() - t
        time.sleep(2.0)
        return (sum(r[1] for r in ready), sum(r[3] for r in ready),
                [e for r in ready for e in r[2]][:3], secs)

    # in two halves: the second half's growth is the cost of a connection alone, without
    # what the first connections warm up once (thread pools, allocator arenas, caches)
    half = connections // 2
    ok1, err1, samples1, secs1 = open_more(half)
    mem1, rss1 = tree_memory(pid), proc_kb(pid)
    ok, err2, samples2, secs2 = open_more(connections - half)
    after, rss_after = tree_memory(pid), proc_kb(pid)
    rounds = []
    for k, (how, fn) in enumerate(deliveries, start=1):
        msg, _, _ = make_message(999_000 + k, seed=3, size=3000)
        t0, t_reply = fn(msg)
        for pp in pipes:
            pp.send(("round", k, timeout))
        seen = sorted(t - t0 for pp in pipes for t in pp.recv()[1])
        rounds.append((how, t_reply, seen))
    for pp in pipes:
        pp.send(("quit",))
    for p in workers:
        p.join(30)
        if p.is_alive():
            p.kill()
    second = max(1, ok - ok1)
    return {
        "ok": ok, "errors": err1 + err2, "error_samples": (samples1 + samples2)[:3],
        "open_secs": secs1 + secs2,
        "pss_kb": after[0] - mem0[0], "rss_kb": after[1] - mem0[1],
        "pss2_kb": (after[0] - mem1[0]) * ok / second, "rss2_kb": (after[1] - mem1[1]) * ok / second,
        "procs_before": mem0[2], "procs_after": after[2],
        "main_rss_kb": rss_after - rss0, "main_rss2_kb": (rss_after - rss1) * ok / second,
        "rounds": rounds,
    }


def report(name: str, r: dict[str, Any], connections: int, *, single: bool) -> None:
    ok = r["ok"]
    err = f", {r['errors']} failed" if r["errors"] else ""
    print(f"  {name}: {ok}/{connections} connections idling (opened in {r['open_secs']:.1f} s, "
          f"{ok / max(r['open_secs'], 1e-9):.0f}/s{err})")
    for e in r["error_samples"]:
        print(f"      e.g. {e}")
    if ok:
        pss, rss = r["pss_kb"] / ok, r["rss_kb"] / ok
        pss2, rss2 = r["pss2_kb"] / ok, r["rss2_kb"] / ok
        if single:
            print(f"      memory per connection: {r['main_rss_kb'] / ok:6.1f} KiB VmRSS "
                  f"({pss:.1f} KiB PSS); second half alone {r['main_rss2_kb'] / ok:.1f} KiB VmRSS"
                  "   target < 50 KiB")
        else:
            print(f"      memory per connection: {pss:6.1f} KiB PSS summed over processes "
                  f"({rss:.1f} KiB RSS summed; {r['procs_before']} -> {r['procs_after']} "
                  f"processes); second half alone {pss2:.1f} KiB PSS ({rss2:.1f} KiB RSS)")
    for how, t_reply, seen in r["rounds"]:
        line = f"      new mail by {how:24s}: delivered in {t_reply * 1e3:6.1f} ms; "
        if seen:
            fast = sum(1 for t in seen if t < 1.0)
            line += (f"* n EXISTS read by {len(seen)}/{ok}: median "
                     f"{statistics.median(seen) * 1e3:.0f} ms, all after {seen[-1] * 1e3:.0f} ms"
                     f" ({fast} within 1 s)")
        else:
            line += "* n EXISTS read by no connection"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=1, help="client processes")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for every connection to see the new message")
    ap.add_argument("--dovecot-client-limit", type=int, default=1,
                    help="connections per Dovecot imap process (its default: 1)")
    ap.add_argument("--only", choices=("dovecot", "mailyard"))
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))  # root may raise it
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: use --connections "
                 f"{max(1, hard - 1000)}")
    loop_name = use_uvloop()
    out: dict[str, dict[str, object]] = {}
    from mailyard.testing.dnsserver import DNSServer

    zone = {
        "remote.example": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "_dmarc.remote.example": {"TXT": ["v=DMARC1; p=none"]},
    }
    with bench_dir() as tmp, DNSServer(zone) as dns:
        limits = (f"max_connections = {args.connections + 500}\n"
                  f"max_connections_per_ip = {args.connections + 500}\n")
        data = init_mailyard(tmp, nameserver=dns.nameserver, limits=limits)
        tls = (data / "tls" / "cert.pem", data / "tls" / "key.pem")
        if args.only != "mailyard":
            write_maildir(dovecot_maildir(tmp, USER), (make_message(i) for i in range(PRELOAD)))
            dv = start_dovecot(tmp, [USER], tls=tls, max_connections=args.connections + 100,
                               client_limit=args.dovecot_client_limit)
            try:
                out["dovecot"] = run(dv.imaps, [
                    ("IMAP APPEND", lambda m: asyncio.run(append_deliver(dv.imap, m))),
                    ("dovecot-lda (its MDA)", lambda m: lda_deliver(dv.conf, m)),
                ], pid=dv.proc.pid, connections=args.connections, procs=args.procs,
                    timeout=args.timeout)
            finally:
                stop(dv.proc)
        if args.only != "dovecot":
            load_mailyard(data, [USER], make_message, PRELOAD)
            my = start_mailyard(data)
            try:
                if "imaps" not in my.ports or "smtp" not in my.ports:
                    sys.exit(f"mailyard listeners: {sorted(my.ports)} (need imaps and smtp)")
                out["mailyard"] = run(my.ports["imaps"], [
                    ("IMAP APPEND", lambda m: asyncio.run(append_deliver(my.ports["imap"], m))),
                    ("SMTP to the MX port", lambda m: asyncio.run(smtp_deliver(my.ports["smtp"], m))),
                ], pid=my.proc.pid, connections=args.connections, procs=args.procs,
                    timeout=args.timeout)
            finally:
                stop(my.proc)
    with contextlib.suppress(OSError):
        inotify = Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
        if "dovecot" in out:
            print(f"  (Dovecot learns of new mail by inotify, one instance per imap process; the "
                  f"kernel allows {inotify} per user, past that it polls every 30 s)")
    print(f"IMAP IDLE over TLS: {args.connections} connections as one user, "
          f"{args.procs} client process(es) on {loop_name}, {os.cpu_count()} CPUs, "
          f"RLIMIT_NOFILE {hard}")
    for name, r in out.items():
        report(name, r, args.connections, single=(name == "mailyard"))


if __name__ == "__main__":
    main()
