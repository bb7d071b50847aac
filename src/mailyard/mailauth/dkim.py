"""DKIM (RFC 6376, RFC 8463 Ed25519, RFC 8301 crypto update) on dkimpy, with async DNS.

dkimpy's verifier wants a *synchronous* TXT lookup. We parse every DKIM-Signature header
ourselves first (:func:`parse_tags`), fetch all needed key records concurrently through our
async :class:`Resolver`, then hand dkimpy a dict-backed ``dnsfunc``. dkimpy does the
canonicalisation and cryptography; the policy decisions below are ours:

- rsa-sha1 → fail (RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid);
- RSA keys < 1024 bits → fail (RFC 8301 §3.2);
- ``x=`` in the past → fail (RFC 6376 §3.5; we use no leeway: the clock is injected);
- ``h=`` without From → permerror (RFC 6376 §6.1.1);
- key lookup TempError → temperror; no key / malformed key / malformed signature → permerror
  (RFC 8601 §2.7.1);
- ``l=`` shorter than the canonical body → still "pass", but ``body_length_limited`` is set and
  DMARC does not count it (content after the signed length is unauthenticated, RFC 6376 §8.2).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass
from typing import Literal

from mailyard.mailauth.resolver import NXDomain, Resolver, TempError

DKIMResultCode = Literal["pass", "fail", "neutral", "temperror", "permerror", "none"]

#: Signatures evaluated per message; more are reported as neutral without DNS work.
MAX_SIGNATURES = 10
MIN_RSA_BITS = 1024
MAX_TAG_LIST = 16384

#: RFC 6376 §5.4.1 recommended header fields, plus the MIME ones that change rendering.
RECOMMENDED_HEADERS = (
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)


class DKIMTagError(ValueError):
    """A tag=value list (RFC 6376 §3.2) is malformed."""


@dataclass(frozen=True)
class DKIMResult:
    result: DKIMResultCode
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    reason: str = ""
    body_length_limited: bool = False
    #: i= (the AUID), for Authentication-Results header.i
    identity: str = ""
    #: first characters of b=, for Authentication-Results header.b (RFC 6008)
    b_prefix: str = ""


_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")


def parse_tags(text: str | bytes) -> dict[str, str]:
    """Parse a DKIM tag-list (RFC 6376 §3.2) into {tag: value}, whitespace-stripped.

    Raises :class:`DKIMTagError` for anything malformed (and only that).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise DKIMTagError("tag list is not UTF-8") from None
    if not isinstance(text, str):
        raise DKIMTagError("tag list must be text")
    if len(text) > MAX_TAG_LIST:
        raise DKIMTagError("tag list too long")
    out: dict[str, str] = {}
    parts = text.split(";")
    if parts and not parts[-1].strip():
        parts.pop()  # a trailing ";" is allowed
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n")
        if not eq:
            raise DKIMTagError(f"tag without '=': {part.strip()[:40]!r}")
        if not _TAG_NAME.match(name):
            raise DKIMTagError(f"bad tag name {name[:40]!r}")
        if name in out:
            raise DKIMTagError(f"duplicate tag {name!r}")
        value = value.strip(" \t\r\n")
        for ch in value:
            o = ord(ch)
            if (o < 0x21 and ch not in " \t\r\n") or o == 0x7F or ch == ";":
                raise DKIMTagError(f"bad character in tag {name!r}")
        out[name] = value
    return out


def _b64(value: str) -> bytes:
    return base64.b64decode(re.sub(r"\s+", "", value), validate=True)


def _rsa_bits(p: str) -> int:
    """Modulus size of a DKIM RSA key (SubjectPublicKeyInfo or bare RSAPublicKey DER)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        load_der_public_key,
    )

    der = _b64(p)
    try:
        key = load_der_public_key(der)
    except ValueError:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        pem = (
            b"-----BEGIN RSA PUBLIC KEY-----\n"
            + base64.encodebytes(der)
            + b"-----END RSA PUBLIC KEY-----\n"
        )
        key = load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key.key_size


def key_record_problem(txt: str) -> tuple[DKIMResultCode, str] | None:
    """Judge a key record (RFC 6376 §3.6.1) before dkimpy sees it; None when usable."""
    try:
        tags = parse_tags(txt)
    except DKIMTagError as e:
        return "permerror", f"key record syntax: {e}"
    if tags.get("v", "DKIM1") != "DKIM1":
        return "permerror", "key record v= is not DKIM1"
    p = tags.get("p")
    if p is None:
        return "permerror", "key record has no p="
    if not p:
        return "permerror", "key revoked (empty p=)"
    k = tags.get("k", "rsa")
    if k == "rsa":
        try:
            bits = _rsa_bits(p)
        except (ValueError, TypeError) as e:
            return "permerror", f"unparsable RSA key: {e}"
        if bits < MIN_RSA_BITS:
            return "fail", f"RSA key too short ({bits} bits < {MIN_RSA_BITS}, RFC 8301)"
    elif k == "ed25519":
        try:
            if len(_b64(p)) != 32:
                return "permerror", "ed25519 key is not 32 bytes"
        except ValueError:
            return "permerror", "ed25519 key is not base64"
    else:
        return "permerror", f"unknown key type k={k}"
    return None


_EMPTY_LINE_RE = re.compile(rb"\n\r?\n")


def split_message(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(header fields as (name, raw unfolded-not value), body). Lenient, never raises."""
    # The first empty line: an LF, an optional CR, an LF (and the CR before the first LF,
    # if any). A pattern starting with a literal octet is scanned for quickly; the header
    # section's lines are split at LF, less a CR before it (as splitting at CR? LF would).
    m = _EMPTY_LINE_RE.search(message)
    if m:
        start = m.start() - 1 if m.start() and message[m.start() - 1] == 0x0D else m.start()
        head, body = message[:start], message[m.end() :]
    else:
        head, body = message, b""
    fields: list[tuple[str, str]] = []
    lines = head.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if i < last and line[-1:] == b"\r":
            line = line[:-1]
        if line[:1] in (b" ", b"\t") and fields:
            prev_name, prev_value = fields[-1]
            fields[-1] = (prev_name, prev_value + "\r\n" + line.decode("utf-8", "replace"))
            continue
        bname, colon, bvalue = line.partition(b":")
        if colon:
            fields.append(
                (bname.decode("ascii", "replace").strip(), bvalue.decode("utf-8", "replace"))
            )
    return fields, body


