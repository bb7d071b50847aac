"""The public half of a stored DKIM key, as the TXT value to publish (RFC 6376 §3.6.1, RFC 8463)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


def public_txt_from_private(private_pem: str, algorithm: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    if isinstance(key, rsa.RSAPrivateKey):
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    raise ValueError(f"unsupported DKIM key type for {algorithm}")
