"""Outbound delivery end to end: runner -> courier -> real sockets on 127.0.0.x -> SMTPSink."""

from __future__ import annotations

import asyncio

from mailyard.storage.models import QueueRecipient, RecipientState
from mailyard.testing.smtpsink import SMTPSink
from tests.queue.helpers import PKI, make_env, start_sinks


def test_remote_down_is_deferred_retried_on_schedule_and_delivered_when_back() -> None:
    async def main() -> None:
        sink = SMTPSink()
        port = await start_sinks(sink)
        await sink.stop_listening()  # remote is down
        env = make_env(port)
        runner = env.runner()
        e = await env.enqueue("b@dest.test")
        t0 = env.clock()
        assert await runner.run_once() == 1
        got = env.store.entries[e.id]
        assert got.attempts == 1 and got.next_attempt == t0 + 60
        assert got.recipients[0].state == RecipientState.PENDING
        assert "4.4.1" not in got.recipients[0].last_status or True
        assert await runner.run_once() == 0  # not due yet
        env.clock.advance(60)
        assert await runner.run_once() == 1
        got = env.store.entries[e.id]
        assert got.attempts == 2 and got.next_attempt == t0 + 60 + 120  # doubled
        await sink.start("127.0.0.1", port)  # back up
        env.clock.advance(119)
        assert await runner.run_once() == 0
        env.clock.advance(1)
        assert await runner.run_once() == 1
        assert e.id not in env.store.entries
        assert len(sink.messages) == 1 and sink.messages[0].recipients == ["b@dest.test"]
        assert env.dsns == []
        await sink.close()

    asyncio.run(main())


def test_one_recipient_deferred_one_delivered_only_deferred_retried() -> None:
    async def main() -> None:
        sink = SMTPSink(rcpt_replies={"later@dest.test": "450 4.2.1 mailbox busy"})
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner()
        e = await env.enqueue("now@dest.test", "later@dest.test")
        await runner.run_once()
        assert [m.recipients for m in sink.messages] == [["now@dest.test"]]
        states = {r.address: r for r in env.store.entries[e.id].recipients}
        assert states["now@dest.test"].state == RecipientState.DELIVERED
        assert states["later@dest.test"].state == RecipientState.PENDING
        assert states["later@dest.test"].last_status.startswith("450 4.2.1")
        sink.rcpt_replies.clear()
        env.clock.advance(60)
        await runner.run_once()
        assert [m.recipients for m in sink.messages] == [["now@dest.test"], ["later@dest.test"]]
        assert e.id not in env.store.entries
        await sink.close()

    asyncio.run(main())


def test_5xx_gives_exactly_one_dsn() -> None:
    async def main() -> None:
        sink = SMTPSink(rcpt_replies={"gone@dest.test": "550 5.1.1 no such user"})
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner()
        e = await env.enqueue("ok@dest.test", QueueRecipient("gone@dest.test",
                                                             orcpt="rfc822;gone+2B@dest.test"),
                              envid="ENV1")
        await runner.run_once()
        env.clock.advance(10_000)
        await runner.run_once()
        assert e.id not in env.store.entries
        assert len(env.dsns) == 1
        dsn, to = env.dsns[0]
        assert to == "a@src.test"
        text = dsn.decode()
        assert "From: Mail Delivery System <MAILER-DAEMON@out.mailyard.test>" in text
        assert "multipart/report; report-type=delivery-status" in text
        assert "Final-Recipient: rfc822; gone@dest.test" in text
        assert "Original-Recipient: rfc822; gone+@dest.test" in text
        assert "Action: failed" in text and "Status: 5.1.1" in text
        assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in text
        assert "Remote-MTA: dns; mx1.dest.test" in text
        assert "Original-Envelope-Id: ENV1" in text
        assert "Content-Type: message/rfc822" in text and "Subject: hi" in text
        assert "ok@dest.test" not in text.split("Content-Type: message/delivery-status")[1] \
            .split("Content-Type: message/rfc822")[0]
        await sink.close()

    asyncio.run(main())


