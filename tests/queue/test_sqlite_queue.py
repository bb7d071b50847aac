"""The runner against the real SQLite store: retries, partial results, DSNs, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailyard.storage.models import RecipientState
from mailyard.storage.sqlite.store import SQLiteStore
from mailyard.testing.clock import FakeClock
from mailyard.testing.smtpsink import SMTPSink
from tests.queue.helpers import make_env, start_sinks


def test_sqlite_retry_partial_and_dsn(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        store = SQLiteStore(tmp_path / "data", clock=clock)
        await store.open()
        sink = SMTPSink(rcpt_replies={"later@dest.test": "451 4.2.1 busy",
                                      "gone@dest.test": "550 5.1.1 unknown"})
        port = await start_sinks(sink)
        await sink.stop_listening()
        env = make_env(port, store=store, clock=clock)
        runner = env.runner()
        e = await env.enqueue("now@dest.test", "later@dest.test", "gone@dest.test")
        await runner.run_once()  # remote down
        saved = await store.queue_get(e.id)
        assert saved is not None and saved.attempts == 1
        assert saved.next_attempt == clock() + 60
        assert all(r.state == RecipientState.PENDING for r in saved.recipients)
        await sink.start("127.0.0.1", port)
        clock.advance(60)
        await runner.run_once()
        saved = await store.queue_get(e.id)
        assert saved is not None
        states = {r.address: r.state for r in saved.recipients}
        assert states == {"now@dest.test": RecipientState.DELIVERED,
                          "later@dest.test": RecipientState.PENDING,
                          "gone@dest.test": RecipientState.BOUNCED}
        assert len(env.dsns) == 1 and b"Status: 5.1.1" in env.dsns[0][0]
        sink.rcpt_replies.clear()
        clock.advance(120)
        await runner.run_once()
        assert await store.queue_get(e.id) is None
        assert [m.recipients for m in sink.messages] == [["now@dest.test"], ["later@dest.test"]]
        assert len(env.dsns) == 1
        await sink.close()
        await store.close()

    asyncio.run(main())


def test_sqlite_restart_reschedules_all(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        sink = SMTPSink()
        port = await start_sinks(sink)
        await sink.stop_listening()
        store = SQLiteStore(tmp_path / "data", clock=clock)
        await store.open()
        env = make_env(port, store=store, clock=clock)
        for i in range(40):
            await env.enqueue(f"u{i}@dest.test")
        await env.runner().run_once()
        assert len(await store.queue_list()) == 40
        await store.close()
        # restart: a new store object over the same files, a new runner
        store2 = SQLiteStore(tmp_path / "data", clock=clock)
        await store2.open()
        await sink.start("127.0.0.1", port)
        clock.advance(60)
        env2 = make_env(port, store=store2, clock=clock)
        await env2.runner().run_once()
        assert await store2.queue_list() == []
        assert len(sink.messages) == 40
        await sink.close()
        await store2.close()

    asyncio.run(main())
