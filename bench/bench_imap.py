"""IMAP under load: mailyard against Dovecot, in one run.

    python3 bench/bench_imap.py [--clients 20] [--seconds 30] [--messages 300] [--shared-user]

Both servers hold the same M messages (1-40 KB, some multipart, half of them \\Seen) in the
INBOX of each of N users. N clients (one asyncio process, uvloop when installed), each
logged in as its own user (``--shared-user``: all as the same user, who then sees the
others' APPENDs and flag changes), repeat for T seconds:

    SELECT INBOX
    FETCH 1:* (FLAGS ENVELOPE)                     headers of the whole mailbox
    FETCH a,b,c,d,e BODY.PEEK[]                     5 random whole messages
    STORE n +FLAGS (\\Seen)                         one random message
    SEARCH SUBJECT quarterly                        (~5 % of subjects)
    SEARCH UNSEEN
    APPEND INBOX {5 KB}                              (LITERAL+ when offered)

Every command counts as one op; ops/s is the total over all clients. The mailbox grows by
one message per round (the APPEND), on both servers alike. Before the timed run every
client does one round (Dovecot builds its index on first SELECT; mailyard its caches).
Dovecot (Debian's dovecot-imapd) runs with a Maildir per user on loopback, its processes
as the dovecot/dovenull users, ``disable_plaintext_auth = no``; mailyard with
``[auth] allow_plaintext_loopback = true``; both get plaintext LOGIN over loopback.
A command a server answers with BAD/NO is reported once and left out of later rounds.

The Dovecot and mailyard set-up helpers and the small IMAP client here are shared by
bench_imap_big.py and bench_idle.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

PASSWORD = "bench-password"
DOMAIN = "example.test"

# -- messages ----------------------------------------------------------------------------

WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "aliquip", "ex", "ea", "commodo", "consequat"]
SUBJECT_WORDS = ["meeting", "notes", "invoice", "travel", "budget", "release", "draft", "review", "update", "plan", "lunch", "report", "agenda", "question", "feedback", "schedule"]
SUBJECT_TERM = "quarterly"  # in ~5 % of subjects
BODY_TERM = "zanzibar"      # in ~1 % of bodies


@functools.cache
def _line_pool() -> list[str]:
    rnd = random.Random(1)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(6, 14)))
            for _ in range(4096)]


def make_message(i: int, *, seed: int = 42, size: int | None = None) -> tuple[bytes, float, bool]:
    """Message number ``i`` (deterministic): (CRLF bytes, date as a timestamp, seen)."""
    rnd = random.Random(seed * 1_000_003 + i)
    if size is None:
        size = int(min(40_000, max(1_000, rnd.lognormvariate(8.3, 0.8))))
    date = 1_700_000_000 + i * 97 + rnd.randrange(60)
    subj = " ".join(rnd.choice(SUBJECT_WORDS) for _ in range(rnd.randrange(2, 6)))
    if rnd.random() < 0.05:
        subj = f"{SUBJECT_TERM} {subj}"
    if rnd.random() < 0.3:
        subj = "Re: " + subj
    sender = f"Sender {i % 97} <sender{i % 97}@remote.example>"
    head = (f"From: {sender}\r\nTo: Bob <bob@{DOMAIN}>\r\n"
            + (f"Cc: carol@{DOMAIN}, dave@{DOMAIN}\r\n" if rnd.random() < 0.3 else "")
            + f"Subject: {subj} #{i}\r\n"
            f"Date: {email.utils.formatdate(date)}\r\n"
            f"Message-ID: <{i}.{seed}@bench.remote.example>\r\nMIME-Version: 1.0\r\n")
    lines: list[str] = []
    n = len(head)
    pool = _line_pool()
    while n < size:
        line = pool[rnd.randrange(len(pool))]
        lines.append(line)
        n += len(line) + 2
    if rnd.random() < 0.01:
        lines.insert(rnd.randrange(len(lines) + 1), f"see you in {BODY_TERM} next week")
    text = "\r\n".join(lines) + "\r\n"
    if rnd.random() < 0.1:
        b = f"b{i}x{seed}"
        html = "<html><body><p>" + "</p>\r\n<p>".join(lines[:20]) + "</p></body></html>\r\n"
        body = (f"Content-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n"
                f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
                f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}--{b}--\r\n")
    else:
        body = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    return (head + body).encode(), float(date), rnd.random() < 0.5


def append_message(n: int, size: int = 5120) -> bytes:
    msg, _, _ = make_message(10_000_000 + n, seed=7, size=size)
    return msg


# -- a small asyncio IMAP client -----------------------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")


class ImapError(Exception):
    pass


class ImapClient:
    """Raw IMAP over one connection: tagged commands, literals in responses, IDLE."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.n = 0
        self.caps: set[str] = set()

    @classmethod
    async def connect(cls, port: int, *, ssl_ctx: ssl.SSLContext | None = None,
                      host: str = "127.0.0.1") -> ImapClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx,
                                                       limit=1 << 20)
        self = cls(reader, writer)
        greeting = await self.read_line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting!r}")
        m = re.search(rb"\[CAPABILITY ([^\]]*)\]", greeting)
        if m:
            self.caps = {x.upper() for x in m.group(1).decode().split()}
        return self

    async def _fill(self) -> None:
        data = await self.reader.read(1 << 18)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    async def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            await self._fill()

    async def read_response(self, tag: bytes, *, keep: bool = True) -> tuple[bytes, list[bytes]]:
        """Read up to the tagged completion; returns (tagged line, untagged responses)."""
        buf = self.buf
        untagged: list[bytes] = []
        start = seg = 0
        prefix = tag + b" "
        while True:
            i = buf.find(b"\r\n", seg)
            if i < 0:
                await self._fill()
                continue
            if i > 0 and buf[i - 1] == 0x7D:  # "}": a literal follows
                m = _LITERAL.search(buf, max(seg, i - 24), i)
                if m:
                    end = i + 2 + int(m.group(1))
                    while len(buf) < end:
                        await self._fill()
                    seg = end
                    continue
            if buf.startswith(prefix, start):
                line = bytes(buf[start:i])
                del buf[:i + 2]
                return line, untagged
            if keep:
                untagged.append(bytes(buf[start:i]))
            start = seg = i + 2

    async def command(self, cmd: bytes | str, *, literal: bytes | None = None,
                      keep: bool = True, check: bool = True) -> tuple[bytes, list[bytes]]:
        """Send ``tag cmd`` (with ``literal`` appended as {n} / {n+}); wait for completion."""
        if isinstance(cmd, str):
            cmd = cmd.encode()
        self.n += 1
        tag = b"a%d" % self.n
        if literal is None:
            self.writer.write(tag + b" " + cmd + b"\r\n")
        elif "LITERAL+" in self.caps:
            self.writer.write(b"%s %s {%d+}\r\n" % (tag, cmd, len(literal)) + literal + b"\r\n")
        else:
            self.writer.write(b"%s %s {%d}\r\n" % (tag, cmd, len(literal)))
            line = await self.read_line()
            if not line.startswith(b"+"):
                raise ImapError(f"{cmd[:40]!r}: {line!r}")
            self.writer.write(literal + b"\r\n")
        status, untagged = await self.read_response(tag, keep=keep)
        if check and not status.startswith(tag + b" OK"):
            raise ImapError(f"{cmd[:60]!r}: {status[:200]!r}")
        return status, untagged

    async def login(self, user: str, password: str = PASSWORD) -> None:
        status, _ = await self.command(f'LOGIN "{user}" "{password}"')
        m = re.search(rb"\[CAPABILITY ([^\]]*)\]", status)
        if m:
            self.caps = {x.upper() for x in m.group(1).decode().split()}

    async def idle(self) -> None:
        """Send IDLE and wait for the continuation."""
        self.n += 1
        self.idle_tag = b"a%d" % self.n
        self.writer.write(self.idle_tag + b" IDLE\r\n")
        while True:
            line = await self.read_line()
            if line.startswith(b"+"):
                return
            if line.startswith(self.idle_tag):
                raise ImapError(f"IDLE: {line!r}")

    async def wait_exists(self, at_least: int) -> int:
        """During IDLE: wait for ``* n EXISTS`` with n >= at_least; returns n."""
        while True:
            line = await self.read_line()
            if line.endswith(b" EXISTS") and line.startswith(b"* "):
                n = int(line.split()[1])
                if n >= at_least:
                    return n

    async def done(self) -> None:
        self.writer.write(b"DONE\r\n")
        await self.read_response(self.idle_tag, keep=False)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"z LOGOUT\r\n")
            await asyncio.wait_for(self.writer.drain(), 2)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def exists_of(untagged: Iterable[bytes]) -> int:
    n = 0
    for line in untagged:
        if line.startswith(b"* ") and line.endswith(b" EXISTS"):
            n = int(line.split()[1])
    return n