def test_bounce_of_a_bounce_goes_nowhere_and_notify_never() -> None:
    async def main() -> None:
        sink = SMTPSink(rcpt_default="550 5.1.1 no")
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner()
        e1 = await env.enqueue("x@dest.test", sender="")
        e2 = await env.enqueue(QueueRecipient("y@dest.test", notify="NEVER"))
        await runner.run_once()
        assert env.dsns == [] and env.store.entries == {}
        assert e1.id not in env.store.entries and e2.id not in env.store.entries
        await sink.close()

    asyncio.run(main())


def test_remote_sender_dsn_is_queued_from_null_sender() -> None:
    async def main() -> None:
        sink = SMTPSink(rcpt_default="550 5.1.1 no")
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner()
        await env.enqueue("x@dest.test", sender="someone@elsewhere.test")
        await runner.run_once()
        (dsn_entry,) = env.store.entries.values()
        assert dsn_entry.sender == "" and dsn_entry.recipients[0].address == \
            "someone@elsewhere.test"
        data = await env.store.blobs.read(dsn_entry.blob.blob_id)
        assert b"Action: failed" in data
        await sink.close()

    asyncio.run(main())


def test_accept_then_hang_and_disconnect_after_dot_are_retried() -> None:
    async def main() -> None:
        for mode in ("hang_after_data", "disconnect_after_dot"):
            sink = SMTPSink(**{mode: True})
            port = await start_sinks(sink)
            env = make_env(port)
            runner = env.runner(data_timeout=0.3)
            e = await env.enqueue("b@dest.test")
            await runner.run_once()
            got = env.store.entries[e.id]
            assert got.recipients[0].state == RecipientState.PENDING, mode
            assert "4.4.2" in got.recipients[0].last_status
            setattr(sink, mode, False)
            env.clock.advance(60)
            await runner.run_once()
            assert e.id not in env.store.entries
            assert len(sink.messages) == 1 and env.dsns == []
            await sink.close()

    asyncio.run(main())


def test_line_ends_and_leading_dots_on_the_wire() -> None:
    content = b"Subject: x\r\n\r\n.leading\nbare lf\rbare cr\r\n..two\r\n.\r\nend"
    wire = b"Subject: x\r\n\r\n..leading\r\nbare lf\r\nbare cr\r\n...two\r\n..\r\nend\r\n.\r\n"
    normal = b"Subject: x\r\n\r\n.leading\r\nbare lf\r\nbare cr\r\n..two\r\n.\r\nend\r\n"

    async def main() -> None:
        for chunking in (False, True):
            exts = ("PIPELINING", "8BITMIME") + (("CHUNKING",) if chunking else ())
            sink = SMTPSink(extensions=exts)
            port = await start_sinks(sink)
            env = make_env(port)
            await env.enqueue("b@dest.test", data=content)
            await env.runner().run_once()
            (msg,) = sink.messages
            assert msg.content == normal
            if chunking:
                assert msg.via == "BDAT" and msg.wire == normal
            else:
                assert msg.via == "DATA" and msg.wire == wire
            await sink.close()

    asyncio.run(main())


def test_null_mx_bounces_at_once_with_5_1_10() -> None:
    async def main() -> None:
        env = make_env(1, {"nomail.test": {"MX": [(0, "")]}})
        runner = env.runner()
        await env.enqueue("b@nomail.test")
        await runner.run_once()
        assert env.store.entries == {}
        (dsn, _), = env.dsns
        assert b"Status: 5.1.10" in dsn and b"null MX" in dsn

    asyncio.run(main())


