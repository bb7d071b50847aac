"""SASL server mechanisms as small step machines (sans-IO).

The protocol cores (SMTP AUTH, IMAP AUTHENTICATE, POP3 AUTH) do the base64
framing and the ``*`` cancel; these machines see decoded bytes only.

- PLAIN, RFC 4616: one message ``[authzid] NUL authcid NUL passwd``.
- LOGIN (draft-murchison-sasl-login): two challenges, "Username:" and "Password:".
- SCRAM-SHA-256, RFC 5802 + RFC 7677 (see :class:`ScramSha256`).

Steps
=====
``start(initial)`` and ``step(response)`` return one of:

* :class:`Challenge`: send it to the client; its answer goes to ``step``.
* :class:`Credentials` (PLAIN, LOGIN): the exchange is over; the application
  checks the password.
* :class:`NeedSecrets` (SCRAM): the client named itself and the machine needs
  that user's stored secrets (salt, iteration count, StoredKey, ServerKey) to
  go on. The application looks them up and calls ``machine.secrets(...)``,
  which returns the next step (the server-first challenge).
* :class:`ProofChecked` (SCRAM): the exchange is over and the machine checked
  the client's proof itself; ``valid`` says whether it matched. The
  application still decides (penalty delays, locked or disabled accounts) and
  must never let an invalid proof in.

Malformed input raises :class:`SaslError`; the core answers with its own
syntax or "bad response" reply.

Why ``NeedSecrets`` is a step and not a callback
------------------------------------------------
The lookup is I/O: a store read, and in front of it the per-IP penalty delay
that every mechanism shares (policy/auth.py). A callback handed to the machine
would have to block or be async, and the machines and cores would stop being
sans-IO. As a step it is plain data that travels like ``Credentials``: SMTP and
POP3 pass it out as an event that pauses the core (as every event waiting for
an answer does) until the driver answers with ``provide_secrets(...)``; the
IMAP adapter drives the machine itself and answers in line. The answer always
exists: for an unknown user the application makes up secrets with a stable
salt (policy/auth.py), so the exchange looks the same whether or not the
account exists, and fails at the proof.

SCRAM: what we do where RFC 5802 leaves a choice
------------------------------------------------
* GS2 header: ``n,,`` and ``y,,`` are accepted (we offer no -PLUS variant, so
  a client that could bind but thinks we cannot is right, RFC 5802 §6);
  ``p=`` is refused. ``a=`` is passed on; the application requires it to be
  empty or the same account as ``n=`` (no proxy authorisation, as for PLAIN).
* Names: ``=2C`` and ``=3D`` decode to "," and "="; any other "=" is an error
  (§5.1). Then SASLprep, RFC 4013, in full: the mapping (B.1 to nothing, non-
  ASCII spaces to SPACE), NFKC with Unicode 3.2 (the stringprep tables), the
  prohibited characters (controls, private use, surrogates, non-characters...)
  and the bidi rule, with unassigned code points allowed ("queries", §2.5).
  Everything here comes from the standard library's ``stringprep`` tables.
* Passwords are prepared the same way when the secrets are derived. A
  password SASLprep refuses is used as it is (UTF-8), as PostgreSQL does.
* Nonces: the client's must be printable ASCII without ","; ours is 24
  characters from ``secrets.token_urlsafe`` (144 bits). The final message must
  repeat the combined nonce exactly and ``c=`` must be base64 of the GS2 header.
* ``m=`` (a mandatory extension) is refused; other extensions are ignored.
* Failure: none of SMTP, IMAP and POP3 carries data with a failed outcome, so
  an invalid proof is reported with the protocol's normal failure reply, not
  with ``e=invalid-proof`` (Cyrus SASL and Dovecot do the same). The RFC 5802
  error name is kept on :class:`SaslError` (``scram_error``) for the logs.
* Success: ``v=ServerSignature`` is "additional data with success" (RFC 4422
  §3.6), which we send as one more challenge that the client answers with an
  empty response (the form RFC 4422 §4 allows every protocol; SMTP's RFC 4954
  §4 spells it out, and IMAP and POP3 servers do the same). Only then is
  :class:`ProofChecked` returned: the proof is checked when the client-final
  message arrives, an invalid one ends the exchange at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

MAX_RESPONSE = 8192  # octets of a decoded response; longer input is refused


class SaslError(Exception):
    """Malformed client response (the core answers with its syntax error reply).

    ``scram_error`` is the RFC 5802 §7 ``server-error-value`` that names the
    problem, for SCRAM (logs and tests; it is not sent, see the module docstring).
    """

    def __init__(self, message: str, *, scram_error: str = "other-error") -> None:
        super().__init__(message)
        self.scram_error = scram_error


@dataclass(frozen=True, slots=True)
class Credentials:
    mechanism: str
    authzid: str
    authcid: str
    password: str


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class NeedSecrets:
    """SCRAM needs the stored secrets of ``authcid``: answer with ``machine.secrets()``."""

    mechanism: str
    authcid: str
    authzid: str


@dataclass(frozen=True, slots=True)
class ProofChecked:
    """SCRAM is over: the client's proof was checked against the secrets given."""

    mechanism: str
    authzid: str
    authcid: str
    valid: bool