def search_count(untagged: Iterable[bytes]) -> int:
    for line in untagged:
        if line.startswith(b"* SEARCH"):
            return len(line.split()) - 2
        if line.startswith(b"* ESEARCH"):
            m = re.search(rb"COUNT (\d+)", line)
            if m:
                return int(m.group(1))
            m = re.search(rb"ALL (\S+)", line)
            return 0 if not m else sum(
                (int(b) - int(a) + 1) if a else 1
                for a, _, b in (p.partition(b":") for p in m.group(1).split(b",")))
    return 0


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()  # type: ignore[no-untyped-call]
    return "uvloop"


# -- process helpers ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                sys.exit(f"{what} failed to start: {err}")
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"{what} did not start")


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proc_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int, int]:
    """(sum of PSS over the process tree in KiB, sum of RSS, number of processes)."""
    pids = tree_pids(root)
    return sum(pss_kb(p) for p in pids), sum(proc_kb(p) for p in pids), len(pids)


def tree_cpu(root: int) -> float:
    """CPU seconds (user+sys) used so far by the tree, including reaped children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            # utime + stime, plus cutime + cstime: children already reaped (Dovecot's
            # per-connection imap processes that exited) are counted by their parent
            total += sum(int(x) for x in parts[11:15])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


@contextlib.contextmanager
def bench_dir() -> Iterator[Path]:
    """A scratch directory under $BENCH_TMP (or /tmp); kept, and named, if $BENCH_KEEP is set."""
    if os.environ.get("BENCH_KEEP"):
        path = Path(tempfile.mkdtemp(prefix="bench-", dir=os.environ.get("BENCH_TMP")))
        print(f"  (keeping {path})", flush=True)
        yield path
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        yield Path(d)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- Dovecot -----------------------------------------------------------------------------

@dataclass
class Dovecot:
    proc: subprocess.Popen[bytes]
    imap: int
    imaps: int = 0
    conf: Path = field(default_factory=Path)


def dovecot_maildir(tmp: Path, user: str) -> Path:
    md = tmp / "dovecot-home" / user / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    return md


def write_maildir(md: Path, items: Iterable[tuple[bytes, float, bool]], *, start: int = 0) -> int:
    """Write messages as Maildir files in cur/ (LF line ends, mtime = date); returns count."""
    n = start
    for msg, date, seen in items:
        lf = msg.replace(b"\r\n", b"\n")
        # S= is the file's size, W= the size with CRLF line ends (what IMAP reports)
        path = md / "cur" / f"{int(date)}.M{n}P1.bench,S={len(lf)},W={len(msg)}:2,{'S' if seen else ''}"
        with open(path, "wb") as f:
            f.write(lf)
        os.utime(path, (date, date))
        n += 1
    return n - start


def start_dovecot(tmp: Path, users: Iterable[str], *, tls: tuple[Path, Path] | None = None,
                  max_connections: int = 1000,
                  client_limit: int = 1) -> Dovecot:
    """Dovecot on loopback with one Maildir per user under ``tmp/dovecot-home``.

    ``client_limit``: connections served by one imap process (1 = Dovecot's default, a
    process per connection); imap-login runs in high-performance mode (service_count = 0).
    """
    dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(dovecot) or not os.path.exists("/usr/lib/dovecot/imap"):
        sys.exit("dovecot not found: apt-get install dovecot-imapd")
    home = tmp / "dovecot-home"
    home.mkdir(exist_ok=True)
    users = list(users)
    for u in users:
        dovecot_maildir(tmp, u)
    # Dovecot refuses to run its mail processes as root: the mail belongs to its own user.
    os.chmod(tmp, 0o755)
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(home)], check=True)
    run_dir = tmp / "dovecot-run"
    run_dir.mkdir(exist_ok=True)
    (tmp / "dovecot-passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n"
                                                for u in users))
    imap_port = free_port()
    imaps_port = free_port() if tls else 0
    procs = max(1, -(-max_connections // client_limit)) + 10
    ssl_conf = (f"ssl = yes\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}\n" if tls else "ssl = no\n")
    conf = tmp / "dovecot.conf"
    conf.write_text(textwrap.dedent(f"""\
        base_dir = {run_dir}
        state_dir = {run_dir}
        log_path = {tmp}/dovecot.log
        protocols = imap
        listen = 127.0.0.1
        disable_plaintext_auth = no
        auth_mechanisms = plain login
        mail_location = maildir:~/Maildir
        default_internal_user = dovecot
        default_login_user = dovenull
        first_valid_uid = 100
        mail_max_userip_connections = {max_connections + 10}
        default_client_limit = {max_connections + 100}
        default_process_limit = {procs + 100}
        default_vsz_limit = 0
        passdb {{
          driver = passwd-file
          args = {tmp}/dovecot-passwd
        }}
        userdb {{
          driver = static
          args = uid=dovecot gid=dovecot home={home}/%u allow_all_users=yes
        }}
        service imap-login {{
          inet_listener imap {{
            address = 127.0.0.1
            port = {imap_port}
          }}
          inet_listener imaps {{
            address = 127.0.0.1
            port = {imaps_port}
          }}
          chroot =
          service_count = 0
          process_min_avail = 2
          client_limit = {max_connections + 100}
        }}
        service imap {{
          client_limit = {client_limit}
          service_count = {1 if client_limit == 1 else 0}
          process_limit = {procs}
        }}
        service anvil {{
          chroot =
          client_limit = {3 * procs + 300}
        }}
        service auth {{
          client_limit = {3 * procs + 300}
        }}
        """) + ssl_conf)
    proc = subprocess.Popen([dovecot, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_port(imap_port, proc, "dovecot")
    return Dovecot(proc, imap_port, imaps_port, conf)


def chown_dovecot(tmp: Path) -> None:
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(tmp / "dovecot-home")], check=True)


# -- mailyard ----------------------------------------------------------------------------

@dataclass
class Mailyard:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    data: Path


def init_mailyard(tmp: Path, *, nameserver: str | None = None, limits: str = "") -> Path:
    """``mailyard init --dev`` with every listener on port 0 and plaintext LOGIN on loopback."""
    data = tmp / "mailyard"
    cli = [sys.executable, "-m", "mailyard.cli.main", "--data", str(data)]
    extra = ["--nameserver", nameserver] if nameserver else []
    subprocess.run([*cli, "init", "--domain", DOMAIN, "--dev", *extra], check=True,
                   stdout=subprocess.DEVNULL)
    cfg = data / "mailyard.toml"
    text = re.sub(r'(?m)^(\w+) = "127\.0\.0\.1:\d+"$', r'\1 = "127.0.0.1:0"', cfg.read_text())
    if limits:
        text = text.replace("[limits]\n", "[limits]\n" + limits, 1)
    text += "\n[auth]\nallow_plaintext_loopback = true\n"
    cfg.write_text(text)
    return data


async def add_users(store: object, users: Iterable[str]) -> list[int]:
    from mailyard.policy.auth import hash_password

    pw = hash_password(PASSWORD)
    ids = []
    for u in users:
        acct = await store.add_account(u, pw)  # type: ignore[attr-defined]
        ids.append(acct.id)
    return ids


async def deliver_batch(store: object, account_ids: list[int],
                        items: Iterable[tuple[bytes, float, bool]]) -> None:
    """Deliver each message to every account at once (one blob), concurrently, so the
    store's group commit shares the fsyncs; the full-text index is fed as at SMTP time."""
    from mailyard.message.text import searchable_fields
    from mailyard.storage.models import DeliveryTarget

    async def one(msg: bytes, date: float, seen: bool) -> None:
        blob = await store.blobs.put(msg)  # type: ignore[attr-defined]
        flags = frozenset({"\\Seen"}) if seen else frozenset()
        await store.deliver(blob, [DeliveryTarget(a, flags=flags)  # type: ignore[attr-defined]
                                   for a in account_ids],
                            internaldate=date, text=searchable_fields(msg))

    await asyncio.gather(*(one(*it) for it in items))


