"""Config values that would leave the server unusable stop it at start with one line naming
the key: NaN/infinite numbers, zero timeouts and connection limits, an out-of-range
outbound port, a hostname that is not a DNS name."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mailyard.config import (
    CONFIG_NAME,
    DEV_PORTS,
    Config,
    ConfigError,
    load_config,
    render_config,
)
from mailyard.policy.addresses import canonical_domain


def _load(tmp_path: Path, text: str) -> Config:
    (tmp_path / CONFIG_NAME).write_text(text, encoding="utf-8")
    return load_config(tmp_path)


def _keys_of(kind: typing.Any) -> list[tuple[str, str]]:
    """(section, key) of every field of that type in a [section] of the config."""
    out = []
    for section in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(tp):
            continue
        hints = typing.get_type_hints(tp)
        out += [(section.name, f.name) for f in dataclasses.fields(tp) if hints[f.name] is kind]
    return out


FLOAT_KEYS = _keys_of(float)
TIMEOUT_KEYS = [(s, k) for s, k in FLOAT_KEYS if k == "timeout" or k.endswith("_timeout")]


def _assert_rejected(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}:"), message


def test_the_schema_has_the_keys_these_tests_walk() -> None:
    assert ("limits", "command_timeout") in TIMEOUT_KEYS
    assert ("limits", "preauth_timeout") in TIMEOUT_KEYS
    assert ("dns", "timeout") in TIMEOUT_KEYS
    assert ("queue", "connect_timeout") in TIMEOUT_KEYS
    assert ("auth", "failure_delay") in FLOAT_KEYS


@pytest.mark.parametrize("literal", ["nan", "+nan", "-nan", "inf", "+inf"])
@pytest.mark.parametrize(("section", "key"), FLOAT_KEYS)
def test_nan_and_infinity_are_refused_for_every_float_key(
        tmp_path: Path, section: str, key: str, literal: str) -> None:
    _assert_rejected(tmp_path, f"[{section}]\n{key} = {literal}\n", f"{section}.{key}")


def test_negative_infinity_is_refused_too(tmp_path: Path) -> None:
    _assert_rejected(tmp_path, "[limits]\ncommand_timeout = -inf\n", "limits.command_timeout")


@pytest.mark.parametrize("value", ["0", "0.0"])
@pytest.mark.parametrize(("section", "key"), TIMEOUT_KEYS)
def test_zero_timeouts_are_refused(tmp_path: Path, section: str, key: str, value: str) -> None:
    _assert_rejected(tmp_path, f"[{section}]\n{key} = {value}\n", f"{section}.{key}")


@pytest.mark.parametrize("key", ["max_connections", "max_connections_per_ip", "max_recipients"])
def test_zero_connection_and_recipient_limits_are_refused(tmp_path: Path, key: str) -> None:
    _assert_rejected(tmp_path, f"[limits]\n{key} = 0\n", f"limits.{key}")


@pytest.mark.parametrize(("text", "key"), [
    ("retry_initial = 0", "queue.retry_initial"),  # a failing destination retried in a loop
    ("retry_initial = -5.0", "queue.retry_initial"),
    ("expire = 0", "queue.expire"),  # every message bounced before its first attempt
    ("retry_initial = 600.0\nretry_max = 60.0", "queue.retry_max"),
    ("delay_warning = -1.0", "queue.delay_warning"),
    ("concurrency_per_destination = 0", "queue.concurrency_per_destination"),
])
def test_queue_intervals_that_cannot_work_are_refused(tmp_path: Path, text: str, key: str) -> None:
    _assert_rejected(tmp_path, f"[queue]\n{text}\n", key)


def test_queue_intervals_that_work_are_fine(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[queue]\nretry_initial = 1.0\nretry_max = 1.0\ndelay_warning = 0\n")
    assert (cfg.queue.retry_initial, cfg.queue.retry_max, cfg.queue.delay_warning) == (1, 1, 0)


def test_limits_of_one_and_small_timeouts_are_fine(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[limits]\nmax_connections = 1\nmax_connections_per_ip = 1\n"
                          "command_timeout = 0.5\n[dns]\ntimeout = 0.1\n")
    assert cfg.limits.max_connections == 1 and cfg.limits.command_timeout == 0.5
    assert cfg.dns.timeout == 0.1


@pytest.mark.parametrize("port", [0, 65536, 70000])
@pytest.mark.parametrize("key", ["outbound_port", "mta_sts_port"])
def test_queue_ports_out_of_range_are_refused(tmp_path: Path, key: str, port: int) -> None:
    _assert_rejected(tmp_path, f"[queue]\n{key} = {port}\n", f"queue.{key}")


@pytest.mark.parametrize("port", [1, 25, 2525, 65535])
def test_outbound_ports_in_range_are_fine(tmp_path: Path, port: int) -> None:
    assert _load(tmp_path, f"[queue]\noutbound_port = {port}\n").queue.outbound_port == port


BAD_HOSTNAMES = [
    "",
    ".",
    "..",
    "mail..example.test",
    ".mail.example.test",
    "mail.example.test..",
    "-mail.example.test",
    "mail-.example.test",
    "mail.-example.test",
    "mail_1.example.test",
    "mail example.test",
    "mail.exa$mple.test",
    "mail/x",
    "mail:25",
    "[127.0.0.1]",
    "a" * 64 + ".example.test",
    ".".join(["a" * 63] * 4),  # 255 characters
    "mail.\u2603\u0000.test",
    "mail.exa\u200bmple.test",
]


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_hostnames_that_are_not_dns_names_are_refused(tmp_path: Path, hostname: str) -> None:
    _assert_rejected(tmp_path, f"hostname = {json.dumps(hostname)}\n", "hostname")


@pytest.mark.parametrize(("hostname", "expected"), [
    ("localhost", "localhost"),
    ("mail.example.test", "mail.example.test"),
    ("mail.example.test.", "mail.example.test"),  # the root's dot is dropped
    ("Mail-1.Example.test", "Mail-1.Example.test"),
    ("a" * 63 + ".example.test", "a" * 63 + ".example.test"),
    (".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]), ".".join(["a" * 63, "b" * 63, "c" * 63,
                                                                   "d" * 61])),  # 253
    ("mail.xn--bcher-kva.test", "mail.xn--bcher-kva.test"),
    ("mail.bücher.test", "mail.xn--bcher-kva.test"),  # a U-label becomes its A-label
])
def test_dns_hostnames_are_accepted(tmp_path: Path, hostname: str, expected: str) -> None:
    assert _load(tmp_path, f"hostname = {json.dumps(hostname)}\n").hostname == expected


@pytest.mark.parametrize("domain", ["example.test", "Example.COM", "bücher.test", "xn--bcher-kva.test"])
def test_what_init_writes_is_valid(tmp_path: Path, domain: str) -> None:
    hostname = f"mail.{canonical_domain(domain)}"  # as cmd_init makes it
    cfg = _load(tmp_path, render_config(hostname=hostname, ports=DEV_PORTS))
    assert cfg.hostname == hostname


def test_the_defaults_are_valid(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg == dataclasses.replace(Config(), data_dir=cfg.data_dir)


def _mailyard(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailyard.cli.main", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=120)


def test_serve_with_a_nan_timeout_exits_with_one_line_naming_the_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = _mailyard(data, "init", "--domain", "example.test", "--dev")
    assert init.returncode == 0, init.stderr
    cfg = data / CONFIG_NAME
    text = re.sub(r'(?m)^(\w+) = "127\.0\.0\.1:\d+"$', r'\1 = "127.0.0.1:0"', cfg.read_text())
    text = text.replace("[limits]\n", "[limits]\ncommand_timeout = nan\n", 1)
    assert "command_timeout = nan" in text
    cfg.write_text(text)
    proc = _mailyard(data, "serve")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "limits.command_timeout" in lines[0]
    assert "listening" not in proc.stdout
