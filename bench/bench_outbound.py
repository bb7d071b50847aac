"""Outbound throughput: mailyard's queue runner delivering to Postfix's smtp-sink.

    python bench/bench_outbound.py [--messages 2000] [--size 5000] [--concurrency 20]
                                   [--store sqlite|memory] [--postfix]

Starts ``smtp-sink`` (Debian package postfix; installed with apt-get if
missing) on 127.0.0.1, queues N messages of SIZE bytes for a domain whose MX
points there, and times one drain of the queue: claim (durable next-attempt
write) -> MX lookup (in-memory resolver) -> SMTP with PIPELINING -> durable
per-recipient result -> delete. Prints messages/s.

``--postfix`` also runs a throwaway Postfix instance (its own config and queue
directories under a temp dir, loopback only, no listener, relayhost = the same
sink) over the same load: messages are injected with ``sendmail`` while the smtp
transport is held (``defer_transports``), then the timed part is the drain of the
full queue after ``postqueue -f``, like the mailyard side. Needs root (Postfix's
master runs as root); prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mailyard.config import Config, QueueConfig
from mailyard.queue.runner import QueueRunner
from mailyard.storage.models import QueueEntry, QueueRecipient
from mailyard.testing.dns import FakeResolver
from mailyard.testing.memqueue import MemQueueStore

SINK = "/usr/sbin/smtp-sink"


def ensure_postfix() -> None:
    if shutil.which("smtp-sink") or os.path.exists(SINK):
        return
    print("smtp-sink missing: apt-get install -y postfix", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "postfix"], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("smtp-sink") or SINK
    # -c: count, -4: IPv4; backlog 1024. smtp-sink offers PIPELINING and 8BITMIME.
    cmd = [exe, "-4", "-c"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
    proc = subprocess.Popen([*cmd, f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("smtp-sink did not start")


def message(size: int, i: int) -> bytes:
    head = (f"From: bench@src.test\r\nTo: u{i}@sink.test\r\nSubject: bench {i}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


async def run_mailyard(args: argparse.Namespace, port: int, data_dir: Path) -> float:
    if args.store == "sqlite":
        from mailyard.storage.sqlite.store import SQLiteStore

        store = SQLiteStore(data_dir / "mailyard")
        await store.open()
    else:
        store = MemQueueStore()  # type: ignore[assignment]
    resolver = FakeResolver({"sink.test": {"MX": [(10, "mx.sink.test")]},
                             "mx.sink.test": {"A": ["127.0.0.1"]}})
    cfg = Config(hostname="bench.mailyard.test",
                 queue=QueueConfig(outbound_port=port,
                                   concurrency_per_destination=args.concurrency))
    now = time.time()
    for i in range(args.messages):
        blob = await store.blobs.put(message(args.size, i))
        await store.queue_add(QueueEntry(
            id=uuid.uuid4().hex, sender="bench@src.test", blob=blob,
            recipients=(QueueRecipient(f"u{i}@sink.test"),), created=now, next_attempt=now))
    runner = QueueRunner(store, resolver, cfg, use_mta_sts=False,  # type: ignore[arg-type]
                         batch=args.messages)
    t0 = time.perf_counter()
    await runner.run_once()
    elapsed = time.perf_counter() - t0
    left = await store.queue_list()
    if left:
        print(f"warning: {len(left)} entries left: {left[0].recipients[0].last_status}")
    if args.store == "sqlite":
        await store.close()  # type: ignore[attr-defined]
    return args.messages / elapsed


def _postfix_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postfix")
    return pw.pw_uid, pw.pw_gid


def run_postfix(args: argparse.Namespace, port: int, tmp: Path) -> float | None:
    """A throwaway Postfix (own config_directory and queue_directory) relaying to the sink."""
    postfix = shutil.which("postfix") or "/usr/sbin/postfix"
    sendmail = shutil.which("sendmail") or "/usr/sbin/sendmail"
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if os.geteuid() != 0 or not os.path.exists(postfix):
        print("postfix comparison needs root and postfix installed; skipped")
        return None
    conf = tmp / "pf-conf"
    queue = tmp / "pf-queue"
    data = tmp / "pf-data"
    conf.mkdir()
    data.mkdir()
    queue.mkdir()
    os.chmod(tmp, 0o755)  # postfix daemons (user postfix) must traverse it
    shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
    main_cf = f"""
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-postfix.test
mydomain = bench-postfix.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
relayhost = [127.0.0.1]:{port}
smtp_tls_security_level = none
default_destination_concurrency_limit = {args.concurrency}
smtp_destination_concurrency_limit = {args.concurrency}
default_process_limit = {max(100, args.concurrency * 2)}
smtp_connection_cache_on_demand = yes
# hold everything while injecting; the timed part is the drain of a full queue
defer_transports = smtp
maillog_file = {tmp}/postfix.log
syslog_name = postfix-bench
alias_maps =
alias_database =
local_recipient_maps =
"""
    (conf / "main.cf").write_text(main_cf)
    # only the services we need, no port 25 listener
    master = (conf / "master.cf").read_text().splitlines()
    master = [ln for ln in master if not ln.startswith(("smtp      inet", "smtp inet"))]
    master.append("postlog   unix-dgram n  -       n       -       1       postlogd")
    (conf / "master.cf").write_text("\n".join(master) + "\n")
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    subprocess.run([postconf, "-c", str(conf), "-e", f"maillog_file_prefixes = {tmp},/var"],
                   check=False, env=env)
    os.chown(data, *_postfix_ids())
    # "check" creates the queue subdirectories with the right owners and modes.
    subprocess.run([postfix, "-c", str(conf), "check"], env=env, capture_output=True, text=True)
    r = subprocess.run([postfix, "-c", str(conf), "start"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print("postfix did not start:", r.stderr.strip()[:400])
        return None
    def count(*dirs: str) -> int:
        return sum(len(files) for d in dirs for _, _, files in os.walk(queue / d))

    try:
        # Inject through sendmail (postdrop -> pickup -> cleanup); not timed, as the
        # mailyard side is timed from a full queue too.
        procs = []
        for i in range(args.messages):
            p = subprocess.Popen([sendmail, "-C", str(conf), "-f", "bench@src.test",
                                  f"u{i}@sink.test"], stdin=subprocess.PIPE, env=env)
            assert p.stdin is not None
            p.stdin.write(message(args.size, i).replace(b"\r\n", b"\n"))
            p.stdin.close()
            procs.append(p)
            if len(procs) >= 32:
                for q in procs:
                    q.wait()
                procs = []
        for q in procs:
            q.wait()
        deadline = time.time() + 300
        while time.time() < deadline and (count("maildrop", "incoming", "active")
                                          or count("deferred") < args.messages):
            time.sleep(0.05)
        postqueue = shutil.which("postqueue") or "/usr/sbin/postqueue"
        t0 = time.perf_counter()
        subprocess.run([postconf, "-c", str(conf), "-e", "defer_transports ="], env=env)
        subprocess.run([postfix, "-c", str(conf), "reload"], env=env, capture_output=True)
        subprocess.run([postqueue, "-c", str(conf), "-f"], env=env, capture_output=True)
        deadline = time.time() + 600
        while time.time() < deadline and count("incoming", "active", "deferred"):
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        left = count("deferred")
        if left:
            print(f"warning: postfix left {left} deferred; see {tmp}/postfix.log")
        return args.messages / elapsed
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], env=env, capture_output=True)
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--postfix", action="store_true", help="also measure a Postfix relay")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    ensure_postfix()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-outbound-") as d:
            if args.uvloop:
                import uvloop

                uvloop.install()
            rate = asyncio.run(run_mailyard(args, port, Path(d)))
            print(f"mailyard  ({args.store} store, {args.concurrency} connections): "
                  f"{rate:8.0f} msg/s  ({args.messages} x {args.size} B)")
            if args.postfix:
                pf = run_postfix(args, port, Path(d))
                if pf:
                    print(f"postfix   ({args.concurrency} connections):          "
                          f"{pf:8.0f} msg/s")
                    print(f"ratio mailyard/postfix: {rate / pf:.2f}")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
