"""COSE_Sign1 (RFC 9052, CBOR tag 18) with Ed25519 (COSE alg -8), on cbor2 and cryptography.

Only what the grid contract needs: protected header `{1: -8, 4: kid}`, attached payload, external
AAD (the MQTT topic). Decoding never trusts the input: every structural fault is a `CoseError`
with `reason` "malformed"; a wrong key id, algorithm or signature is "bad_signature".
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGN1_TAG = 18
ALG_EDDSA = -8
HDR_ALG = 1
HDR_KID = 4
MAX_DEPTH = 16
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"


class CoseError(ValueError):
    """A COSE_Sign1 that cannot be used; `reason` is "malformed" or "bad_signature"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Sign1:
    """A decoded, not yet verified COSE_Sign1."""

    protected: bytes  # the protected header exactly as received (it is signed as bytes)
    alg: object
    kid: bytes | None
    payload: bytes
    signature: bytes


def loads_exact(data: bytes) -> Any:
    """One CBOR item that must use every byte; raises CoseError("malformed") otherwise.

    cbor2 6 may hand back tuples and frozendicts for arrays and maps; callers accept both.
    """
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp, max_depth=MAX_DEPTH, allow_duplicate_keys=False).decode()
    except RecursionError as exc:
        raise CoseError(MALFORMED, "CBOR nested too deeply") from exc
    except Exception as exc:  # cbor2 raises several types for hostile input; none may escape
        raise CoseError(MALFORMED, f"not CBOR ({type(exc).__name__})") from exc
    if fp.tell() != len(data):
        raise CoseError(MALFORMED, "trailing bytes after the CBOR item")
    return item


def is_array(value: object) -> bool:
    return isinstance(value, (list, tuple))


def protected_header(kid: bytes) -> bytes:
    """The protected header bytes for Ed25519 with `kid`: `{1: -8, 4: kid}`."""
    return cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: bytes(kid)})


def sig_structure(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """RFC 9052 section 4.4 Sig_structure for COSE_Sign1."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


def sign(payload: bytes, key: Ed25519PrivateKey, kid: bytes, external_aad: bytes) -> bytes:
    """A tagged COSE_Sign1 of `payload` (Ed25519 is deterministic: same inputs, same bytes)."""
    protected = protected_header(kid)
    signature = key.sign(sig_structure(protected, external_aad, payload))
    return cbor2.dumps(cbor2.CBORTag(SIGN1_TAG, [protected, {}, payload, signature]))


def decode(data: bytes) -> Sign1:
    """Parse a tagged COSE_Sign1; raises CoseError("malformed") for anything else."""
    item = loads_exact(bytes(data))
    if not isinstance(item, cbor2.CBORTag) or item.tag != SIGN1_TAG:
        raise CoseError(MALFORMED, "not a COSE_Sign1 (CBOR tag 18 expected)")
    parts = item.value
    if not is_array(parts) or len(parts) != 4:
        raise CoseError(MALFORMED, "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes):
        raise CoseError(MALFORMED, "protected header must be a byte string")
    if not isinstance(unprotected, Mapping):
        raise CoseError(MALFORMED, "unprotected header must be a map")
    if not isinstance(payload, bytes):
        raise CoseError(MALFORMED, "payload must be an attached byte string")
    if not isinstance(signature, bytes):
        raise CoseError(MALFORMED, "signature must be a byte string")
    header: Mapping[Any, Any] = {}
    if protected:
        header = loads_exact(protected)
        if not isinstance(header, Mapping):
            raise CoseError(MALFORMED, "protected header must encode a map")
    kid = header.get(HDR_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise CoseError(MALFORMED, "kid must be a byte string")
    return Sign1(protected, header.get(HDR_ALG), kid, payload, signature)


def verify(msg: Sign1, keys: Mapping[bytes, Ed25519PublicKey], external_aad: bytes) -> None:
    """Check alg, kid and signature; raises CoseError("bad_signature") with the cause."""
    if msg.alg != ALG_EDDSA or isinstance(msg.alg, bool):
        raise CoseError(BAD_SIGNATURE, "algorithm must be EdDSA (-8) in the protected header")
    if msg.kid is None:
        raise CoseError(BAD_SIGNATURE, "no kid in the protected header")
    key = keys.get(msg.kid)
    if key is None:
        raise CoseError(BAD_SIGNATURE, "unknown kid")
    try:
        key.verify(msg.signature, sig_structure(msg.protected, external_aad, msg.payload))
    except InvalidSignature as exc:
        raise CoseError(BAD_SIGNATURE, "signature does not verify for this topic") from exc


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); ValueError otherwise."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PKCS#8 PEM; ValueError otherwise."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

