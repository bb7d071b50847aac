#!/usr/bin/env bash
# Two mail domains on one machine: a.test on 127.0.0.2 and b.test on 127.0.0.3, with a
# real DNS server (Knot) publishing MX, A, SPF, DKIM, DMARC (p=reject) and MTA-STS.
# alice@a.test sends to bob@b.test; the script shows the message arriving in bob's
# INBOX with its trace and authentication headers. Ctrl-C stops everything and cleans
# up. See docs/two-domain-demo.md.
#
#   bash scripts/demo-two-domains.sh            # run, then wait for Ctrl-C
#   bash scripts/demo-two-domains.sh --no-wait  # run, show, stop
#   KEEP=1 DEMO_DIR=/tmp/demo bash scripts/demo-two-domains.sh   # keep the files
set -euo pipefail

WAIT=1
[ "${1:-}" = "--no-wait" ] && WAIT=0
PY=${PYTHON:-python3}
DNS_PORT=${DNS_PORT:-5300}
A_IP=127.0.0.2
B_IP=127.0.0.3
PASSWORD=demo-password-1
KNOTD=$(command -v knotd || echo /usr/sbin/knotd)
[ -x "$KNOTD" ] || { echo "knotd not found: apt-get install knot" >&2; exit 1; }

DIR=${DEMO_DIR:-$(mktemp -d -t mailyard-demo-XXXXXX)}
mkdir -p "$DIR"
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "== stopping"
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then
    echo "files kept in $DIR"
  else
    rm -rf "$DIR"
  fi
}
trap cleanup INT TERM EXIT

my() { "$PY" -m mailyard.cli.main "$@"; }

echo "== files in $DIR"
echo "== a test CA, and a certificate for each server (mail.X and mta-sts.X)"
"$PY" - "$DIR" <<'EOF'
import sys
from pathlib import Path
from mailyard.server.tls import make_ca, make_certificate
d = Path(sys.argv[1])
make_ca(d / "ca.pem", d / "ca.key", name="mailyard demo CA")
for dom, ip in (("a.test", "127.0.0.2"), ("b.test", "127.0.0.3")):
    make_certificate(d / f"{dom}.pem", d / f"{dom}.key",
                     hostnames=[f"mail.{dom}", f"mta-sts.{dom}", ip],
                     ca_cert=d / "ca.pem", ca_key=d / "ca.key")
EOF

setup_instance() {  # domain ip user
  local dom=$1 ip=$2 user=$3 data="$DIR/$1"
  echo "== mailyard init $dom on $ip"
  my --data "$data" init --domain "$dom" --hostname "mail.$dom" --dev --bind "$ip" \
     --nameserver "127.0.0.1:$DNS_PORT" --cert "$DIR/$dom.pem" --key "$DIR/$dom.key" > "$DIR/$dom.init.txt"
  # MTA-STS over HTTPS, mail to the peer's port 2525 from our own address, short retries.
  sed -i "s|^http = \"\(.*\)\"$|http = \"\1\"\nhttps = \"$ip:8443\"|" "$data/mailyard.toml"
  sed -i "s|^outbound_port = 25$|outbound_port = 2525\nca_file = \"$DIR/ca.pem\"\nsource_address = \"$ip\"\nmta_sts_port = 8443\nretry_initial = 2.0\nretry_max = 10.0|" "$data/mailyard.toml"
  printf '\n[mta_sts]\nmode = "enforce"\n' >> "$data/mailyard.toml"
  echo "$PASSWORD" | my --data "$data" user add "$user@$dom" --password-stdin
}
setup_instance a.test "$A_IP" alice
setup_instance b.test "$B_IP" bob