@dataclass
class _Sig:
    index: int
    tags: dict[str, str]
    problem: tuple[DKIMResultCode, str] | None


def _judge_signature(tags: dict[str, str], now: float) -> tuple[DKIMResultCode, str] | None:
    for t in ("v", "a", "b", "bh", "d", "h", "s"):
        if t not in tags:
            return "permerror", f"signature missing {t}="
    if tags["v"] != "1":
        return "permerror", "signature v= is not 1"
    a = tags["a"].lower()
    if a == "rsa-sha1":
        return "fail", "rsa-sha1 is not accepted (RFC 8301)"
    if a not in ("rsa-sha256", "ed25519-sha256"):
        return "permerror", f"unknown algorithm a={a}"
    h = [x.strip().lower() for x in tags["h"].split(":")]
    if "from" not in h:
        return "permerror", "From is not signed (RFC 6376 §6.1.1)"
    if "x" in tags:
        if not tags["x"].isdigit():
            return "permerror", "x= is not a number"
        if int(tags["x"]) < now:
            return "fail", "signature expired (x=)"
    if "l" in tags and not tags["l"].isdigit():
        return "permerror", "l= is not a number"
    return None


async def _fetch_key(resolver: Resolver, name: str) -> list[str] | Exception:
    try:
        return await resolver.txt(name)
    except (NXDomain, TempError) as e:
        return e


async def verify_dkim(
    message: bytes,
    *,
    resolver: Resolver,
    now: float | None = None,
    fields: list[tuple[str, str]] | None = None,
) -> list[DKIMResult]:
    """Verify every DKIM-Signature of ``message``: one :class:`DKIMResult` per signature,
    in header order (topmost first). An empty list means the message is unsigned.
    ``fields``: ``split_message(message)[0]`` when the caller already has it."""
    if fields is None:
        fields, _ = split_message(message)
    raw_sigs = [v for n, v in fields if n.lower() == "dkim-signature"]
    if not raw_sigs:
        return []
    import dkim as dkimpy

    now = time.time() if now is None else now
    sigs: list[_Sig] = []
    for i, raw in enumerate(raw_sigs):
        try:
            tags = parse_tags(raw)
        except DKIMTagError as e:
            sigs.append(_Sig(i, {}, ("permerror", f"signature syntax: {e}")))
            continue
        problem = _judge_signature(tags, now)
        if i >= MAX_SIGNATURES:
            problem = ("neutral", f"not evaluated: more than {MAX_SIGNATURES} signatures")
        sigs.append(_Sig(i, tags, problem))

    names = sorted(
        {
            f"{s.tags['s']}._domainkey.{s.tags['d']}".lower().rstrip(".")
            for s in sigs
            if s.problem is None
        }
    )
    fetched = await asyncio.gather(*(_fetch_key(resolver, n) for n in names))
    keys = dict(zip(names, fetched, strict=True))

    verifier = None
    results: list[DKIMResult] = []
    for s in sigs:
        t = s.tags
        algorithm = t.get("a", "").lower()

        def mk(
            code: DKIMResultCode, reason: str, limited: bool = False, _t: dict[str, str] = t
        ) -> DKIMResult:
            return DKIMResult(
                code,
                domain=_t.get("d", "").lower(),
                selector=_t.get("s", ""),
                algorithm=_t.get("a", "").lower(),
                reason=reason,
                body_length_limited=limited,
                identity=_t.get("i", ""),
                b_prefix=re.sub(r"\s+", "", _t.get("b", ""))[:8],
            )

        if s.problem is not None:
            results.append(mk(s.problem[0], s.problem[1]))
            continue
        name = f"{t['s']}._domainkey.{t['d']}".lower().rstrip(".")
        answer = keys[name]
        if isinstance(answer, TempError):
            results.append(mk("temperror", f"key lookup: {answer}"))
            continue
        if isinstance(answer, NXDomain) or not answer:
            results.append(mk("permerror", f"no key at {name}"))
            continue
        assert isinstance(answer, list)
        key_txt = answer[0]
        key_problem = key_record_problem(key_txt)
        if key_problem is not None:
            results.append(mk(key_problem[0], key_problem[1]))
            continue
        key_alg = parse_tags(key_txt).get("k", "rsa")
        if not algorithm.startswith(key_alg + "-"):
            results.append(mk("permerror", f"key type {key_alg} vs a={algorithm}"))
            continue

        def dnsfunc(qname: bytes | str, timeout: float = 5, _txt: str = key_txt) -> bytes:
            return _txt.encode("utf-8")

        limited = False
        try:
            if verifier is None:
                verifier = dkimpy.DKIM(message, minkey=MIN_RSA_BITS)
            ok = verifier.verify(idx=s.index, dnsfunc=dnsfunc)
            if ok and "l" in t:
                policy = dkimpy.CanonicalizationPolicy.from_c_value(
                    t.get("c", "simple/simple").encode()
                )
                body_len = len(policy.canonicalize_body(verifier.body))
                limited = int(t["l"]) < body_len
        except dkimpy.ValidationError as e:
            msg = str(e)
            code: DKIMResultCode = "fail" if "body hash" in msg else "permerror"
            results.append(mk(code, msg[:200]))
            continue
        except dkimpy.KeyFormatError as e:
            code = "fail" if "too small" in str(e) else "permerror"
            results.append(mk(code, str(e)[:200]))
            continue
        except Exception as e:  # dkimpy may raise anything on hostile input
            results.append(mk("permerror", f"{type(e).__name__}: {e}"[:200]))
            continue
        if ok:
            reason = "body length limited (l=): content after the signed part" if limited else ""
            results.append(mk("pass", reason, limited))
        else:
            results.append(mk("fail", "signature did not verify"))
    return results


