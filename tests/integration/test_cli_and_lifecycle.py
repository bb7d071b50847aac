"""Issue 2: the admin CLI, config validation, signals and crash durability."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import PASSWORD, Server, client_tls, mailyard, make_server


def test_init_prints_dns_records_and_writes_files(tmp_path: Path) -> None:
    out = mailyard(tmp_path / "d", "init", "--domain", "Example.TEST", "--dev").stdout
    assert (tmp_path / "d" / "mailyard.toml").exists()
    assert (tmp_path / "d" / "tls" / "cert.pem").exists()
    assert "example.test" in out
    assert " MX " in out and "v=spf1" in out and "v=DKIM1" in out and "v=DMARC1" in out
    cfg = (tmp_path / "d" / "mailyard.toml").read_text()
    assert '"127.0.0.1:2525"' in cfg and '"127.0.0.1:2587"' in cfg and '"127.0.0.1:2995"' in cfg


def test_user_domain_alias_commands(tmp_path: Path) -> None:
    d = tmp_path / "d"
    mailyard(d, "init", "--domain", "example.test", "--dev")
    mailyard(d, "domain", "add", "other.test")
    assert mailyard(d, "domain", "list").stdout.split() == ["example.test", "other.test"]
    mailyard(d, "user", "add", "Carol@Other.test", "--password-stdin", stdin="pw-carol\n")
    assert "carol@other.test" in mailyard(d, "user", "list").stdout
    # no password on the command line, and no prompt without a terminal
    r = mailyard(d, "user", "add", "dave@other.test", check=False, stdin="")
    assert r.returncode != 0 and "password" in r.stderr.lower()
    mailyard(d, "user", "passwd", "carol@other.test", "--password-stdin", stdin="new-pass\n")
    r = mailyard(d, "user", "add", "x@unknown.test", "--password-stdin", stdin="pw-pw\n", check=False)
    assert r.returncode == 2 and "not a local domain" in r.stderr
    mailyard(d, "alias", "add", "list@other.test", "carol@other.test", "someone@remote.example")
    mailyard(d, "alias", "add", "@other.test", "carol@other.test")
    out = mailyard(d, "alias", "list").stdout
    assert "list@other.test" in out and "@other.test" in out
    mailyard(d, "alias", "remove", "list@other.test")
    assert "list@other.test" not in mailyard(d, "alias", "list").stdout
    mailyard(d, "user", "remove", "carol@other.test")
    assert "carol@other.test" not in mailyard(d, "user", "list").stdout
    r = mailyard(d, "user", "remove", "carol@other.test", check=False)
    assert r.returncode == 2 and r.stderr.startswith("mailyard: ")


def test_cli_refuses_addresses_and_values_that_cannot_work(tmp_path: Path) -> None:
    d = tmp_path / "d"
    mailyard(d, "init", "--domain", "example.test", "--dev")
    for bad in ("a@b@example.test", '"q q"@example.test', ".dot@example.test",
                "dot.@example.test", "x@[192.0.2.1]", "noat"):
        r = mailyard(d, "user", "add", bad, "--password-stdin", stdin="pw-pw-pw-1\n", check=False)
        assert r.returncode == 2 and "not a" in r.stderr and "address" in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr
    out = mailyard(d, "user", "add", "Jösé.Ok@example.test", "--password-stdin",
                   stdin="pw-pw-pw-1\n").stdout
    assert "added jösé.ok@example.test" in out
    out = mailyard(d, "user", "add", "carol+x@example.test", "--password-stdin",
                   stdin="pw-pw-pw-1\n").stdout
    assert "sub-address separator" in out  # allowed, with a note
    for bad in ("-5", "-1G", "5X"):
        r = mailyard(d, "user", "quota", "carol+x@example.test", "--", bad, check=False)
        assert r.returncode == 2 and "not a size" in r.stderr, bad
    # A user over an alias would receive nothing (the alias is looked up first): refused.
    mailyard(d, "alias", "add", "team@example.test", "jösé.ok@example.test")
    r = mailyard(d, "user", "add", "team@example.test", "--password-stdin", stdin="pw-123456\n",
                 check=False)
    assert r.returncode != 0 and "is an alias" in r.stderr and "Traceback" not in r.stderr
    assert "team@example.test" not in mailyard(d, "user", "list").stdout
    mailyard(d, "alias", "remove", "team@example.test")
    # An alias over a user would take all of its mail: only with --force.
    r = mailyard(d, "alias", "add", "carol+x@example.test", "jösé.ok@example.test", check=False)
    assert r.returncode == 2 and "is a user" in r.stderr
    mailyard(d, "alias", "add", "carol+x@example.test", "jösé.ok@example.test", "--force")
    assert "carol+x@example.test\t-> jösé.ok@example.test" in mailyard(d, "alias", "list").stdout


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    d = tmp_path / "d"
    mailyard(d, "init", "--domain", "example.test", "--dev")
    cfg = d / "mailyard.toml"
    cfg.write_text(cfg.read_text() + "\n[limits]\nmax_recipientz = 5\n")
    r = mailyard(d, "serve", check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    # (TOML duplicate table or unknown key: either way the key or table is named)
    assert "limits" in r.stderr
    cfg.write_text(cfg.read_text().replace("\n[limits]\nmax_recipientz = 5\n", "")
                   .replace('smtp = "127.0.0.1:2525"', 'smtp = "127.0.0.1:99999"'))
    r = mailyard(d, "serve", check=False)
    assert r.returncode == 2 and "listen.smtp" in r.stderr and "Traceback" not in r.stderr
    # A certificate that is not there: no 465/993/995 and no STARTTLS, so no login. The
    # server does not start half-way; it names the key.
    cfg.write_text(cfg.read_text().replace('smtp = "127.0.0.1:99999"', 'smtp = "127.0.0.1:0"')
                   .replace('cert = "tls/cert.pem"', 'cert = "tls/missing.pem"'))
    r = mailyard(d, "serve", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("mailyard: tls.cert: no such file") and "missing.pem" in r.stderr


def test_sigterm_exits_cleanly_and_sighup_reloads(server: Server) -> None:
    assert server.proc is not None
    cfg = server.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("max_recipients = 100", "max_recipients = 2")
                   .replace("[queue]\n", "[queue]\nconnect_timeout = 7.0\n", 1))
    server.proc.send_signal(signal.SIGHUP)
    import time

    from tests.integration.harness import Dialog

    deadline = time.monotonic() + 10
    while True:  # the reload happens asynchronously: new sessions see the new limit
        d = Dialog(*server.addr("smtp"))
        d.reply()
        d.cmd("EHLO c")
        d.cmd("MAIL FROM:<x@remote.example>")
        codes = [d.cmd("RCPT TO:<bob@example.test>")[0] for _ in range(3)]
        d.close()
        if codes == [250, 250, 452] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert codes == [250, 250, 452]
    # What a reload cannot apply is said, not silently dropped.
    assert "[queue] changed: it takes effect at the next restart" in server.log()
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", PASSWORD)
    assert server.stop(signal.SIGTERM) == 0


def _pop3_inbox(server: Server, user: str) -> list[bytes]:
    """Every message of ``user``'s INBOX over POP3 with STLS, as stored (CRLF)."""
    import poplib

    p = poplib.POP3(*server.addr("pop3"), timeout=10)
    p.stls(client_tls())
    p.user(user)
    p.pass_(PASSWORD)
    got = [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, p.stat()[0] + 1)]
    p.quit()
    return got


