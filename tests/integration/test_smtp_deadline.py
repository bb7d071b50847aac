"""The SMTP adapter's one lazy timer per session: each command moves the deadline on
(command_timeout counts from the last command, not from the first), whether the adapter
decides it (MAIL) or the core answers it alone (NOOP, RSET, HELP), and a client that
falls silent, or trickles a command without ever ending it, is still cut with 421 4.4.2
once the deadline passes."""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import Dialog, make_server


def _server(tmp_path):  # type: ignore[no-untyped-def]
    srv = make_server(tmp_path)
    cfg = srv.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\ncommand_timeout = 1.0\n", 1))
    srv.start()
    return srv


def _keep_busy(d: Dialog, *commands: str) -> None:
    """Greeting and EHLO, then ``commands`` every 0.3 s, well past the first deadline."""
    assert d.reply()[0] == 220
    assert d.cmd("EHLO client.remote.example")[0] == 250
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        for command in commands:
            assert d.cmd(command)[0] in (214, 250), command
        time.sleep(0.3)


@pytest.mark.parametrize("command", ["NOOP", "RSET", "HELP"])
def test_commands_the_core_answers_move_the_deadline_too(tmp_path, command) -> None:  # type: ignore[no-untyped-def]
    srv = _server(tmp_path)
    try:
        d = Dialog(*srv.addr("smtp"))
        _keep_busy(d, command)
        assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250  # still served
        # A command trickled a byte at a time and never ended moves nothing.
        t1 = time.monotonic()
        for ch in "NOOP NOOP NOOP":
            try:
                d.send(ch.encode())
            except (BrokenPipeError, ConnectionResetError):
                break  # cut off already
            time.sleep(0.2)
        code, text = d.reply()
        assert code == 421 and "4.4.2" in text, text
        assert time.monotonic() - t1 < 5
    finally:
        srv.stop()


def test_deadline_moves_with_each_command_then_silence_is_cut(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = _server(tmp_path)
    try:
        d = Dialog(*srv.addr("smtp"))
        # MAIL is decided by the adapter, which moves the deadline on.
        _keep_busy(d, "MAIL FROM:<sender@remote.example>", "RSET")
        silent_since = time.monotonic()
        code, text = d.reply()
        waited = time.monotonic() - silent_since
        assert code == 421 and "4.4.2" in text, text
        assert d.closed()
        assert 0.5 <= waited < 5, waited
    finally:
        srv.stop()
