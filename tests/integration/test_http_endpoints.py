"""The HTTP listener's client setup endpoints: what the printed autoconfig and
autodiscover records send mail clients to."""

from __future__ import annotations

import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from tests.integration.harness import Server

NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?>\r\n'
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    'requestschema/2006"><Request><EMailAddress>{}</EMailAddress>'
    "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    "responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
)


def _url(server: Server, path: str) -> str:
    host, port = server.addr("http")
    return f"http://{host}:{port}{path}"


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "text/xml"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_outlook_autodiscover_answers_with_our_listeners(server: Server) -> None:
    status, body = _get(_url(server, "/autodiscover/autodiscover.xml"),
                        REQUEST.format("Alice@Example.Test").encode())
    assert status == 200
    account = ET.fromstring(body).find(f"{NS}Response/{NS}Account")
    assert account is not None and account.findtext(f"{NS}Action") == "settings"
    protocols = {(p.findtext(f"{NS}Type"), int(p.findtext(f"{NS}Port") or 0)):
                 (p.findtext(f"{NS}SSL"), p.findtext(f"{NS}Encryption"), p.findtext(f"{NS}LoginName"),
                  p.findtext(f"{NS}Server"))
                 for p in account.findall(f"{NS}Protocol")}
    assert protocols[("IMAP", server.addr("imaps")[1])] == (
        "on", None, "Alice@example.test", "mail.example.test")
    assert protocols[("SMTP", server.addr("submissions")[1])][0] == "on"
    assert protocols[("SMTP", server.addr("submission")[1])][:2] == ("off", "TLS")
    assert ("POP3", server.addr("pop3s")[1]) in protocols
    # Same answer for Outlook's capitalised path; nothing for a domain that is not ours.
    status, _ = _get(_url(server, "/Autodiscover/Autodiscover.xml"),
                     REQUEST.format("bob@example.test").encode())
    assert status == 200
    assert _get(_url(server, "/autodiscover/autodiscover.xml"),
                REQUEST.format("x@elsewhere.example").encode())[0] == 404


@pytest.mark.parametrize("body", [b"", b"<Autodiscover/>", b"not xml at all" * 10,
                                  REQUEST.format("<x>").encode(), b"x" * 20000])
def test_autodiscover_bad_requests_are_4xx(server: Server, body: bytes) -> None:
    status, _ = _get(_url(server, "/autodiscover/autodiscover.xml"), body)
    assert status in (404, 413)
    assert _get(_url(server, "/healthz"))[0] == 200  # and the listener still serves


def test_thunderbird_autoconfig(server: Server) -> None:
    status, body = _get(_url(server, "/mail/config-v1.1.xml?emailaddress=alice%40example.test"))
    assert status == 200
    provider = ET.fromstring(body).find("emailProvider")
    assert provider is not None and provider.findtext("domain") == "example.test"
    incoming = [(s.get("type"), int(s.findtext("port") or 0), s.findtext("socketType"))
                for s in provider.findall("incomingServer")]
    assert incoming[0] == ("imap", server.addr("imaps")[1], "SSL")
    assert ("pop3", server.addr("pop3")[1], "STARTTLS") in incoming
    outgoing = [(int(s.findtext("port") or 0), s.findtext("socketType"))
                for s in provider.findall("outgoingServer")]
    assert outgoing == [(server.addr("submissions")[1], "SSL"),
                        (server.addr("submission")[1], "STARTTLS")]