def test_sigterm_closes_idle_sessions_at_once_and_finishes_a_message(server: Server) -> None:
    """Idle clients (an SMTP connection between messages, a POP3 maildrop, an IMAP IDLE)
    are told goodbye in their protocol when the server stops, instead of holding the
    shutdown for its grace period; a message in the middle of DATA is finished first."""
    import imaplib
    import time

    from tests.hardening.helpers import dialog_in_data
    from tests.integration.harness import Dialog

    idle_smtp = Dialog(*server.addr("smtp"))
    idle_smtp.reply()
    assert idle_smtp.cmd("EHLO idle.example")[0] == 250
    busy = dialog_in_data(server, "bob@example.test")
    busy.send(b"From: sender@remote.example\r\nSubject: in flight\r\n\r\nfirst half\r\n")
    pop = Dialog(*server.addr("pop3"))
    assert pop.line().startswith("+OK")
    imap = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    imap.starttls(client_tls())
    imap.login("alice@example.test", PASSWORD)
    imap.select("INBOX")
    tag = imap._new_tag().decode()  # type: ignore[attr-defined]
    imap.send(f"{tag} IDLE\r\n".encode())
    assert imap.readline().startswith(b"+")
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert idle_smtp.reply()[1].startswith("421 4.3.2")
    assert pop.line().startswith("-ERR [SYS/TEMP]")
    assert imap.readline().startswith(b"* BYE")
    assert pop.closed() and idle_smtp.closed()
    # The transaction in progress goes on to its 250; the session then closes.
    busy.send(b"second half\r\n.\r\n")
    assert busy.reply()[0] == 250
    assert busy.reply()[1].startswith("421 4.3.2")
    assert server.proc.wait(15) == 0
    assert time.monotonic() - started < 10  # not the 20 s grace
    server.proc = None
    server.start()
    stored = _pop3_inbox(server, "bob@example.test")
    assert len(stored) == 1 and b"first half\r\nsecond half\r\n" in stored[0]
    for c in (idle_smtp, busy, pop):
        c.close()


