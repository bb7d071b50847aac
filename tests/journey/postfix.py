"""A throwaway Postfix instance from Debian (package ``postfix``) as a third mail domain.

Its own ``config_directory``, ``queue_directory`` and ``data_directory`` in a temporary
folder; ``postfix -c DIR start`` as root (the master runs as root, its daemons as the
``postfix`` user, so the folder is world-traversable and lives outside pytest's 0700
tmp). No chroot. It listens on ``IP:2525`` (the port every peer in the test world
uses), accepts mail for ``c.test`` into a Maildir (virtual delivery), relays mail
from loopback clients, and routes a.test and b.test with ``transport_maps`` to the
mailyard addresses (Postfix's resolver is the system's, so it cannot ask our Knot),
always over TLS (``smtp_tls_security_level = encrypt``) from its own address.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

MASTER_CF = """\
{ip}:{port} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> str | None:
    """Why Postfix cannot run here, or None."""
    if shutil.which("postfix") is None and not os.path.exists("/usr/sbin/postfix"):
        return "postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a Postfix master must start as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    return None


class Postfix:
    def __init__(self, *, domain: str, ip: str, port: int, routes: dict[str, str],
                 ca_file: Path, cert: Path, key: Path, mailboxes: tuple[str, ...]) -> None:
        self.domain = domain
        self.ip = ip
        self.port = port
        self.routes = routes  # domain -> "ip:port"
        self.ca_file = ca_file
        self.cert = cert
        self.key = key
        self.mailboxes = mailboxes
        self.root = Path(tempfile.mkdtemp(prefix="mailyard-postfix-"))
        os.chmod(self.root, 0o755)
        self.conf = self.root / "conf"
        self.env = dict(os.environ, MAIL_CONFIG=str(self.conf))

    @property
    def vmail(self) -> Path:
        return self.root / "vmail"

    def _main_cf(self) -> str:
        pw = pwd.getpwnam("postfix")
        r = self.root
        boxes = ", ".join(f"{m}@{self.domain}={m}/" for m in self.mailboxes)
        routes = ", ".join(f"{d}=smtp:[{hp.rpartition(':')[0]}]:{hp.rpartition(':')[2]}"
                           for d, hp in self.routes.items())
        return f"""\
compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{self.domain}
mydomain = {self.domain}
myorigin = {self.domain}
# Postfix refuses an inet_interfaces address that no interface lists (127.R.S.4 is
# reachable on lo but not listed); master.cf binds the smtpd service to it instead.
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
virtual_mailbox_domains = {self.domain}
virtual_mailbox_base = {self.vmail}
virtual_mailbox_maps = inline:{{ {boxes} }}
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
virtual_minimum_uid = 1
transport_maps = inline:{{ {routes} }}
smtp_bind_address = {self.ip}
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {self.ca_file}
smtp_tls_loglevel = 1
smtpd_tls_cert_file = {self.cert}
smtpd_tls_key_file = {self.key}
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {r}/postfix.log
maillog_file_prefixes = {r},/var
syslog_name = postfix-{self.domain}
"""

    def start(self) -> None:
        for d in ("conf", "queue", "data", "vmail"):
            (self.root / d).mkdir()
        pw = pwd.getpwnam("postfix")
        for d in ("data", "vmail"):
            os.chown(self.root / d, pw.pw_uid, pw.pw_gid)
        (self.conf / "main.cf").write_text(self._main_cf())
        (self.conf / "master.cf").write_text(MASTER_CF.format(ip=self.ip, port=self.port))
        postfix = shutil.which("postfix") or "/usr/sbin/postfix"
        # "check" creates the queue subdirectories with the right owners and modes.
        # Errors of "check"/"start" go to syslog (none here): a failure is silent, so say
        # which step failed.
        r = subprocess.run([postfix, "-c", str(self.conf), "check"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"postfix check failed: {r.stdout}{r.stderr}")
        r = subprocess.run([postfix, "-c", str(self.conf), "start"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"postfix did not start: {r.stdout}{r.stderr}\n{self.log()}")

    def log(self) -> str:
        p = self.root / "postfix.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def maildir(self, mailbox: str) -> list[bytes]:
        new = self.vmail / mailbox / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def stop(self) -> None:
        postfix = shutil.which("postfix") or "/usr/sbin/postfix"
        subprocess.run([postfix, "-c", str(self.conf), "stop"], env=self.env,
                       capture_output=True, text=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
