"""Issue 2: real clients from Debian — swaks, curl and fetchmail — against the live server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.integration.harness import PASSWORD, Server


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run the README test command (scripts/test.sh)"
    return path


def swaks(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("swaks"), "--hide-all", *args], capture_output=True, text=True,
                          timeout=60)


def test_swaks_submission_starttls_auth_and_mx(server: Server) -> None:
    host, port = server.addr("submission")
    r = swaks(
        server, "--server", f"{host}:{port}", "--tls", "--auth", "LOGIN", "--auth-user",
        "alice@example.test", "--auth-password", PASSWORD, "--from", "alice@example.test",
        "--to", "bob@example.test", "--header", "Subject: via swaks")
    assert r.returncode == 0, r.stdout + r.stderr
    host, port = server.addr("submissions")
    r = swaks(server, "--server", f"{host}:{port}", "--tls-on-connect", "--auth", "PLAIN",
              "--auth-user", "alice@example.test", "--auth-password", PASSWORD,
              "--from", "alice@example.test", "--to", "bob@example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    host, port = server.addr("smtp")
    r = swaks(server, "--server", f"{host}:{port}", "--from", "x@remote.example",
              "--to", "bob@example.test", "--pipeline")
    assert r.returncode == 0, r.stdout + r.stderr
    r = swaks(server, "--server", f"{host}:{port}", "--from", "x@remote.example",
              "--to", "victim@elsewhere.example")
    assert r.returncode != 0  # relay denied


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_tool("curl"), "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=60)


def test_curl_smtp_smtps_pop3_pop3s(server: Server, tmp_path: Path) -> None:
    mail = tmp_path / "mail.txt"
    mail.write_bytes(b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: curl\r\n\r\nvia curl\r\n")
    host, port = server.addr("submission")
    r = _curl("--url", f"smtp://{host}:{port}", "--ssl-reqd", "-k", "--user",
              f"alice@example.test:{PASSWORD}", "--mail-from", "alice@example.test",
              "--mail-rcpt", "bob@example.test", "--upload-file", str(mail))
    assert r.returncode == 0, r.stderr
    host, port = server.addr("submissions")
    r = _curl("--url", f"smtps://{host}:{port}", "-k", "--user", f"alice@example.test:{PASSWORD}",
              "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test",
              "--upload-file", str(mail))
    assert r.returncode == 0, r.stderr
    host, port = server.addr("pop3")
    r = _curl("--url", f"pop3://{host}:{port}/", "--ssl-reqd", "-k", "--user",
              f"bob@example.test:{PASSWORD}")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 2  # LIST: two messages
    r = _curl("--url", f"pop3://{host}:{port}/1", "--ssl-reqd", "-k", "--user",
              f"bob@example.test:{PASSWORD}")
    assert r.returncode == 0 and b"via curl" in r.stdout
    host, port = server.addr("pop3s")
    r = _curl("--url", f"pop3s://{host}:{port}/2", "-k", "--user", f"bob@example.test:{PASSWORD}")
    assert r.returncode == 0 and b"Subject: curl" in r.stdout


def test_fetchmail_downloads_and_deletes(server: Server, tmp_path: Path) -> None:
    host, port = server.addr("smtp")
    for i in range(3):
        r = swaks(server, "--server", f"{host}:{port}", "--from", "x@remote.example",
                  "--to", "bob@example.test", "--header", f"Subject: fm{i}")
        assert r.returncode == 0
    mbox = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    pop_host, pop_port = server.addr("pop3")
    rc.write_text(
        f'poll {pop_host} service {pop_port} protocol pop3 auth password\n'
        f'  user "bob@example.test" password "{PASSWORD}" sslproto "tls1.2+" no sslcertck\n'
        f'  mda "/bin/sh -c \'cat >> {mbox}\'" fetchall\n')
    rc.chmod(0o600)
    r = subprocess.run([_tool("fetchmail"), "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
                       capture_output=True, text=True, timeout=120,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    text = mbox.read_text()
    assert text.count("Subject: fm") == 3
    # fetchmail deleted them (download-and-delete)
    r = _curl("--url", f"pop3://{pop_host}:{pop_port}/", "--ssl-reqd", "-k", "--user",
              f"bob@example.test:{PASSWORD}")
    assert r.stdout.strip() == b""