def test_kill9_after_250_keeps_the_message(server: Server) -> None:
    msgs = []
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        for i in range(20):
            body = f"From: x@remote.example\r\nSubject: n{i}\r\n\r\nbody {i}\r\n".encode()
            s.sendmail("x@remote.example", ["bob@example.test"], body)
            msgs.append(body)
    server.kill9()
    server.start()
    got = _pop3_inbox(server, "bob@example.test")
    assert len(got) == 20
    for body, stored in zip(msgs, got, strict=True):
        assert stored.endswith(body)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    srv = make_server(tmp_path, users=())
    cfg = srv.data / "mailyard.toml"
    text = cfg.read_text().replace('smtp = "127.0.0.1:0"', f'smtp = "127.0.0.1:{port}"')
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "mailyard.cli.main", "--data", str(srv.data), "serve"],
                       capture_output=True, text=True, timeout=60)
    blocker.close()
    assert r.returncode == 2
    assert "listen.smtp" in r.stderr and "Traceback" not in r.stderr


def test_quickstart_creates_the_demo_and_serves(tmp_path: Path) -> None:
    import json
    import poplib
    import re
    import time

    data = tmp_path / "qs"
    mailyard(data, "init", "--domain", "example.test", "--dev")
    cfg = data / "mailyard.toml"
    cfg.write_text(re.sub(r'(?m)^(\w+) = "127\.0\.0\.1:\d+"$', r'\1 = "127.0.0.1:0"', cfg.read_text()))
    proc = subprocess.Popen([sys.executable, "-m", "mailyard.cli.main", "--data", str(data),
                             "quickstart"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        runtime = data / "run" / "listeners.json"
        deadline = time.monotonic() + 30
        while not runtime.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        ports = json.loads(runtime.read_text())
        p = poplib.POP3("127.0.0.1", ports["pop3"]["port"], timeout=10)
        p.stls(client_tls())
        p.user("demo@example.test")
        p.pass_("demo-password")
        assert p.stat()[0] == 0
        p.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Demo account: demo@example.test" in out and "swaks --server" in out


def test_a_running_server_keeps_serving_when_its_code_is_replaced(tmp_path: Path) -> None:
    """An upgrade (pip, a checkout) under a running server must not break it: a module
    first imported by a session (an IMAP command's, DKIM signing's) would come from
    the new code, or not at all. The server imports its whole package before it listens."""
    import imaplib
    import shutil
    import urllib.request

    import mailyard as pkg

    code = tmp_path / "code"
    shutil.copytree(Path(pkg.__file__).parent, code / "mailyard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(code)}
    where = subprocess.run([sys.executable, "-c", "import mailyard; print(mailyard.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(code))
    server = make_server(tmp_path)
    server.env = env
    server.start()
    try:
        shutil.rmtree(code / "mailyard")  # the code it started from is gone
        with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
            s.sendmail("x@remote.example", ["bob@example.test"],
                       b"From: x@remote.example\r\nSubject: first\r\n\r\nhello there\r\n")
        with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:  # DKIM-signed
            s.starttls(context=client_tls())
            s.login("alice@example.test", PASSWORD)
            s.sendmail("alice@example.test", ["bob@example.test"],
                       b"From: alice@example.test\r\nSubject: second\r\n\r\nsigned\r\n")
        imap = imaplib.IMAP4(*server.addr("imap"), timeout=10)
        imap.starttls(ssl_context=client_tls())
        imap.login("bob@example.test", PASSWORD)
        assert imap.list()[0] == "OK"
        assert imap.status("INBOX", "(MESSAGES UIDNEXT)")[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"2"])
        typ, data = imap.fetch("1:*", "(FLAGS ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER] "
                                      "BODY.PEEK[TEXT]<0.5>)")
        assert typ == "OK" and b"first" in data[0][0] + data[0][1]
        assert imap.search(None, "TEXT", "hello") == ("OK", [b"1"])
        assert imap.sort("(SUBJECT)", "UTF-8", "ALL") == ("OK", [b"1 2"])
        assert imap.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert imap.copy("1", "Archive")[0] == "OK"
        assert imap.append("Drafts", "(\\Draft)", None,
                           b"From: bob@example.test\r\nSubject: d\r\n\r\ndraft\r\n")[0] == "OK"
        tag = imap._new_tag()  # IDLE (imaplib has no helper for it)
        imap.send(tag + b" IDLE\r\n")
        assert imap.readline().startswith(b"+")
        with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
            s.sendmail("x@remote.example", ["bob@example.test"],
                       b"From: x@remote.example\r\nSubject: third\r\n\r\npushed\r\n")
        assert imap.readline() == b"* 3 EXISTS\r\n"
        imap.send(b"DONE\r\n")
        while not (line := imap.readline()).startswith(tag):
            pass
        assert b" OK " in line
        imap.logout()
        got = _pop3_inbox(server, "bob@example.test")
        assert [m.count(b"DKIM-Signature:") for m in got] == [0, 1, 0]
        req = urllib.request.Request(
            f"http://127.0.0.1:{server.ports['http']}/.well-known/mta-sts.txt",
            headers={"Host": "mta-sts.example.test"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b"version: STSv1" in resp.read()
        assert "Traceback" not in server.log()
    finally:
        server.stop()
