"""A small Internet on loopback: a real authoritative DNS server (Knot) and real
``mailyard serve`` processes, each on its own loopback address, trusting one test CA.

Every test gets its own /24 inside 127.0.0.0/8 (``127.R.S.0``), so the fixed ports
the instances share (2525 for SMTP, as mail between MTAs always goes to one port
number) never collide between tests running in parallel. Hosts: ``.2`` a.test,
``.3`` b.test, ``.4`` the Postfix peer c.test. Knot listens on 127.0.0.1 on a free
port. The zones are built from ``mailyard dns records`` (MX, DKIM, MTA-STS, TLS-RPT,
SRV...) with our own SOA/NS/A/PTR, SPF ``ip4:`` and DMARC ``p=reject`` lines.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import random
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailyard.server.tls import make_ca, make_certificate
from tests.integration.harness import PASSWORD, Server, mailyard

SMTP_PORT = 2525  # the dev MX port; every instance listens on it, each on its own address
HTTPS_PORT = 8443  # MTA-STS policy over HTTPS (listen.https)


def _port_free(ip: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def unique_net() -> str:
    """A "127.R.S." prefix whose .2-.4 are free on our ports (loopback /8 needs no setup)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        prefix = f"127.{rng.randint(10, 250)}.{rng.randint(1, 254)}."
        if all(_port_free(prefix + str(h), p) for h in (2, 3, 4) for p in (SMTP_PORT, 2587)):
            return prefix
    raise RuntimeError("no free loopback /24 found")


