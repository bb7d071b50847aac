"""Issue 3: terminal IMAP clients against ``mailyard serve``.

* offlineimap3 syncs INBOX and Archive both ways with flags, over STARTTLS with the
  server's certificate as its CA file and COMPRESS=DEFLATE switched on;
* neomutt, driven in tmux as a person would (send-keys, capture-pane), opens INBOX over
  IMAP with STARTTLS, reads a message, replies through the submission port, saves
  (moves) a message to Archive; the test then checks over IMAP and POP3 that the move
  happened and that the reply reached its recipient.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.harness import PASSWORD, Server, client_tls

ALICE = "alice@example.test"
BOB = "bob@example.test"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run the README test command (scripts/test.sh)"
    return path


def _submit(server: Server, subject: str, body: str, *, sender: str = BOB,
            to: str = ALICE) -> None:
    msg = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}\r\n")
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.login(sender, PASSWORD)
        assert s.sendmail(sender, [to], msg.encode()) == {}


def _imap(server: Server, user: str = ALICE) -> imaplib.IMAP4:
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    c.starttls(client_tls())
    c.login(user, PASSWORD)
    return c


def _subjects(c: imaplib.IMAP4, mailbox: str) -> dict[bytes, bytes]:
    """Subject -> FLAGS of every message in ``mailbox``."""
    typ, data = c.select(mailbox)
    assert typ == "OK", data
    if data == [b"0"]:
        return {}
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    out: dict[bytes, bytes] = {}
    for item in data:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            subject = item[1].split(b":", 1)[1].strip()
            out[subject] = flags.group(1) if flags else b""
    return out


# -- offlineimap3 -------------------------------------------------------------------------
def _offlineimap(rc: Path, server: Server, *, debug: bool = False) -> str:
    args = ["-d", "imap"] if debug else []
    r = subprocess.run([_tool("offlineimap"), "-c", str(rc), "-o", "-u", "basic", *args],
                       capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "ERROR" not in out, out[-20000:] + server.log()[-5000:]
    return out


def _maildir(root: Path) -> dict[str, Path]:
    """Subject -> file of every message in a Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for p in (root / sub).iterdir():
            m = re.search(rb"(?m)^Subject: (.*?)\r?$", p.read_bytes())
            assert m, p
            out[m.group(1).decode()] = p
    return out


def test_offlineimap_two_way_sync_with_flags_over_starttls_and_compress(
        server: Server, tmp_path: Path) -> None:
    _submit(server, "offline one", "first")
    _submit(server, "offline two", "second")
    host, port = server.addr("imap")
    local = tmp_path / "mail"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""[general]
accounts = test
metadata = {tmp_path / "meta"}

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = {host}
remoteport = {port}
remoteuser = {ALICE}
remotepass = {PASSWORD}
ssl = no
starttls = yes
sslcacertfile = {server.data / "tls" / "cert.pem"}
usecompression = yes
maxconnections = 1
folderfilter = lambda f: f in ["INBOX", "Archive"]
""")
    log = _offlineimap(rc, server, debug=True)
    # the protocol trace: STARTTLS with our certificate as CA, then COMPRESS=DEFLATE
    assert "Using STARTTLS connection" in log
    assert "Enabled COMPRESS=DEFLATE" in log and "OK DEFLATE active" in log
    files = _maildir(local / "INBOX")
    assert set(files) == {"offline one", "offline two"}, log
    assert (local / "Archive").is_dir()
    # local changes: flag and read one message, write a new one in Archive
    one = files["offline one"]
    base = one.name.split(":2,")[0]
    one.rename(one.parent.parent / "cur" / f"{base}:2,FS")
    (local / "Archive" / "cur" / "1700000000_0.1.local,FMD5=x:2,S").write_bytes(
        b"From: alice@example.test\r\nSubject: archived offline\r\n\r\nkept\r\n")
    _offlineimap(rc, server)
    c = _imap(server)
    inbox = _subjects(c, "INBOX")
    assert set(inbox) == {b"offline one", b"offline two"}
    assert set(inbox[b"offline one"].split()) >= {b"\\Flagged", b"\\Seen"}
    assert b"\\Flagged" not in inbox[b"offline two"]
    archive = _subjects(c, "Archive")
    assert b"\\Seen" in archive[b"archived offline"]
    # server side: a new message, a flag, a deletion; the next sync brings them down
    _submit(server, "offline three", "third")
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", '"offline two"')
    assert typ == "OK"
    c.store(data[0], "+FLAGS", "(\\Answered)")
    typ, data = c.search(None, "SUBJECT", '"offline one"')
    assert typ == "OK"
    c.store(data[0], "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()
    _offlineimap(rc, server)
    files = _maildir(local / "INBOX")
    assert set(files) == {"offline two", "offline three"}
    assert "R" in files["offline two"].name.split(":2,")[1]


# -- neomutt in tmux ------------------------------------------------------------------------
class Tmux:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env

    def run(self, *args: str) -> str:
        r = subprocess.run([_tool("tmux"), "-L", self.name, *args], capture_output=True,
                           text=True, timeout=20, env=self.env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def gone(self, timeout: float) -> bool:
        """True once the program (and so the tmux session) has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([_tool("tmux"), "-L", self.name, "has-session", "-t", self.name],
                               capture_output=True, timeout=20, env=self.env)
            if r.returncode != 0:
                return True
            time.sleep(0.2)
        return False

    def press(self, key: str, pattern: str, *, tries: int = 4, wait: float = 4.0) -> str:
        """Press ``key`` until ``pattern`` shows. Mutt flushes typeahead when it shows
        a message or finishes a mailbox check, so a key sent while it is busy can be
        dropped: pressing again is safe for keys that open a prompt."""
        for _ in range(tries - 1):
            self.keys(key)
            try:
                return self.wait_for(pattern, timeout=wait)
            except AssertionError:
                continue
        self.keys(key)
        return self.wait_for(pattern)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} did not appear; the screen:\n{screen}")


