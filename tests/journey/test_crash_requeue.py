"""Issue 4, fault: kill -9 of the sending server while its queue holds mail.

b.test is down; alice submits N messages to b.test; a.test accepts them (250 means
fsynced, DESIGN.md "Nothing lost"), tries b.test, fails, and is killed with SIGKILL.
Then b.test starts, a.test starts again: every one of the N messages reaches bob
(a duplicate would be tolerable; a loss is not) and a.test's queue ends empty.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from tests.integration.harness import PASSWORD
from tests.journey.world import build_world, pop3_messages, wait_for

N = 8


def test_kill9_sender_mid_queue_then_everything_is_delivered(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    try:
        a, b = w.a, w.b
        a.server.start()
        ctx = w.ca.client_context()
        host, port = a.server.addr("submission")
        with smtplib.SMTP(host, port, timeout=10) as s:
            s.starttls(context=ctx)
            s.login("alice@a.test", PASSWORD)
            for i in range(N):
                msg = (f"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: crash {i}\r\n"
                       f"Message-ID: <crash-{i}@a.test>\r\n\r\nmessage {i}\r\n").encode()
                assert s.sendmail("alice@a.test", ["bob@b.test"], msg) == {}

        # The queue tried b.test (refused: it is down) and holds everything for a retry.
        wait_for(lambda: "delivery to b.test via mail.b.test failed" in a.server.log(),
                 timeout=20, what="a failed delivery attempt to b.test")
        listing = a.server.cli("queue", "list").stdout
        assert len(re.findall(r"to bob@b\.test", listing)) == N, listing

        a.server.kill9()
        b.server.start()
        a.server.start()

        def all_there() -> dict[int, int] | None:
            counts = {i: 0 for i in range(N)}
            for m in pop3_messages(b, "bob@b.test", ctx):
                for i in range(N):
                    if f"<crash-{i}@a.test>".encode() in m:
                        counts[i] += 1
            return counts if all(counts.values()) else None

        counts = wait_for(all_there, timeout=40, what=f"all {N} messages at bob",
                          interval=0.5)
        assert isinstance(counts, dict)
        assert all(c >= 1 for c in counts.values())
        wait_for(lambda: a.server.cli("queue", "list").stdout.strip() == "queue is empty",
                 timeout=20, what="a.test's queue to drain")
    finally:
        w.stop()