def load_mailyard(data: Path, users: list[str], messages: Callable[[int], tuple[bytes, float, bool]],
                  count: int, *, batch: int = 200, progress: bool = False) -> None:
    async def load() -> None:
        from mailyard.storage import open_store

        store = open_store(data)
        await store.open()
        try:
            ids = await add_users(store, users)
            t0 = time.monotonic()
            for lo in range(0, count, batch):
                hi = min(count, lo + batch)
                await deliver_batch(store, ids, (messages(i) for i in range(lo, hi)))
                if progress and (hi % (batch * 25) == 0 or hi == count):
                    el = time.monotonic() - t0
                    print(f"    mailyard: {hi}/{count} messages loaded ({hi / el:.0f}/s)",
                          flush=True)
        finally:
            await store.close()

    asyncio.run(load())


def start_mailyard(data: Path, *, preexec: Callable[[], None] | None = None) -> Mailyard:
    cli = [sys.executable, "-m", "mailyard.cli.main", "--data", str(data), "serve"]
    log = open(data / "bench-serve.log", "wb")  # noqa: SIM115 -- lives as long as the server
    proc = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    runtime = data / "run" / "listeners.json"
    for _ in range(600):
        if runtime.exists():
            with contextlib.suppress(ValueError):
                info = json.loads(runtime.read_text())
                ports = {k: v["port"] for k, v in info.items() if isinstance(v, dict)}
                if "imap" not in ports:
                    proc.kill()
                    sys.exit("mailyard serve has no imap listener (no mailyard.server.imap yet?)")
                return Mailyard(proc, ports, data)
        if proc.poll() is not None:
            sys.exit(f"mailyard serve exited: see {data / 'bench-serve.log'}")
        time.sleep(0.05)
    proc.kill()
    sys.exit("mailyard did not start")


