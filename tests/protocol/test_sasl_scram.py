"""The SCRAM-SHA-256 server machine (RFC 5802, RFC 7677), without any protocol around it."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailyard.protocol import sasl
from mailyard.protocol.sasl import (
    Challenge,
    NeedSecrets,
    ProofChecked,
    SaslError,
    ScramSecrets,
    ScramSha256,
    derive_scram_secrets,
    saslprep,
)
from mailyard.testing.scram import ScramClient

# RFC 7677 §3, the SCRAM-SHA-256 test vector.
V_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
V_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
V_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
V_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                  b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
V_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                  b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
V_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = derive_scram_secrets("pencil", salt=V_SALT, iterations=4096)


def test_rfc7677_vector() -> None:
    m = ScramSha256(server_nonce=V_SERVER_NONCE)
    assert m.start(V_CLIENT_FIRST) == NeedSecrets("SCRAM-SHA-256", "user", "")
    assert m.secrets(PENCIL) == Challenge(V_SERVER_FIRST)
    assert m.step(V_CLIENT_FINAL) == Challenge(V_SERVER_FINAL)
    assert m.step(b"") == ProofChecked("SCRAM-SHA-256", "", "user", True)


def test_rfc7677_vector_without_initial_response() -> None:
    """SMTP "AUTH SCRAM-SHA-256" and IMAP without SASL-IR: an empty challenge first."""
    m = ScramSha256(server_nonce=V_SERVER_NONCE)
    assert m.start(None) == Challenge(b"")
    assert isinstance(m.step(V_CLIENT_FIRST), NeedSecrets)
    assert m.secrets(PENCIL) == Challenge(V_SERVER_FIRST)
    assert m.step(V_CLIENT_FINAL) == Challenge(V_SERVER_FINAL)


def test_derived_keys_are_rfc5802_section_3() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", V_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert PENCIL.stored_key == hashlib.sha256(client_key).digest()
    assert PENCIL.server_key == hmac.new(salted, b"Server Key", "sha256").digest()
    assert (PENCIL.salt, PENCIL.iterations) == (V_SALT, 4096)
    assert "stored_key" not in repr(PENCIL)  # secrets stay out of logs


def test_secret_text_form_round_trips_and_rejects_garbage() -> None:
    text = PENCIL.to_text()
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert ScramSecrets.from_text(text) == PENCIL
    for bad in ("", "SCRAM-SHA-1$4096:c2FsdA==$a:b", text.replace("$4096", "$x"),
                text[:-4], text.replace(":", ";"), "SCRAM-SHA-256$0:c2FsdA==$" + text[-89:],
                text.replace("W22Z", "W2!Z")):
        with pytest.raises(ValueError):
            ScramSecrets.from_text(bad)


def exchange(client: ScramClient, secrets: ScramSecrets, *, final: bytes | None = None
             ) -> tuple[ScramSha256, sasl.SaslStep]:
    m = ScramSha256()
    need = m.start(client.first())
    assert isinstance(need, NeedSecrets)
    server_first = m.secrets(secrets)
    assert isinstance(server_first, Challenge)
    return m, m.step(final if final is not None else client.final(server_first.data))


def test_client_and_server_agree_and_the_client_verifies_the_server() -> None:
    secrets = derive_scram_secrets("s3cret", salt=b"0123456789abcdef", iterations=4096)
    client = ScramClient("alice@example.test", "s3cret")
    m, step = exchange(client, secrets)
    assert isinstance(step, Challenge)
    client.check(step.data)
    assert client.verified
    assert m.step(b"") == ProofChecked("SCRAM-SHA-256", "", "alice@example.test", True)


def test_wrong_password_ends_at_the_proof_without_a_server_signature() -> None:
    secrets = derive_scram_secrets("s3cret", salt=b"0123456789abcdef", iterations=4096)
    m, step = exchange(ScramClient("alice@example.test", "wrong"), secrets)
    assert step == ProofChecked("SCRAM-SHA-256", "", "alice@example.test", False)
    with pytest.raises(RuntimeError):
        m.step(b"")  # over: the core never feeds a finished machine


def test_y_flag_and_authzid_and_extensions() -> None:
    secrets = derive_scram_secrets("pw", salt=b"salt-salt-salt-!", iterations=4096)
    client = ScramClient("bob@example.test", "pw", gs2_flag="y", authzid="bob@example.test")
    client.client_first_bare += ",x=an extension we ignore"
    m = ScramSha256()
    assert m.start(client.first()) == NeedSecrets("SCRAM-SHA-256", "bob@example.test",
                                                  "bob@example.test")
    first = m.secrets(secrets)
    assert isinstance(first, Challenge)
    final = client.final(first.data)
    # Extensions in client-final sit before the proof and are part of AuthMessage.
    step = m.step(final)
    assert isinstance(step, Challenge) and step.data.startswith(b"v=")


@pytest.mark.parametrize(("encoded", "name"), [
    ("a=2Cb=3Dc", "a,b=c"),
    ("=3D=2C", "=,"),
    ("I\u00adX", "IX"),  # RFC 4013 §3: soft hyphen mapped to nothing
    ("\u2168", "IX"),  # ROMAN NUMERAL NINE, NFKC
    ("us\u00a0er", "us er"),  # non-ASCII space to SPACE
])
def test_user_names_are_decoded_and_prepared(encoded: str, name: str) -> None:
    m = ScramSha256()
    step = m.start(f"n,,n={encoded},r=abc".encode())
    assert step == NeedSecrets("SCRAM-SHA-256", name, "")


@pytest.mark.parametrize(("text", "prepared"), [
    ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("I\u00adX", "IX"), ("\u2168", "IX"),
])
def test_saslprep_rfc4013_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "a\u200eb", "\ue000", "x\x7f"])
def test_saslprep_refuses_rfc4013_examples(text: str) -> None:
    with pytest.raises(SaslError):
        saslprep(text)


def test_password_is_prepared_and_an_unpreparable_one_is_used_raw() -> None:
    salt = b"0123456789abcdef"
    assert (derive_scram_secrets("pass\u00adword", salt=salt, iterations=4096)
            == derive_scram_secrets("password", salt=salt, iterations=4096))
    raw = derive_scram_secrets("bell\u0007", salt=salt, iterations=4096)
    salted = hashlib.pbkdf2_hmac("sha256", "bell\u0007".encode(), salt, 4096)
    assert raw.server_key == hmac.new(salted, b"Server Key", "sha256").digest()


FIRST_ERRORS = [
    (b"", "other-error"),
    (b"n,,", "other-error"),
    (b"n,,n=user", "other-error"),  # no nonce
    (b"n,,r=abc,n=user", "other-error"),  # order is fixed
    (b"x,,n=user,r=abc", "other-error"),
    (b"p=tls-unique,,n=user,r=abc", "channel-binding-not-supported"),
    (b"n,b=x,n=user,r=abc", "other-error"),  # authzid must be a=
    (b"n,,m=ext,n=user,r=abc", "extensions-not-supported"),
    (b"n,,n=,r=abc", "invalid-username-encoding"),
    (b"n,,n=us=2cer,r=abc", "invalid-username-encoding"),  # escapes are upper case
    (b"n,,n=user=,r=abc", "invalid-username-encoding"),
    (b"n,,n=us=41er,r=abc", "invalid-username-encoding"),
    (b"n,a=,n=user,r=abc", "invalid-username-encoding"),
    (b"n,,n=us\x07er,r=abc", "invalid-encoding"),  # a control character (SASLprep)
    (b"n,,n=user,r=", "other-error"),
    (b"n,,n=user,r=ab\x7fc", "other-error"),
    (b"n,,n=user,r=ab c", "other-error"),
    (b"n,,n=user,r=ab\xc3\xa9", "other-error"),  # printable means ASCII
    (b"n,,n=user,r=abc,1=x", "other-error"),
    (b"n,,n=us\x00er,r=abc", "invalid-encoding"),
    (b"n,,n=\xff,r=abc", "other-error"),
    (b"n,,n=user,r=" + b"a" * 9000, "other-error"),
]


@pytest.mark.parametrize(("first", "error"), FIRST_ERRORS)
def test_malformed_client_first(first: bytes, error: str) -> None:
    with pytest.raises(SaslError) as e:
        ScramSha256().start(first)
    assert e.value.scram_error == error


def _final_errors() -> list[tuple[str, bytes, str]]:
    """client-final messages that must be refused, built against the nonce of one run."""
    return [
        ("no proof", b"c=biws,r={nonce}", "other-error"),
        ("proof not last", b"c=biws,r={nonce},p={proof},x=1", "other-error"),
        ("no channel binding", b"r={nonce},p={proof}", "other-error"),
        ("binding of another header", b"c=eSws,r={nonce},p={proof}", "channel-bindings-dont-match"),
        ("binding with data", b"c=biwsAAAA,r={nonce},p={proof}", "channel-bindings-dont-match"),
        ("binding not base64", b"c=b!ws,r={nonce},p={proof}", "invalid-encoding"),
        ("client nonce only", b"c=biws,r=clientnonce,p={proof}", "other-error"),
        ("nonce with more", b"c=biws,r={nonce}x,p={proof}", "other-error"),
        ("proof not base64", b"c=biws,r={nonce},p=%%%", "invalid-encoding"),
        ("proof too short", b"c=biws,r={nonce},p=AAAA", "invalid-proof"),
        ("bad extension", b"c=biws,r={nonce},xx,p={proof}", "other-error"),
        ("not UTF-8", b"c=biws,r={nonce},p={proof}\xff", "other-error"),
    ]


@pytest.mark.parametrize(("name", "template", "error"), _final_errors())
def test_malformed_client_final(name: str, template: bytes, error: str) -> None:
    m = ScramSha256()
    m.start(b"n,,n=user,r=clientnonce")
    first = m.secrets(PENCIL)
    assert isinstance(first, Challenge)
    nonce = first.data.split(b",")[0][2:]
    proof = base64.b64encode(b"\0" * 32)
    with pytest.raises(SaslError) as e:
        m.step(template.replace(b"{nonce}", nonce).replace(b"{proof}", proof))
    assert e.value.scram_error == error, name


def test_anything_but_an_empty_answer_to_the_signature_is_refused() -> None:
    m = ScramSha256(server_nonce=V_SERVER_NONCE)
    m.start(V_CLIENT_FIRST)
    m.secrets(PENCIL)
    assert m.step(V_CLIENT_FINAL) == Challenge(V_SERVER_FINAL)
    with pytest.raises(SaslError):
        m.step(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_server_nonces_are_fresh_and_printable() -> None:
    seen = set()
    for _ in range(20):
        m = ScramSha256()
        m.start(b"n,,n=user,r=c")
        first = m.secrets(PENCIL)
        assert isinstance(first, Challenge)
        nonce = first.data.split(b",")[0][2:].decode()
        assert nonce.startswith("c") and len(nonce) == 25
        assert all("!" <= ch <= "~" and ch != "," for ch in nonce)
        seen.add(nonce)
    assert len(seen) == 20


def test_steps_out_of_order_are_a_bug_of_the_caller() -> None:
    m = ScramSha256()
    with pytest.raises(RuntimeError):
        m.secrets(PENCIL)
    m.start(V_CLIENT_FIRST)
    with pytest.raises(RuntimeError):
        m.step(V_CLIENT_FINAL)  # the secrets have not come yet
    with pytest.raises(RuntimeError):
        sasl.Plain().secrets(PENCIL)


def test_registered_and_case_insensitive() -> None:
    assert isinstance(sasl.server_mechanism("scram-sha-256"), ScramSha256)
    assert list(sasl.MECHANISMS) == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=4), st.booleans())
def test_any_input_gives_a_step_or_a_sasl_error(messages: list[bytes], secrets_first: bool
                                                ) -> None:
    """Fuzz invariant (STYLE habit 7): nothing but steps and SaslError, whatever comes."""
    seeds = [b"n,,n=user,r=abc", V_CLIENT_FIRST, b"y,a=user,n=user,r=x,e=1"]
    m = ScramSha256()
    try:
        step = m.start(seeds[len(messages[0]) % 3] if secrets_first else messages[0])
        for data in messages[1:]:
            if isinstance(step, NeedSecrets):
                step = m.secrets(PENCIL)
            elif isinstance(step, ProofChecked):
                break
            step = m.step(data)
    except SaslError:
        pass
