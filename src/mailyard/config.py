"""Typed configuration read from ``DIR/mailyard.toml`` and validated at start.

Every section is a frozen dataclass; :func:`load_config` walks the TOML tables
against the dataclass fields, so an unknown key or a value of the wrong type
raises :class:`ConfigError` with one line naming the key — never a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "mailyard.toml"

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")

#: The listeners a mail client connects to, as (listener, protocol, TLS mode, SRV
#: priority), in the order of preference: the RFC 6186 SRV records (a listener's name is
#: its SRV service name) and the autoconfig file are both made from this table. TLS mode
#: "SSL" is implicit TLS, which RFC 8314 §5.1 prefers (a lower SRV priority).
CLIENT_LISTENERS: tuple[tuple[str, str, str, int], ...] = (
    ("submissions", "smtp", "SSL", 0),
    ("submission", "smtp", "STARTTLS", 10),
    ("imaps", "imap", "SSL", 0),
    ("imap", "imap", "STARTTLS", 10),
    ("pop3s", "pop3", "SSL", 20),
    ("pop3", "pop3", "STARTTLS", 30),
)

DEV_PORTS = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "pop3": 2110,
    "pop3s": 2995,
    "http": 8080,
}
STANDARD_PORTS = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "http": 80,
}


class ConfigError(Exception):
    """A config problem, worded as the one line the operator sees."""


@dataclass(frozen=True)
class ListenConfig:
    """Listen addresses; "" disables a listener. Form: "host:port" or "[v6]:port"."""

    smtp: str = "127.0.0.1:2525"
    submission: str = "127.0.0.1:2587"
    submissions: str = "127.0.0.1:2465"
    imap: str = "127.0.0.1:2143"
    imaps: str = "127.0.0.1:2993"
    pop3: str = "127.0.0.1:2110"
    pop3s: str = "127.0.0.1:2995"
    http: str = "127.0.0.1:8080"
    # HTTPS for the same endpoints (MTA-STS policies must be fetched over HTTPS, RFC 8461
    # §3.3), with the [tls] certificate. "" (the default) disables it. Served only
    # when ``http`` is enabled too. Not in LISTENERS: ``init`` does not write it.
    https: str = ""


@dataclass(frozen=True)
class MTASTSConfig:
    """The MTA-STS policy this server publishes for its domains (RFC 8461 §3.2)."""

    mode: str = "testing"  # testing | enforce | none
    max_age: int = 604800  # one week; at most 31557600


@dataclass(frozen=True)
class TLSConfig:
    cert: str = "tls/cert.pem"
    key: str = "tls/key.pem"


@dataclass(frozen=True)
class DNSConfig:
    nameservers: list[str] = field(default_factory=list)  # empty: the system resolver
    timeout: float = 5.0


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = 50 * 1024 * 1024  # SIZE advertised (RFC 1870)
    max_recipients: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be accepted
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: 5 minutes for commands
    data_timeout: float = 600.0  # RFC 5321 §4.5.3.2.5/6: 3 min per chunk, 10 min for the final dot
    preauth_timeout: float = 60.0  # before login (IMAP/POP3)
    idle_timeout: float = 1800.0  # IMAP: 30 minutes after login (RFC 9051 §5.4)
    min_free_bytes: int = 64 * 1024 * 1024  # MAIL gets 452 4.3.1 below this free space


@dataclass(frozen=True)
class AuthConfig:
    # Allow LOGIN/AUTH without TLS from loopback clients (handy for local tools); off by default.
    allow_plaintext_loopback: bool = False
    failure_delay: float = 1.0  # base delay after a failed attempt, doubling per failure
    max_failure_delay: float = 15.0


@dataclass(frozen=True)
class QueueConfig:
    outbound_port: int = 25
    ca_file: str = ""  # extra trusted CA bundle for outbound TLS / MTA-STS (tests)
    retry_initial: float = 300.0  # Postfix-like: 5 minutes ...
    retry_max: float = 3600.0  # ... doubling to one hour
    expire: float = 5 * 24 * 3600.0  # give up after 5 days
    delay_warning: float = 4 * 3600.0  # 0 disables the delay DSN
    concurrency_per_destination: int = 10
    connect_timeout: float = 30.0
    require_tls: bool = False  # refuse plaintext delivery everywhere
    # Source address of outbound connections (Postfix's smtp_bind_address); "" lets the
    # kernel choose. Set it when SPF names one address and the host has several.
    source_address: str = ""
    # Port of the MTA-STS policy fetch (https://mta-sts.<domain>:PORT/); 443 but in tests.
    mta_sts_port: int = 443


@dataclass(frozen=True)
class TLSRPTConfig:
    # SMTP TLS reports (RFC 8460): once a day, the TLS outcomes of our deliveries to each
    # domain that publishes a _smtp._tls record, sent where it asks.
    enabled: bool = True
    submitter: str = ""  # the reporting domain, which DKIM-signs them; "": the first local domain
    organization: str = ""  # "organization-name"; "": the submitter
    contact: str = ""  # "contact-info"; "": postmaster@<submitter>


@dataclass(frozen=True)
class SMTPConfig:
    # Processes that receive on the MX listener (server/smtpworker.py); 0 keeps it in the
    # server process. "auto": one per CPU beyond the first, at most 4 (none on one CPU).
    workers: int | str = 0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    hostname: str = "localhost"
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    tlsrpt: TLSRPTConfig = field(default_factory=TLSRPTConfig)
    data_dir: str = ""  # filled in by load_config, not read from the file

    def path(self, rel: str) -> Path:
        """A path from the config, relative to the data directory."""
        p = Path(rel)
        return p if p.is_absolute() else Path(self.data_dir) / p


def parse_hostport(value: str, *, key: str) -> tuple[str, int]:
    """ "127.0.0.1:2525" / "[::1]:2525" / ":25" -> (host, port)."""
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{key}: expected \"[ipv6]:port\", got {value!r}")
        port_s = rest[1:]
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep:
            raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{key}: port must be a number, got {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} out of range")
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    return host, port


def listener_port(listen: ListenConfig, name: str) -> int | None:
    """The port listener ``name`` is configured on; None when it is disabled ("").

    Port 0 (the kernel picks one at start) is returned as 0: only the running server
    knows that port (``ServerContext.bound_ports``).
    """
    spec = getattr(listen, name)
    return parse_hostport(spec, key=f"listen.{name}")[1] if spec else None


def listener_ports(listen: ListenConfig) -> dict[str, int | None]:
    """:func:`listener_port` of every listener in :data:`LISTENERS`, by name."""
    return {name: listener_port(listen, name) for name in LISTENERS}


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf; neither is a usable setting
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:  # the first type the value fits; else the first type's complaint
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table [{key}]")
        return _build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a bug in the schema


def _build(cls: Any, data: dict[str, Any], *, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "data_dir"}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"unknown key '{prefix}{k}'")
        kwargs[k] = _check_type(v, hints[k], f"{prefix}{k}")
    return cls(**kwargs)


def check_hostname(hostname: str) -> str:
    """``hostname`` as a DNS host name (one trailing dot removed, a U-label as its A-label),
    or :class:`ConfigError`: labels of letters, digits and hyphens, none empty, none
    starting or ending with "-", at most 63 characters each and 253 in all. IDN names
    go through the same IDNA conversion as mail domains (``canonical_domain``)."""
    from mailyard.policy.addresses import AddressError, canonical_domain

    bad = ConfigError(f"hostname: invalid host name {hostname!r} (expected a DNS name "
                      "such as mail.example.com)")
    name = hostname[:-1] if hostname.endswith(".") else hostname
    if not name or len(name) > 253 or name.startswith("["):
        raise bad
    if not name.isascii():
        try:
            name = canonical_domain(name)
        except AddressError:
            raise bad from None
    labels = name.split(".")
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-" or \
                not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            raise bad
    if len(name) > 253:
        raise bad
    return name


def _validate(cfg: Config) -> None:
    for name in LISTENERS:
        value = getattr(cfg.listen, name)
        if value:
            parse_hostport(value, key=f"listen.{name}")
    if cfg.listen.https:
        parse_hostport(cfg.listen.https, key="listen.https")
    if cfg.mta_sts.mode not in ("testing", "enforce", "none"):
        raise ConfigError(f"mta_sts.mode: expected testing, enforce or none, got {cfg.mta_sts.mode!r}")
    if not 1 <= cfg.mta_sts.max_age <= 31557600:
        raise ConfigError("mta_sts.max_age: must be between 1 and 31557600 seconds")
    if cfg.queue.source_address:
        try:
            ipaddress.ip_address(cfg.queue.source_address)
        except ValueError:
            raise ConfigError(f"queue.source_address: {cfg.queue.source_address!r} "
                              "is not an IP address") from None
    for port_key in ("outbound_port", "mta_sts_port"):
        if not 1 <= getattr(cfg.queue, port_key) <= 65535:
            raise ConfigError(f"queue.{port_key}: must be between 1 and 65535")
    # A retry interval of 0 would retry a failing destination in a loop; an expiry of 0
    # would bounce every message before its first attempt.
    for key in ("retry_initial", "expire"):
        if getattr(cfg.queue, key) <= 0:
            raise ConfigError(f"queue.{key}: must be greater than 0")
    if cfg.queue.retry_max < cfg.queue.retry_initial:
        raise ConfigError("queue.retry_max: must be at least queue.retry_initial")
    if cfg.queue.delay_warning < 0:
        raise ConfigError("queue.delay_warning: must be 0 (off) or more")
    if cfg.queue.concurrency_per_destination < 1:
        raise ConfigError("queue.concurrency_per_destination: must be at least 1")
    if isinstance(cfg.smtp.workers, str) and cfg.smtp.workers != "auto":
        raise ConfigError(f"smtp.workers: expected a number or \"auto\", got {cfg.smtp.workers!r}")
    if isinstance(cfg.smtp.workers, int) and cfg.smtp.workers > 64:
        raise ConfigError("smtp.workers: at most 64")
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level: expected debug, info, warning or error, got {cfg.log.level!r}")
    # A timeout of 0 would end every session (or DNS query, or connection attempt) at once.
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            if (f.name == "timeout" or f.name.endswith("_timeout")) and getattr(value, f.name) <= 0:
                raise ConfigError(f"{section.name}.{f.name}: must be greater than 0")
    # Counts of 0 here would make the server refuse every connection or message.
    for count_key in ("max_connections", "max_connections_per_ip", "max_recipients"):
        if getattr(cfg.limits, count_key) < 1:
            raise ConfigError(f"limits.{count_key}: must be at least 1")
    if cfg.limits.max_message_size < 1024:
        raise ConfigError("limits.max_message_size: must be at least 1024")
    for i, ns in enumerate(cfg.dns.nameservers):
        from mailyard.mailauth.resolver import parse_nameserver

        try:
            host, _port = parse_nameserver(ns)
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"dns.nameservers[{i}]: {ns!r} is not an address[:port]") from None


def parse_config(text: str, *, data_dir: str | Path, source: str = CONFIG_NAME) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    cfg = _build(Config, data)
    cfg = dataclasses.replace(cfg, data_dir=str(Path(data_dir).resolve()),
                              hostname=check_hostname(cfg.hostname))
    _validate(cfg)
    return typing.cast(Config, cfg)


def load_config(data_dir: str | Path) -> Config:
    path = Path(data_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run 'mailyard --data {data_dir} init' first)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse_config(text, data_dir=data_dir, source=str(path))


def render_config(*, hostname: str, ports: dict[str, int], bind: str = "127.0.0.1",
                  nameservers: list[str] | None = None) -> str:
    """The mailyard.toml that ``init`` writes."""
    host = f"[{bind}]" if ":" in bind else bind
    lines = [
        "# mailyard configuration. Paths are relative to this directory.",
        f'hostname = "{hostname}"',
        "",
        "[listen]",
        '# "host:port" per listener; "" disables one.',
    ]
    lines += [f'{name} = "{host}:{ports[name]}"' for name in LISTENERS]
    lines += [
        "",
        "[tls]",
        'cert = "tls/cert.pem"',
        'key = "tls/key.pem"',
        "",
        "[dns]",
        "# Empty: the system resolver. For tests and split-horizon: [\"127.0.0.1:5353\"]",
        "nameservers = [" + ", ".join(f'"{n}"' for n in (nameservers or [])) + "]",
        "",
        "[limits]",
        "max_message_size = 52428800",
        "max_recipients = 100",
        "",
        "[queue]",
        "outbound_port = 25",
        "",
        "[smtp]",
        "# Processes that receive on the MX listener, or \"auto\" (one per CPU beyond the",
        "# first, at most 4); 0 receives in the server process itself (see the README).",
        "workers = 0",
        "",
    ]
    return "\n".join(lines)