SaslStep = Challenge | Credentials | NeedSecrets | ProofChecked


def b64decode_strict(text: bytes | str) -> bytes:
    """Decode a client's base64 response; '=' alone is the empty response (RFC 4954 §4)."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            raise SaslError("invalid base64") from None
    text = text.strip()
    if text == b"=":
        return b""
    if len(text) > MAX_RESPONSE * 4 // 3 + 4:
        raise SaslError("response too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("invalid base64") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("credentials are not UTF-8") from None


def parse_plain(data: bytes) -> tuple[str, str, str]:
    """Split a PLAIN message into (authzid, authcid, password). RFC 4616 §2."""
    if len(data) > MAX_RESPONSE:
        raise SaslError("response too long")
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise SaslError("malformed PLAIN response")
    authzid, authcid, password = (_utf8(p) for p in parts)
    if not authcid or not password:
        raise SaslError("empty user name or password")
    return authzid, authcid, password


class ServerMechanism:
    name = ""

    def start(self, initial: bytes | None) -> SaslStep:
        raise NotImplementedError

    def step(self, response: bytes) -> SaslStep:
        raise NotImplementedError

    def secrets(self, secrets: ScramSecrets) -> SaslStep:
        """The answer to :class:`NeedSecrets` (only SCRAM asks)."""
        raise RuntimeError(f"{self.name} does not take secrets")


class Plain(ServerMechanism):
    name = "PLAIN"

    def start(self, initial: bytes | None) -> SaslStep:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> SaslStep:
        authzid, authcid, password = parse_plain(response)
        return Credentials(self.name, authzid, authcid, password)


class Login(ServerMechanism):
    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> SaslStep:
        if initial:
            return self.step(initial)
        return Challenge(b"Username:")

    def step(self, response: bytes) -> SaslStep:
        if len(response) > MAX_RESPONSE:
            raise SaslError("response too long")
        if self._user is None:
            self._user = _utf8(response)
            if not self._user:
                raise SaslError("empty user name")
            return Challenge(b"Password:")
        password = _utf8(response)
        if not password:
            raise SaslError("empty password")
        return Credentials(self.name, "", self._user, password)


# ---------------------------------------------------------------------------
# SCRAM-SHA-256 (RFC 5802, RFC 7677)
# ---------------------------------------------------------------------------

SCRAM_SHA_256 = "SCRAM-SHA-256"
_DIGEST = "sha256"
_KEY_SIZE = 32  # octets of a SHA-256 digest: StoredKey, ServerKey, proofs, signatures
_SERVER_NONCE_BYTES = 18  # 144 random bits, 24 characters of URL-safe base64
#: RFC 5802 §7: attr-val = ALPHA "=" value; value-char excludes "," (and NUL).
_ATTR_VAL = re.compile(r"[A-Za-z]=[^,\x00]*")


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep with unassigned code points allowed (a "query", §2.5).

    Raises :class:`SaslError` for a prohibited character or a bidi violation.
    """
    # §2.1 mapping: B.1 "commonly mapped to nothing"; C.1.2 non-ASCII spaces to SPACE.
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch
                     for ch in text if not stringprep.in_table_b1(ch))
    # §2.2: NFKC, with the Unicode version of the stringprep tables (3.2).
    out = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    # §2.3 prohibited output.
    for ch in out:
        if (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch)
                or stringprep.in_table_c3(ch) or stringprep.in_table_c4(ch)
                or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
                or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch)
                or stringprep.in_table_c9(ch)):
            raise SaslError(f"prohibited character U+{ord(ch):04X}",
                            scram_error="invalid-encoding")
    # §2.4 / RFC 3454 §6: a string with RandALCat characters has no LCat
    # characters and starts and ends with RandALCat.
    if any(stringprep.in_table_d1(ch) for ch in out) and (
            any(stringprep.in_table_d2(ch) for ch in out)
            or not stringprep.in_table_d1(out[0]) or not stringprep.in_table_d1(out[-1])):
        raise SaslError("bidirectional text rule violated", scram_error="invalid-encoding")
    return out


