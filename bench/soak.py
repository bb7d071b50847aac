"""Soak test: mixed load on a real ``mailyard serve`` for a set time, then a full audit.

    python3 bench/soak.py --minutes 10 [--smtp 4 --submission 2 --pop3 2 --imap 2]

Load (each a thread, all on loopback):
- SMTP in (MX): messages from a remote sender to local users, each with a unique marker
  naming its recipient;
- submission out: an authenticated user sends to a remote domain whose MX is a local
  SMTP sink (``mailyard.testing.smtpsink.SMTPSink``), through the durable queue;
- POP3 readers: log in as each user in turn, RETR every message, DELE it, QUIT;
- IMAP readers (when ``mailyard.server.imap`` exists): LOGIN, EXAMINE INBOX, NOOP, a
  short IDLE, LOGOUT.

Every 5 s it samples the server's RSS. At the end it stops the load, waits for the queue
to drain, reads every mailbox empty and checks that every accepted message was delivered
exactly where it should be: each accepted local message read exactly once, from its
recipient's mailbox; each accepted submission received by the sink exactly once; nothing
delivered that was never accepted. Prints a report; exits 1 when the audit fails.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import importlib.util
import poplib
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hardening.helpers import (
    PASSWORD,
    ZONE,
    ThreadedSink,
    hardened_server,
    simple_message,
)

from mailyard.testing.dnsserver import DNSServer

USERS = ("alice", "bob", "carol")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted_local: list[tuple[str, str]] = []  # (marker, user)
        self.accepted_remote: list[str] = []
        self.read: Counter[tuple[str, str]] = Counter()  # (marker, user the box belongs to)
        self.imap_sessions = 0
        self.errors: Counter[str] = Counter()
        self.rss: list[tuple[float, int]] = []

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1


def _marker_of(msg: bytes) -> str | None:
    for line in msg.split(b"\r\n"):
        if line.startswith(b"Subject: soak-"):
            return line[len(b"Subject: "):].decode()
        if not line:
            break
    return None


def smtp_in(addr: tuple[str, int], name: str, stats: Stats, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP(*addr, timeout=30) as s:
                s.ehlo("client.remote.example")
                for _ in range(20):
                    if stop.is_set():
                        break
                    user = USERS[n % len(USERS)]
                    marker = f"soak-in-{name}-{n}-{user}"
                    n += 1
                    s.sendmail("sender@remote.example", [f"{user}@example.test"],
                               simple_message(marker, body="soak body\r\n" * (1 + n % 50)))
                    with stats.lock:
                        stats.accepted_local.append((marker, user))
        except (OSError, smtplib.SMTPException):
            stats.error("smtp-in")
            time.sleep(0.2)


def submission(addr: tuple[str, int], name: str, stats: Stats, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP(*addr, timeout=30) as s:
                s.ehlo("client.example.test")
                s.login("alice@example.test", PASSWORD)
                for _ in range(10):
                    if stop.is_set():
                        break
                    marker = f"soak-out-{name}-{n}"
                    n += 1
                    s.sendmail("alice@example.test", ["dest@remote.example"],
                               simple_message(marker, sender="alice@example.test"))
                    with stats.lock:
                        stats.accepted_remote.append(marker)
            time.sleep(0.05)
        except (OSError, smtplib.SMTPException):
            stats.error("submission")
            time.sleep(0.2)


def pop3_drain(addr: tuple[str, int], user: str, stats: Stats) -> int:
    p = poplib.POP3(*addr, timeout=30)
    try:
        p.user(f"{user}@example.test")
        p.pass_(PASSWORD)
        count, _ = p.stat()
        for i in range(1, count + 1):
            _, lines, _ = p.retr(i)
            marker = _marker_of(b"\r\n".join(lines) + b"\r\n\r\n")
            if marker is not None:
                with stats.lock:
                    stats.read[(marker, user)] += 1
            p.dele(i)
        p.quit()
        return count
    except Exception:
        with contextlib.suppress(Exception):
            p.close()
        raise


def pop3_reader(addr: tuple[str, int], stats: Stats, stop: threading.Event,
                lock: threading.Lock, turn: list[int]) -> None:
    while not stop.is_set():
        with lock:
            user = USERS[turn[0] % len(USERS)]
            turn[0] += 1
        try:
            pop3_drain(addr, user, stats)
        except poplib.error_proto as e:
            if b"IN-USE" not in (e.args[0] if e.args else b""):
                stats.error("pop3")
        except OSError:
            stats.error("pop3")
        time.sleep(0.2)


def imap_reader(addr: tuple[str, int], stats: Stats, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            m = imaplib.IMAP4(*addr, timeout=30)
            m.login("bob@example.test", PASSWORD)
            m.select("INBOX", readonly=True)
            m.noop()
            tag = m._new_tag().decode()
            m.send(f"{tag} IDLE\r\n".encode())
            m.readline()
            time.sleep(0.5)
            m.send(b"DONE\r\n")
            while not m.readline().startswith(tag.encode()):
                pass
            m.logout()
            with stats.lock:
                stats.imap_sessions += 1
        except (OSError, imaplib.IMAP4.error):
            stats.error("imap")
            time.sleep(0.5)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--smtp", type=int, default=4)
    ap.add_argument("--submission", type=int, default=2)
    ap.add_argument("--pop3", type=int, default=2)
    ap.add_argument("--imap", type=int, default=2)
    args = ap.parse_args()
    have_imap = importlib.util.find_spec("mailyard.server.imap") is not None and args.imap > 0

    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="mailyard-soak-") as tmp, DNSServer(ZONE) as dns, \
            ThreadedSink() as sink:
        srv = hardened_server(Path(tmp), dns.nameserver, users=USERS, imap=have_imap,
                              queue={"outbound_port": sink.port, "retry_initial": 1.0},
                              limits={"max_connections_per_ip": 1000})
        srv.start()
        assert srv.proc is not None
        pid = srv.proc.pid
        stop = threading.Event()
        turn = [0]
        lock = threading.Lock()
        threads = [threading.Thread(target=smtp_in, args=(srv.addr("smtp"), f"s{i}", stats, stop))
                   for i in range(args.smtp)]
        threads += [threading.Thread(target=submission,
                                     args=(srv.addr("submission"), f"u{i}", stats, stop))
                    for i in range(args.submission)]
        threads += [threading.Thread(target=pop3_reader,
                                     args=(srv.addr("pop3"), stats, stop, lock, turn))
                    for _ in range(args.pop3)]
        if have_imap:
            threads += [threading.Thread(target=imap_reader, args=(srv.addr("imap"), stats, stop))
                        for _ in range(args.imap)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        end = t0 + args.minutes * 60
        try:
            while time.monotonic() < end:
                stats.rss.append((time.monotonic() - t0, rss_of(pid)))
                print(f"[{time.monotonic() - t0:6.0f}s] in={len(stats.accepted_local)} "
                      f"out={len(stats.accepted_remote)} read={sum(stats.read.values())} "
                      f"sink={len(sink.messages)} imap={stats.imap_sessions} "
                      f"errors={dict(stats.errors)} rss={stats.rss[-1][1] / 2**20:.1f} MiB",
                      flush=True)
                time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        # Audit: let the queue drain, then read every mailbox empty.
        deadline = time.monotonic() + 120
        want_out = set(stats.accepted_remote)
        while time.monotonic() < deadline:
            got = {_marker_of(m.content) for m in sink.messages}
            if want_out <= got:
                break
            time.sleep(0.5)
        for user in USERS:
            while pop3_drain(srv.addr("pop3"), user, stats):
                pass
        rss_end = rss_of(pid)
        srv.stop()
        sink_counts = Counter(_marker_of(m.content) for m in sink.messages)

    problems: list[str] = []
    accepted = dict(stats.accepted_local)
    for marker, user in stats.accepted_local:
        if stats.read[(marker, user)] != 1:
            problems.append(f"{marker}: read {stats.read[(marker, user)]} times from {user}")
    for (marker, user), n in stats.read.items():
        if marker.startswith("soak-in-") and accepted.get(marker) != user:
            problems.append(f"{marker}: found in {user}'s mailbox ({n}x), not accepted for it")
    for marker in stats.accepted_remote:
        if sink_counts[marker] != 1:
            problems.append(f"{marker}: delivered {sink_counts[marker]} times to the sink")
    for marker in sink_counts:
        if marker not in want_out:
            problems.append(f"{marker}: delivered to the sink but never accepted")
    peak = max((r for _, r in stats.rss), default=0)
    print("\n== soak report")
    print(f"duration          {args.minutes:.1f} min")
    print(f"accepted (MX)     {len(stats.accepted_local)}")
    print(f"read (POP3)       {sum(stats.read.values())}")
    print(f"accepted (sub.)   {len(stats.accepted_remote)}")
    print(f"delivered (sink)  {sum(sink_counts.values())}")
    print(f"IMAP sessions     {stats.imap_sessions if have_imap else 'n/a (no IMAP server)'}")
    print(f"client errors     {dict(stats.errors) or 0}")
    print(f"RSS               start {stats.rss[0][1] / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
          f"end {rss_end / 2**20:.1f} MiB")
    print("RSS over time     " + " ".join(f"{t:.0f}s:{r / 2**20:.0f}M" for t, r in stats.rss[::6]))
    if problems:
        print(f"AUDIT FAILED: {len(problems)} problems")
        for p in problems[:50]:
            print("  " + p)
        return 1
    print("AUDIT OK: every accepted message delivered exactly once, exactly where it should be")
    return 0


if __name__ == "__main__":
    sys.exit(main())
