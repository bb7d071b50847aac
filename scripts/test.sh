#!/usr/bin/env bash
# Install everything the tests need (Debian packages and Python packages), then run
# the linters, the type checker and the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(swaks curl fetchmail knot knot-dnsutils postfix dovecot-pop3d dovecot-imapd isync
      offlineimap3 neomutt tmux strace libnet-ssleay-perl libio-socket-ssl-perl)
missing=()
for p in "${DEBS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Postfix and Dovecot are test peers only: keep their packaged services from starting.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
echo "== installing mailyard with its test extras"
$PY -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
$PY -m ruff check src tests bench
echo "== mypy"
$PY -m mypy
echo "== pytest"
set +e
$PY -m pytest -n 2 -p no:randomly "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us too.
exit $rc