def _prepared_password(password: str) -> bytes:
    """Normalize(password) of RFC 5802 §2.2. What others do: PostgreSQL uses the raw
    password when SASLprep refuses it; so do we (a client that cannot prepare it
    either sends it raw or cannot use SCRAM, and PLAIN still works)."""
    try:
        prepared = saslprep(password)
    except SaslError:
        prepared = ""
    return (prepared or password).encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class ScramSecrets:
    """What the server keeps for SCRAM-SHA-256 (RFC 5802 §3): never the password.

    Stored as text in the form RFC 5803 and PostgreSQL and Cyrus SASL use:
    ``SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>``.
    """

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_text(self) -> str:
        b64 = base64.b64encode
        return (f"{SCRAM_SHA_256}${self.iterations}:{b64(self.salt).decode()}"
                f"${b64(self.stored_key).decode()}:{b64(self.server_key).decode()}")

    @classmethod
    def from_text(cls, text: str) -> ScramSecrets:
        """Parse :meth:`to_text`'s form; ``ValueError`` when it is not one."""
        m = re.fullmatch(r"SCRAM-SHA-256\$([0-9]{1,10}):([A-Za-z0-9+/=]+)"
                         r"\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)", text)
        if not m:
            raise ValueError("not a SCRAM-SHA-256 secret")
        try:
            salt, stored, server = (base64.b64decode(m.group(i), validate=True)
                                    for i in (2, 3, 4))
        except binascii.Error:
            raise ValueError("bad base64 in a SCRAM-SHA-256 secret") from None
        iterations = int(m.group(1))
        if not salt or iterations < 1 or len(stored) != _KEY_SIZE or len(server) != _KEY_SIZE:
            raise ValueError("malformed SCRAM-SHA-256 secret")
        return cls(salt=salt, iterations=iterations, stored_key=stored, server_key=server)