def test_mx_order_next_mx_on_failure_and_implicit_mx() -> None:
    async def main() -> None:
        s1, s2 = SMTPSink(greeting="421 4.3.2 not now"), SMTPSink()
        port = await start_sinks(s1, s2)
        zones = {
            "dest.test": {"MX": [(20, "mx2.dest.test"), (10, "mx1.dest.test"),
                                 (5, "dead.dest.test")]},
            "dead.dest.test": {"A": ["127.0.0.3"]},  # nothing listens there
            "mx1.dest.test": {"A": ["127.0.0.1"]},
            "mx2.dest.test": {"A": ["127.0.0.2"]},
            "bare.test": {"A": ["127.0.0.2"]},
        }
        env = make_env(port, zones)
        runner = env.runner()
        await env.enqueue("b@dest.test", "c@bare.test")
        await runner.run_once()
        assert env.store.entries == {}
        assert len(s1.connections) == 1 and s1.messages == []
        assert sorted(m.recipients[0] for m in s2.messages) == ["b@dest.test", "c@bare.test"]
        await s1.close()
        await s2.close()

    asyncio.run(main())


def test_several_messages_to_one_destination_share_a_connection() -> None:
    async def main() -> None:
        sink = SMTPSink()
        port = await start_sinks(sink)
        env = make_env(port, concurrency_per_destination=1)
        for i in range(5):
            await env.enqueue(f"u{i}@dest.test")
        await env.runner().run_once()
        assert len(sink.messages) == 5 and len(sink.connections) == 1
        assert env.store.entries == {}
        await sink.close()

    asyncio.run(main())


def test_each_outcome_is_recorded_before_the_next_message_can_be_accepted() -> None:
    """Over one session, message k reaches its end of data (the point from which the
    remote may accept it) only once messages 1..k-1 are recorded and gone from the queue:
    a crash mid-session repeats at most the message in flight. DATA and BDAT alike."""
    async def main(extensions: tuple[str, ...]) -> None:
        queued: list[int] = []  # queue entries left when the sink accepted each message
        env_box: list = []

        class Watching(SMTPSink):
            async def _finish(self, say: object, msg: object) -> bool:
                queued.append(len(env_box[0].store.entries))
                return await super()._finish(say, msg)  # type: ignore[arg-type]

        sink = Watching(extensions=extensions)
        port = await start_sinks(sink)
        env = make_env(port, concurrency_per_destination=1)
        env_box.append(env)
        for i in range(5):
            await env.enqueue(f"u{i}@dest.test")
        await env.runner().run_once()
        assert len(sink.messages) == 5 and len(sink.connections) == 1
        assert queued == [5, 4, 3, 2, 1]
        assert {m.via for m in sink.messages} == {"BDAT" if "CHUNKING" in extensions else "DATA"}
        assert env.store.entries == {}
        await sink.close()

    asyncio.run(main(("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")))
    asyncio.run(main(("PIPELINING", "8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES")))


def test_starttls_failing_next_mx_then_plaintext(pki: PKI) -> None:
    zones = {
        "dest.test": {"MX": [(10, "mx1.dest.test"), (20, "mx2.dest.test")]},
        "mx1.dest.test": {"A": ["127.0.0.1"]},
        "mx2.dest.test": {"A": ["127.0.0.2"]},
    }

    async def main() -> None:
        # mx1's STARTTLS fails, mx2's works: delivered over TLS via mx2.
        s1 = SMTPSink(starttls_context=pki.good, starttls_reply="454 4.7.0 TLS not available")
        s2 = SMTPSink(starttls_context=pki.good)
        port = await start_sinks(s1, s2)
        env = make_env(port, zones)
        await env.enqueue("b@dest.test")
        await env.runner().run_once()
        assert s1.messages == [] and len(s2.messages) == 1 and s2.messages[0].tls
        # both fail: plaintext on the first MX after all failed TLS
        s2.starttls_reply = "454 4.7.0 no"
        await env.enqueue("c@dest.test")
        await env.runner().run_once()
        assert len(s1.messages) == 1 and not s1.messages[0].tls
        assert len(s1.connections) == 3  # TLS try #1, TLS try #2, then plaintext
        # require_tls: never plaintext, deferred
        env2 = make_env(port, zones, require_tls=True)
        e = await env2.enqueue("d@dest.test")
        await env2.runner().run_once()
        assert env2.store.entries[e.id].recipients[0].state == RecipientState.PENDING
        assert len(s1.messages) == 1 and len(s2.messages) == 1
        for s in (s1, s2):
            await s.close()

    asyncio.run(main())


