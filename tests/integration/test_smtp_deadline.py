"""The SMTP adapter's one lazy timer per session: each command moves the deadline on
(command_timeout counts from the last command, not from the first), and a client that
falls silent is still cut with 421 4.4.2 once the deadline passes."""

from __future__ import annotations

import time

from tests.integration.harness import Dialog, make_server


def test_deadline_moves_with_each_command_then_silence_is_cut(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(tmp_path)
    cfg = srv.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\ncommand_timeout = 1.0\n", 1))
    srv.start()
    try:
        d = Dialog(*srv.addr("smtp"))
        assert d.reply()[0] == 220
        assert d.cmd("EHLO client.remote.example")[0] == 250
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # well past the first deadline
            # MAIL is decided by the adapter, which moves the deadline on.
            assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
            assert d.cmd("RSET")[0] == 250
            time.sleep(0.3)
        silent_since = time.monotonic()
        code, text = d.reply()
        waited = time.monotonic() - silent_since
        assert code == 421 and "4.4.2" in text, text
        assert d.closed()
        assert 0.5 <= waited < 5, waited
    finally:
        srv.stop()