def derive_scram_secrets(password: str, *, salt: bytes, iterations: int) -> ScramSecrets:
    """RFC 5802 §3: SaltedPassword, ClientKey, StoredKey and ServerKey for ``password``.

    Costs ``iterations`` rounds of HMAC-SHA-256 (hashlib releases the GIL)."""
    salted = hashlib.pbkdf2_hmac(_DIGEST, _prepared_password(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", _DIGEST)
    return ScramSecrets(salt=salt, iterations=iterations,
                        stored_key=hashlib.sha256(client_key).digest(),
                        server_key=hmac.digest(salted, b"Server Key", _DIGEST))


def unmatchable_secrets(*, salt: bytes | None = None, iterations: int = 4096) -> ScramSecrets:
    """Secrets no proof can match (random keys): for a user who does not exist. The
    application passes a stable ``salt`` (see policy/auth.py); random by default."""
    return ScramSecrets(salt=salt if salt is not None else _secrets.token_bytes(16),
                        iterations=iterations, stored_key=_secrets.token_bytes(_KEY_SIZE),
                        server_key=_secrets.token_bytes(_KEY_SIZE))


def _saslname(value: str, what: str) -> str:
    """Decode a saslname (RFC 5802 §5.1: "=2C" is ",", "=3D" is "=") and prepare it."""
    head, *rest = value.split("=")
    parts = [head]
    for part in rest:
        if part.startswith("2C"):
            parts.append("," + part[2:])
        elif part.startswith("3D"):
            parts.append("=" + part[2:])
        else:
            raise SaslError(f"invalid {what} encoding", scram_error="invalid-username-encoding")
    name = saslprep("".join(parts))
    if not name:
        raise SaslError(f"empty {what}", scram_error="invalid-username-encoding")
    return name


def _printable_nonce(nonce: str) -> bool:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ","; split() already removed it).
    return bool(nonce) and all("!" <= ch <= "~" for ch in nonce)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError(f"invalid base64 in {what}", scram_error="invalid-encoding") from None


class ScramSha256(ServerMechanism):
    """The server side of SCRAM-SHA-256. One instance per exchange.

    Steps: (client-first) -> :class:`NeedSecrets`; ``secrets()`` -> server-first
    :class:`Challenge`; (client-final) -> ``v=`` :class:`Challenge` when the proof
    is valid, else ``ProofChecked(valid=False)``; (empty) -> ``ProofChecked(valid=True)``.
    ``server_nonce`` is for tests (the RFC 7677 vector); it is random otherwise.
    """

    name = SCRAM_SHA_256

    def __init__(self, *, server_nonce: str | None = None) -> None:
        self._state = "first"  # first -> secrets -> final -> verified -> done
        self._server_nonce = server_nonce
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._secrets: ScramSecrets | None = None
        self.authcid = ""
        self.authzid = ""

    def start(self, initial: bytes | None) -> SaslStep:
        if initial is None:
            return Challenge(b"")  # RFC 5802 §5: the client speaks first
        return self.step(initial)

    def step(self, response: bytes) -> SaslStep:
        if len(response) > MAX_RESPONSE:
            raise SaslError("response too long")
        if self._state == "first":
            return self._client_first(response)
        if self._state == "final":
            return self._client_final(response)
        if self._state == "verified":
            # The answer to "v=...": RFC 4422 §4 wants an empty response.
            if response:
                raise SaslError("expected an empty response after the server signature")
            self._state = "done"
            return ProofChecked(self.name, self.authzid, self.authcid, True)
        raise RuntimeError(f"SCRAM step() in state {self._state}")

    def secrets(self, secrets: ScramSecrets) -> SaslStep:
        if self._state != "secrets":
            raise RuntimeError(f"SCRAM secrets() in state {self._state}")
        self._secrets = secrets
        server_nonce = self._server_nonce or _secrets.token_urlsafe(_SERVER_NONCE_BYTES)
        self._nonce += server_nonce
        salt = base64.b64encode(secrets.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={secrets.iterations}"
        self._state = "final"
        return Challenge(self._server_first.encode("ascii"))

    # client-first-message = gs2-header client-first-message-bare  (RFC 5802 §7)
    def _client_first(self, data: bytes) -> SaslStep:
        text = _utf8(data)
        if "\x00" in text:
            raise SaslError("NUL in client-first-message", scram_error="invalid-encoding")
        parts = text.split(",")
        if len(parts) < 4:
            raise SaslError("malformed client-first-message")
        flag, authz, *bare = parts
        if flag.startswith("p="):
            raise SaslError("channel binding is not offered",
                            scram_error="channel-binding-not-supported")
        if flag not in ("n", "y"):
            raise SaslError("malformed GS2 header")
        if authz:
            if not authz.startswith("a="):
                raise SaslError("malformed authzid")
            self.authzid = _saslname(authz[2:], "authzid")
        if bare[0].startswith("m="):
            raise SaslError("mandatory extension", scram_error="extensions-not-supported")
        if not bare[0].startswith("n=") or not bare[1].startswith("r="):
            raise SaslError("client-first-message needs n= and r=")
        if not all(_ATTR_VAL.fullmatch(ext) for ext in bare[2:]):
            raise SaslError("malformed extension")
        self.authcid = _saslname(bare[0][2:], "user name")
        nonce = bare[1][2:]
        if not _printable_nonce(nonce):
            raise SaslError("client nonce is not printable ASCII")
        self._gs2_header = f"{flag},{authz},"
        self._client_first_bare = ",".join(bare)
        self._nonce = nonce
        self._state = "secrets"
        return NeedSecrets(self.name, self.authcid, self.authzid)

    # client-final-message = channel-binding "," nonce ["," extensions] "," proof
    def _client_final(self, data: bytes) -> SaslStep:
        text = _utf8(data)
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep or "," in proof_text:
            raise SaslError("client-final-message needs p= last")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise SaslError("client-final-message needs c= and r=")
        if not all(_ATTR_VAL.fullmatch(ext) for ext in attrs[2:]):
            raise SaslError("malformed extension")
        # We offer no channel binding: c= carries exactly the GS2 header (RFC 5802 §7).
        if not hmac.compare_digest(_b64(attrs[0][2:], "c="), self._gs2_header.encode()):
            raise SaslError("channel binding does not match the GS2 header",
                            scram_error="channel-bindings-dont-match")
        if attrs[1][2:] != self._nonce:
            raise SaslError("nonce does not match")
        proof = _b64(proof_text, "p=")
        if len(proof) != _KEY_SIZE:
            raise SaslError("proof has the wrong length", scram_error="invalid-proof")
        secrets = self._secrets
        assert secrets is not None
        auth_message = ",".join((self._client_first_bare, self._server_first,
                                 without_proof)).encode("utf-8")
        client_signature = hmac.digest(secrets.stored_key, auth_message, _DIGEST)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        valid = hmac.compare_digest(hashlib.sha256(client_key).digest(), secrets.stored_key)
        if not valid:
            self._state = "done"
            return ProofChecked(self.name, self.authzid, self.authcid, False)
        signature = hmac.digest(secrets.server_key, auth_message, _DIGEST)
        self._state = "verified"
        return Challenge(b"v=" + base64.b64encode(signature))


MECHANISMS: dict[str, type[ServerMechanism]] = {
    "PLAIN": Plain, "LOGIN": Login, SCRAM_SHA_256: ScramSha256,
}


def server_mechanism(name: str) -> ServerMechanism | None:
    """A fresh machine for ``name`` (case-insensitive), or None when unsupported."""
    cls = MECHANISMS.get(name.upper())
    return cls() if cls else None