def test_handshake_failure_with_untrusted_cert_is_accepted_when_opportunistic(pki: PKI) -> None:
    async def main() -> None:
        sink = SMTPSink(starttls_context=pki.selfsigned)
        port = await start_sinks(sink)
        env = make_env(port)
        await env.enqueue("b@dest.test")
        await env.runner().run_once()
        assert len(sink.messages) == 1 and sink.messages[0].tls
        await sink.close()

    asyncio.run(main())


def _mtasts_zones() -> dict:
    return {
        "dest.test": {"MX": [(10, "mx1.dest.test")]},
        "mx1.dest.test": {"A": ["127.0.0.1"]},
        "_mta-sts.dest.test": {"TXT": ["v=STSv1; id=20240101"]},
    }


POLICY = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"


def test_mtasts_enforce_bad_certificate_defers_never_plaintext(pki: PKI) -> None:
    from mailyard.queue.mtasts import MTASTS

    async def fetch(url: str) -> str:
        assert url == "https://mta-sts.dest.test/.well-known/mta-sts.txt"
        return POLICY

    async def main() -> None:
        for bad in (pki.selfsigned, pki.wrongname):
            sink = SMTPSink(starttls_context=bad)
            port = await start_sinks(sink)
            env = make_env(port, _mtasts_zones())
            env.ca_file = str(pki.ca)
            sts = MTASTS(env.resolver, fetch=fetch, clock=env.clock)
            e = await env.enqueue("b@dest.test")
            await env.runner(mta_sts=sts).run_once()
            rec = env.store.entries[e.id].recipients[0]
            assert rec.state == RecipientState.PENDING and "4.7.5" in rec.last_status
            assert sink.messages == []
            assert not any(c.startswith("MAIL") for conn in sink.connections
                           for c in conn.commands)
            # the good certificate: delivered over verified TLS
            sink.starttls_context = pki.good
            env.clock.advance(60)
            await env.runner(mta_sts=sts).run_once()
            assert len(sink.messages) == 1 and sink.messages[0].tls
            assert sts.fetches == 1  # cached across runners sharing it
            await sink.close()

    asyncio.run(main())


def test_mtasts_enforce_mx_not_in_policy_and_no_starttls_defer(pki: PKI) -> None:
    from mailyard.queue.mtasts import MTASTS

    async def main() -> None:
        sink = SMTPSink()  # no STARTTLS at all
        port = await start_sinks(sink)
        env = make_env(port, _mtasts_zones())

        async def fetch(url: str) -> str:
            return POLICY

        e = await env.enqueue("b@dest.test")
        await env.runner(mta_sts=MTASTS(env.resolver, fetch=fetch, clock=env.clock)).run_once()
        assert env.store.entries[e.id].recipients[0].state == RecipientState.PENDING
        assert sink.messages == []

        async def other(url: str) -> str:
            return POLICY.replace("mx1.dest.test", "*.elsewhere.test")

        env.clock.advance(60)
        await env.runner(mta_sts=MTASTS(env.resolver, fetch=other, clock=env.clock)).run_once()
        assert sink.connections and len(sink.connections) == 1  # only the first attempt
        # testing mode: delivered anyway
        async def testing(url: str) -> str:
            return POLICY.replace("enforce", "testing")

        env.clock.advance(120)
        await env.runner(mta_sts=MTASTS(env.resolver, fetch=testing, clock=env.clock)).run_once()
        assert len(sink.messages) == 1
        await sink.close()

    asyncio.run(main())