zone() {  # domain ip
  local dom=$1 ip=$2
  cat <<EOF
\$ORIGIN $dom.
\$TTL 60
@ IN SOA ns.$dom. hostmaster.$dom. 1 3600 600 86400 60
@ IN NS ns.$dom.
ns IN A 127.0.0.1
mail.$dom. IN A $ip
@ IN TXT "v=spf1 ip4:$ip -all"
_dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r"
EOF
  # Everything else as mailyard prints it (MX, DKIM, MTA-STS, TLS-RPT, SRV), minus its
  # SPF and DMARC advice, replaced above.
  my --data "$DIR/$dom" dns records "$dom" | grep -v -e '^;' -e '^\$' -e '^$' \
     -e '"v=spf1' -e '"v=DMARC1'
}
mkdir -p "$DIR/knot"
zone a.test "$A_IP" > "$DIR/knot/a.test.zone"
zone b.test "$B_IP" > "$DIR/knot/b.test.zone"
# Reverse DNS, so that the receivers' iprev check has an answer.
cat > "$DIR/knot/0.0.127.in-addr.arpa.zone" <<EOF
\$ORIGIN 0.0.127.in-addr.arpa.
\$TTL 60
@ IN SOA ns.a.test. hostmaster.a.test. 1 3600 600 86400 60
@ IN NS ns.a.test.
1 IN PTR localhost.
2 IN PTR mail.a.test.
3 IN PTR mail.b.test.
EOF
cat > "$DIR/knot/knot.conf" <<EOF
server:
    rundir: "$DIR/knot"
    listen: 127.0.0.1@$DNS_PORT
log:
  - target: stderr
    any: notice
database:
    storage: "$DIR/knot/db"
template:
  - id: default
    storage: "$DIR/knot"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: a.test
  - domain: b.test
  - domain: 0.0.127.in-addr.arpa
EOF
echo "== knotd on 127.0.0.1:$DNS_PORT (zones in $DIR/knot)"
"$KNOTD" -c "$DIR/knot/knot.conf" > "$DIR/knot/knotd.log" 2>&1 &
PIDS+=($!)

for dom in a.test b.test; do
  rm -f "$DIR/$dom/run/listeners.json"
  # Not through my(): a backgrounded function is a subshell, and its PID is not the server's.
  "$PY" -m mailyard.cli.main --data "$DIR/$dom" serve > "$DIR/$dom/server.log" 2>&1 &
  PIDS+=($!)
done

"$PY" - "$DIR" "$PASSWORD" "$DNS_PORT" <<'EOF'
import json, poplib, smtplib, ssl, sys, time
from pathlib import Path

import dns.message, dns.query

d, password, dns_port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deadline = time.time() + 30
for dom in ("a.test", "b.test"):
    while not (d / dom / "run" / "listeners.json").exists():
        if time.time() > deadline:
            sys.exit(f"{dom} did not start; see {d / dom / 'server.log'}")
        time.sleep(0.1)
    q = dns.message.make_query(dom, "MX")
    while not dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=1).answer:
        if time.time() > deadline:
            sys.exit("knotd does not answer; see knot/knotd.log")
        time.sleep(0.1)
print("== a.test and b.test are running; Knot answers: b.test MX ->",
      dns.query.udp(dns.message.make_query("b.test", "MX"), "127.0.0.1",
                    port=dns_port).answer[0].to_text().split()[-1])

ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
msg = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: hello from a.test\r\n"
       b"Message-ID: <demo-1@a.test>\r\n\r\nHi Bob, this crossed two mail servers.\r\n")
print("== alice@a.test submits on 127.0.0.2:2587 (STARTTLS + AUTH) to bob@b.test")
with smtplib.SMTP("127.0.0.2", 2587, timeout=10) as s:
    s.starttls(context=ctx)
    s.login("alice@a.test", password)
    s.sendmail("alice@a.test", ["bob@b.test"], msg)

print("== waiting for it in bob's INBOX (POP3 with STLS on 127.0.0.3:2110)")
while True:
    p = poplib.POP3("127.0.0.3", 2110, timeout=10)
    p.stls(ctx)
    p.user("bob@b.test")
    p.pass_(password)
    if p.stat()[0]:
        lines = p.retr(1)[1]
        p.quit()
        break
    p.quit()
    if time.time() > deadline + 30:
        sys.exit("not delivered; see a.test/server.log")
    time.sleep(0.5)
print("== bob@b.test received (headers shortened):\n")
for line in lines:
    text = line.decode(errors="replace")
    print("   ", text if len(text) < 110 else text[:107] + "...")
EOF

echo
echo "== a.test's outbound log:"
grep -e "MTA-STS policy" -e "delivered" "$DIR/a.test/server.log" | sed 's/^/    /' || true
if [ "$WAIT" = 1 ]; then
  echo
  echo "Both servers keep running (a.test: 127.0.0.2, b.test: 127.0.0.3; users alice/bob,"
  echo "password $PASSWORD; CA $DIR/ca.pem; DNS 127.0.0.1:$DNS_PORT). Ctrl-C stops them."
  wait
fi