def free_udp_tcp_port(ip: str = "127.0.0.1") -> int:
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((ip, 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind((ip, port))
            return int(port)
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def wait_for(pred: Callable[[], object], *, timeout: float, what: str,
              interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- PKI --------------------------------------------------------------------------------------

@dataclass
class CA:
    cert: Path
    key: Path

    @classmethod
    def create(cls, where: Path) -> CA:
        ca = cls(where / "ca.pem", where / "ca.key")
        make_ca(ca.cert, ca.key, name="journey test CA")
        return ca

    def issue(self, where: Path, *names: str) -> tuple[Path, Path]:
        cert, key = where / "cert.pem", where / "key.pem"
        make_certificate(cert, key, hostnames=list(names), ca_cert=self.cert, ca_key=self.key)
        return cert, key

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies against this CA only."""
        return ssl.create_default_context(cafile=str(self.cert))


# -- DNS: Knot -----------------------------------------------------------------------------

def _txt(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def zone_text(domain: str, ip: str, records: str, *, dmarc: str = "p=reject") -> str:
    """The zone of ``domain``: what ``mailyard dns records`` printed, minus its SPF and
    DMARC advice (replaced by a strict ``ip4:`` SPF and the given DMARC policy)."""
    lines = [
        f"$ORIGIN {domain}.",
        "$TTL 60",
        f"@ IN SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 60",
        f"@ IN NS ns.{domain}.",
        "ns IN A 127.0.0.1",
        f"mail.{domain}. IN A {ip}",
        f"@ IN TXT {_txt(f'v=spf1 ip4:{ip} -all')}",
        f"_dmarc IN TXT {_txt(f'v=DMARC1; {dmarc}; adkim=r; aspf=r')}",
    ]
    for line in records.splitlines():
        s = line.strip()
        if not s or s.startswith((";", "$")):
            continue
        if '"v=spf1' in s or '"v=DMARC1' in s:
            continue
        lines.append(s)
    return "\n".join(lines) + "\n"


def reverse_zone(prefix: str, hosts: dict[int, str]) -> tuple[str, str]:
    """(zone name, text) of the in-addr.arpa zone of ``127.R.S.`` with PTR records."""
    _, r, s, _ = prefix.split(".")
    name = f"{s}.{r}.127.in-addr.arpa"
    lines = [f"$ORIGIN {name}.", "$TTL 60",
             "@ IN SOA ns.a.test. hostmaster.a.test. 1 3600 600 86400 60",
             "@ IN NS ns.a.test."]
    lines += [f"{h} IN PTR {target}." for h, target in sorted(hosts.items())]
    return name, "\n".join(lines) + "\n"


class Knot:
    """``knotd -c DIR/knot.conf`` in the foreground, serving the given zones."""

    def __init__(self, where: Path, zones: dict[str, str]) -> None:
        self.dir = where
        self.zones = zones
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _conf(self) -> str:
        zones = "".join(f"  - domain: {z}\n" for z in self.zones)
        return (
            "server:\n"
            f'    rundir: "{self.dir}"\n'
            f"    listen: 127.0.0.1@{self.port}\n"
            "log:\n  - target: stderr\n    any: info\n"
            f'database:\n    storage: "{self.dir}/db"\n'
            "template:\n  - id: default\n"
            f'    storage: "{self.dir}"\n'
            '    file: "%s.zone"\n'
            "    zonefile-sync: -1\n"
            "    journal-content: none\n"
            f"zone:\n{zones}"
        )

    def start(self, timeout: float = 15.0) -> None:
        knotd = shutil.which("knotd") or "/usr/sbin/knotd"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, text in self.zones.items():
            (self.dir / f"{name}.zone").write_text(text)
        if not self.port:
            self.port = free_udp_tcp_port()
        conf = self.dir / "knot.conf"
        conf.write_text(self._conf())
        knotc = shutil.which("knotc") or "/usr/sbin/knotc"
        check = subprocess.run([knotc, "-c", str(conf), "conf-check"], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, f"knot config rejected: {check.stdout}{check.stderr}"
        log = open(self.dir / "knotd.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([knotd, "-c", str(conf)], stdout=log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._all_loaded, timeout=timeout, what=f"knotd serving {list(self.zones)}: "
                 + self.log())

    def _all_loaded(self) -> bool:
        import dns.message
        import dns.query
        import dns.rcode

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"knotd exited: {self.log()}")
        for zone in self.zones:
            q = dns.message.make_query(zone, "SOA")
            try:
                r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.5)
            except Exception:
                return False
            if r.rcode() != dns.rcode.NOERROR or not r.answer:
                return False
        return True

    def log(self) -> str:
        p = self.dir / "knotd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- mailyard instances --------------------------------------------------------------------

@dataclass
class Instance:
    server: Server
    domain: str
    ip: str
    records: str  # what `mailyard dns records DOMAIN` printed

    @property
    def hostname(self) -> str:
        return f"mail.{self.domain}"


def make_instance(tmp: Path, domain: str, ip: str, *, ca: CA, nameserver: str,
                  users: tuple[str, ...], mta_sts_mode: str = "enforce",
                  extra_queue: str = "") -> Instance:
    """``init`` a mailyard for ``domain`` on ``ip`` as an operator would, with a
    certificate from the test CA for mail.DOMAIN and mta-sts.DOMAIN."""
    base = tmp / domain
    base.mkdir(parents=True)
    cert, key = ca.issue(base, f"mail.{domain}", f"mta-sts.{domain}", ip)
    data = base / "data"
    mailyard(data, "init", "--domain", domain, "--hostname", f"mail.{domain}", "--dev",
             "--bind", ip, "--nameserver", nameserver, "--cert", str(cert), "--key", str(key))
    cfg = data / "mailyard.toml"
    text = cfg.read_text()
    text = re.sub(r'(?m)^(http = ".*")$', rf'\1\nhttps = "{ip}:{HTTPS_PORT}"', text)
    text = text.replace("[dns]\n", "[dns]\ntimeout = 2.0\n")
    text = re.sub(r"(?m)^outbound_port = \d+$", "\n".join([
        f"outbound_port = {SMTP_PORT}",
        f'ca_file = "{ca.cert}"',
        f'source_address = "{ip}"',
        f"mta_sts_port = {HTTPS_PORT}",
        "retry_initial = 1.0",
        "retry_max = 2.0",
        "connect_timeout = 3.0",
    ]) + ("\n" + extra_queue if extra_queue else ""), text)
    text += f'\n[mta_sts]\nmode = "{mta_sts_mode}"\n'
    text += "\n[auth]\nfailure_delay = 0.05\nmax_failure_delay = 0.2\n"
    cfg.write_text(text)
    srv = Server(data=data, domain=domain, host=ip)
    for u in users:
        srv.add_user(f"{u}@{domain}")
    records = srv.cli("dns", "records", domain).stdout
    return Instance(server=srv, domain=domain, ip=ip, records=records)


# -- mail clients ------------------------------------------------------------------------------

def pop3_messages(inst: Instance, user: str, ctx: ssl.SSLContext) -> list[bytes]:
    """Every message in ``user``'s INBOX over POP3 with STLS (left on the server)."""
    host, port = inst.server.addr("pop3")
    p = poplib.POP3(host, port, timeout=10)
    try:
        p.stls(ctx)
        p.user(user)
        p.pass_(PASSWORD)
        count, _ = p.stat()
        out = []
        for i in range(1, count + 1):
            _resp, lines, _octets = p.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        with contextlib.suppress(Exception):
            p.quit()


def header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def unfolded_headers(message: bytes, name: bytes) -> list[bytes]:
    """All values of header ``name`` with folding removed."""
    head = header_block(message)
    head = re.sub(rb"\r\n[ \t]+", b" ", head)
    prefix = name.lower() + b":"
    return [line[len(prefix):].strip() for line in head.split(b"\r\n")
            if line.lower().startswith(prefix)]


# A domain whose SPF passes for 127.0.0.1: a forger with its own, valid envelope.
ATTACKER_ZONE = """$ORIGIN attacker.test.
$TTL 60
@ IN SOA ns.attacker.test. hostmaster.attacker.test. 1 3600 600 86400 60
@ IN NS ns.attacker.test.
ns IN A 127.0.0.1
@ IN TXT "v=spf1 ip4:127.0.0.1 -all"
"""

# -- the world -----------------------------------------------------------------------------

@dataclass
class World:
    prefix: str
    ca: CA
    knot: Knot
    a: Instance
    b: Instance

    def ip(self, host: int) -> str:
        return f"{self.prefix}{host}"

    def stop(self) -> None:
        for inst in (self.a, self.b):
            with contextlib.suppress(Exception):
                inst.server.stop()
        self.knot.stop()


def build_world(tmp: Path, *,
                extra_zones_for: Callable[[str], dict[str, str]] | None = None) -> World:
    """a.test (alice) and b.test (bob) initialised, Knot serving their zones (and
    ``extra_zones_for(prefix)``) and running. The mailyard servers are not started."""
    prefix = unique_net()
    extra_zones = extra_zones_for(prefix) if extra_zones_for else {}
    ca = CA.create(tmp / "ca")
    # Knot needs the DKIM keys that init makes, and init needs the name server's
    # address: reserve the port first.
    knot = Knot(tmp / "knot", {})
    knot.port = free_udp_tcp_port()
    ns = knot.nameserver
    a = make_instance(tmp, "a.test", prefix + "2", ca=ca, nameserver=ns, users=("alice",))
    b = make_instance(tmp, "b.test", prefix + "3", ca=ca, nameserver=ns, users=("bob",))
    rev_name, rev = reverse_zone(prefix, {2: "mail.a.test", 3: "mail.b.test",
                                          4: "mail.c.test"})
    knot.zones = {"a.test": zone_text("a.test", a.ip, a.records),
                  "b.test": zone_text("b.test", b.ip, b.records),
                  rev_name: rev, "attacker.test": ATTACKER_ZONE, **extra_zones}
    try:
        knot.start()
    except BaseException:
        knot.stop()
        raise
    return World(prefix=prefix, ca=ca, knot=knot, a=a, b=b)
