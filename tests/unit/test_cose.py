"""COSE_Sign1 on cbor2 6: byte-identical to an independent implementation (pycose vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.grid import cose

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "cose_sign1.json").read_text())
SEED = bytes.fromhex(VECTORS["private_key_seed_hex"])
KID = bytes.fromhex(VECTORS["kid_hex"])
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUB = cose.load_public_key(VECTORS["public_key_pem"].encode())
CASES = VECTORS["vectors"]


def test_vectors_name_the_implementation_that_made_them() -> None:
    made_by = VECTORS["produced_by"]
    assert made_by["pycose"] == "1.1.0"
    assert made_by["cbor2"].startswith("5.")
    assert cose.raw_public(PUB).hex() == VECTORS["public_key_hex"]


@pytest.mark.parametrize("case", CASES, ids=[c["command"]["op"] for c in CASES])
def test_our_encoder_is_byte_identical_to_pycose(case: dict) -> None:
    ours = cose.sign(bytes.fromhex(case["payload_hex"]), KEY, KID, case["topic"].encode())
    assert ours.hex() == case["sign1_hex"]


@pytest.mark.parametrize("case", CASES, ids=[c["command"]["op"] for c in CASES])
def test_pycose_messages_verify_with_the_topic_as_aad(case: dict) -> None:
    msg = cose.decode(bytes.fromhex(case["sign1_hex"]))
    assert msg.kid == KID and msg.alg == cose.ALG_EDDSA
    assert msg.payload.hex() == case["payload_hex"]
    cose.verify(msg, {KID: PUB}, case["topic"].encode())
    with pytest.raises(cose.CoseError) as err:
        cose.verify(msg, {KID: PUB}, (case["topic"] + "x").encode())
    assert err.value.reason == "bad_signature"


def test_decoded_command_map_matches_the_vector() -> None:
    case = CASES[0]
    data = cose.loads_exact(cose.decode(bytes.fromhex(case["sign1_hex"])).payload)
    assert data["op"] == "setpoint" and data["power_w"] == 1200
    assert data["id"].hex() == case["command"]["id"]


def test_flipped_signature_bit_and_unknown_kid_are_bad_signature() -> None:
    raw = bytearray.fromhex(CASES[0]["sign1_hex"])
    raw[-1] ^= 1
    with pytest.raises(cose.CoseError) as err:
        cose.verify(cose.decode(bytes(raw)), {KID: PUB}, CASES[0]["topic"].encode())
    assert err.value.reason == "bad_signature"
    msg = cose.decode(bytes.fromhex(CASES[0]["sign1_hex"]))
    with pytest.raises(cose.CoseError, match="unknown kid"):
        cose.verify(msg, {b"other": PUB}, CASES[0]["topic"].encode())


def test_other_algorithm_is_refused_even_when_the_signature_matches() -> None:
    protected = cbor2.dumps({1: -7, 4: KID})
    payload = b"\xa0"
    sig = KEY.sign(cose.sig_structure(protected, b"t", payload))
    blob = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))
    with pytest.raises(cose.CoseError, match="EdDSA") as err:
        cose.verify(cose.decode(blob), {KID: PUB}, b"t")
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xff",
        cbor2.dumps([b"", {}, b"", b""]),  # untagged
        cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", b""])),  # COSE_Sign, not Sign1
        cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])),
        cbor2.dumps(cbor2.CBORTag(18, [b"", {}, None, b""])),  # detached payload
        cbor2.dumps(cbor2.CBORTag(18, [b"\x01", {}, b"", b""])),  # header not a map
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({4: "text"}), {}, b"", b""])),
        cbor2.dumps(cbor2.CBORTag(18, [b"", [], b"", b""])),
        bytes.fromhex(CASES[0]["sign1_hex"]) + b"\x00",  # trailing byte
        b"\x81" * 100 + b"\x00",  # deep nesting
    ],
)
def test_structural_faults_are_malformed(blob: bytes) -> None:
    with pytest.raises(cose.CoseError) as err:
        cose.decode(blob)
    assert err.value.reason == "malformed"


def test_keys_round_trip_through_pem() -> None:
    key = cose.load_private_key(cose.private_pem(KEY))
    assert cose.raw_public(key.public_key()) == cose.raw_public(PUB)
    with pytest.raises(ValueError):
        cose.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
