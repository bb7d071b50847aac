"""Issue 3: real IMAP clients — imaplib, curl and mbsync (isync) — against ``mailyard serve``."""

from __future__ import annotations

import imaplib
import shutil
import smtplib
import subprocess
from pathlib import Path

from tests.integration.harness import PASSWORD, Server, client_tls

ALICE = "alice@example.test"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run the README test command (scripts/test.sh)"
    return path


def _submit(server: Server, subject: str, body: str = "hello from the test") -> None:
    msg = (f"From: Bob <bob@example.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}\r\n")
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("bob@example.test", PASSWORD)
        assert s.sendmail("bob@example.test", [ALICE], msg.encode()) == {}


def _imap(server: Server) -> imaplib.IMAP4:
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    c.starttls(client_tls())
    c.login(ALICE, PASSWORD)
    return c


def test_imaplib_starttls_and_imaps(server: Server) -> None:
    _submit(server, "first message", "the zebra crossing")
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    assert "STARTTLS" in c.capabilities
    c.starttls(client_tls())
    c.login(ALICE, PASSWORD)
    assert c.select("INBOX") == ("OK", [b"1"])
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[TEXT])")
    assert typ == "OK"
    assert data[0][1] == b"Subject: first message\r\n\r\n"
    assert b"the zebra crossing" in data[1][1]
    assert c.search(None, "BODY", "zebra") == ("OK", [b"1"])
    c.logout()
    s = imaplib.IMAP4_SSL(*server.addr("imaps"), ssl_context=client_tls(), timeout=10)
    s.login(ALICE, PASSWORD)
    s.select("INBOX")
    assert s.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Seen))"]  # BODY[TEXT] set \Seen
    typ, data = s.list()
    assert typ == "OK" and b'(\\HasNoChildren \\Sent) "/" Sent' in data
    s.logout()


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_tool("curl"), "-sS", "--max-time", "30", *args],
                          capture_output=True, timeout=60)


def test_curl_imap_and_imaps(server: Server) -> None:
    _submit(server, "for curl", "fetched by curl")
    host, port = server.addr("imap")
    user = f"{ALICE}:{PASSWORD}"
    r = _curl("--url", f"imap://{host}:{port}/", "--ssl-reqd", "-k", "--user", user)
    assert r.returncode == 0, r.stderr
    assert b'"/" INBOX' in r.stdout and b'"/" Trash' in r.stdout
    r = _curl("--url", f"imap://{host}:{port}/INBOX;UID=1", "--ssl-reqd", "-k", "--user", user)
    assert r.returncode == 0, r.stderr
    assert b"Subject: for curl" in r.stdout and b"fetched by curl" in r.stdout
    host, port = server.addr("imaps")
    r = _curl("--url", f"imaps://{host}:{port}/INBOX;UID=1;SECTION=TEXT", "-k", "--user", user)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"fetched by curl"
    r = _curl("--url", f"imaps://{host}:{port}/INBOX?SUBJECT%20curl", "-k", "--user", user)
    assert r.returncode == 0 and b"SEARCH 1" in r.stdout, r.stdout + r.stderr


def _mbsync(rc: Path) -> None:
    r = subprocess.run([_tool("mbsync"), "-c", str(rc), "-a"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _maildir_files(root: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (root / sub).iterdir())


def test_mbsync_two_way_sync_with_flags(server: Server, tmp_path: Path) -> None:
    _submit(server, "sync one")
    _submit(server, "sync two")
    local = tmp_path / "maildir"
    local.mkdir()
    host, port = server.addr("imap")
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount mailyard\nHost {host}\nPort {port}\nUser {ALICE}\nPass {PASSWORD}\n"
        f"SSLType STARTTLS\nCertificateFile {server.data / 'tls' / 'cert.pem'}\n"
        f"SystemCertificates no\n\n"
        f"IMAPStore remote\nAccount mailyard\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        f"Channel mail\nFar :remote:\nNear :local:\nPatterns INBOX Archive\nCreate Both\n"
        f"Sync All\nExpunge Both\nSyncState *\n")
    _mbsync(rc)
    files = _maildir_files(local / "INBOX")
    assert len(files) == 2
    assert (local / "Archive").is_dir()
    # local changes: flag one message, add a new one
    flagged = files[0]
    flagged.rename(flagged.parent.parent / "cur" / (flagged.name.split(":2,")[0] + ":2,FS"))
    (local / "INBOX" / "cur" / "1700000000.1.local:2,S").write_bytes(
        b"From: alice@example.test\r\nSubject: written offline\r\n\r\nlocal draft\r\n")
    _mbsync(rc)
    c = _imap(server)
    c.select("INBOX")
    typ, data = c.search(None, "FLAGGED")
    assert typ == "OK" and len(data[0].split()) == 1
    typ, data = c.search(None, "SUBJECT", "offline")
    assert typ == "OK" and len(data[0].split()) == 1
    offline = data[0]
    assert b"\\Seen" in c.fetch(offline, "(FLAGS)")[1][0]
    # server side: delete one message; the next sync removes it locally
    typ, data = c.search(None, "SUBJECT", "two")
    c.store(data[0], "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()
    _mbsync(rc)
    names = [p.read_bytes() for p in _maildir_files(local / "INBOX")]
    assert len(names) == 2
    assert not any(b"Subject: sync two" in n for n in names)


def test_recent_survives_a_restart(server: Server) -> None:
    """RFC 3501 §2.3.2: a message is \\Recent for the first session that selects its
    mailbox, once. The watermark is kept with the mailbox, so a restart does not make
    every message recent again (Dovecot and Cyrus keep it the same way)."""
    for i in range(3):
        _submit(server, f"recent {i}")

    def recent() -> int:
        c = _imap(server)
        try:
            assert c.select("INBOX", readonly=True)[0] == "OK"  # EXAMINE peeks, never claims
            peeked = int(c.response("RECENT")[1][0] or 0)
            assert c.select("INBOX")[0] == "OK"
            claimed = int(c.response("RECENT")[1][0] or 0)
            assert peeked == claimed
            return claimed
        finally:
            c.logout()

    assert recent() == 3
    assert recent() == 0  # claimed by the first session
    server.stop()
    server.start()
    assert recent() == 0  # still claimed after the restart
    _submit(server, "recent 3")
    server.stop()
    server.start()
    assert recent() == 1  # only the new one