@contextmanager
def _tmux(name: str, command: list[str], env: dict[str, str]) -> Iterator[Tmux]:
    t = Tmux(name, env)
    t.run("new-session", "-d", "-s", name, "-x", "160", "-y", "45", *command)
    try:
        yield t
    finally:
        subprocess.run([_tool("tmux"), "-L", name, "kill-server"], capture_output=True,
                       timeout=20, env=env)


def _neomutt_session(t: Tmux) -> None:
    screen = t.wait_for(r"Lunch plans")
    assert "Old newsletter" in screen
    # read "Lunch plans": move the cursor onto it, open it in the pager
    t.press("/", r"Search for")
    t.keys("Lunch", "Enter")
    time.sleep(0.5)
    t.keys("Enter")
    t.wait_for(r"zebra crossing")
    # reply from the pager: the editor script writes the text, "y" sends
    t.press("r", r"y:Send")
    t.press("y", r"Mail sent|Sending message")
    t.press("i", r"Old newsletter")  # back to the index
    # save "Old newsletter" to Archive (moves it: deleted here, expunged on sync).
    # Tag it by pattern: the tag mark is visible on the screen, the cursor is not.
    t.press("T", r"Tag messages matching")
    t.keys("~s newsletter", "Enter")
    t.wait_for(r"(?m)^\s*2 [ NOr+]{0,4}\*.*Old newsletter")
    t.press("s", r"to mailbox|for list\)")  # auto_tag: "s" saves the tagged message
    t.keys("C-u", "=Archive", "Enter")
    t.wait_for(r"(?m)^\s*2 [ NOr*+]{0,4}D.*Old newsletter", timeout=20)  # D: deleted here
    t.keys("$")  # sync: expunge what was saved elsewhere
    t.keys("q")
    assert t.gone(timeout=20), t.screen()


def test_neomutt_read_reply_and_move_over_starttls(server: Server, tmp_path: Path) -> None:
    _submit(server, "Lunch plans", "Shall we meet at noon by the zebra crossing?")
    _submit(server, "Old newsletter", "Nothing to see here.")
    imap_host, imap_port = server.addr("imap")
    smtp_host, smtp_port = server.addr("submission")
    home = tmp_path / "home"
    home.mkdir()
    certs = home / "certificates"
    shutil.copy(server.data / "tls" / "cert.pem", certs)  # pre-seeded: accepted silently
    editor = home / "edit.sh"
    editor.write_text('#!/bin/sh\nprintf "Noon works for me.\\n\\n" | cat - "$1" > "$1.new"\n'
                      'mv "$1.new" "$1"\n')
    editor.chmod(0o755)
    user = ALICE.replace("@", "%40")
    muttrc = home / "muttrc"
    muttrc.write_text(f"""
set folder = "imap://{user}@{imap_host}:{imap_port}/"
set spoolfile = "+INBOX"
set imap_pass = "{PASSWORD}"
set ssl_starttls = yes
set ssl_force_tls = yes
set ssl_verify_host = no
set certificate_file = "{certs}"
set smtp_url = "smtp://{user}@{smtp_host}:{smtp_port}/"
set smtp_pass = "{PASSWORD}"
set from = "Alice <{ALICE}>"
set use_from = yes
set editor = "{editor}"
set fast_reply = yes
set include = yes
set record = "+Sent"
set copy = yes
set confirmappend = no
set auto_tag = yes
set delete = yes
set move = no
set mark_old = no
set sort = date
set pager_stop = yes
set imap_check_subscribed = no
set mail_check_stats = no
set header_cache = ""
set message_cachedir = ""
set wait_key = no
set beep = no
""")
    # tmux's socket path must stay short (sun_path is 108 octets): not under tmp_path
    sockdir = tempfile.mkdtemp(prefix="myt")
    env = dict(os.environ, HOME=str(home), TERM="xterm-256color", LANG="C.UTF-8",
               TMUX_TMPDIR=sockdir)
    for var in ("TMUX", "LINES", "COLUMNS"):  # curses would trust these over the pane size
        env.pop(var, None)
    try:
        with _tmux("neomutt", [_tool("neomutt"), "-n", "-F", str(muttrc)], env) as t:
            _neomutt_session(t)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    c = _imap(server)
    inbox = _subjects(c, "INBOX")
    assert set(inbox) == {b"Lunch plans"}, inbox
    assert set(inbox[b"Lunch plans"].split()) >= {b"\\Seen", b"\\Answered"}
    assert set(_subjects(c, "Archive")) == {b"Old newsletter"}
    assert b"Re: Lunch plans" in _subjects(c, "Sent")
    c.logout()
    # the reply reached Bob: read it over POP3
    deadline = time.monotonic() + 20
    while True:
        pop = poplib.POP3(*server.addr("pop3"), timeout=10)
        pop.stls(client_tls())
        pop.user(BOB)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        texts = [b"\r\n".join(pop.retr(i + 1)[1]) for i in range(count)]
        pop.quit()
        replies = [m for m in texts if b"Subject: Re: Lunch plans" in m]
        if replies or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert replies, texts
    assert b"Noon works for me." in replies[0]
    assert b"> Shall we meet at noon by the zebra crossing?" in replies[0]
    assert b"In-Reply-To: <Lunch.plans@example.test>" in replies[0]
