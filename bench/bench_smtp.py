"""SMTP acceptance: mailyard against aiosmtpd (fsync per message), in one run.

    python3 bench/bench_smtp.py [--messages 2000] [--sessions 20] [--size 5120] [--rounds 3]

Both servers receive the same load from Postfix's ``smtp-source`` (installed by
scripts/test.sh; ``apt-get install postfix``): N messages of S bytes over C
concurrent sessions, several messages per session. mailyard runs its real MX
listener with durable delivery (blob fsync + directory fsync + SQLite FULL
commit, shared through group commit) and DNS answered by a local server. The
baseline is aiosmtpd with a handler that writes each message to its own file and
fsyncs it. Both servers run side by side and ``--rounds`` timed runs each alternate
between them (the baseline's rate follows the state of the disk: see "The
baseline's disk" below); the medians are compared. ``--workers N`` sets mailyard's ``[smtp] workers``
(receiver processes; default 0). Also printed: each server's CPU per message (user + system,
all threads, summed with its receiver processes), the server's peak RSS, and the memory per idle connection
with 1,000 idle connections open; and, since mailyard defers full-text indexing
while mail arrives, the rate counting the time until a body SEARCH answers (the
index complete): the baseline indexes nothing, so that figure is the fairer one.

The baseline's disk. aiosmtpd creates and fsyncs one file per message, so its rate
follows how fast the file system takes a new file's blocks, and on the test VM
(ext4 mounted with ``discard`` on a thin-provisioned virtual disk) that depends on
what was deleted before: blocks freed and discarded a moment ago (the previous run's
temporary directory, say) are slow to write again. Measured there, create + write
5 KB + fsync in a loop: ~4,900 files/s normally, 920-1,200/s just after 8,000 files
were deleted (20 s later too), back to ~3,000/s only after 8,000 more. So aiosmtpd
may start a bench at 700 msg/s and reach 1,800 in its last rounds, which flatters the
median ratio; mailyard writes a few large segment files and is far less exposed.
The ratio against aiosmtpd's fastest run is therefore printed too: it is the
conservative figure (aiosmtpd CPU-bound, its disk not in the way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mailyard.testing.dnsserver import DNSServer  # noqa: E402

AIOSMTPD_SERVER = textwrap.dedent('''
    import asyncio, os, sys, itertools
    from aiosmtpd.controller import Controller
    outdir = sys.argv[1]
    counter = itertools.count()
    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            envelope.rcpt_tos.append(address)
            return "250 OK"
        async def handle_DATA(self, server, session, envelope):
            path = os.path.join(outdir, f"{os.getpid()}-{next(counter)}.eml")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, envelope.original_content)
                os.fsync(fd)
            finally:
                os.close(fd)
            return "250 Message accepted for delivery"
    c = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[2]))
    c.start()
    print("ready", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    except KeyboardInterrupt:
        pass
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (mailyard's SMTP worker processes)."""
    out = [pid]
    for p in out:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """The field summed over the process and its descendants (for VmHWM, the sum of
    each process's own peak: at least the peak of the whole)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads and its live descendants so far."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def smtp_source(port: int, *, messages: int, sessions: int, size: int) -> float:
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.path.exists(exe):
        sys.exit("smtp-source not found: apt-get install postfix")
    # -m: messages in total; -s: concurrent sessions; -d: several messages per session
    cmd = [exe, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", "sender@remote.example", "-t", "bob@example.test", "-M", "bench.example",
           f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def start_mailyard(tmp: Path, nameserver: str, workers: str
                   ) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    data = tmp / "mailyard"
    mailyard = [sys.executable, "-m", "mailyard.cli.main", "--data", str(data)]
    subprocess.run([*mailyard, "init", "--domain", "example.test", "--dev",
                    "--nameserver", nameserver], check=True, stdout=subprocess.DEVNULL)
    cfg = data / "mailyard.toml"
    text = re.sub(r'(?m)^(\w+) = "127\.0\.0\.1:\d+"$', r'\1 = "127.0.0.1:0"', cfg.read_text())
    text = text.replace("[limits]\n", "[limits]\nmax_connections_per_ip = 5000\n", 1)
    value = workers if workers.isdigit() else f'"{workers}"'
    text = re.sub(r'(?m)^workers = .*$', f"workers = {value}", text)
    cfg.write_text(text)
    subprocess.run([*mailyard, "user", "add", "bob@example.test", "--password-stdin"],
                   input=b"bench-password\n", check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([*mailyard, "serve"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runtime = data / "run" / "listeners.json"
    for _ in range(300):
        if runtime.exists():
            info = json.loads(runtime.read_text())
            return proc, {k: v["port"] for k, v in info.items() if isinstance(v, dict)}
        time.sleep(0.05)
    proc.kill()
    sys.exit("mailyard did not start")


def index_catch_up(port: int) -> float:
    """Seconds until a body search answers: the full-text index, deferred while mail
    arrives, has then taken in every message (a SEARCH waits for it)."""
    import imaplib
    import ssl

    t0 = time.perf_counter()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the instance's self-signed certificate
    with imaplib.IMAP4("127.0.0.1", port) as imap:
        imap.starttls(ssl_context=ctx)
        imap.login("bob@example.test", "bench-password")
        imap.select("INBOX", readonly=True)
        typ, _ = imap.search(None, "BODY", "no-such-words-anywhere")
        assert typ == "OK"
    return time.perf_counter() - t0


def idle_connections(port: int, n: int, pid: int) -> float:
    before = rss_kb(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        s.recv(512)  # the greeting: the session is fully set up
    time.sleep(0.5)
    after = rss_kb(pid)
    for s in socks:
        s.close()
    return (after - before) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed runs per server, interleaved (the medians are compared)")
    ap.add_argument("--workers", default="0",
                    help="mailyard's [smtp] workers: receiver processes (0: in the server)")
    args = ap.parse_args()

    zone = {
        "remote.example": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "_dmarc.remote.example": {"TXT": ["v=DMARC1; p=none"]},
    }
    load = {"messages": args.messages, "sessions": args.sessions, "size": args.size}
    t_base: list[float] = []
    t_my: list[float] = []
    t_index: list[float] = []
    cpu_base: list[float] = []
    cpu_my: list[float] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmpd, DNSServer(zone) as dns:
        tmp = Path(tmpd)
        outdir = tmp / "aiosmtpd-out"
        outdir.mkdir()
        port = free_port()
        base = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, str(outdir), str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] | None = None
        try:
            assert base.stdout is not None
            base.stdout.readline()
            proc, ports = start_mailyard(tmp, dns.nameserver, args.workers)
            # Memory per idle connection, on servers warmed up by a short run (imports and
            # first-use caches are not per connection) but with no free heap left by a
            # long one to hide the connections' own.
            warm = {**load, "messages": min(200, args.messages)}
            smtp_source(port, **warm)
            smtp_source(ports["smtp"], **warm)
            base_idle = idle_connections(port, min(args.idle, 500), base.pid)
            idle = idle_connections(ports["smtp"], args.idle, proc.pid)

            def run_base() -> None:
                c0 = cpu_seconds(base.pid)
                t_base.append(smtp_source(port, **load))
                cpu_base.append(cpu_seconds(base.pid) - c0)

            def run_mailyard() -> None:
                assert proc is not None
                c0 = cpu_seconds(proc.pid)
                t_my.append(smtp_source(ports["smtp"], **load))
                cpu_my.append(cpu_seconds(proc.pid) - c0)
                t_index.append(index_catch_up(ports["imap"]))

            # Both servers run all along; who goes first alternates, so that a spell of
            # slow disk or other load on the machine falls on both alike.
            for rnd in range(args.rounds):
                for run in ((run_base, run_mailyard) if rnd % 2 == 0
                            else (run_mailyard, run_base)):
                    run()
            n_workers = len(tree(proc.pid)) - 1
            base_peak = rss_kb(base.pid, "VmHWM")
            peak = rss_kb(proc.pid, "VmHWM")
        finally:
            base.terminate()
            base.wait()
            if proc is not None:
                proc.terminate()
                proc.wait(60)
        got_base = len(os.listdir(outdir)) - warm["messages"]
        import sqlite3

        db = sqlite3.connect(tmp / "mailyard" / "mailyard.sqlite3")
        got_my = db.execute("select count(*) from messages").fetchone()[0] - warm["messages"]
        db.close()

    n = args.messages
    rate_base = n / statistics.median(t_base)
    rate_my = n / statistics.median(t_my)
    rate_all = n / statistics.median([a + b for a, b in zip(t_my, t_index, strict=True)])
    print(f"SMTP acceptance: {n} messages x {args.size} B over {args.sessions} sessions; "
          f"median of {args.rounds} interleaved runs per server; mailyard's [smtp] workers = "
          f"{args.workers} ({n_workers} receiver processes)")
    print(f"  aiosmtpd (fsync/msg) : {rate_base:8.0f} msg/s  ({got_base} stored; runs: "
          f"{', '.join(f'{n / t:.0f}' for t in t_base)})  peak RSS {base_peak / 1024:.1f} MiB, "
          f"{base_idle:.1f} KiB per idle connection")
    print(f"  mailyard (durable)   : {rate_my:8.0f} msg/s  ({got_my} stored; runs: "
          f"{', '.join(f'{n / t:.0f}' for t in t_my)})  peak RSS {peak / 1024:.1f} MiB, "
          f"{idle:.1f} KiB per idle connection ({args.idle} idle); RSS and CPU summed over "
          f"the server and its receiver processes")
    us = 1e6 / n
    print(f"  server CPU per message (user+system, all threads; median): aiosmtpd "
          f"{statistics.median(cpu_base) * us:.0f} us, mailyard {statistics.median(cpu_my) * us:.0f} us "
          f"(mailyard's includes its SPF/DKIM/DMARC checks, the index and group commit)")
    rounds = ", ".join(f"{b / m:.2f}" for b, m in zip(t_base, t_my, strict=True))
    print(f"  ratio mailyard/aiosmtpd: {rate_my / rate_base:.2f}x  (target >= 3x; per round: "
          f"{rounds})")
    # The conservative figure: see "The baseline's disk" in the docstring.
    best_base = n / min(t_base)
    print(f"  ratio against aiosmtpd's fastest run ({best_base:.0f} msg/s): "
          f"{rate_my / best_base:.2f}x")
    print(f"  mailyard counting its full-text index's catch-up (a body SEARCH answered "
          f"{statistics.median(t_index):.2f} s after the last 250): {rate_all:.0f} msg/s, "
          f"{rate_all / rate_base:.2f}x  (peak RSS includes that IMAP login: argon2 takes ~20 MiB)")


if __name__ == "__main__":
    main()