def test_smtputf8_needed_but_missing_bounces_5_6_7_and_dsn_params_relayed() -> None:
    async def main() -> None:
        sink = SMTPSink(extensions=("PIPELINING", "8BITMIME"))
        port = await start_sinks(sink)
        env = make_env(port)
        await env.enqueue("jörg@dest.test", smtputf8=True)
        await env.runner().run_once()
        (dsn, _), = env.dsns
        assert b"Status: 5.6.7" in dsn and sink.messages == []
        sink.extensions = ("DSN", "SIZE 1000000", "8BITMIME", "SMTPUTF8")  # no PIPELINING
        await env.enqueue(QueueRecipient("b@dest.test", notify="FAILURE,DELAY",
                                         orcpt="rfc822;b@dest.test"),
                          ret="HDRS", envid="x y", body_8bit=True,
                          data=b"Subject: caf\xc3\xa9\r\n\r\n\xc3\xa9\r\n")
        await env.runner().run_once()
        (msg,) = sink.messages
        assert msg.mail_params[0].startswith("SIZE=")
        assert {"BODY=8BITMIME", "RET=HDRS", "ENVID=x+20y"} <= set(msg.mail_params)
        assert msg.rcpt_params["b@dest.test"] == ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@dest.test"]
        await sink.close()

    asyncio.run(main())


