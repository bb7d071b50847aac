"""Issue 5: `mailyard dns records` gives zone lines; `mailyard dns check` reads them back as dig would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mailyard.testing.dnsserver import DNSServer
from tests.integration.harness import mailyard


def _publish(dns: DNSServer, zone_text: str) -> None:
    """Load the BIND-style lines `dns records` printed into the test DNS server."""
    for line in zone_text.splitlines():
        if not line or line.startswith((";", "$")):
            continue
        m = re.match(r"^(\S+)\s+IN\s+(\S+)\s+(.*)$", line)
        assert m, line
        name, rtype, value = m.group(1).rstrip("."), m.group(2), m.group(3)
        if rtype == "TXT":
            values: list[object] = ["".join(re.findall(r'"([^"]*)"', value))]
        elif rtype == "MX":
            pref, host = value.split()
            values = [(int(pref), host.rstrip("."))]
        else:
            values = [value]
        current = dns.zone.get(name.lower(), {}).get(rtype, [])
        dns.set(name, {rtype: [*current, *values]})


def test_records_then_check_round_trip(tmp_path: Path) -> None:
    with DNSServer() as dns:
        data = tmp_path / "d"
        mailyard(data, "init", "--domain", "example.test", "--dev", "--nameserver", dns.nameserver)
        records = mailyard(data, "dns", "records", "example.test").stdout
        for kind in (" MX ", "v=spf1", "v=DKIM1", "v=DMARC1", "_mta-sts.", "_smtp._tls.",
                     "_submissions._tcp."):
            assert kind in records
        assert "_imaps._tcp.example.test. IN SRV 0 1 2993 mail.example.test." in records
        _publish(dns, records)
        dns.set("mail.example.test", {"A": ["127.0.0.1"]})
        dns.set("1.0.0.127.in-addr.arpa", {"PTR": ["mail.example.test"]})
        r = mailyard(data, "dns", "check", "example.test", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        for kind in ("MX", "SPF", "DKIM", "DMARC"):
            assert kind.lower() in r.stdout.lower()
        out = json.loads(mailyard(data, "dns", "check", "example.test", "--json").stdout)
        assert isinstance(out, (list, dict))
        srv = next(f for f in out if f["kind"] == "srv")
        assert srv["status"] == "ok" and len(srv["records"]) == 6, srv
        assert "_imaps._tcp.example.test 0 1 2993 mail.example.test" in srv["records"]

        # An SRV record that does not match the listeners is a warning naming it; one
        # for a service not listened on is reported too (the check reads the config).
        dns.set("_imaps._tcp.example.test", {"SRV": ["0 1 993 mail.example.test."]})
        cfg = data / "mailyard.toml"
        cfg.write_text(re.sub(r'(?m)^pop3 = ".*"$', 'pop3 = ""', cfg.read_text()))
        out = json.loads(mailyard(data, "dns", "check", "example.test", "--json").stdout)
        srv = next(f for f in out if f["kind"] == "srv")
        assert srv["status"] == "warn", srv
        assert "_imaps does not give port 2993 on mail.example.test" in srv["message"]
        assert "_pop3 is published but not listened on" in srv["message"]
        dns.zone.pop("_imaps._tcp.example.test")
        out = json.loads(mailyard(data, "dns", "check", "example.test", "--json").stdout)
        srv = next(f for f in out if f["kind"] == "srv")
        assert "_imaps missing (port 2993 on mail.example.test)" in srv["message"], srv

        # Break it the way admins do: no DMARC, a second SPF record.
        dns.zone.pop("_dmarc.example.test")
        dns.set("example.test", {"TXT": ["v=spf1 mx -all", "v=spf1 a -all"]})
        r = mailyard(data, "dns", "check", "example.test", check=False)
        assert r.returncode != 0
        assert "dmarc" in r.stdout.lower() and "spf" in r.stdout.lower()
        assert "Traceback" not in r.stderr


def _srv_lines(text: str) -> dict[str, str]:
    """SRV service -> rdata, of the zone lines in ``text``."""
    return {line.split(".", 1)[0]: line.split(" IN SRV ", 1)[1]
            for line in text.splitlines() if " IN SRV " in line and not line.startswith(";")}


DEV_SRV = {
    "_submissions": "0 1 2465 mail.example.test.",
    "_submission": "10 1 2587 mail.example.test.",
    "_imaps": "0 1 2993 mail.example.test.",
    "_imap": "10 1 2143 mail.example.test.",
    "_pop3s": "20 1 2995 mail.example.test.",
    "_pop3": "30 1 2110 mail.example.test.",
}


def test_srv_records_follow_listen_config(tmp_path: Path) -> None:
    """The SRV records `init` and `dns records` print carry the [listen] ports, and a
    service not listened on is published as not offered (target ".", RFC 6186 §4)."""
    dev = tmp_path / "dev"
    out = mailyard(dev, "init", "--domain", "example.test", "--dev").stdout
    assert _srv_lines(out) == DEV_SRV
    records = mailyard(dev, "dns", "records", "example.test").stdout
    assert _srv_lines(records) == DEV_SRV
    assert records in out  # init prints exactly what `dns records` prints

    std = tmp_path / "std"
    out = mailyard(std, "init", "--domain", "example.test").stdout
    assert _srv_lines(out) == {
        "_submissions": "0 1 465 mail.example.test.",
        "_submission": "10 1 587 mail.example.test.",
        "_imaps": "0 1 993 mail.example.test.",
        "_imap": "10 1 143 mail.example.test.",
        "_pop3s": "20 1 995 mail.example.test.",
        "_pop3": "30 1 110 mail.example.test.",
    }

    # No POP3: both listeners removed ("" disables one, as the config comment says).
    cfg = dev / "mailyard.toml"
    text = cfg.read_text()
    text = re.sub(r'(?m)^pop3 = ".*"$', 'pop3 = ""', text)
    text = re.sub(r'(?m)^pop3s = ".*"$', 'pop3s = ""', text)
    text = text.replace('imap = "127.0.0.1:2143"', 'imap = "127.0.0.1:1143"')
    cfg.write_text(text)
    records = mailyard(dev, "dns", "records", "example.test").stdout
    assert "_pop3._tcp.example.test. IN SRV 0 0 0 ." in records.splitlines()
    assert "_pop3s._tcp.example.test. IN SRV 0 0 0 ." in records.splitlines()
    assert _srv_lines(records) == {**DEV_SRV, "_imap": "10 1 1143 mail.example.test.",
                                   "_pop3": "0 0 0 .", "_pop3s": "0 0 0 ."}


def test_dkim_keygen_and_rotate_print_txt(tmp_path: Path) -> None:
    data = tmp_path / "d"
    mailyard(data, "init", "--domain", "example.test", "--dev")
    out = mailyard(data, "dkim", "keygen", "example.test", "--selector", "ed1",
                   "--algorithm", "ed25519").stdout
    assert out.startswith('ed1._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=')
    first = re.search(r"example\.test\t(\S+)\trsa-sha256\tactive",
                      mailyard(data, "dkim", "list").stdout).group(1)  # init's key
    out = mailyard(data, "dkim", "rotate", "example.test", "--selector", "r2").stdout
    assert 'r2._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=' in out
    # The old RSA key keeps signing until the new record is published, then is retired.
    assert f"mailyard dkim retire example.test {first}" in out
    listing = mailyard(data, "dkim", "list").stdout
    assert re.search(r"example\.test\tr2\trsa-sha256\tactive", listing)
    assert re.search(r"example\.test\ted1\ted25519-sha256\tactive", listing)
    assert f"example.test\t{first}\trsa-sha256\tactive" in listing
    out = mailyard(data, "dkim", "retire", "example.test", first).stdout
    assert out.startswith(f"retired {first} for example.test; signing with: ")
    assert f"example.test\t{first}\trsa-sha256\tretired" in mailyard(data, "dkim", "list").stdout
    # Without --selector, a fresh one (init's default is taken this month).
    out = mailyard(data, "dkim", "rotate", "example.test").stdout
    assert re.match(rf"{first}b\._domainkey\.example\.test\. IN TXT", out)
    r = mailyard(data, "dkim", "keygen", "nowhere.test", check=False)
    assert r.returncode == 2 and "not a local domain" in r.stderr
    r = mailyard(data, "dns", "records", "nowhere.test", check=False)
    assert r.returncode == 2 and "not a local domain" in r.stderr and r.stdout == ""
    # python3 -m mailyard is the same command
    r = subprocess.run([sys.executable, "-m", "mailyard", "--data", str(data), "dkim", "list"],
                       capture_output=True, text=True, check=True)
    assert r.stdout == mailyard(data, "dkim", "list").stdout
    for bad in ("x y;z", "a..b", "-a", "a_b", "ü"):
        r = mailyard(data, "dkim", "keygen", "example.test", f"--selector={bad}", check=False)
        assert r.returncode == 2 and "not a DKIM selector" in r.stderr, bad
    r = mailyard(data, "dkim", "retire", "example.test", "nosuch", check=False)
    assert r.returncode == 2 and "no DKIM key nosuch" in r.stderr
