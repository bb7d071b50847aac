"""The HTTP listener: MTA-STS policy, mail client autoconfig, health and metrics.

- ``/.well-known/mta-sts.txt`` (RFC 8461 §3.2), served for ``mta-sts.<domain>`` hosts:
  our MX host name, with ``[mta_sts] mode`` (default testing, what `dns records` advises to
  start with) and ``max_age`` (default one week).

Senders fetch the policy over HTTPS only (RFC 8461 §3.3): ``listen.https`` adds a TLS
site with the ``[tls]`` certificate (which must then also name ``mta-sts.<domain>``) to
the same application, next to the plain HTTP one.
- ``/mail/config-v1.1.xml`` and ``/.well-known/autoconfig/mail/config-v1.1.xml``
  (Thunderbird autoconfig) for ``autoconfig.<domain>``.
- ``/autodiscover/autodiscover.xml`` (Outlook's POX autodiscover, POST with the
  address) for ``autodiscover.<domain>``.
- ``/healthz`` and ``/metrics`` (Prometheus text format).
"""

from __future__ import annotations

import html
import re
from typing import Any

from aiohttp import web

from mailyard.config import CLIENT_LISTENERS, listener_port, parse_hostport
from mailyard.server.context import ServerContext

MTA_STS_MAX_AGE = 604800  # one week; RFC 8461 §3.2 allows up to 31557600


def mta_sts_policy(mx_host: str, *, mode: str = "testing", max_age: int = MTA_STS_MAX_AGE) -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx_host}\r\nmax_age: {max_age}\r\n"


def _domain_from_host(request: web.Request, prefix: str) -> str:
    host = (request.host or "").split(":")[0].lower().rstrip(".")
    return host[len(prefix):] if host.startswith(prefix) else host


def _port(ctx: ServerContext, name: str) -> int:
    """The port listener ``name`` runs on: as bound, else as configured (as the SRV
    records of ``mailyard dns records`` give it); 0 when disabled."""
    if ctx.bound_ports.get(name):
        return ctx.bound_ports[name]
    return listener_port(ctx.config.listen, name) or 0


def _endpoints(ctx: ServerContext) -> list[tuple[str, int, str]]:
    """(protocol, port, TLS mode) of every client listener this server runs."""
    # Incoming servers first (as clients read them); each kind in the table's order.
    return sorted(((kind, _port(ctx, name), sock) for name, kind, sock, _ in CLIENT_LISTENERS
                   if getattr(ctx.config.listen, name)), key=lambda e: e[0] == "smtp")


def autoconfig_xml(ctx: ServerContext, domain: str) -> str:
    h = html.escape(ctx.hostname)
    d = html.escape(domain)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<clientConfig version="1.1">',
        f'  <emailProvider id="{d}">',
        f"    <domain>{d}</domain>",
        f"    <displayName>{d} mail</displayName>",
    ]
    for kind, port, sock in _endpoints(ctx):
        tag = "outgoingServer" if kind == "smtp" else "incomingServer"
        parts += [f'    <{tag} type="{kind}">', f"      <hostname>{h}</hostname>",
                  f"      <port>{port}</port>", f"      <socketType>{sock}</socketType>",
                  "      <username>%EMAILADDRESS%</username>",
                  "      <authentication>password-cleartext</authentication>",
                  f"    </{tag}>"]
    parts += ["  </emailProvider>", "</clientConfig>", ""]
    return "\n".join(parts)


_AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover"
_EMAIL_IN_REQUEST = re.compile(r"<(?:\w+:)?EMailAddress>\s*([^<\s]{3,320})\s*</(?:\w+:)?EMailAddress>")


def autodiscover_xml(ctx: ServerContext, address: str) -> str:
    """Outlook's "POX" autodiscover answer (the Autodiscover 2006 schemas): one Protocol
    per listener, implicit TLS first; the login name is the whole address."""
    h = html.escape(ctx.hostname)
    login = html.escape(address)
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<Autodiscover xmlns="{_AUTODISCOVER_NS}/responseschema/2006">',
        f'  <Response xmlns="{_AUTODISCOVER_NS}/outlook/responseschema/2006a">',
        "    <Account>",
        "      <AccountType>email</AccountType>",
        "      <Action>settings</Action>",
    ]
    for kind, port, sock in _endpoints(ctx):
        tls = ["        <SSL>on</SSL>"] if sock == "SSL" else [
            "        <SSL>off</SSL>", "        <Encryption>TLS</Encryption>"]
        parts += ["      <Protocol>", f"        <Type>{kind.upper()}</Type>",
                  f"        <Server>{h}</Server>", f"        <Port>{port}</Port>",
                  f"        <LoginName>{login}</LoginName>",
                  "        <DomainRequired>off</DomainRequired>", "        <SPA>off</SPA>",
                  *tls, "        <AuthRequired>on</AuthRequired>", "      </Protocol>"]
    parts += ["    </Account>", "  </Response>", "</Autodiscover>", ""]
    return "\n".join(parts)


