"""atheris harness for one target of fuzz/targets.py (libFuzzer driver).

    python fuzz/fuzz_target.py smtp fuzz/corpus/smtp -max_total_time=600 -rss_limit_mb=1024

The first argument names the target (smtp, pop3, imap, sasl, mime, authrecords,
dkim); the rest goes to libFuzzer. ``-rss_limit_mb`` enforces "memory bounded";
an exception escaping the target is a crash (libFuzzer writes crash-<hash>).
scripts/fuzz.sh runs every target in turn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():  # coverage feedback from the code under test
    import targets

    import mailyard.mailauth.dkim
    import mailyard.mailauth.dmarc
    import mailyard.mailauth.spf
    import mailyard.message.bodystructure
    import mailyard.message.envelope
    import mailyard.message.mime
    import mailyard.message.parse
    import mailyard.protocol.imap.parser
    import mailyard.protocol.pop3
    import mailyard.protocol.sasl
    import mailyard.protocol.smtp.server  # noqa: F401


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(sorted(targets.TARGETS))}}} [libFuzzer args]")
    target = targets.TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
