#!/usr/bin/env bash
# Long fuzz run: every target of fuzz/targets.py under atheris (libFuzzer), seeded from
# the committed corpora in fuzz/corpus/<target>/.
#
#   bash scripts/fuzz.sh                 # every target, 10 minutes each
#   SECONDS_PER_TARGET=3600 bash scripts/fuzz.sh smtp imap
#
# Invariant checked (STYLE.md habit 7): any input gives events, replies or a protocol
# error; an exception escaping a target is a crash, and RSS above RSS_LIMIT_MB (default
# 1024) is a memory failure. New interesting inputs go to fuzz/out/<target>/ (not
# committed; copy the small ones worth keeping into fuzz/corpus/<target>/); crashes are
# written as fuzz/out/crash-* and the script exits non-zero.
#
# atheris ships manylinux wheels for CPython 3.11 (no clang needed); on other platforms
# it builds from source and needs clang/libFuzzer. The short hypothesis run of the same
# targets is part of the normal test suite (tests/hardening/test_fuzz_short.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -c "import atheris" 2>/dev/null || $PY -m pip install -q --disable-pip-version-check atheris
SECS=${SECONDS_PER_TARGET:-600}
RSS=${RSS_LIMIT_MB:-1024}
if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(PYTHONPATH=fuzz $PY -c "import targets; print('\n'.join(sorted(targets.TARGETS)))")
fi
mkdir -p fuzz/out
status=0
for t in "${TARGETS[@]}"; do
  echo "== fuzzing $t for ${SECS}s"
  mkdir -p "fuzz/out/$t"
  $PY fuzz/fuzz_target.py "$t" "fuzz/out/$t" "fuzz/corpus/$t" \
      -max_total_time="$SECS" -rss_limit_mb="$RSS" -max_len=65536 \
      -artifact_prefix="fuzz/out/crash-$t-" -print_final_stats=1 || status=1
done
exit $status