def make_app(ctx: ServerContext) -> web.Application:
    app = web.Application(client_max_size=8192)

    async def mta_sts(request: web.Request) -> web.Response:
        domain = _domain_from_host(request, "mta-sts.")
        if await ctx.store.get_domain(domain) is None:
            raise web.HTTPNotFound()
        cfg = ctx.config.mta_sts
        return web.Response(text=mta_sts_policy(ctx.hostname, mode=cfg.mode, max_age=cfg.max_age),
                            content_type="text/plain")

    async def autoconfig(request: web.Request) -> web.Response:
        domain = request.query.get("emailaddress", "").rpartition("@")[2] or \
            _domain_from_host(request, "autoconfig.")
        if await ctx.store.get_domain(domain.lower()) is None:
            raise web.HTTPNotFound()
        return web.Response(text=autoconfig_xml(ctx, domain.lower()), content_type="text/xml")

    async def autodiscover(request: web.Request) -> web.Response:
        # Outlook POSTs <EMailAddress> (its GET probes carry no address): a regex, not an
        # XML parser, reads it from the small body (client_max_size bounds it).
        address = request.query.get("emailaddress", "")
        if request.method == "POST":
            m = _EMAIL_IN_REQUEST.search(await request.text())
            address = m.group(1) if m else ""
        local, _, domain = address.rpartition("@")
        if not local or await ctx.store.get_domain(domain.lower()) is None:
            raise web.HTTPNotFound()
        return web.Response(text=autodiscover_xml(ctx, f"{local}@{domain.lower()}"),
                            content_type="text/xml")

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(_request: web.Request) -> web.Response:
        entries = await ctx.store.queue_list()
        pending = sum(1 for e in entries for r in e.recipients if r.state == "pending")
        body = (
            "# HELP mailyard_queue_entries Messages in the outbound queue.\n"
            "# TYPE mailyard_queue_entries gauge\n"
            f"mailyard_queue_entries {len(entries)}\n"
            "# HELP mailyard_queue_recipients_pending Recipients waiting for delivery.\n"
            "# TYPE mailyard_queue_recipients_pending gauge\n"
            f"mailyard_queue_recipients_pending {pending}\n"
        )
        return web.Response(text=body, content_type="text/plain")

    app.router.add_get("/.well-known/mta-sts.txt", mta_sts)
    app.router.add_get("/mail/config-v1.1.xml", autoconfig)
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", autoconfig)
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        app.router.add_post(path, autodiscover)
        app.router.add_get(path, autodiscover)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics)
    return app


def _bound_port(site: web.TCPSite, port: int) -> int:
    # aiohttp exposes no public accessor for the bound port
    sockets = getattr(site._server, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else port


async def start_http(ctx: ServerContext) -> tuple[Any, dict[str, tuple[str, int]]]:
    """Start the HTTP site and/or the HTTPS one (``listen.http`` / ``listen.https``).

    Returns the runner and the bound address of each site started, by listener name.
    """
    runner = web.AppRunner(make_app(ctx), access_log=None)
    await runner.setup()
    bound: dict[str, tuple[str, int]] = {}
    if ctx.config.listen.http:
        host, port = parse_hostport(ctx.config.listen.http, key="listen.http")
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound["http"] = (host, _bound_port(site, port))
    if ctx.config.listen.https:
        if ctx.tls is None:
            ctx.log.warning("listen.https: no TLS certificate, HTTPS not started")
        else:
            host, port = parse_hostport(ctx.config.listen.https, key="listen.https")
            site = web.TCPSite(runner, host, port, ssl_context=ctx.tls, reuse_address=True)
            await site.start()
            bound["https"] = (host, _bound_port(site, port))
    return runner, bound
