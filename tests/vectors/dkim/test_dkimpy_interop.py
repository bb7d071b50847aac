"""Interop with dkimpy's own vectors, both ways: we verify what dkimpy (and RFC 8463) signed,
and dkimpy verifies what we sign."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
from pathlib import Path

import dkim as dkimpy

from mailyard.mailauth.dkim import generate_key, sign_message, verify_dkim
from mailyard.testing.dns import FakeResolver

_spec = importlib.util.spec_from_file_location("dkim_fetch", Path(__file__).with_name("fetch.py"))
assert _spec and _spec.loader
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)

DATA = fetch.dkimpy_data()
FOOTBALL_ED25519 = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def football_resolver() -> FakeResolver:
    return FakeResolver(
        {
            "brisbane._domainkey.football.example.com": {"TXT": [FOOTBALL_ED25519]},
            "test._domainkey.football.example.com": {"TXT": [data("test.txt").decode()]},
            "test._domainkey.example.com": {"TXT": [data("test.txt").decode()]},
        }
    )


def test_rfc8463_example_both_signatures_pass() -> None:
    results = asyncio.run(verify_dkim(data("rfc6376.signed.msg"), resolver=football_resolver()))
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        ("pass", "ed25519-sha256", "brisbane"),
        ("pass", "rsa-sha256", "test"),
    ]
    assert all(r.domain == "football.example.com" for r in results)


def test_rfc8463_example_tampered_fails() -> None:
    msg = data("rfc6376.signed.msg").replace(b"We lost the game.", b"We won the game.")
    results = asyncio.run(verify_dkim(msg, resolver=football_resolver()))
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("body hash" in r.reason for r in results)


def test_we_verify_dkimpy_signatures() -> None:
    msg = data("test.message")
    for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple")):
        sig = dkimpy.sign(msg, b"test", b"example.com", data("test.private"), canonicalize=canon)
        [res] = asyncio.run(verify_dkim(sig + msg, resolver=football_resolver()))
        assert res.result == "pass", (canon, res)
    seed = data("rfc8032_7_1.key").strip()
    sig = dkimpy.sign(
        data("rfc6376.msg"),
        b"brisbane",
        b"football.example.com",
        seed,
        signature_algorithm=b"ed25519-sha256",
    )
    [res] = asyncio.run(verify_dkim(sig + data("rfc6376.msg"), resolver=football_resolver()))
    assert (res.result, res.algorithm) == ("pass", "ed25519-sha256")


def test_dkimpy_verifies_our_signatures() -> None:
    msg = data("test.message")
    pem = data("test.private").decode()
    txt = data("test.txt")
    sig = sign_message(msg, domain="example.com", selector="test", private_pem=pem)
    assert dkimpy.verify(sig + msg, dnsfunc=lambda name, timeout=5: txt)
    for alg, key_alg in (("rsa-sha256", "rsa"), ("ed25519-sha256", "ed25519")):
        priv, pub_txt = generate_key(key_alg)
        sig = sign_message(
            msg, domain="example.com", selector="s1", private_pem=priv, algorithm=alg
        )
        seen: list[bytes] = []

        def dnsfunc(
            name: bytes, timeout: float = 5, _t: str = pub_txt, _seen: list[bytes] = seen
        ) -> bytes:
            _seen.append(name)
            return _t.encode()

        assert dkimpy.verify(sig + msg, dnsfunc=dnsfunc), alg
        assert seen == [b"s1._domainkey.example.com."]


def test_rfc8032_key_signs_like_dkimpy() -> None:
    """Our PEM path for Ed25519 gives the same key as dkimpy's raw seed: dkimpy's published
    public key verifies our signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    seed = base64.b64decode(data("rfc8032_7_1.key").strip())
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    msg = data("rfc6376.msg")
    sig = sign_message(
        msg,
        domain="football.example.com",
        selector="brisbane",
        private_pem=pem,
        algorithm="ed25519-sha256",
    )
    [res] = asyncio.run(verify_dkim(sig + msg, resolver=football_resolver()))
    assert res.result == "pass"