# -- the load benchmark --------------------------------------------------------------------

OPS = ("SELECT", "FETCH headers", "FETCH bodies", "STORE", "SEARCH SUBJECT",
       "SEARCH UNSEEN", "APPEND")


@dataclass
class Result:
    ops: dict[str, int] = field(default_factory=dict)
    lat: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class Countdown:
    """Set once ``count`` clients have checked in (after their warm-up, or on failure)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.event = asyncio.Event()
        if count <= 0:
            self.event.set()

    def arrive(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def client_loop(port: int, user: str, res: Result, seed: int, start: asyncio.Event,
                      warm: Countdown, deadline: list[float]) -> None:
    rnd = random.Random(seed)
    try:
        cl = await ImapClient.connect(port)
        await cl.login(user)
    except BaseException:
        warm.arrive()
        raise
    appended = 0

    def body_cmd(n: int) -> str:
        seqs = sorted({rnd.randrange(1, n + 1) for _ in range(5)})
        return "FETCH " + ",".join(map(str, seqs)) + " BODY.PEEK[]"

    plan: list[tuple[str, Callable[[int], str], bytes | None]] = [
        ("SELECT", lambda n: "SELECT INBOX", None),
        ("FETCH headers", lambda n: "FETCH 1:* (FLAGS ENVELOPE)", None),
        ("FETCH bodies", body_cmd, None),
        ("STORE", lambda n: f"STORE {rnd.randrange(1, n + 1)} +FLAGS (\\Seen)", None),
        ("SEARCH SUBJECT", lambda n: f"SEARCH SUBJECT {SUBJECT_TERM}", None),
        ("SEARCH UNSEEN", lambda n: "SEARCH UNSEEN", None),
        ("APPEND", lambda n: "APPEND INBOX", b""),
    ]

    async def round_(timed: bool) -> None:
        nonlocal appended
        exists = 1
        for name, make, lit in plan:
            if name in res.failed:
                continue
            if timed and time.monotonic() >= deadline[0]:
                return
            literal = None
            if lit is not None:
                appended += 1
                literal = append_message(seed * 100_000 + appended)
            t0 = time.perf_counter()
            status, untagged = await cl.command(make(max(exists, 1)), literal=literal,
                                                check=False)
            dt = time.perf_counter() - t0
            if b" OK" not in status[:12]:
                res.failed.setdefault(name, status.decode(errors="replace")[:120])
                continue
            if name == "SELECT":
                exists = exists_of(untagged)
                if exists == 0:
                    res.failed.setdefault("SELECT", "INBOX is empty")
                    return
            if timed:
                res.ops[name] = res.ops.get(name, 0) + 1
                res.lat.setdefault(name, []).append(dt)

    arrived = False
    try:
        await round_(False)  # warm-up, not timed
        warm.arrive()
        arrived = True
        await start.wait()
        while time.monotonic() < deadline[0]:
            await round_(True)
    finally:
        if not arrived:
            warm.arrive()
        await cl.close()


async def run_load(port: int, users: list[str], seconds: float) -> Result:
    res = Result()
    start = asyncio.Event()
    warm = Countdown(len(users))
    deadline = [float("inf")]
    tasks = [asyncio.create_task(client_loop(port, u, res, i + 1, start, warm, deadline))
             for i, u in enumerate(users)]
    # every client logs in and does one untimed round before the clock starts
    await warm.event.wait()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    res.seconds = time.monotonic() - t0
    res.cpu = time.process_time() - cpu0
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        res.failed.setdefault("client", f"{len(errors)} clients failed: {errors[0]!r}"[:200])
    return res


def report(name: str, res: Result, server_cpu: float) -> None:
    rate = res.total / res.seconds if res.seconds else 0.0
    print(f"  {name:9s}: {rate:8.0f} ops/s  ({res.total} ops in {res.seconds:.1f} s; "
          f"server CPU {server_cpu:.1f} s, client CPU {res.cpu:.1f} s)")
    for op in OPS:
        lat = res.lat.get(op)
        if lat:
            lat.sort()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"      {op:15s} {len(lat):7d} ops  mean {statistics.fmean(lat) * 1e3:7.2f} ms"
                  f"  p99 {p99 * 1e3:7.2f} ms")
        elif op in res.failed:
            print(f"      {op:15s} NOT SUPPORTED/FAILED: {res.failed[op]}")
    for k, v in res.failed.items():
        if k not in OPS:
            print(f"      {k}: {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--messages", type=int, default=300, help="preloaded per user")
    ap.add_argument("--shared-user", action="store_true",
                    help="all clients log in as one user (default: one user each)")
    ap.add_argument("--only", choices=("dovecot", "mailyard"))
    args = ap.parse_args()
    loop_name = use_uvloop()
    nusers = 1 if args.shared_user else args.clients
    names = [f"user{i}@{DOMAIN}" for i in range(1, nusers + 1)]
    logins = [names[i % nusers] for i in range(args.clients)]
    results: dict[str, tuple[Result, float]] = {}
    with bench_dir() as tmp:
        if args.only != "mailyard":
            for u in names:
                md = dovecot_maildir(tmp, u)
                write_maildir(md, (make_message(i) for i in range(args.messages)))
            dv = start_dovecot(tmp, names, max_connections=args.clients + 10)
            try:
                cpu0 = tree_cpu(dv.proc.pid)
                res = asyncio.run(run_load(dv.imap, logins, args.seconds))
                results["dovecot"] = (res, tree_cpu(dv.proc.pid) - cpu0)
            finally:
                stop(dv.proc)
        if args.only != "dovecot":
            data = init_mailyard(tmp, limits=f"max_connections_per_ip = {args.clients + 50}\n")
            load_mailyard(data, names, make_message, args.messages)
            my = start_mailyard(data)
            try:
                cpu0 = tree_cpu(my.proc.pid)
                res = asyncio.run(run_load(my.ports["imap"], logins, args.seconds))
                results["mailyard"] = (res, tree_cpu(my.proc.pid) - cpu0)
            finally:
                stop(my.proc)
    who = "one shared user" if args.shared_user else "one user each"
    print(f"IMAP load: {args.clients} clients ({who}), {args.messages} messages preloaded "
          f"per INBOX, {args.seconds:.0f} s, client on {loop_name}, {os.cpu_count()} CPUs")
    for name, (res, cpu) in results.items():
        report(name, res, cpu)
    if len(results) == 2:
        d, m = results["dovecot"][0], results["mailyard"][0]
        rd, rm = d.total / d.seconds, m.total / m.seconds
        print(f"  ratio mailyard/dovecot: {rm / rd:.2f}x  (target >= 0.5x)")


if __name__ == "__main__":
    main()