# --------------------------------------------------------------------------------------------
# Signing and keys


def _dkimpy_private_key(private_pem: str | bytes, algorithm: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    pem = private_pem.encode() if isinstance(private_pem, str) else private_pem
    key = serialization.load_pem_private_key(pem, password=None)
    if algorithm == "ed25519-sha256":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("ed25519-sha256 needs an Ed25519 private key")
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw)  # dkimpy wants the base64 seed (RFC 8463)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("rsa-sha256 needs an RSA private key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def signing_headers(
    message: bytes, headers: tuple[str, ...] | list[str] | None = None
) -> list[str]:
    """The h= list: the wanted fields present in the message, with From over-signed once
    more than it occurs (so no From can be added without breaking the signature)."""
    wanted = [h.lower() for h in (headers or RECOMMENDED_HEADERS)]
    fields, _ = split_message(message)
    present: dict[str, int] = {}
    for name, _v in fields:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    out: list[str] = []
    for h in wanted:
        out.extend([h] * present.get(h, 0))
    if "from" not in out:
        out.insert(0, "from")
    out.append("from")  # over-sign (RFC 6376 §8.15)
    return out


def sign_message(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_pem: str | bytes,
    algorithm: str = "rsa-sha256",
    headers: tuple[str, ...] | list[str] | None = None,
    identity: str | None = None,
) -> bytes:
    """Return the DKIM-Signature header field (CRLF-terminated, folded) to prepend.

    Canonicalisation relaxed/relaxed; ``headers`` defaults to RFC 6376 §5.4.1's list.
    Raises ValueError for an unusable key or algorithm.
    """
    import dkim as dkimpy

    if algorithm not in ("rsa-sha256", "ed25519-sha256"):
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    key = _dkimpy_private_key(private_pem, algorithm)
    include = [h.encode() for h in signing_headers(message, headers)]
    signer = dkimpy.DKIM(message)
    try:
        sig = signer.sign(
            selector.encode(),
            domain.encode(),
            key,
            signature_algorithm=algorithm.encode(),
            identity=identity.encode() if identity else None,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
    except dkimpy.DKIMException as e:
        raise ValueError(f"DKIM signing failed: {e}") from None
    return bytes(sig)


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> tuple[str, str]:
    """New signing key: (private key PEM (PKCS#8), DNS TXT value for <selector>._domainkey)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "rsa":
        if bits < 1024:
            raise ValueError("RSA keys shorter than 1024 bits are not accepted (RFC 8301)")
        priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        spki = priv.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        txt = f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem.decode(), txt
    if algorithm == "ed25519":
        epriv = ed25519.Ed25519PrivateKey.generate()
        raw = epriv.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        txt = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
        pem = epriv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem.decode(), txt
    raise ValueError(f"unknown key algorithm {algorithm!r} (rsa or ed25519)")