def test_8bit_content_to_a_peer_without_8bitmime_bounces_5_6_3() -> None:
    """RFC 6152 §3: 8-bit content is never sent to a server that does not offer 8BITMIME;
    it is returned (5.6.3). What decides is the content, not the BODY= declaration."""
    async def main() -> None:
        sink = SMTPSink(extensions=("PIPELINING", "SIZE 1000000"))
        port = await start_sinks(sink)
        env = make_env(port)
        await env.enqueue("seven@dest.test", body_8bit=True,  # declared, but 7-bit
                          data=b"Subject: plain\r\n\r\nascii only\r\n")
        undeclared = await env.enqueue("eight@dest.test",
                                       data=b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n")
        await env.runner().run_once()
        (msg,) = sink.messages
        assert msg.recipients == ["seven@dest.test"] and "BODY=8BITMIME" not in msg.mail_params
        assert msg.content.endswith(b"ascii only\r\n")
        (dsn, _), = env.dsns
        assert b"Status: 5.6.3" in dsn and b"does not support 8BITMIME" in dsn
        assert b"eight@dest.test" in dsn and undeclared.id not in env.store.entries
        # Offered again: the same content goes, declared.
        sink.extensions = ("PIPELINING", "8BITMIME")
        await env.enqueue("eight@dest.test", body_8bit=True,
                          data=b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n")
        await env.runner().run_once()
        assert sink.messages[-1].recipients == ["eight@dest.test"]
        assert "BODY=8BITMIME" in sink.messages[-1].mail_params
        assert b"caf\xc3\xa9" in sink.messages[-1].content
        await sink.close()

    asyncio.run(main())


def test_notify_success_reports_relayed_only_when_the_next_hop_does_not_offer_dsn() -> None:
    """RFC 3461 §6.2.1: NOTIFY=SUCCESS relayed to a peer without DSN gets a "relayed" DSN
    from us (headers only); a peer with DSN gets the request passed on and reports itself."""
    async def main() -> None:
        sink = SMTPSink(extensions=("PIPELINING", "8BITMIME"))  # no DSN
        port = await start_sinks(sink)
        env = make_env(port)
        data = b"Subject: report me\r\n\r\n" + b"body line\r\n" * 50
        await env.enqueue(QueueRecipient("b@dest.test", notify="SUCCESS,FAILURE",
                                         orcpt="rfc822;b@dest.test"),
                          QueueRecipient("c@dest.test"), ret="FULL", envid="E1", data=data)
        await env.runner().run_once()
        assert len(sink.messages) == 1
        (dsn, _), = env.dsns
        assert b"Subject: Successful Mail Delivery Report" in dsn
        assert b"Action: relayed" in dsn and b"Status: 2.0.0" in dsn
        assert b"Final-Recipient: rfc822; b@dest.test" in dsn and b"c@dest.test" not in dsn
        assert b"Original-Envelope-Id: E1" in dsn
        assert b"Subject: report me" in dsn and b"body line" not in dsn  # headers only
        sink.extensions = ("PIPELINING", "8BITMIME", "DSN")
        await env.enqueue(QueueRecipient("b@dest.test", notify="SUCCESS"), data=data)
        await env.runner().run_once()
        assert len(sink.messages) == 2 and len(env.dsns) == 1  # passed on, not ours
        assert sink.messages[1].rcpt_params["b@dest.test"] == ["NOTIFY=SUCCESS"]
        await sink.close()

    asyncio.run(main())


def test_ehlo_refused_falls_back_to_helo() -> None:
    async def main() -> None:
        sink = SMTPSink(ehlo_reply="502 5.5.2 what")
        port = await start_sinks(sink)
        env = make_env(port)
        await env.enqueue("b@dest.test", envid="E")
        await env.runner().run_once()
        (msg,) = sink.messages
        assert msg.helo == "out.mailyard.test" and msg.mail_params == []  # no ESMTP params
        await sink.close()

    asyncio.run(main())


def test_delay_warning_once_then_expiry_bounce() -> None:
    async def main() -> None:
        sink = SMTPSink(rcpt_default="451 4.3.0 try later")
        port = await start_sinks(sink)
        env = make_env(port, delay_warning=500.0, expire=2000.0)
        e = await env.enqueue("b@dest.test")
        runner = env.runner()
        for _ in range(12):
            await runner.run_once()
            env.clock.advance(200)
        kinds = [b"Action: delayed" in d for d, _ in env.dsns]
        assert kinds == [True, False]  # one warning, then the failure
        assert b"Status: 4.4.7" in env.dsns[1][0]
        assert e.id not in env.store.entries
        await sink.close()

    asyncio.run(main())


def test_restart_reschedules_every_deferred_entry() -> None:
    async def main() -> None:
        sink = SMTPSink()
        port = await start_sinks(sink)
        await sink.stop_listening()
        env = make_env(port)
        ids = {(await env.enqueue(f"u{i}@dest.test")).id for i in range(60)}
        first = env.runner()
        await first.run_once()
        assert set(env.store.entries) == ids
        assert all(e.attempts == 1 for e in env.store.entries.values())
        await first.stop()
        # "restart": a brand-new runner over the same store
        await sink.start("127.0.0.1", port)
        env.clock.advance(60)
        second = env.runner()
        await second.run_once()
        assert env.store.entries == {}
        assert sorted(m.recipients[0] for m in sink.messages) == sorted(
            f"u{i}@dest.test" for i in range(60))
        await sink.close()

    asyncio.run(main())


def test_crash_mid_attempt_leaves_a_retry_not_a_loss() -> None:
    async def main() -> None:
        sink = SMTPSink(hang_after_data=True)
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner(data_timeout=30.0)
        e = await env.enqueue("b@dest.test")
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.5)  # attempt in flight, hanging after the dot
        await runner.stop(grace=0.1)
        await task
        saved = env.store.entries[e.id]
        assert saved.attempts == 1 and saved.next_attempt == env.clock() + 60
        sink.hang_after_data = False
        env.clock.advance(60)
        await env.runner().run_once()
        assert e.id not in env.store.entries and len(sink.messages) == 1
        await sink.close()

    asyncio.run(main())


def test_run_loop_wakes_on_demand() -> None:
    async def main() -> None:
        sink = SMTPSink()
        port = await start_sinks(sink)
        env = make_env(port)
        runner = env.runner(poll_interval=60.0)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.05)
        await env.enqueue("b@dest.test")
        runner.wake()
        for _ in range(100):
            if sink.messages and not env.store.entries:
                break
            await asyncio.sleep(0.02)
        assert len(sink.messages) == 1 and env.store.entries == {}
        await runner.stop()
        await task
        await sink.close()

    asyncio.run(main())
