"""Start a real ``mailyard serve`` process on port 0 for integration tests.

The instance is set up through the CLI exactly as a user would (init, user add with
--password-stdin); listeners bind port 0 and the server writes the real ports to
DIR/run/listeners.json, which the harness waits for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "s3cret-pass"


def mailyard(data: Path, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mailyard.cli.main", "--data", str(data), *args],
                          input=stdin, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"mailyard {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Server:
    data: Path
    domain: str
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    max_open_files: int | None = None  # RLIMIT_NOFILE of the server process (fd exhaustion tests)
    env: dict[str, str] = field(default_factory=dict)  # more environment for the server

    def addr(self, name: str) -> tuple[str, int]:
        return self.host, self.ports[name]

    def start(self, *, timeout: float = 30.0) -> None:
        runtime = self.data / "run" / "listeners.json"
        if runtime.exists():
            runtime.unlink()
        self.log_path = self.data / "server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        limit = self.max_open_files

        def preexec() -> None:
            if limit is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailyard.cli.main", "--data", str(self.data), "serve"],
            stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log()}")
            if runtime.exists():
                info = json.loads(runtime.read_text())
                self.ports = {k: v["port"] for k, v in info.items() if isinstance(v, dict)}
                return
            time.sleep(0.05)
        raise AssertionError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return mailyard(self.data, *args, stdin=stdin, check=check)

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        self.cli("user", "add", address, "--password-stdin", stdin=password + "\n")


def make_server(tmp: Path, *, domain: str = "example.test", users: tuple[str, ...] = ("alice", "bob"),
                extra_config: str = "", auth_delay: float = 0.05,
                nameserver: str | None = None) -> Server:
    data = tmp / "data"
    ns = ["--nameserver", nameserver] if nameserver else []
    mailyard(data, "init", "--domain", domain, "--dev", *ns)
    cfg = data / "mailyard.toml"
    text = cfg.read_text()
    text = re.sub(r'(?m)^(\w+) = "127\.0\.0\.1:\d+"$', r'\1 = "127.0.0.1:0"', text)
    text = text.replace("[queue]\n", "[queue]\nretry_initial = 1.0\n")
    text = text.replace("[dns]\n", "[dns]\ntimeout = 2.0\n")
    text += f"\n[auth]\nfailure_delay = {auth_delay}\nmax_failure_delay = {auth_delay * 4}\n"
    # The MX listener in the server itself (the default) or in receiver processes:
    # MAILYARD_TEST_SMTP_WORKERS=N runs every test server with N workers.
    workers = os.environ.get("MAILYARD_TEST_SMTP_WORKERS")
    if workers is not None:
        text = re.sub(r"(?m)^workers = .*$", f"workers = {int(workers)}", text)
    text += extra_config
    cfg.write_text(text)
    srv = Server(data=data, domain=domain)
    for u in users:
        srv.add_user(f"{u}@{domain}")
    return srv


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Dialog:
    """A raw line-level client for protocol-error tests (no client library smoothing)."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; buffer {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, str]:
        """One SMTP reply (multi-line joined); returns (code, text of the last line)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[-1][:3]), b"\n".join(lines).decode("utf-8", "replace")

    def line(self) -> str:
        return self._line().decode("utf-8", "replace")

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except OSError:
            return True
        return data == b""

    def close(self) -> None:
        self.sock.close()
